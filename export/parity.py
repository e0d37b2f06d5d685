"""Parity of an artifact's outputs against PyTorch: per-output max/mean abs error and PSNR, and the gates."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pbrforge.deploy import OUTPUT_NAMES
from pbrforge.errors import ParityError

ONNX_MAX_ABS = 1e-4  # ONNX Runtime fp32 vs PyTorch fp32 (timm's onnx_validate habit)
COREML_MIN_PSNR = 35.0  # dB per output: ml-stable-diffusion's threshold
PSNR_CAP = 200.0  # reported when outputs are bit-identical


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with the reference's own peak-to-peak range as signal (ml-stable-diffusion's definition)."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    mse = float(np.mean((ref - test) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(peak**2 / mse))


def compare(
    reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output: max_abs, mean_abs, psnr_db. Missing or mis-shaped outputs are an error."""
    report = {}
    for name in OUTPUT_NAMES:
        if name not in outputs:
            raise ParityError(f"the artifact has no output named {name!r} (it has {sorted(outputs)})")
        ref, out = np.asarray(reference[name], np.float32), np.asarray(outputs[name], np.float32)
        if ref.shape != out.shape:
            raise ParityError(f"output {name!r} has shape {out.shape}, PyTorch gives {ref.shape}")
        diff = np.abs(ref - out)
        report[name] = {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "psnr_db": psnr(ref, out),
        }
    return report


def gate_max_abs(report: Mapping[str, Mapping[str, float]], limit: float, what: str) -> str | None:
    """The failure sentence, or None when every output is within ``limit``."""
    for name, r in report.items():
        if not r["max_abs"] <= limit:
            return f"{what} parity failed: {name} max abs error {r['max_abs']:.3g} exceeds {limit:g}"
    return None


def gate_psnr(report: Mapping[str, Mapping[str, float]], limit: float, what: str) -> str | None:
    for name, r in report.items():
        if not r["psnr_db"] >= limit:
            return f"{what} parity failed: {name} PSNR {r['psnr_db']:.1f} dB is below {limit:g} dB"
    return None


def finish(result: dict, failure: str | None) -> dict:
    """Record the gate's verdict in the parity result."""
    result["passed"] = failure is None
    result["failure"] = failure
    return result


def table(report: Mapping[str, Mapping[str, float]], title: str) -> str:
    lines = [title, f"{'output':<10} {'max abs':>10} {'mean abs':>10} {'PSNR dB':>8}"]
    for name, r in report.items():
        lines.append(f"{name:<10} {r['max_abs']:10.2e} {r['mean_abs']:10.2e} {r['psnr_db']:8.1f}")
    return "\n".join(lines)
