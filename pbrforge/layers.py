"""Layers both model families share: order-free reductions over the views (kept 4-D so every exporter and the
Neural Engine take them as is), the conv-BN-activation block, the skip fusion built from them, and the
channels of a timm encoder's levels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn


def view_mean_max(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B*V, C, H, W) -> (B, 2C, H, W): mean and max over views, kept 4-D for the Neural Engine."""
    bv, c, h, w = x.shape
    x = x.reshape(bv // views, views, c, h * w)  # (B, V, C, HW)
    return torch.cat([x.mean(1), x.amax(1)], dim=1).reshape(bv // views, 2 * c, h, w)


def view_mean(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B*V, C, H, W) -> (B, C, H, W) mean over views, 4-D throughout."""
    bv, c, h, w = x.shape
    return x.reshape(bv // views, views, c * h, w).mean(1).reshape(bv // views, c, h, w)


def conv_bn_act(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] = nn.Hardswish,
    padding: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation: the pair the exporters fold into one conv."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False, padding_mode=padding),
        nn.BatchNorm2d(cout),
        act(),
    )


def feature_channels(encoder: nn.Module) -> list[int]:
    """The channels of each level a timm ``features_only`` encoder returns, shallowest first."""
    from timm.models import FeatureInfo

    info = encoder.feature_info
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"{type(encoder).__name__} is not a timm features_only encoder (no FeatureInfo)")
    return list(info.channels())


class SkipFusion(nn.Module):
    """Fuse one skip level across views from its mean and max (both order-free)."""

    def __init__(self, channels: int, act: Callable[[], nn.Module] = nn.Hardswish):
        super().__init__()
        self.mix = conv_bn_act(2 * channels, channels, k=1, act=act)

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        return self.mix(view_mean_max(x, views))
