"""What the benchmarks that train for a wall-clock budget share: a preset run so that only the budget ends it.

Imported by the scripts beside it (``python benchmarks/NAME.py`` puts this folder on the path).
"""

from __future__ import annotations

from typing import Any

from pbrforge.config import TrainConfig, load_config, parse_overrides

# epochs never end a budgeted run; the plateau schedule needs no epoch count; no grid PNGs
BUDGET_RUN: dict[str, Any] = {
    "training.epochs": 10_000,
    "optim.scheduler": "plateau",
    "optim.plateau_patience": 1,
    "training.grid_every": 0,
}


def budget_config(preset: str, overrides: dict[str, Any], extra: tuple[str, ...] = ()) -> TrainConfig:
    """``preset`` with ``BUDGET_RUN``, then ``overrides`` (sizes, curriculum), then ``--set`` strings."""
    return load_config(preset).override(BUDGET_RUN | overrides | parse_overrides(extra))
