"""Which held-out views calibrate an 8-bit or mixed-bit artifact and which judge it: one policy for every format.

An artifact is never judged on the views it was calibrated on when there are enough to split; when there are
too few, both sets are the same and the report says so (``calibrated_on_the_judged_samples``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pbrforge.errors import DataError

if TYPE_CHECKING:
    import torch

    from pbrforge.config import TrainConfig

CALIBRATION_VIEWS = 8  # samples whose views calibrate the activations
PARITY_VIEWS = 4  # other held-out samples a calibrated artifact is judged on
TRAINING_VIEWS = 32  # training samples quantization-aware fine-tuning cycles through

Inputs = tuple["torch.Tensor", ...]  # three (1, 3, H, W) float views of whole numbers in 0..255


@dataclass(frozen=True)
class HeldOut:
    """Held-out samples split into those that calibrate and those that judge."""

    calibration: list[Inputs]
    judged: list[Inputs]

    @property
    def overlapping(self) -> bool:
        """True when there were too few samples to split, so the judged ones also calibrated."""
        return self.calibration is self.judged


def split(samples: list[Inputs]) -> HeldOut:
    """The last ``PARITY_VIEWS`` samples judge and the rest calibrate; all do both when there are too few."""
    if len(samples) <= PARITY_VIEWS:
        return HeldOut(samples, samples)
    return HeldOut(samples[: len(samples) - PARITY_VIEWS], samples[-PARITY_VIEWS:])


def held_out_views(data_root: Path, cfg: TrainConfig, image_size: int) -> HeldOut:
    """The data set's first held-out samples' clean views at ``image_size``, as 0..255 float inputs, split."""
    samples = _views(data_root, cfg, image_size, "val", CALIBRATION_VIEWS + PARITY_VIEWS)
    if not samples:
        raise DataError(f"{data_root} has no held-out samples to calibrate with")
    return split(samples)


def training_views(data_root: Path, cfg: TrainConfig, image_size: int) -> list[Inputs]:
    """The first ``TRAINING_VIEWS`` training samples' clean views: what QAT tunes on, never what judges it."""
    samples = _views(data_root, cfg, image_size, "train", TRAINING_VIEWS)
    if not samples:
        raise DataError(f"{data_root} has no training samples for quantization-aware fine-tuning")
    return samples


def _views(data_root: Path, cfg: TrainConfig, image_size: int, split_name: str, count: int) -> list[Inputs]:
    from pbrforge.dataset import PBRDataset, view_paths
    from pbrforge.views import load_view

    data = PBRDataset.for_config(data_root, split_name, cfg)
    ids = sorted({sid for sid, _ in data.entries})[:count]
    return [
        tuple((load_view(p, image_size) * 255).round()[None] for p in view_paths(data_root, "clean", sid))
        for sid in ids
    ]
