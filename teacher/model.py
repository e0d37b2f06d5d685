"""The teacher: a shared encoder over three views, ViT fusion across views, a UNet decoder to PBR maps.

Views are a set, not a sequence: tokens carry a spatial position embedding but no view embedding and
every cross-view reduction is a mean/max, so permuting the views leaves the output unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated

import timm
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pbrforge.contract import NUM_CHANNELS, NUM_VIEWS, activate
from pbrforge.layers import SkipFusion, conv_bn_act, feature_channels
from pbrforge.options import MAX_SIDE

if TYPE_CHECKING:
    from pbrforge.config import TrainConfig

TIMM_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class TeacherConfig:
    encoder: str = "resnet50"  # a timm resnet (features_only, never pretrained) or "unet"
    image_size: Annotated[int, Field(ge=32, le=MAX_SIDE)] = 256
    output_size: Annotated[int, Field(ge=8, le=MAX_SIDE)] = 256
    vit_dim: int = 256
    vit_heads: int = 8
    vit_depth: int = 4
    vit_mlp_ratio: float = 4.0
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    unet_channels: tuple[int, ...] = (32, 64, 128, 256, 512)  # widths of the plain conv encoder
    dropout: float = 0.0


RELU = partial(nn.ReLU, inplace=True)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return conv_bn_act(cin, cout, k, stride, act=RELU)


class PlainEncoder(nn.Module):
    """A UNet-style conv encoder with five stride-2 stages (the same strides as the timm resnets)."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        stages, cin = [], 3
        for w in widths:
            stages.append(nn.Sequential(conv_bn_relu(cin, w, stride=2), conv_bn_relu(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def build_encoder(name: str, unet_channels: tuple[int, ...]) -> tuple[nn.Module, list[int]]:
    if name == "unet":
        plain = PlainEncoder(unet_channels)
        return plain, plain.channels
    if name not in TIMM_ENCODERS:
        raise ValueError(f"unknown teacher encoder {name!r}; known: {', '.join(TIMM_ENCODERS + ('unet',))}")
    enc = timm.create_model(name, features_only=True, pretrained=False, out_indices=(0, 1, 2, 3, 4))
    return enc, feature_channels(enc)


class CrossViewFusion(nn.Module):
    """Self-attention over the bottleneck tokens of all views, then a mean over views."""

    def __init__(
        self, cin: int, dim: int, heads: int, depth: int, mlp_ratio: float, grid: int, dropout: float
    ):
        super().__init__()
        self.proj_in = nn.Conv2d(cin, dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, int(dim * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        x = self.proj_in(x)  # (B*V, D, h, w)
        bv, d, h, w = x.shape
        pos = self.pos if self.pos.shape[-2:] == (h, w) else F.interpolate(self.pos, (h, w), mode="bilinear")
        x = x + pos
        tokens = (
            x.reshape(bv // views, views, d, h * w).permute(0, 1, 3, 2).reshape(bv // views, views * h * w, d)
        )
        tokens = self.norm(self.blocks(tokens))  # (B, V*h*w, D)
        tokens = tokens.reshape(bv // views, views, h * w, d).mean(1)  # (B, h*w, D), order-free
        return tokens.transpose(1, 2).reshape(bv // views, d, h, w)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin + cskip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.body(torch.cat([x, skip], dim=1))


class MultiViewPBRGenerator(nn.Module):
    """(B, 3, 3, H, W) normalised views -> (B, 8, S, S) maps in contract ranges."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        if cfg.image_size % 32:
            raise ValueError(f"teacher image_size must be a multiple of 32, got {cfg.image_size}")
        self.cfg = cfg
        self.encoder, chans = build_encoder(cfg.encoder, cfg.unet_channels)
        self.fusion = CrossViewFusion(
            chans[-1],
            cfg.vit_dim,
            cfg.vit_heads,
            cfg.vit_depth,
            cfg.vit_mlp_ratio,
            cfg.image_size // 32,
            cfg.dropout,
        )
        self.skip_fusion = nn.ModuleList(SkipFusion(c, act=RELU) for c in chans[:-1])
        dec = list(cfg.decoder_channels)
        if len(dec) != 4:
            raise ValueError("decoder_channels needs 4 widths (strides 16, 8, 4, 2)")
        ins = [cfg.vit_dim] + dec[:-1]
        self.up = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, chans[-2::-1], dec, strict=True))
        self.final = nn.Sequential(
            conv_bn_relu(dec[-1], dec[-1]), nn.Conv2d(dec[-1], NUM_CHANNELS, 3, padding=1)
        )

    def forward_features(self, flat: torch.Tensor, views: int = NUM_VIEWS) -> torch.Tensor:
        feats = self.encoder(flat)  # 5 levels of (B*V, C_i, H_i, W_i)
        x = self.fusion(feats[-1], views)  # (B, D, H/32, W/32)
        skips = [
            f(x_, views) for f, x_ in zip(self.skip_fusion, feats[:-1], strict=True)
        ]  # (B, C_i, H_i, W_i)
        for up, skip in zip(self.up, skips[::-1], strict=True):
            x = up(x, skip)
        return x  # (B, dec[-1], H/2, W/2)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            x, size=(self.cfg.output_size, self.cfg.output_size), mode="bilinear", align_corners=False
        )
        return activate(self.final(x))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.ndim != 5 or views.shape[1] != NUM_VIEWS or views.shape[2] != 3:
            raise ValueError(f"expected views of shape (B, {NUM_VIEWS}, 3, H, W), got {tuple(views.shape)}")
        b, v, c, h, w = views.shape  # (B, V, 3, H, W)
        return self.forward_flat(views.reshape(b * v, c, h, w), v)

    def forward_flat(self, flat: torch.Tensor, views: int = NUM_VIEWS, use_sr: bool = True) -> torch.Tensor:
        """(B*V, 3, H, W) views stacked along the batch (the exporters' entry point); the teacher has no SR head,
        so ``use_sr`` only keeps the signature shared with the student."""
        return self.forward_head(self.forward_features(flat, views))


class PatchDiscriminator(nn.Module):
    """PatchGAN over the 8 maps conditioned on the (resized) views: (B, 8 + 9, S, S) -> patch logits."""

    def __init__(self, n_layers: int = 3, ndf: int = 64, views: int = NUM_VIEWS):
        super().__init__()
        cin = NUM_CHANNELS + 3 * views
        layers: list[nn.Module] = [nn.Conv2d(cin, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, maps: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        b, v, c, h, w = views.shape
        cond = F.interpolate(
            views.reshape(b, v * c, h, w), size=maps.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.net(torch.cat([maps, cond], dim=1))


def discriminator_factory(cfg: TrainConfig) -> Callable[[], PatchDiscriminator] | None:
    """What builds the critic a teacher config asks for (``training.gan``); None without a GAN.

    The trainer calls it right after seeding and building the generator, so both start from the seed."""
    t = cfg.training
    return partial(PatchDiscriminator, t.disc_layers, t.disc_ndf) if t.gan else None
