"""Validation metrics per map: PSNR, SSIM, MAE, normal angular error, and re-render RMSE.

Accumulated over batches as sums, so a whole split is measured exactly, not as a mean of means.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio as psnr
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from pbrforge.captures import CaptureBatch, batch_captures, draw_capture, render_capture
from pbrforge.contract import MAP_NAMES, unpack
from pbrforge.environments import uniform_dome
from pbrforge.render import to_display

EVAL_SEED = 20261203  # the re-render metric's one fixed capture, so numbers compare across runs


def eval_capture(model: str = "phone-flash") -> CaptureBatch:
    """The fixed capture (one batch row) the re-render RMSE is measured under: a draw of ``model`` with a
    fixed seed, its room an overcast dome, so the score needs no environment files."""
    dome = uniform_dome()
    record = draw_capture(model, np.random.default_rng(EVAL_SEED), [dome.name])
    return batch_captures([record], {dome.name: dome})


def _expand(capture: CaptureBatch, batch: int, device: torch.device) -> CaptureBatch:
    """One capture row repeated for a batch."""
    grow = lambda t: t.to(device).expand(batch, *t.shape[1:])  # noqa: E731
    envs = (capture.env_directions, capture.env_irradiance)
    return CaptureBatch(
        grow(capture.eyes),
        grow(capture.flash),
        grow(capture.flash_power),
        grow(capture.cone_exponent),
        *(None if t is None else grow(t) for t in envs),
    )


def normal_angles_deg(pred_n: torch.Tensor, true_n: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(pred_n, true_n, dim=1, eps=1e-6).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


class MapMetrics:
    """Accumulates per-sample metrics; ``compute()`` returns flat ``{"albedo/psnr": ..}`` numbers.

    ``rerender/rmse`` is the sRGB RMSE of both materials re-rendered under one fixed ``capture``.
    """

    def __init__(self, capture: str = "phone-flash") -> None:
        self.values: dict[str, list[float]] = {}
        self.angles: list[torch.Tensor] = []
        self.capture = eval_capture(capture)

    def _add(self, key: str, v: torch.Tensor) -> None:
        self.values.setdefault(key, []).extend(v.detach().float().cpu().flatten().tolist())

    @torch.no_grad()
    def update(self, pred: torch.Tensor, true: torch.Tensor) -> None:
        pred, true = pred.float(), true.float()
        p, t = unpack(pred), unpack(true)
        for name in MAP_NAMES:
            a, b = p[name], t[name]
            if name == "normal":
                a, b = (a + 1) / 2, (b + 1) / 2  # PSNR/SSIM on the PNG encoding's [0, 1] range
            self._add(f"{name}/psnr", psnr(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)))
            if a.shape[-1] >= 11:
                self._add(f"{name}/ssim", cast(torch.Tensor, ssim(a, b, data_range=1.0, reduction="none")))
            self._add(f"{name}/mae", (p[name] - t[name]).abs().mean(dim=(1, 2, 3)))
        self.angles.append(normal_angles_deg(p["normal"], t["normal"]).flatten(1).cpu())
        capture = _expand(self.capture, pred.shape[0], pred.device)
        rp, rt = to_display(render_capture(pred, capture)), to_display(render_capture(true, capture))
        self._add("rerender/rmse", ((rp - rt) ** 2).mean(dim=(1, 2, 3, 4)).sqrt())

    def compute(self) -> dict[str, float]:
        out = {k: float(sum(v) / len(v)) for k, v in self.values.items() if v}
        for k in list(out):
            if k.endswith("/psnr") and math.isinf(out[k]):
                out[k] = 100.0
        if self.angles:
            ang = torch.cat(self.angles, dim=0).flatten()
            out["normal/angle_mean_deg"] = float(ang.mean())
            out["normal/angle_median_deg"] = float(ang.median())
        return out


def mean_map_baseline(ds) -> torch.Tensor:
    """The trivial baseline: the mean of a data set's true maps (normals renormalised), one (8, S, S) tensor."""
    from pbrforge.contract import resize_maps

    ids = sorted({sid for sid, _ in ds.entries})
    return resize_maps(sum(ds.load_target(s) for s in ids) / len(ids), ds.output_size)
