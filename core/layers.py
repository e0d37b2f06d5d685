"""Order-free reductions over the views, kept 4-D so every exporter and the Neural Engine take them as is."""

from __future__ import annotations

import torch


def view_mean_max(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B*V, C, H, W) -> (B, 2C, H, W): mean and max over views, kept 4-D for the Neural Engine."""
    bv, c, h, w = x.shape
    x = x.reshape(bv // views, views, c, h * w)  # (B, V, C, HW)
    return torch.cat([x.mean(1), x.amax(1)], dim=1).reshape(bv // views, 2 * c, h, w)


def view_mean(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B*V, C, H, W) -> (B, C, H, W) mean over views, 4-D throughout."""
    bv, c, h, w = x.shape
    return x.reshape(bv // views, views, c * h, w).mean(1).reshape(bv // views, c, h, w)
