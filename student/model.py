"""The student: a shared MobileNetV3 encoder, a ViT or PLK fusion bottleneck, a UNet decoder and a learned SR head.

Written for the Apple Neural Engine (ml-ane-transformers' advice): tensors stay 4-D (B, C, 1, S) in the
ViT, 1x1 convs replace Linear layers, attention is split per head with einsum, LayerNorm runs over
channels, and no kernel exceeds 13x13. Views are fused with order-free reductions (mean, max), so the
output does not depend on the order of the three views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Literal, get_args

import timm
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pbrforge.contract import NUM_CHANNELS, NUM_VIEWS, activate
from pbrforge.deploy import ANE_MAX_KERNEL
from pbrforge.layers import SkipFusion, conv_bn_act, feature_channels, view_mean, view_mean_max
from pbrforge.options import MAX_SIDE


@dataclass
class StudentConfig:
    encoder: str = "mobilenetv3_large_100"
    bottleneck: str = "vit"  # vit | plk
    image_size: Annotated[int, Field(ge=32, le=MAX_SIDE)] = 512  # it trains at the resolution it ships at
    sr_scale: int = 2  # 1, 2 or 4: output side = image_size * sr_scale
    dim: int = 256  # bottleneck width
    vit_depth: int = 2
    vit_heads: int = 4
    vit_mlp_ratio: float = 2.0
    plk_blocks: int = 3
    plk_kernel: int = 13  # one learned large kernel shared by all PLK blocks (<= 13 for the ANE)
    plk_split: float = 0.25  # fraction of channels that see the large kernel
    decoder_channels: tuple[int, ...] = (128, 64, 32, 24)
    sr_channels: int = 24
    # padding of the decoder's and SR head's 3x3 convs: "replicate" continues the image past its edge,
    # where zeros leave a seam the maps must learn to undo (zeros is kept for checkpoints saved before)
    decoder_padding: str = "zeros"

    @property
    def output_size(self) -> int:
        return self.image_size * self.sr_scale


PaddingMode = Literal["zeros", "replicate"]
PADDING_MODES: tuple[PaddingMode, ...] = get_args(PaddingMode)


def padding_mode(name: str) -> PaddingMode:
    """``StudentConfig.decoder_padding`` checked against PADDING_MODES."""
    for mode in PADDING_MODES:
        if name == mode:
            return mode
    raise ValueError(f"unknown decoder_padding {name!r}; known: {', '.join(PADDING_MODES)}")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of a (B, C, 1, S) tensor, as ml-ane-transformers' LayerNormANE."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        zero_mean = x - mean
        var = (zero_mean * zero_mean).mean(1, keepdim=True)
        return zero_mean * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ANEAttention(nn.Module):
    """Multi-head self-attention on (B, C, 1, S) with 1x1 convs and per-head einsum."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.head_dim**-0.5
        qs = (self.q(x) * scale).split(self.head_dim, dim=1)  # heads x (B, c, 1, S)
        ks = self.k(x).split(self.head_dim, dim=1)
        vs = self.v(x).split(self.head_dim, dim=1)
        outs = []
        for q, k, v in zip(qs, ks, vs, strict=True):
            w = torch.einsum("bchq,bchk->bkhq", q, k).softmax(dim=1)  # (B, S_k, 1, S_q)
            outs.append(torch.einsum("bkhq,bchk->bchq", w, v))  # (B, c, 1, S_q)
        return self.out(torch.cat(outs, dim=1))


class ANEViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = ChannelLayerNorm(dim), ANEAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTFusion(nn.Module):
    """Self-attention across the bottleneck tokens of all views, then a mean over views."""

    def __init__(self, cfg: StudentConfig, cin: int):
        super().__init__()
        grid = cfg.image_size // 32
        self.proj = nn.Conv2d(cin, cfg.dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, cfg.dim, grid, grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(
            *[ANEViTBlock(cfg.dim, cfg.vit_heads, cfg.vit_mlp_ratio) for _ in range(cfg.vit_depth)]
        )
        self.norm = ChannelLayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        x = self.proj(x)  # (B*V, D, h, w)
        bv, d, h, w = x.shape
        pos = self.pos if self.pos.shape[-2:] == (h, w) else F.interpolate(self.pos, (h, w), mode="bilinear")
        x = (x + pos).reshape(bv // views, views, d, h * w)  # (B, V, D, S)
        x = x.transpose(1, 2).reshape(bv // views, d, 1, views * h * w)  # (B, D, 1, V*S)
        x = self.norm(self.blocks(x))
        x = x.reshape(bv // views, d, views, h * w).mean(2)  # (B, D, S): order-free
        return x.reshape(bv // views, d, h, w)


class PLKBlock(nn.Module):
    """ESC-style block: a shared large kernel on a channel slice, a per-sample dynamic 3x3, a 1x1 aggregation."""

    def __init__(self, dim: int, split: int, shared_kernel: nn.Parameter):
        super().__init__()
        self.split, self.kernel = split, shared_kernel  # kernel (split, 1, K, K), shared by reference
        self.norm = nn.BatchNorm2d(dim)
        self.pw = nn.Conv2d(dim, dim, 1)
        self.dyn = nn.Linear(dim, split * 9)  # per-sample depthwise 3x3 weights from pooled features
        self.agg = nn.Conv2d(dim, dim, 1)
        self.ffn = nn.Sequential(
            nn.BatchNorm2d(dim), nn.Conv2d(dim, dim * 2, 1), nn.GELU(), nn.Conv2d(dim * 2, dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.pw(self.norm(x))
        a, rest = y[:, : self.split], y[:, self.split :]
        k = self.kernel.shape[-1]
        a = F.conv2d(
            a, self.kernel, padding=k // 2, groups=self.split
        )  # large receptive field, linear in pixels
        dyn = torch.tanh(self.dyn(y.mean(dim=(2, 3)))).reshape(b * self.split, 1, 3, 3)
        a = F.conv2d(a.reshape(1, b * self.split, h, w), dyn, padding=1, groups=b * self.split).reshape(
            b, self.split, h, w
        )
        x = x + self.agg(torch.cat([a, rest], dim=1))
        return x + self.ffn(x)


class PLKFusion(nn.Module):
    """Fuse views by mean and max (order-free), then PLK blocks sharing one large kernel."""

    def __init__(self, cfg: StudentConfig, cin: int):
        super().__init__()
        if cfg.plk_kernel > ANE_MAX_KERNEL or cfg.plk_kernel % 2 == 0:
            raise ValueError(
                f"plk_kernel must be odd and <= {ANE_MAX_KERNEL} (the Neural Engine's limit), "
                f"got {cfg.plk_kernel}"
            )
        split = max(1, int(cfg.dim * cfg.plk_split))
        self.proj = nn.Conv2d(2 * cin, cfg.dim, 1)
        self.kernel = nn.Parameter(torch.randn(split, 1, cfg.plk_kernel, cfg.plk_kernel) / cfg.plk_kernel)
        self.blocks = nn.ModuleList(PLKBlock(cfg.dim, split, self.kernel) for _ in range(cfg.plk_blocks))

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        x = self.proj(view_mean_max(x, views))
        for block in self.blocks:
            x = block(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, padding: PaddingMode = "zeros"):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(cin + cskip, cout, padding=padding),
            conv_bn_act(cout, cout, groups=cout, padding=padding),
        )  # then depthwise 3x3

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.body(torch.cat([x, skip], dim=1))


class SRHead(nn.Module):
    """From stride-2 decoder features to maps at image_size * sr_scale with learned PixelShuffle upsampling."""

    def __init__(self, cin: int, c: int, scale: int, padding: PaddingMode = "zeros"):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"sr_scale must be 1, 2 or 4, got {scale}")
        self.to_full = nn.Sequential(
            nn.Conv2d(cin, c * 4, 3, padding=1, padding_mode=padding), nn.PixelShuffle(2), nn.Hardswish()
        )
        self.stem = conv_bn_act(3, c, padding=padding)  # full-resolution detail from the mean view
        self.fuse = conv_bn_act(2 * c, c, padding=padding)
        self.sr = (
            nn.Sequential(
                nn.Conv2d(c, c * scale * scale, 3, padding=1, padding_mode=padding),
                nn.PixelShuffle(scale),
                nn.Hardswish(),
            )
            if scale > 1
            else nn.Identity()
        )
        self.out = nn.Conv2d(c, NUM_CHANNELS, 3, padding=1, padding_mode=padding)

    def forward(self, x: torch.Tensor, mean_view: torch.Tensor, use_sr: bool = True) -> torch.Tensor:
        x = self.fuse(torch.cat([self.to_full(x), self.stem(mean_view)], dim=1))  # (B, c, H, W)
        if use_sr:
            x = self.sr(x)
        return activate(self.out(x))


class PBRStudent(nn.Module):
    """(B, 3, 3, H, W) normalised views -> (B, 8, H*s, W*s) maps in contract ranges."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        if cfg.image_size % 32:
            raise ValueError(f"student image_size must be a multiple of 32, got {cfg.image_size}")
        self.cfg = cfg
        self.encoder = timm.create_model(
            cfg.encoder, features_only=True, pretrained=False, out_indices=(0, 1, 2, 3, 4)
        )
        chans = feature_channels(self.encoder)
        padding = padding_mode(cfg.decoder_padding)
        fusion = {"vit": ViTFusion, "plk": PLKFusion}
        if cfg.bottleneck not in fusion:
            raise ValueError(f"unknown bottleneck {cfg.bottleneck!r}; known: {sorted(fusion)}")
        self.fusion = fusion[cfg.bottleneck](cfg, chans[-1])
        self.skip_fusion = nn.ModuleList(SkipFusion(c) for c in chans[:-1])
        dec = list(cfg.decoder_channels)
        if len(dec) != 4:
            raise ValueError("decoder_channels needs 4 widths (strides 16, 8, 4, 2)")
        self.up = nn.ModuleList(
            UpBlock(i, s, o, padding)
            for i, s, o in zip([cfg.dim] + dec[:-1], chans[-2::-1], dec, strict=True)
        )
        self.head = SRHead(dec[-1], cfg.sr_channels, cfg.sr_scale, padding)

    def forward_features(self, flat: torch.Tensor, views: int = NUM_VIEWS) -> torch.Tensor:
        feats = self.encoder(flat)  # 5 levels of (B*V, C_i, H_i, W_i)
        x = self.fusion(feats[-1], views)  # (B, D, H/32, W/32)
        for up, f, skip in zip(self.up, self.skip_fusion[::-1], feats[-2::-1], strict=True):
            x = up(x, f(skip, views))
        return x  # (B, dec[-1], H/2, W/2)

    def forward_flat(self, flat: torch.Tensor, views: int = NUM_VIEWS, use_sr: bool = True) -> torch.Tensor:
        """(B*V, 3, H, W) views stacked along the batch: the 4-D entry point the exporters trace."""
        return self.head(self.forward_features(flat, views), view_mean(flat, views), use_sr)

    def forward(self, views: torch.Tensor, use_sr: bool = True) -> torch.Tensor:
        if views.ndim != 5 or views.shape[1] != NUM_VIEWS or views.shape[2] != 3:
            raise ValueError(f"expected views of shape (B, {NUM_VIEWS}, 3, H, W), got {tuple(views.shape)}")
        b, v, c, h, w = views.shape  # (B, V, 3, H, W)
        return self.forward_flat(views.reshape(b * v, c, h, w), v, use_sr)


# --------------------------------------------------------------------------- registry and factory

STUDENTS: dict[str, Callable[[], StudentConfig]] = {}


def register_student(fn: Callable[[], StudentConfig]) -> Callable[[], StudentConfig]:
    STUDENTS[fn.__name__] = fn
    return fn


@register_student
def student_mnv3_vit_512() -> StudentConfig:
    return StudentConfig(bottleneck="vit", image_size=512, sr_scale=2, decoder_padding="replicate")


@register_student
def student_mnv3_plk_512() -> StudentConfig:
    return StudentConfig(bottleneck="plk", image_size=512, sr_scale=2, decoder_padding="replicate")


@register_student
def student_mnv3_plk_1024() -> StudentConfig:
    return StudentConfig(bottleneck="plk", image_size=1024, sr_scale=1, decoder_padding="replicate")


@register_student
def student_mnv3_vit_2048() -> StudentConfig:
    return StudentConfig(bottleneck="vit", image_size=2048, sr_scale=1, decoder_padding="replicate")


def student_config(name: str, **overrides) -> StudentConfig:
    if name not in STUDENTS:
        raise KeyError(f"unknown student {name!r}; known: {', '.join(sorted(STUDENTS))}")
    return replace(STUDENTS[name](), **overrides)


def create_student(name: str, **overrides) -> PBRStudent:
    """Build a registered student, e.g. ``create_student("student_mnv3_plk_512", image_size=128)``."""
    return PBRStudent(student_config(name, **overrides))
