"""Metrics that judge an exported graph's output against PyTorch's, by name, so a model spec can choose per output.

A gate is written ``NAME`` or ``NAME:LIMIT`` (``psnr:45``, ``max_abs:1e-3``). Each metric knows its default
limit and which way it passes; ``register_metric`` adds a user's own (a spec's factory file may call it).
Figures are in the output's own encoding: ``max_abs`` and ``psnr`` scale by the span of ``TensorSpec.encoding``,
so a 0-255 image and a 0-1 map are held to the same relative error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from pbrforge.errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    """One output judged: the figure, the limit it was held to, and whether it passed."""

    metric: str
    figure: float
    limit: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        return f"{self.metric} {self.figure:.4g} (limit {self.limit:g}){' ' + self.detail if self.detail else ''}"


# reference, candidate, span of the output's encoding, limit -> (figure, passed, detail)
MetricFn = Callable[[np.ndarray, np.ndarray, float, float], tuple[float, bool, str]]


@dataclass(frozen=True)
class Metric:
    fn: MetricFn
    default_limit: float
    about: str


def _max_abs(ref: np.ndarray, got: np.ndarray, span: float, limit: float) -> tuple[float, bool, str]:
    figure = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0)) / span
    return figure, figure <= limit, "of the encoded span"


def _psnr(ref: np.ndarray, got: np.ndarray, span: float, limit: float) -> tuple[float, bool, str]:
    mse = float(np.mean((got.astype(np.float64) - ref.astype(np.float64)) ** 2)) / span**2
    figure = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return figure, figure >= limit, "dB"


def _exact(ref: np.ndarray, got: np.ndarray, span: float, limit: float) -> tuple[float, bool, str]:
    """Integer outputs (or floats an entropy coder rounds): how many values differ once rounded."""
    mismatches = int(np.count_nonzero(np.rint(got) != np.rint(ref)))
    return float(mismatches), mismatches <= limit, f"of {ref.size} values differ"


METRICS: dict[str, Metric] = {
    "max_abs": Metric(_max_abs, 1e-4, "largest per-value difference, as a share of the encoded span"),
    "psnr": Metric(_psnr, 40.0, "PSNR in dB over the encoded span"),
    "exact": Metric(_exact, 0.0, "values that differ after rounding (integer symbols, coder indexes)"),
}


def register_metric(name: str, fn: MetricFn, default_limit: float, about: str) -> None:
    """Add a metric a spec can name in its gates; a name taken already is refused (one way to say each thing)."""
    if not name.isidentifier() or name in METRICS:
        raise ConfigError(f"metric name {name!r} is not an identifier or is taken ({', '.join(METRICS)})")
    METRICS[name] = Metric(fn, float(default_limit), about)


def parse_gate(gate: str) -> tuple[str, float]:
    """``NAME`` or ``NAME:LIMIT`` -> (name, limit); one sentence for anything else."""
    name, _, limit = gate.partition(":")
    if name not in METRICS:
        raise ConfigError(f"gate {gate!r} names no metric: one of {', '.join(sorted(METRICS))}")
    if not limit:
        return name, METRICS[name].default_limit
    try:
        value = float(limit)
    except ValueError:
        raise ConfigError(f"gate {gate!r}: the limit after ':' must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"gate {gate!r}: the limit must be a finite number >= 0")
    return name, value


def judge(gate: str, reference: np.ndarray, candidate: np.ndarray, span: float) -> Verdict:
    """Hold ``candidate`` to ``reference`` under ``gate``; a shape mismatch or a non-finite value fails outright."""
    name, limit = parse_gate(gate)
    if reference.shape != candidate.shape:
        return Verdict(name, math.nan, limit, False, f"shape {candidate.shape}, expected {reference.shape}")
    if np.issubdtype(candidate.dtype, np.floating) and not np.isfinite(candidate).all():
        return Verdict(name, math.nan, limit, False, "the artifact gave NaN or infinite values")
    figure, passed, detail = METRICS[name].fn(reference, candidate, span, limit)
    return Verdict(name, figure, limit, bool(passed), detail)
