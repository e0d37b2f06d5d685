"""A learned image codec with a hyperprior and a channel context (Ballé 2018; ELIC-style grouping), for pbrforge.

Five graphs, as a phone would run them:

- ``analysis`` (image, rate) -> latent y, and ``synthesis`` (y_hat, rate) -> image: the heavy convs, fit for
  the NPU, judged by PSNR. ``rate`` (0-4, a gain of 2**rate on the latent) is CRDR's rate control: the
  original guards it with ``assert``, which an exported graph loses, so the spec states it as a valid range
  and every runner checks it;
- ``hyper_analysis`` y -> z, whose rounding the host codes with a fixed factorized Gaussian;
- ``prior`` z_hat -> (mean, scale index) for the first half of y's channels, and ``context`` (z_hat, y1_hat)
  -> (mean, scale index) for the second half. Their indexes pick the entropy model of every symbol, on the
  encoder and again on the decoder: one index that differs between the two desynchronises the range coder.
  So they are integer outputs held to ``exact``, and the exporter pins these graphs to fp32 on the CPU.

The pipeline encodes a photo to bits with ``constriction``'s range coder, decodes it on the same artifacts
(the decoder recomputes every index from what it decoded) and holds the image to the eager pipeline's; it
also reports bits per pixel and whether every decoded symbol matched. Weights are seeded and untrained.

    pbrforge export --model examples/hyperprior_codec/model.py:spec --output artifacts/codec --format onnx
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pbrforge.modelspec import GraphSpec, ModelSpec, Pipeline, TensorSpec

SIZE, MULTIPLE = 128, 64  # four stride-2 levels to y, two more to z
C, Z = 8, 4  # latent and hyper-latent channels; y is coded in two groups of C // 2
LEVELS = 64  # scale table entries (CompressAI's habit: log-spaced from 0.11 to 256)
SCALES = torch.exp(torch.linspace(math.log(0.11), math.log(256.0), LEVELS))
BOUND = 255  # symbols are clamped to -BOUND..BOUND before coding


def _down(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.GELU())


def _up(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GELU())


class Analysis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _down(3, 32), _down(32, 32), _down(32, 32), nn.Conv2d(32, C, 5, stride=2, padding=2)
        )

    def forward(self, image: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        return self.net(image) * 4 * torch.exp2(rate).view(-1, 1, 1, 1)


class Synthesis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _up(C, 32), _up(32, 32), _up(32, 32), nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1)
        )

    def forward(self, y_hat: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(y_hat / (4 * torch.exp2(rate).view(-1, 1, 1, 1))))


class HyperAnalysis(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(_down(C, 16), nn.Conv2d(16, Z, 5, stride=2, padding=2))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y.abs())


def _index(scale: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """CompressAI's ``build_indexes``: how many table entries the scale exceeds, as int32."""
    return (scale.unsqueeze(-1) > table).sum(-1).clamp(max=LEVELS - 1).to(torch.int32)


class Prior(nn.Module):
    """z_hat -> mean and scale index of y's first channel group."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(_up(Z, 16), _up(16, 16), nn.Conv2d(16, C, 3, padding=1))
        self.register_buffer("table", SCALES.clone())

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(z_hat).chunk(2, dim=1)
        return mean, _index(torch.exp(raw * 8) * 2, self.table)


class Context(nn.Module):
    """(z_hat, y1_hat) -> mean and scale index of y's second channel group (the channel context)."""

    def __init__(self) -> None:
        super().__init__()
        self.hyper = nn.Sequential(_up(Z, 16), _up(16, 16))
        self.net = nn.Sequential(
            nn.Conv2d(16 + C // 2, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, C, 3, padding=1)
        )
        self.register_buffer("table", SCALES.clone())

    def forward(self, z_hat: torch.Tensor, y1_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(torch.cat([self.hyper(z_hat), y1_hat], dim=1)).chunk(2, dim=1)
        return mean, _index(torch.exp(raw * 8) * 2, self.table)


def _symbols(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(-BOUND, BOUND)


def code(call, image: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Encode ``image`` to bits and decode it back, every graph through ``call``; (decoded image, figures)."""
    import constriction

    family = constriction.stream.model.QuantizedGaussian(-BOUND, BOUND)
    table = SCALES.double().numpy()

    def flat(t: torch.Tensor, dtype=np.float64) -> np.ndarray:
        return t.detach().reshape(-1).numpy().astype(dtype)

    (y,) = call("analysis", (image, rate))
    (z,) = call("hyper_analysis", (y,))
    z_hat = _symbols(z)
    y1, y2 = y.chunk(2, dim=1)
    mean1, index1 = call("prior", (z_hat,))
    s1 = _symbols(y1 - mean1)
    mean2, index2 = call("context", (z_hat, s1 + mean1))
    s2 = _symbols(y2 - mean2)
    encoder = constriction.stream.queue.RangeEncoder()
    zeros_z, ones_z = np.zeros(z_hat.numel()), np.ones(z_hat.numel())
    encoder.encode(flat(z_hat, np.int32), family, zeros_z, ones_z)
    for s, index in ((s1, index1), (s2, index2)):
        encoder.encode(flat(s, np.int32), family, np.zeros(s.numel()), table[flat(index, np.int64)])
    bits = encoder.get_compressed()

    decoder = constriction.stream.queue.RangeDecoder(bits)
    z_dec = torch.from_numpy(decoder.decode(family, zeros_z, ones_z).astype(np.float32)).reshape(z_hat.shape)
    mean1_d, index1_d = call("prior", (z_dec,))
    s1_d = decoder.decode(family, np.zeros(s1.numel()), table[flat(index1_d, np.int64)])
    y1_d = torch.from_numpy(s1_d.astype(np.float32)).reshape(s1.shape) + mean1_d
    mean2_d, index2_d = call("context", (z_dec, y1_d))
    s2_d = decoder.decode(family, np.zeros(s2.numel()), table[flat(index2_d, np.int64)])
    y2_d = torch.from_numpy(s2_d.astype(np.float32)).reshape(s2.shape) + mean2_d
    (decoded,) = call("synthesis", (torch.cat([y1_d, y2_d], dim=1), rate))
    same = bool(torch.equal(z_dec, z_hat)) and np.array_equal(s1_d, flat(s1, np.int32))
    same = same and np.array_equal(s2_d, flat(s2, np.int32))
    pixels = image.shape[-1] * image.shape[-2]
    mse = float(((decoded - image) ** 2).mean())
    return decoded, {
        "bpp": 32 * bits.size / pixels,
        "bytes": 4 * int(bits.size),
        "symbols_decoded_exactly": same,
        "distinct_scale_indexes": len(set(flat(index1, np.int64)) | set(flat(index2, np.int64))),
        "psnr_vs_photo_db": 10 * math.log10(1 / mse) if mse else math.inf,
    }


def spec() -> ModelSpec:
    image = TensorSpec("image", (1, 3, SIZE, SIZE), color="srgb", valid=(0.0, 1.0), multiple=MULTIPLE)
    rate = TensorSpec("rate", (1,), kind="tensor", encoding=(0.0, 4.0), valid=(0.0, 4.0))
    side = SIZE // 16
    y = TensorSpec("y", (1, C, side, side), kind="latent", encoding=(-64.0, 64.0))
    y_hat = TensorSpec(
        "y_hat", (1, C, side, side), kind="latent", encoding=(-64.0, 64.0), valid=(-4096.0, 4096.0)
    )
    z = TensorSpec("z", (1, Z, side // 4, side // 4), kind="latent", encoding=(-16.0, 16.0))
    z_hat = TensorSpec("z_hat", z.shape, kind="latent", encoding=(-16.0, 16.0), valid=(-BOUND, BOUND))
    y1_hat = TensorSpec("y1_hat", (1, C // 2, side, side), kind="latent", encoding=(-64.0, 64.0))
    half = (1, C // 2, side, side)

    def params(suffix: str) -> tuple[TensorSpec, TensorSpec]:
        return (
            TensorSpec(f"mean{suffix}", half, kind="latent", encoding=(-64.0, 64.0)),
            TensorSpec(f"index{suffix}", half, dtype="int32", kind="symbols", encoding=(0.0, LEVELS - 1.0)),
        )

    def round_trip(call):
        photo = TensorSpec("image", image.shape, valid=(0.0, 1.0)).example(seed=5)
        decoded, figures = code(call, photo, torch.tensor([2.0]))
        return decoded, None, figures

    with torch.random.fork_rng():  # seeded weights, the caller's random state untouched
        torch.manual_seed(0)
        nets = Analysis(), HyperAnalysis(), Prior(), Context(), Synthesis()
    return ModelSpec(
        "hyperprior-codec",
        graphs={
            "analysis": GraphSpec(nets[0], (image, rate), (y,)),
            "hyper_analysis": GraphSpec(nets[1], (y,), (z,)),
            "prior": GraphSpec(nets[2], (z_hat,), params("1")),
            "context": GraphSpec(nets[3], (z_hat, y1_hat), params("2")),
            "synthesis": GraphSpec(
                nets[4], (y_hat, rate), (TensorSpec("decoded", image.shape, color="srgb"),)
            ),
        },
        glue={"coder": "constriction range coder, QuantizedGaussian", "scale_table": SCALES.tolist()},
        pipelines={
            "encode_decode": Pipeline(
                ("analysis", "hyper_analysis", "prior", "context", "synthesis"), round_trip
            )
        },
    )
