"""The PBR student as one model spec among others (issue #26), and NeuroPBR's student beside it.

``--model pbr [--weights CHECKPOINT]`` exports a pbrforge checkpoint (or ``.safetensors`` pretrained file; the
shipped default model when none is given) through the generic ``--model`` path, and ``--model neuropbr
--weights best_student.pth`` a checkpoint NeuroPBR's own ``student/train.py`` wrote. Both graphs have the
inputs and outputs of today's PBR artifacts (``view_0..2``: (1, 3, H, W) RGB in 0..255; ``albedo``,
``roughness``, ``metallic``, ``normal`` in the contract's ranges), so the mobile app takes either.

Each output is held to ``max_abs`` like any fp32 graph; the task's own metric is the ``render`` plug-in this
module registers: both sides' maps re-rendered under the eleven parity lights (``render_parity``), judged by
the worst re-render PSNR and the 99th percentile of the normal angle (``NORMAL_MAX_P99``). The spec's
``material`` pipeline applies it to every artifact that runs here, on photo-like example views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pbrforge.contract import MAP_NAMES, MAPS, NUM_CHANNELS, NUM_VIEWS, unpack
from pbrforge.errors import ConfigError
from pbrforge.export.gates import NORMAL_MAX_P99, RENDER_MIN_PSNR
from pbrforge.export.render_parity import render_figures
from pbrforge.gate_metrics import METRICS, register_metric
from pbrforge.modelspec import GraphSpec, ModelSpec, Pipeline, TensorSpec

RENDER_METRIC = "render"
PIPELINE_SEEDS = (0, 1)  # photo-like example views the material pipeline renders


def _render_metric(ref: np.ndarray, got: np.ndarray, span: float, limit: float) -> tuple[float, bool, str]:
    """(B, 8, H, W) contract maps: the worst re-render PSNR over the parity lights, and the normal p99 gate."""
    if ref.ndim != 4 or ref.shape[1] != NUM_CHANNELS:
        return float("nan"), False, f"expects (batch, {NUM_CHANNELS}, H, W) contract maps, got {ref.shape}"
    named = [
        {k: v.numpy() for k, v in unpack(torch.from_numpy(np.asarray(x, np.float32))).items()}
        for x in (ref, got)
    ]
    figures = render_figures(named[0], named[1])
    psnr, p99 = figures["psnr_db_min"], figures["normal_deg_p99"]
    passed = bool(psnr >= limit and p99 <= NORMAL_MAX_P99)
    return (
        psnr,
        passed,
        f"dB, worst re-render over 11 lights; normal p99 {p99:.2f} deg (limit {NORMAL_MAX_P99:g})",
    )


if RENDER_METRIC not in METRICS:  # this module may be imported by more than one factory
    register_metric(
        RENDER_METRIC,
        _render_metric,
        RENDER_MIN_PSNR,
        "PBR maps re-rendered under 11 lights: worst PSNR in dB, and the normal angle's p99 within 2 degrees",
    )


class NeuroPBRContract(nn.Module):
    """A NeuroPBR student behind today's artifact interface: views in 0..255, its normalisation inside."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        from pbrforge.export.wrappers import register_normalisation

        super().__init__()
        self.model = model
        register_normalisation(self, mean, std)

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, view_0: torch.Tensor, view_1: torch.Tensor, view_2: torch.Tensor):
        views = torch.stack([view_0, view_1, view_2], dim=1) * self.scale[:, None] + self.shift[:, None]
        maps = self.model(views)
        return tuple(maps[n] for n in MAP_NAMES)


def pbr_model_spec(name: str, module: nn.Module, image_size: int, weights: str) -> ModelSpec:
    """A PBR model (view_0..2 in, the four maps out) as a spec with the ``render`` pipeline."""
    from pbrforge.export.wrappers import example_inputs

    module = module.eval()
    views = tuple(
        TensorSpec(
            f"view_{i}",
            (1, 3, image_size, image_size),
            color="srgb",
            encoding=(0.0, 255.0),
            valid=(0.0, 255.0),
        )
        for i in range(NUM_VIEWS)
    )
    with torch.no_grad():
        side = int(module(*example_inputs(image_size))[0].shape[-1])
    outputs = tuple(
        TensorSpec(
            n,
            (1, MAPS[n].channels, side, side),
            kind="map",
            color="srgb" if n == "albedo" else "none",
            encoding=(-1.0, 1.0) if n == "normal" else (0.0, 1.0),
        )
        for n in MAP_NAMES
    )

    def material(call):
        got = [torch.cat(call("student", example_inputs(image_size, seed)), dim=1) for seed in PIPELINE_SEEDS]
        return torch.cat(got), None  # judged against the same pipeline in eager PyTorch

    return ModelSpec(
        name,
        {"student": GraphSpec(module, views, outputs)},
        glue={
            "contract": "pbrforge.contract (8 channels: albedo 3, roughness 1, metallic 1, normal 3)",
            "weights": weights,
        },
        pipelines={"material": Pipeline(("student",), material, gate=RENDER_METRIC, span=2.0)},
    )


def spec(weights: str | None = None) -> ModelSpec:
    """A pbrforge student or teacher checkpoint (or pretrained ``.safetensors``); the shipped default without one."""
    from pbrforge.export.wrappers import PBRExportWrapper
    from pbrforge.models import DEFAULT_MODEL, model_config, model_from_checkpoint

    path = Path(weights) if weights else DEFAULT_MODEL
    model, cfg, _ = model_from_checkpoint(path)
    size = model_config(cfg).image_size
    return pbr_model_spec("pbr", PBRExportWrapper(model, use_sr=True), size, path.name)


def neuropbr(weights: str | None = None) -> ModelSpec:
    """A student checkpoint NeuroPBR's ``student/train.py`` wrote (``best_student.pth``), weights as trained."""
    from pbrforge.export.neuropbr import load_student

    if not weights:
        raise ConfigError("--model neuropbr needs --weights: the .pth file NeuroPBR's student/train.py saved")
    path = Path(weights)
    model = load_student(path)
    wrapped = NeuroPBRContract(model, model.cfg.mean, model.cfg.std)
    return pbr_model_spec("neuropbr", wrapped, model.cfg.image_size, path.name)
