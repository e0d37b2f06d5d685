"""A conditional EDM-style denoiser for low-light photos (Karras et al., NeurIPS 2022), written here for pbrforge.

The graph is one denoiser step D(x; sigma, dark): EDM's preconditioning (c_skip, c_out, c_in, c_noise with
sigma_data 0.5) around a small conv net that sees the noisy image beside the dark photo it restores, with the
noise level as a FiLM embedding. sigma is an input, so the artifact serves every step; the Heun sampler (EDM's
Algorithm 1, rho 7) stays in Python as host glue. "Ship the step, not the loop": an unrolled sampler multiplies
conversion time and partitions.

    pbrforge export --model examples/edm_denoiser/model.py:spec --output artifacts/edm --format executorch

The pipeline check runs the shipped schedule through the artifact and holds the final image to the same
sampler run in eager PyTorch. Weights are seeded and untrained.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pbrforge.modelspec import GraphSpec, ModelSpec, Pipeline, TensorSpec

SIZE = 64
MULTIPLE = 4  # two stride-2 levels
SIGMA_DATA, SIGMA_MIN, SIGMA_MAX, RHO = 0.5, 0.002, 80.0, 7.0
STEPS = 8  # the shipped schedule: 8 Heun steps, 15 denoiser calls


class Denoiser(nn.Module):
    def __init__(self, width: int = 32, embed: int = 16, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # seeded weights, the caller's random state untouched
            torch.manual_seed(seed)
            self._build(width, embed)

    def _build(self, width: int, embed: int) -> None:
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(embed // 2) / (embed // 2)))
        self.embed = nn.Sequential(nn.Linear(embed, width), nn.SiLU(), nn.Linear(width, 2 * width))
        self.inp = nn.Conv2d(6, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.out = nn.Conv2d(2 * width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, dark: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        c_out = s * SIGMA_DATA / (s**2 + SIGMA_DATA**2).sqrt()
        c_in = 1 / (s**2 + SIGMA_DATA**2).sqrt()
        c_noise = sigma.log() / 4
        angles = c_noise[:, None] * self.freqs[None, :]  # EDM's positional embedding (its x.ger(freqs))
        scale, shift = self.embed(torch.cat([angles.cos(), angles.sin()], dim=1)).chunk(2, dim=1)
        h = nn.functional.silu(self.inp(torch.cat([c_in * x, dark], dim=1)))
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        skip = h
        h = nn.functional.silu(self.mid(nn.functional.silu(self.down(h))))
        h = self.out(torch.cat([nn.functional.silu(self.up(h)), skip], dim=1))
        return c_skip * x + c_out * h


def schedule(steps: int = STEPS) -> list[float]:
    """EDM's sigmas, computed in float64 on the host, then handed to the float32 graph one at a time."""
    i = torch.arange(steps, dtype=torch.float64)
    t = (SIGMA_MAX ** (1 / RHO) + i / (steps - 1) * (SIGMA_MIN ** (1 / RHO) - SIGMA_MAX ** (1 / RHO))) ** RHO
    return [*t.tolist(), 0.0]


def heun(call, dark: torch.Tensor, noise: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """EDM's deterministic Heun sampler (Algorithm 1) with ``call(x, sigma, dark)`` as the denoiser."""
    sigmas = schedule(steps)
    x = noise * sigmas[0]
    for now, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - call(x, torch.tensor([now], dtype=torch.float32), dark)) / now
        x_next = x + (nxt - now) * d
        if nxt > 0:  # the second-order correction, except on the last step to sigma 0
            d2 = (x_next - call(x_next, torch.tensor([nxt], dtype=torch.float32), dark)) / nxt
            x_next = x + (nxt - now) * (d + d2) / 2
        x = x_next
    return x


def spec() -> ModelSpec:
    shape = (1, 3, SIZE, SIZE)
    noisy = TensorSpec(
        "x", shape, encoding=(-1.0, 1.0), multiple=MULTIPLE
    )  # any finite value: sigma 80 noise
    sigma = TensorSpec(
        "sigma", (1,), kind="tensor", encoding=(SIGMA_MIN, SIGMA_MAX), valid=(SIGMA_MIN, SIGMA_MAX)
    )
    dark = TensorSpec("dark", shape, color="srgb", encoding=(-1.0, 1.0), valid=(-1.0, 1.0), multiple=MULTIPLE)
    out = TensorSpec("denoised", shape, color="srgb", encoding=(-1.0, 1.0))

    def restore(call):
        g = torch.Generator().manual_seed(3)
        photo = torch.rand(shape, generator=g) * 0.2 - 1.0  # a dark photo, in -1..1
        noise = torch.randn(shape, generator=g)
        result = heun(lambda x, s, d: call("denoise", (x, s, d))[0], photo, noise)
        return result, None  # held to the same sampler run in eager PyTorch

    return ModelSpec(
        "edm-denoiser",
        graphs={"denoise": GraphSpec(Denoiser(), (noisy, sigma, dark), (out,))},
        glue={"sampler": "heun", "steps": STEPS, "rho": RHO, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX},
        pipelines={"restore": Pipeline(("denoise",), restore, gate="psnr:40", span=2.0)},
    )
