"""Command-line pieces every stage script shares: the examples epilog, the training options and how they
override a config. Imports click only, so a command's ``--help`` never waits for torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pbrforge.config import TrainConfig

DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda", "mps"])
# Largest view or map side a command accepts: 8192 px views of a 3-view batch already need ~2.4 GB as float32.
MAX_SIDE = 8192


def examples_epilog(doc: str | None) -> str:
    """The "Examples:" block of a module docstring as a click epilog, kept verbatim (``\\b``)."""
    doc = doc or ""
    marker = "Examples:" if "Examples:" in doc else "Example:"
    if marker not in doc:
        return ""
    lines = [ln.strip() for ln in doc.split(marker, 1)[1].strip().splitlines()]
    joined: list[str] = []
    for ln in lines:  # undo backslash continuations so each example is one line
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + ln
        elif ln:
            joined.append(ln)
    return "\b\nExamples:\n" + "\n".join(f"  {ln}" for ln in joined)


def train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options teacher and student training share."""
    options = [
        click.option(
            "--output-dir",
            type=click.Path(path_type=Path, file_okay=False),
            required=True,
            help="Logs, metrics.jsonl, grids (and checkpoints unless --checkpoint-dir).",
        ),
        click.option(
            "--checkpoint-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Where latest.pt / best.pt go [default: OUTPUT_DIR/checkpoints].",
        ),
        click.option(
            "--resume",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Continue from a checkpoint.",
        ),
        click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=None),
        click.option("--epochs", type=click.IntRange(1, 1_000_000), default=None),
        click.option(
            "--max-steps-per-epoch",
            type=click.IntRange(0, None),
            default=None,
            help="Cap steps per epoch (quick runs); 0 means the whole epoch.",
        ),
        click.option(
            "--set",
            "extra",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any config field, e.g. --set model.vit_depth=1 --set optim.lr=1e-3 (values are JSON).",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def apply_train_options(
    cfg: TrainConfig,
    batch_size: int | None,
    epochs: int | None,
    curriculum: int | None,
    max_steps: int | None,
    extra: tuple[str, ...] = (),
) -> TrainConfig:
    """Command-line flags win over the preset; ``--set section.key=value`` reaches any other field."""
    from pbrforge.config import parse_overrides

    overrides: dict[str, Any] = {}
    if batch_size is not None:
        overrides["training.batch_size"] = batch_size
    if epochs is not None:
        overrides["training.epochs"] = epochs
    if curriculum is not None:
        overrides["data.curriculum"] = curriculum
    if max_steps is not None:
        overrides["training.max_steps_per_epoch"] = max_steps
    return cfg.override(overrides | parse_overrides(extra))
