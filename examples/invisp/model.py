"""An InvISP-style invertible ISP (Xing, Qian and Chen, CVPR 2021), written here from the paper for pbrforge.

RAW (demosaiced, linear, 3 channels) to sRGB and back through one network: invertible blocks, each an
LU-parametrised 1x1 convolution (Glow) followed by an affine coupling whose scale is bounded by a sigmoid
(InvISP's ``InvBlockExp``). The reverse direction runs the blocks backwards with the inverted 1x1 weights, so
both directions share every parameter and ``reverse(forward(raw)) == raw`` up to rounding.

The 1x1 weights are computed at run time (P @ L @ U, and ``torch.inverse`` of it in reverse): the pattern
that stops converters, which pbrforge's constant-folding pass removes before export.

    pbrforge export --model examples/invisp/model.py:spec --output artifacts/invisp --format onnx

Weights are seeded and untrained unless ``weights`` names a safetensors file of ``InvISP().state_dict()``.
"""

from __future__ import annotations

import torch
from torch import nn

from pbrforge.modelspec import GraphSpec, ModelSpec, Pipeline, TensorSpec

SIZE = 64  # example side; any multiple of MULTIPLE runs
MULTIPLE = 1  # 1x1 convs and same-padded 3x3 convs: no size constraint
CLAMP = 0.8  # the coupling's log-scale bound (InvISP uses 1.0 with a sigmoid; smaller keeps reverse tame)


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution, LU-parametrised: W = P @ (L + I) @ (U + diag(sign * exp(log_s)))."""

    def __init__(self, channels: int, generator: torch.Generator):
        super().__init__()
        # a channel shuffle, slightly mixed: invertible, and keeps a fresh ISP's colours near the input's range
        shuffle = torch.eye(channels)[torch.randperm(channels, generator=generator)]
        w = shuffle @ (torch.eye(channels) + 0.1 * torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(w)
        self.register_buffer("p", p)
        self.register_buffer("sign", torch.sign(torch.diag(upper)))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.diag(upper).abs()))

    def weight(self) -> torch.Tensor:
        lower = torch.tril(self.lower, -1) + self.eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        w = torch.inverse(self.weight()) if reverse else self.weight()
        return nn.functional.conv2d(x, w[:, :, None, None])


def _subnet(c_in: int, c_out: int, hidden: int = 16) -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(hidden, c_out, 3, padding=1),
    )
    last = net[-1]
    assert isinstance(last, nn.Conv2d)
    nn.init.normal_(last.weight, std=0.02)  # near-identity couplings, as a fresh InvISP starts
    nn.init.zeros_(last.bias)
    return net


class CouplingBlock(nn.Module):
    """InvISP's ``InvBlockExp``: y1 = x1 + F(x2); y2 = x2 * exp(s(y1)) + G(y1), s bounded by CLAMP."""

    def __init__(self, channels: int, split: int, generator: torch.Generator):
        super().__init__()
        self.split = split
        self.conv = InvConv1x1(channels, generator)
        self.f = _subnet(channels - split, split)
        self.g = _subnet(split, channels - split)
        self.h = _subnet(split, channels - split)

    def _scale(self, y1: torch.Tensor) -> torch.Tensor:
        return CLAMP * (torch.sigmoid(self.h(y1)) * 2 - 1)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        if not reverse:
            x = self.conv(x)
            x1, x2 = x[:, : self.split], x[:, self.split :]
            y1 = x1 + self.f(x2)
            y2 = x2 * torch.exp(self._scale(y1)) + self.g(y1)
            return torch.cat([y1, y2], dim=1)
        y1, y2 = x[:, : self.split], x[:, self.split :]
        x2 = (y2 - self.g(y1)) * torch.exp(-self._scale(y1))
        x1 = y1 - self.f(x2)
        return self.conv(torch.cat([x1, x2], dim=1), reverse=True)


class InvISP(nn.Module):
    def __init__(self, blocks: int = 4, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        with (
            torch.random.fork_rng()
        ):  # the subnets' default init, seeded; the caller's random state untouched
            torch.manual_seed(seed)
            self.blocks = nn.ModuleList(CouplingBlock(channels, 1, g) for _ in range(blocks))

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        for block in reversed(self.blocks) if reverse else self.blocks:
            x = block(x, reverse)
        return x


class Direction(nn.Module):
    """One direction of a shared InvISP as its own graph (a wrapper, not a copy: both share the weights)."""

    def __init__(self, isp: InvISP, reverse: bool):
        super().__init__()
        self.isp, self.reverse = isp, reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.isp(x, self.reverse)


def spec(weights: str | None = None) -> ModelSpec:
    isp = InvISP()
    if weights:
        from safetensors.torch import load_file

        isp.load_state_dict(load_file(weights))
    shape = (1, 3, SIZE, SIZE)
    raw = TensorSpec("raw", shape, color="raw", valid=(0.0, 1.0), multiple=MULTIPLE)
    # an ISP's reverse is defined a little past the displayable range its forward reaches
    srgb = TensorSpec("srgb", shape, color="srgb", valid=(-1.0, 2.0), multiple=MULTIPLE)

    def round_trip(call):
        x = raw.example(seed=7)
        (rendered,) = call("forward", (x,))
        (back,) = call("reverse", (rendered,))
        return back, x

    return ModelSpec(
        "invisp",
        graphs={
            "forward": GraphSpec(Direction(isp, False), (raw,), (TensorSpec("srgb", shape, color="srgb"),)),
            "reverse": GraphSpec(Direction(isp, True), (srgb,), (TensorSpec("raw", shape, color="raw"),)),
        },
        glue={"pipeline": "raw -> forward -> srgb -> reverse -> raw"},
        pipelines={"round_trip": Pipeline(("forward", "reverse"), round_trip, gate="psnr:80")},
    )
