"""The gates an exported artifact must pass, and the options that set them (no torch: CLI help stays fast)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import click

from pbrforge.options import FiniteFloatRange

# an fp32 runtime (ONNX Runtime, ExecuTorch XNNPACK) vs PyTorch fp32, per value (timm's onnx_validate habit)
FP32_MAX_ABS = 1e-4
RENDER_MIN_PSNR = 40.0  # dB, default gate for fp32, FP16 and 8-bit artifacts
NORMAL_MAX_P99 = 2.0  # degrees, default gate
RENDER_KEYS = (
    "psnr_db_min",
    "normal_deg_mean",
    "normal_deg_p99",
    "albedo_de2000_mean",
    "metallic_flip_share",
    "roughness_mae",
)


@dataclass(frozen=True)
class RenderGate:
    """The render figures an artifact must reach; None leaves a figure unjudged."""

    psnr_db_min: float | None = RENDER_MIN_PSNR
    normal_deg_p99: float | None = NORMAL_MAX_P99

    def judge(self, figures: Mapping[str, float], label: str) -> str | None:
        """The first failed figure as one sentence, or None; a NaN never passes."""
        psnr, p99 = figures["psnr_db_min"], figures["normal_deg_p99"]
        if self.psnr_db_min is not None and not psnr >= self.psnr_db_min:
            return f"{label} render parity failed: psnr_db_min {psnr:.1f} dB is below {self.psnr_db_min:g} dB"
        if self.normal_deg_p99 is not None and not p99 <= self.normal_deg_p99:
            return f"{label} render parity failed: normal_deg_p99 {p99:.2f} deg exceeds {self.normal_deg_p99:g} deg"
        return None


def render_gate_options(f: Callable) -> Callable:
    """--render-psnr-min and --normal-p99-max, shared by export and run."""
    f = click.option(
        "--normal-p99-max",
        type=FiniteFloatRange(0.0, 180.0),
        default=None,
        help=f"Render gate: 99th percentile of the normal angle error, degrees [default: {NORMAL_MAX_P99:g}].",
    )(f)
    return click.option(
        "--render-psnr-min",
        type=FiniteFloatRange(0.0, 200.0),
        default=None,
        help=f"Render gate: worst re-render PSNR over 11 lights, dB [default: {RENDER_MIN_PSNR:g}].",
    )(f)


def render_gate(psnr_min: float | None, normal_p99_max: float | None) -> RenderGate:
    """The gate from the options, defaults where not given."""
    return RenderGate(
        RENDER_MIN_PSNR if psnr_min is None else psnr_min,
        NORMAL_MAX_P99 if normal_p99_max is None else normal_p99_max,
    )
