"""Typed training configuration shared by teacher and student, with a registry of named presets.

A preset is a small function returning a ``TrainConfig``, registered with ``@register_config``.
``load_config`` takes a preset name or a ``.py`` file defining ``get_config()``; unknown names and
keys are errors that list what exists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from pbrforge.errors import ConfigError
from pbrforge.families import families, get_family

# Sizes live in the model config alone (``model.image_size``, ``model.output_size``); configs saved before
# that still carry these two data keys, which are dropped on reading.
LEGACY_DATA_KEYS = ("image_size", "output_size")


# Ranges are part of the types: ``--set``, presets, .py configs and checkpoints are all checked against them.
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Weight = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


@dataclass
class DataConfig:
    curriculum: Annotated[int, Field(ge=0, le=2)] = 1  # 0 clean, 1 clean + dirty, 2 dirty
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2  # fraction of *materials* held out
    split_seed: Count = 0
    num_workers: Annotated[int, Field(ge=0, le=256)] = 0


@dataclass
class LossConfig:
    l1: dict[str, Weight] = field(
        default_factory=lambda: {"albedo": 1.0, "roughness": 1.0, "metallic": 1.0, "normal": 1.0}
    )
    ssim_albedo: Weight = 0.2  # weight of (1 - SSIM) on albedo
    normal_angular: Weight = 0.5  # weight of (1 - cos) between normals
    render: Weight = 0.5  # weight of the GGX rendering loss
    render_lights: Annotated[int, Field(ge=0, le=64)] = 3  # random shots per sample for the rendering loss
    # the capture the rendering loss draws its shots from (pbrforge.captures): what users will photograph
    render_capture: Literal["phone-flash", "phone-ambient", "tripod"] = "phone-flash"
    gan: Weight = 0.01  # generator adversarial weight (used only when training.gan is on)
    gan_loss: Literal["hinge", "bce"] = "hinge"
    distill_alpha: Fraction = 0.0  # student: weight of the teacher's maps vs ground truth


@dataclass
class OptimConfig:
    lr: Annotated[float, Field(gt=0, le=10)] = 2e-4
    d_lr: Annotated[float, Field(gt=0, le=10)] = 2e-4
    weight_decay: Weight = 1e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    grad_clip: Weight = 1.0  # max grad norm, 0 = off
    scheduler: Literal["cosine", "step", "plateau", "none"] = "cosine"
    warmup_epochs: Weight = 0.0
    step_epochs: Positive = 10  # step scheduler period
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5  # step / plateau factor
    plateau_patience: Count = 3
    min_lr_ratio: Fraction = 0.01


@dataclass
class TrainingConfig:
    epochs: Annotated[int, Field(ge=1, le=1_000_000)] = 50
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    seed: Count = 0
    amp: bool = True  # used where the device supports it (CUDA)
    gan: bool = True
    gan_start_epoch: Count = 5
    d_steps_per_g_step: Positive = 1
    disc_layers: Annotated[int, Field(ge=1, le=8)] = 3
    disc_ndf: Annotated[int, Field(ge=1, le=1024)] = 64
    checkpoint_every: Count = 0  # also keep epoch_N checkpoints every N epochs (0 = off)
    grid_every: Count = 1  # comparison grid PNG every N epochs
    max_steps_per_epoch: Count = 0  # 0 = whole epoch; small values for tests and demos
    # > 0: also keep an EMA of the weights (timm ModelEmaV3, warm-up on); it is what is validated and shipped
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0


@dataclass
class TrainConfig:
    family: str  # "teacher" or "student": which model registry builds ``model``
    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        _check_keys(d, cls, "config")
        kwargs: dict[str, Any] = {
            "family": d["family"],
            "model": dict(d["model"]),
            "name": d.get("name", "custom"),
        }
        d = dict(d)
        if isinstance(d.get("data"), dict):
            d["data"] = {k: v for k, v in d["data"].items() if k not in LEGACY_DATA_KEYS}
        for key, sub in (
            ("data", DataConfig),
            ("loss", LossConfig),
            ("optim", OptimConfig),
            ("training", TrainingConfig),
        ):
            if key in d:
                _check_keys(d[key], sub, f"config.{key}")
                values = dict(d[key])
                if key == "optim" and "betas" in values:
                    values["betas"] = tuple(values["betas"])
                hints = typing.get_type_hints(sub, include_extras=True)
                kwargs[key] = sub(**{k: typed_value(f"{key}.{k}", v, hints[k]) for k, v in values.items()})
        if not isinstance(kwargs["family"], str) or not isinstance(kwargs["name"], str):
            raise ConfigError("config.family and config.name must be strings")
        return cls(**kwargs)

    def override(self, dotted: dict[str, Any]) -> TrainConfig:
        """Return a copy with ``{"training.epochs": 3, "model.vit_depth": 1}`` applied (keys and types checked)."""
        d = self.to_dict()
        sections = {"data": DataConfig, "loss": LossConfig, "optim": OptimConfig, "training": TrainingConfig}
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            cls = get_family(self.family).config_cls if section == "model" else sections.get(section)
            hints = typing.get_type_hints(cls, include_extras=True) if cls is not None else {}
            if name not in hints:
                known = ", ".join(f"{section}.{k}" for k in sorted(hints)) if hints else ", ".join(sorted(d))
                raise ConfigError(f"unknown config key {key!r}; known: {known}")
            d[section][name] = typed_value(key, value, hints[name])
        return TrainConfig.from_dict(d)


def typed_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type, or one sentence: no silent str/float casts, no NaN or inf."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    try:
        out = TypeAdapter(hint, config=ConfigDict(allow_inf_nan=False)).validate_python(value, strict=True)
    except ValidationError:
        try:  # JSON has no tuples: a list is accepted where the field is a tuple
            if not isinstance(value, list):
                raise
            out = TypeAdapter(hint, config=ConfigDict(allow_inf_nan=False)).validate_python(
                tuple(value), strict=True
            )
        except ValidationError as e:
            raise ConfigError(f"{key}={value!r} is invalid: {e.errors()[0]['msg']}") from e
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    return out


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set section.key=value`` items -> {key: value}; values are JSON (``3``, ``1e-3``, ``true``, ``[1, 2]``)
    and anything that is not JSON is a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r} is not of the form section.key=value")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _check_keys(d: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in {where}; known: {sorted(known)}")


CONFIGS: dict[str, Callable[[], TrainConfig]] = {}


def register_config(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    """Register a preset under its function name."""
    CONFIGS[fn.__name__] = fn
    return fn


def list_configs() -> list[str]:
    families()  # each family's module registers its presets as it loads
    return sorted(CONFIGS)


def load_config(name_or_path: str, family: str | None = None) -> TrainConfig:
    """A preset by name, or a ``.py`` file whose ``get_config()`` returns a TrainConfig.

    With ``family``, a config of another family is an error naming the command that trains it.
    """
    cfg = _load_config(name_or_path)
    if family is not None and cfg.family != family:
        raise ConfigError(
            f"config {name_or_path!r} is a {cfg.family} config; "
            f"train it with `pbrforge {get_family(cfg.family).train_command}`"
        )
    return cfg


def _load_config(name_or_path: str) -> TrainConfig:
    if name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"pbrforge_user_config_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"config file {path} cannot be loaded as Python")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise ConfigError(f"config file {path} has a syntax error on line {e.lineno}: {e.msg}") from e
        except Exception as e:
            raise ConfigError(f"config file {path} failed to load ({type(e).__name__}: {e})") from e
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{path} defines no get_config()")
        try:
            cfg = module.get_config()
        except Exception as e:
            raise ConfigError(f"{path}: get_config() failed ({type(e).__name__}: {e})") from e
        if not isinstance(cfg, TrainConfig):
            raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, not TrainConfig")
        return TrainConfig.from_dict(cfg.to_dict())  # validates keys
    names = list_configs()
    if name_or_path not in CONFIGS:
        raise ConfigError(f"unknown config preset {name_or_path!r}; known: {', '.join(names)}")
    cfg = CONFIGS[name_or_path]()
    cfg.name = name_or_path
    return cfg
