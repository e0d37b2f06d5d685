"""One factory for every model family, and the checkpoint format they share.

A checkpoint is a ``torch.save`` of tensors and plain types only (loaded with ``weights_only=True``):
``{"format", "family", "config", "model", ...trainer state}``. ``config`` is ``TrainConfig.to_dict()``,
so any tool can rebuild the exact architecture without the code that trained it.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbrforge.config import TrainConfig
from pbrforge.errors import ConfigError, DataError

CHECKPOINT_FORMAT = "pbrforge-checkpoint-1"
FAMILIES = {
    "teacher": ("pbrforge.teacher.model", "TeacherConfig", "MultiViewPBRGenerator"),
    "student": ("pbrforge.student.model", "StudentConfig", "PBRStudent"),
}


def model_classes(family: str) -> tuple[type, type]:
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    module, cfg_name, model_name = FAMILIES[family]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, model_name)


def model_config(family: str, values: dict[str, Any]) -> Any:
    cfg_cls, _ = model_classes(family)
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {family} model keys {unknown}; known: {sorted(known)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cfg_cls(**fixed)


def build_model(cfg: TrainConfig) -> nn.Module:
    """Build the architecture a TrainConfig describes (weights random)."""
    _, model_cls = model_classes(cfg.family)
    return model_cls(model_config(cfg.family, cfg.model))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; one sentence if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise DataError(
            f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a pbrforge checkpoint (expected format {CHECKPOINT_FORMAT})")
    return ckpt


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that turns any key or shape mismatch into one ConfigError sentence."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape-mismatched tensors"
            f" (e.g. {(missing + unexpected + shapes)[0]})"
        )
        raise ConfigError(f"{source} holds weights of another architecture: {detail}")
    model.load_state_dict(state)


def shipped_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint ships: its EMA when it was trained with one, else the trained weights."""
    return ckpt.get("ema") or ckpt["model"]


def model_from_checkpoint(
    path: Path, family: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild the model a checkpoint describes, load its weights (the EMA if trained with one), in eval mode."""
    ckpt = load_checkpoint(path, map_location)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if family is not None and cfg.family != family:
        raise ConfigError(f"{path} is a {cfg.family} checkpoint, expected a {family}")
    model = build_model(cfg)
    load_state_strict(model, shipped_state(ckpt), str(path))
    return model.eval(), cfg, ckpt
