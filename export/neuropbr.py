"""NeuroPBR's own student, rebuilt so a checkpoint its ``student/train.py`` wrote loads as it is and exports
(issue #26). It lives with the exporter: it is an importer of another project's model, not one pbrforge trains.

NeuroPBR (github.com/josephHelfenbein/NeuroPBR) saves ``{"student_state_dict": ..., "config": TrainConfig, ...}``
with ``torch.save``. Its ``StudentGenerator`` is a torchvision MobileNetV3 encoder shared by the three views, a
1x1 projection to the transformer width, timm ViT blocks over the tokens of all views (or a 1x1 conv when the
transformer is off), a UNet decoder with a PixelShuffle SR head, and one 1x1 head per map. The modules below
keep its attribute names, so its state dict loads strictly, key for key.

The checkpoint is read with ``weights_only=True``: its config is a pickled dataclass of NeuroPBR's
``train_config`` module, which is not imported (nor executed); each of those classes is let through as an inert
record of its fields. Any other object in the file is refused in one sentence.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pbrforge.contract import NUM_VIEWS
from pbrforge.errors import ConfigError, DataError

CONFIG_MODULE = "train_config"  # NeuroPBR's training scripts import their config module under this name
CONFIG_CLASSES = (
    "TrainConfig",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimizerConfig",
    "TrainingConfig",
    "TransformConfig",
)
SKIP_INDICES = {"mobilenet_v3_large": (1, 3, 6, 12), "mobilenet_v3_small": (0, 1, 3, 8)}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
MAX_IMAGE_SIZE = 2048  # the largest input NeuroPBR trains at (configs/mobilenetv3_2048.py)
MAP_ORDER = ("albedo", "roughness", "metallic", "normal")  # its heads, in the order of pbrforge's contract


class Record:
    """One of NeuroPBR's config dataclasses as read from a checkpoint: its fields, and nothing it could run."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class NeuroPBRConfig:
    """What rebuilding a NeuroPBR student needs from its ``TrainConfig``."""

    backbone: str = "mobilenet_v3_large"
    in_channels: int = 3
    stride: int = 2
    use_transformer: bool = True
    dim: int = 256
    heads: int = 4
    depth: int = 2
    mlp_ratio: float = 2.0
    sr_scale: int = 2
    output_channels: tuple[int, ...] = (3, 1, 1, 3)
    image_size: int = 512
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.backbone not in SKIP_INDICES:
            raise ConfigError(
                f"encoder_backbone {self.backbone!r} is not a NeuroPBR student's; known: {', '.join(SKIP_INDICES)}"
            )
        if self.in_channels != 3 or self.stride not in (1, 2) or self.sr_scale not in (0, 2, 4):
            raise ConfigError(
                "NeuroPBR's student takes RGB views (encoder_in_channels 3), encoder_stride 1 or 2 and "
                f"decoder_sr_scale 0, 2 or 4; this config has {self.in_channels}, {self.stride} and {self.sr_scale}"
            )
        if self.output_channels != (3, 1, 1, 3):
            raise ConfigError(
                f"output_channels {self.output_channels} are not albedo 3, roughness 1, metallic 1, normal 3"
            )
        if self.dim < 1 or self.heads < 1 or self.depth < 0 or self.dim % self.heads:
            raise ConfigError(
                f"transformer_dim {self.dim} must be a positive multiple of transformer_num_heads {self.heads}, "
                f"and transformer_depth {self.depth} at least 0"
            )
        if not (math.isfinite(self.mlp_ratio) and 0 < self.mlp_ratio <= 64):
            raise ConfigError(
                f"transformer_mlp_ratio {self.mlp_ratio} must be a number above 0 and at most 64"
            )
        if self.image_size % 32 or not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image_size {self.image_size} must be a multiple of 32 between 32 and {MAX_IMAGE_SIZE}"
            )
        if (
            len(self.mean) != 3
            or len(self.std) != 3
            or not all(math.isfinite(v) for v in (*self.mean, *self.std))
            or min(self.std) <= 0
        ):
            raise ConfigError(
                f"transform mean {self.mean} and std {self.std} must be three finite numbers each, std above 0"
            )


class Encoder(nn.Module):
    """NeuroPBR's ``UNetMobileNetV3Encoder`` (``skip=True``): MobileNetV3 features and four skips."""

    def __init__(self, cfg: NeuroPBRConfig):
        super().__init__()
        import torchvision

        self.features = getattr(torchvision.models, cfg.backbone)(weights=None).features
        if cfg.stride == 1:  # its first conv at stride 1, for full-resolution features
            first = self.features[0][0]
            self.features[0][0] = nn.Conv2d(3, first.out_channels, 3, stride=1, padding=1, bias=False)
        self.skip_indices = SKIP_INDICES[cfg.backbone]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.skip_indices:
                skips.append(x)
        return x, skips


class Fusion(nn.Module):
    """NeuroPBR's ``ViTCrossViewFusion``: ViT blocks over the tokens of all views, then a linear merge per token."""

    def __init__(self, cfg: NeuroPBRConfig):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.blocks = nn.ModuleList(
            Block(dim=cfg.dim, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
            for _ in range(cfg.depth)
        )
        self.fusion = nn.Linear(cfg.dim * NUM_VIEWS, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, latents: list[torch.Tensor]) -> torch.Tensor:
        b, c, h, w = latents[0].shape
        x = torch.cat([t.flatten(2).transpose(1, 2) for t in latents], dim=1)  # (B, V*HW, C)
        for block in self.blocks:
            x = block(x)
        x = x.reshape(b, NUM_VIEWS, h * w, c).permute(0, 2, 1, 3).reshape(b, h * w, NUM_VIEWS * c)
        return self.norm(self.fusion(x)).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.upsample = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn_relu(cin, cout)
        )
        self.conv = ConvBlock(cout + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        if x.shape[2:] != skip.shape[2:]:
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


def _sr_head(scale: int) -> nn.Module:
    """Its SR head, layer for layer (the indices are state-dict keys)."""
    if scale == 2:
        return nn.Sequential(
            *_conv_bn_relu(64, 64),
            *_conv_bn_relu(64, 256),
            nn.PixelShuffle(2),
            *_conv_bn_relu(64, 32),
            nn.Conv2d(32, 64, 1, bias=False),
        )
    if scale == 4:

        def twice() -> list[nn.Module]:
            return [*_conv_bn_relu(64, 128), *_conv_bn_relu(128, 256), nn.PixelShuffle(2)]

        return nn.Sequential(*twice(), *twice(), *_conv_bn_relu(64, 64))
    return nn.Identity()


class DecoderHeads(nn.Module):
    """NeuroPBR's ``UNetDecoderHeads``: UNet steps, a 1x1 to 64 channels if needed, the SR head, four 1x1 heads."""

    def __init__(self, cin: int, skip_channels: list[int], sr_scale: int, out_channels: tuple[int, ...]):
        super().__init__()
        self.decoders = nn.ModuleList()
        for cskip in skip_channels:
            cout = cskip if cskip <= 64 else cskip // 2
            self.decoders.append(DecoderBlock(cin, cskip, cout))
            cin = cout
        self.steps = len(skip_channels)
        if cin != 64:
            self.decoders.append(nn.Conv2d(cin, 64, 1))
        self.sr_head = _sr_head(sr_scale)
        self.heads = nn.ModuleList(nn.Conv2d(64, c, 1) for c in out_channels)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        for block, skip in zip(self.decoders, skips[::-1], strict=False):
            x = block(x, skip)
        if len(self.decoders) > self.steps:
            x = self.decoders[-1](x)
        x = self.sr_head(x)
        return [head(x) for head in self.heads]


class NeuroPBRStudent(nn.Module):
    """NeuroPBR's ``StudentGenerator``: (B, 3, 3, H, W) normalised views -> its four maps by name."""

    def __init__(self, cfg: NeuroPBRConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        with torch.no_grad():  # its channel counts, found as NeuroPBR finds them: by running the encoder
            latent, skips = self.encoder.eval()(torch.zeros(1, 3, 64, 64))
        self.latent_proj = (
            nn.Identity()
            if latent.shape[1] == cfg.dim
            else nn.Conv2d(latent.shape[1], cfg.dim, 1, bias=False)
        )
        self.fusion: nn.Module = (
            Fusion(cfg) if cfg.use_transformer else nn.Conv2d(cfg.dim * NUM_VIEWS, cfg.dim, 1)
        )
        self.decoder = DecoderHeads(
            cfg.dim, [s.shape[1] for s in reversed(skips)], cfg.sr_scale, cfg.output_channels
        )

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        latents, summed = [], None
        for i in range(NUM_VIEWS):
            latent, skips = self.encoder(views[:, i])
            latents.append(self.latent_proj(latent))
            summed = skips if summed is None else [a + s for a, s in zip(summed, skips, strict=True)]
        skips = [s / NUM_VIEWS for s in summed or []]
        fused = self.fusion(latents) if self.cfg.use_transformer else self.fusion(torch.cat(latents, dim=1))
        albedo, roughness, metallic, normal = self.decoder(fused, skips)
        return {
            "albedo": torch.sigmoid(albedo),
            "roughness": torch.sigmoid(roughness),
            "metallic": torch.sigmoid(metallic),
            "normal": F.normalize(normal, p=2, dim=1),
        }


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], NeuroPBRConfig]:
    """The student's state dict and config from a NeuroPBR checkpoint, refused in one sentence if it is not one."""
    if not path.is_file():
        raise DataError(f"NeuroPBR checkpoint {path} does not exist or is not a file")
    names = [f"{CONFIG_MODULE}.{c}" for c in CONFIG_CLASSES]
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path} is not a file torch.save wrote (a zip archive), so not a NeuroPBR checkpoint"
        )
    try:
        with torch.serialization.safe_globals([(Record, n) for n in names]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file it cannot read safely
        foreign = _foreign_globals(path, names)
        why = (
            f"it holds objects other than tensors and NeuroPBR's config ({', '.join(foreign)})"
            if foreign
            else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else 'unreadable'}"
        )
        raise DataError(f"{path} cannot be read as a NeuroPBR checkpoint: {why}") from e
    if isinstance(ckpt, dict) and "generator_state_dict" in ckpt and "student_state_dict" not in ckpt:
        raise DataError(
            f"{path} is a NeuroPBR teacher checkpoint (generator_state_dict); pbrforge imports its students"
        )
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("student_state_dict"), dict):
        raise DataError(
            f"{path} is not a NeuroPBR student checkpoint: it has no 'student_state_dict' "
            "(NeuroPBR's student/train.py writes one)"
        )
    state = ckpt["student_state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: 'student_state_dict' holds values that are not tensors")
    if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in state.values()):
        raise DataError(f"{path} holds NaN or inf weights, so the model is unusable")
    return state, config_from(ckpt.get("config"), path)


def _foreign_globals(path: Path, allowed: list[str]) -> list[str]:
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # not a torch.save archive at all: the caller's sentence says it cannot be read
        return []


def config_from(config: Any, path: Path) -> NeuroPBRConfig:
    """The fields a rebuild needs, from the checkpoint's ``TrainConfig`` record."""
    if not isinstance(config, Record):
        raise DataError(
            f"{path} holds no NeuroPBR TrainConfig under 'config', so its architecture is unknown "
            "(NeuroPBR's student/train.py saves one)"
        )
    model, data = (_fields(config, k, path) for k in ("model", "data"))
    # a config saved before NeuroPBR had a transform section: its inference script falls back to ImageNet's
    transform = _fields(config, "transform", path) if hasattr(config, "transform") else IMAGENET
    if model.get("encoder_type") != "mobilenetv3":
        raise ConfigError(
            f"{path} is a NeuroPBR model with a {model.get('encoder_type')!r} encoder; pbrforge imports "
            "NeuroPBR's MobileNetV3 student (encoder_type 'mobilenetv3')"
        )
    try:
        size = data["image_size"]
        sides = tuple(size) if isinstance(size, tuple | list) else (size, size)
        if len(sides) != 2 or sides[0] != sides[1] or not all(isinstance(v, int) for v in sides):
            raise ConfigError(f"{path}: image_size {size!r} is not one whole number of pixels per side")
        side = int(sides[0])
        return NeuroPBRConfig(
            backbone=str(model["encoder_backbone"]),
            in_channels=int(model["encoder_in_channels"]),
            stride=int(model["encoder_stride"]),
            use_transformer=bool(model["use_transformer"]),
            dim=_whole(model["transformer_dim"]),
            heads=_whole(model["transformer_num_heads"]),
            depth=_whole(model["transformer_depth"]),
            mlp_ratio=float(model["transformer_mlp_ratio"]),
            sr_scale=int(model["decoder_sr_scale"]),
            output_channels=tuple(int(c) for c in model["output_channels"]),
            image_size=side,
            mean=tuple(float(v) for v in transform["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in transform["std"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(
            f"{path}: its NeuroPBR config lacks or garbles a field the rebuild needs ({e})"
        ) from e


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    return value


def _fields(config: Record, name: str, path: Path) -> Mapping[str, Any]:
    part = getattr(config, name, None)
    if not isinstance(part, Record):
        raise DataError(f"{path}: its NeuroPBR config has no {name!r} section")
    return vars(part)


def load_student(path: Path) -> NeuroPBRStudent:
    """A NeuroPBR student checkpoint as a model in eval mode, its weights loaded strictly."""
    state, cfg = read_checkpoint(path)
    model = NeuroPBRStudent(cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    cast = [k for k in own if k in state and own[k].is_floating_point() and not state[k].is_floating_point()]
    if missing or unexpected or wrong or cast:
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        elif wrong:
            detail = f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, not {tuple(own[wrong[0]].shape)}"
        else:
            detail = f"{cast[0]} holds {state[cast[0]].dtype} values where weights are floats"
        raise ConfigError(f"{path} holds weights of another architecture than its config describes: {detail}")
    model.load_state_dict(state)
    return model.eval()
