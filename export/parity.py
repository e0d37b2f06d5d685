"""Parity of an artifact's outputs against PyTorch: per-output max/mean abs error and PSNR, and the gates.

A gate fails on any non-finite figure: a NaN anywhere in an output is a failure that names the output,
never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pbrforge.deploy import OUTPUT_NAMES
from pbrforge.errors import ParityError
from pbrforge.export.gates import RenderGate

COREML_MIN_PSNR = 35.0  # dB per output: ml-stable-diffusion's threshold
PSNR_CAP = 200.0  # reported when outputs are bit-identical

OutputFigures = dict[str, float]  # max_abs, mean_abs, psnr_db


def psnr(ref: Any, test: Any) -> float:
    """PSNR in dB with the reference's own peak-to-peak range as signal (ml-stable-diffusion's definition).

    NaN when either side holds a non-finite value, so no gate can pass it.
    """
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if not (np.isfinite(ref).all() and np.isfinite(test).all()):
        return math.nan
    mse = float(np.mean((ref - test) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(peak**2 / mse))


def batched_outputs(
    wrapper: Any, run: Callable[[Any], Mapping[str, np.ndarray]], samples: Iterable[Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """PyTorch's outputs and an artifact's (``run``) on every sample, each output concatenated over samples.

    One comparison over the whole batch judges an artifact on several held-out samples at once.
    """
    import torch

    ref: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    got: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    with torch.no_grad():
        for views in samples:
            for name, o in zip(OUTPUT_NAMES, wrapper(*views), strict=True):
                ref[name].append(o.numpy())
            for name, o in run(views).items():
                got[name].append(o)
    return {k: np.concatenate(v) for k, v in ref.items()}, {k: np.concatenate(v) for k, v in got.items()}


def compare(
    reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> dict[str, OutputFigures]:
    """Per output: max_abs, mean_abs, psnr_db (NaN where an output is not finite). Missing or mis-shaped
    outputs are an error."""
    report = {}
    for name in OUTPUT_NAMES:
        if name not in outputs:
            raise ParityError(f"the artifact has no output named {name!r} (it has {sorted(outputs)})")
        ref, out = np.asarray(reference[name], np.float32), np.asarray(outputs[name], np.float32)
        if ref.shape != out.shape:
            raise ParityError(f"output {name!r} has shape {out.shape}, PyTorch gives {ref.shape}")
        finite = bool(np.isfinite(ref).all() and np.isfinite(out).all())
        diff = np.abs(ref.astype(np.float64) - out)
        report[name] = {
            "max_abs": float(diff.max()) if finite else math.nan,
            "mean_abs": float(diff.mean()) if finite else math.nan,
            "psnr_db": psnr(ref, out),
        }
    return report


@dataclass
class Comparison:
    """One run of an artifact, or of its emulation, against PyTorch fp32, judged by one gate.

    ``gate`` names the figure (``max_abs`` must stay at or below ``limit``, ``psnr_db`` at or above it);
    ``gate=None`` records the figures without judging them.
    """

    label: str
    outputs: dict[str, OutputFigures]
    gate: str | None = None
    limit: float | None = None
    failure: str | None = None
    render: dict[str, float] | None = None  # render-space figures (export/render_parity.py)
    render_gate: RenderGate | None = None

    def __post_init__(self) -> None:
        if self.gate is not None and self.failure is None:
            self.failure = _judge(self.outputs, self.gate, float(self.limit or 0.0), self.label)
        if self.failure is None and self.render is not None and self.render_gate is not None:
            self.failure = self.render_gate.judge(self.render, self.label)

    @property
    def judged(self) -> bool:
        return self.gate is not None or (self.render is not None and self.render_gate is not None)


def comparison(
    label: str,
    reference: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    gate: str | None = None,
    limit: float | None = None,
    render_gate: RenderGate | None = None,
) -> Comparison:
    """Compare outputs with the reference as tensors and as rendered material; judge both gates given."""
    from pbrforge.export.render_parity import render_figures

    return Comparison(
        label,
        compare(reference, outputs),
        gate,
        limit,
        render=render_figures(reference, outputs),
        render_gate=render_gate,
    )


def _judge(outputs: Mapping[str, OutputFigures], gate: str, limit: float, label: str) -> str | None:
    for name, r in outputs.items():
        value = r[gate]
        ok = value <= limit if gate == "max_abs" else value >= limit  # False for NaN: a NaN never passes
        if not ok:
            if not math.isfinite(value):
                return f"{label} parity failed: output {name} holds NaN or inf values"
            if gate == "max_abs":
                return f"{label} parity failed: {name} max abs error {value:.3g} exceeds {limit:g}"
            return f"{label} parity failed: {name} PSNR {value:.1f} dB is below {limit:g} dB"
    return None


@dataclass
class ParityReport:
    """Every comparison made for one artifact, with the verdict; written as ``<artifact>.parity.json``."""

    backend: str
    comparisons: list[Comparison]
    reference: str = "pytorch fp32"
    info: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # failures that are not a gate (e.g. unmatched weights)

    @property
    def failure(self) -> str | None:
        return next((c.failure for c in self.comparisons if c.failure), None) or next(
            iter(self.problems), None
        )

    @property
    def passed(self) -> bool | None:
        """True when every gate passed, False when one failed, None when nothing was judged (no gate ran)."""
        if self.failure is not None:
            return False
        return True if any(c.judged for c in self.comparisons) else None

    @property
    def outputs(self) -> dict[str, OutputFigures]:
        """The figures that describe the artifact as shipped: those of the last comparison."""
        return self.comparisons[-1].outputs if self.comparisons else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reference": self.reference,
            "passed": self.passed,
            "failure": self.failure,
            "outputs": self.outputs,
            "render": self.comparisons[-1].render if self.comparisons else None,
            "comparisons": [asdict(c) for c in self.comparisons],
            "problems": self.problems,
            **self.info,
        }


def table(report: Mapping[str, OutputFigures], title: str) -> str:
    lines = [title, f"{'output':<10} {'max abs':>10} {'mean abs':>10} {'PSNR dB':>8}"]
    for name, r in report.items():
        lines.append(f"{name:<10} {r['max_abs']:10.2e} {r['mean_abs']:10.2e} {r['psnr_db']:8.1f}")
    return "\n".join(lines)


def tables(report: ParityReport) -> str:
    """One table per comparison, titled by what was compared, with its render figures below it."""
    from pbrforge.export.render_parity import render_table

    parts = []
    for c in report.comparisons:
        parts.append(table(c.outputs, f"{c.label} vs {report.reference}"))
        if c.render is not None:
            gate = c.render_gate
            judged = (
                f" (gates: psnr_db_min >= {gate.psnr_db_min}, normal_deg_p99 <= {gate.normal_deg_p99})"
                if gate is not None
                else " (not gated)"
            )
            parts.append(render_table(c.render, f"rendered under 11 lights{judged}"))
    return "\n".join(parts)
