"""One factory for every model family, and the checkpoint format they share.

A checkpoint is a ``torch.save`` of tensors and plain types only (loaded with ``weights_only=True``):
``{"format", "family", "config", "model", ...trainer state}``. ``config`` is ``TrainConfig.to_dict()``,
so any tool can rebuild the exact architecture without the code that trained it.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbrforge.config import TrainConfig, typed_value
from pbrforge.errors import ConfigError, DataError
from pbrforge.families import get_family

CHECKPOINT_FORMAT = "pbrforge-checkpoint-1"
PRETRAINED_FORMAT = "pbrforge-pretrained-1"
# the model `pbrforge run` uses when none is given: a student trained on phone captures (make pretrained)
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "student_phone.safetensors"


def model_config(cfg: TrainConfig) -> Any:
    """The typed model config of a TrainConfig: the one place a model's sizes are read from.

    Its ``image_size`` is the side of each input view and ``output_size`` the side of the maps.
    """
    cfg_cls = get_family(cfg.family).config_cls
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(cfg.model) - known)
    if unknown:
        raise ConfigError(f"unknown {cfg.family} model keys {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cfg_cls, include_extras=True)
    fixed = {k: typed_value(f"model.{k}", v, hints[k]) for k, v in cfg.model.items()}
    try:
        return cfg_cls(**fixed)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {cfg.family} model config ({e})") from e


def build_model(cfg: TrainConfig) -> nn.Module:
    """Build the architecture a TrainConfig describes (weights random)."""
    try:
        return get_family(cfg.family).model_cls(model_config(cfg))
    except (ValueError, KeyError) as e:  # the model's own checks of its config
        raise ConfigError(f"cannot build the {cfg.family} model: {e}") from e


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects and check its schema and weights.

    Every failure is our one sentence: a foreign pickle, a 0-byte or truncated file, a missing key, a weight
    that is not a tensor, or one that holds NaN or inf.
    """
    from pbrforge.schemas import CheckpointHead, check

    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise DataError(f"checkpoint {path} is an empty file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (
        Exception
    ) as e:  # torch raises many types, and its advice (to turn weights-only loading off) is not ours
        raise DataError(
            f"{path} is not a pbrforge checkpoint: it is not a torch.save file of tensors and plain data "
            f"({type(e).__name__})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a pbrforge checkpoint (expected format {CHECKPOINT_FORMAT})")
    check(CheckpointHead, ckpt, f"checkpoint {path}")
    for part in ("model", "ema"):
        for name, value in ckpt.get(part, {}).items():
            if not isinstance(value, torch.Tensor):
                raise DataError(f"checkpoint {path}: {part}.{name} is a {type(value).__name__}, not a tensor")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise DataError(
                    f"checkpoint {path}: weight {part}.{name} holds NaN or inf, so the model is unusable"
                )
    return ckpt


def config_of(ckpt: dict[str, Any], path: Path) -> TrainConfig:
    """The TrainConfig a checkpoint records, or one sentence saying what in it is wrong."""
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except ConfigError as e:
        raise DataError(f"checkpoint {path} records a config this pbrforge cannot read: {e}") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"checkpoint {path} records a malformed config ({type(e).__name__}: {e})") from e


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


def save_pretrained(checkpoint: Path, out: Path) -> int:
    """Write a checkpoint's shipped weights as float16 safetensors with its config inside; returns bytes.

    What ships in the package: no trainer state, no pickle, half the bytes of float32.
    """
    import json

    from safetensors.torch import save_file

    from pbrforge.fileio import atomic_path

    ckpt = load_checkpoint(checkpoint)
    cfg = config_of(ckpt, checkpoint)
    state = {k: v.half() if v.is_floating_point() else v for k, v in shipped_state(ckpt).items()}
    meta = {"format": PRETRAINED_FORMAT, "config": json.dumps(cfg.to_dict())}
    with atomic_path(Path(out)) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    return Path(out).stat().st_size


def load_pretrained(path: Path) -> dict[str, Any]:
    """A pretrained safetensors file as a checkpoint dict (float32 weights), refused in one sentence if foreign."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"pretrained model {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from e
    if meta.get("format") != PRETRAINED_FORMAT:
        raise DataError(f"{path} is not a pbrforge pretrained model (expected format {PRETRAINED_FORMAT})")
    try:
        config = json.loads(meta["config"])
    except (KeyError, ValueError) as e:
        raise DataError(f"{path} records no readable config") from e
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in weights.values()):
        raise DataError(f"{path} holds NaN or inf weights, so the model is unusable")
    family = config.get("family") if isinstance(config, dict) else None
    return {"format": PRETRAINED_FORMAT, "family": family, "config": config, "model": weights}


def model_from_checkpoint(
    path: Path, family: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild the model a checkpoint describes, load its weights (the EMA if trained with one), in eval mode.

    A ``.safetensors`` file written by ``save_pretrained`` (the shipped default model) loads the same way.
    """
    if Path(path).suffix.lower() == ".safetensors":
        ckpt = load_pretrained(path)
    else:
        ckpt = load_checkpoint(path, map_location)
    cfg = config_of(ckpt, path)
    if family is not None and cfg.family != family:
        raise ConfigError(f"{path} is a {cfg.family} checkpoint, expected a {family}")
    model = build_model(cfg)
    load_state_strict(model, shipped_state(ckpt), str(path))
    return model.eval(), cfg, ckpt
