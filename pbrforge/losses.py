"""Hybrid PBR losses: per-map L1, SSIM on albedo, normal angle, a GGX rendering loss, and GAN terms.

Every weight lives in ``LossConfig``. The rendering loss uses the same renderer as datagen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from pbrforge.captures import CaptureBatch, random_captures, render_capture
from pbrforge.config import LossConfig
from pbrforge.contract import MAP_NAMES, unpack
from pbrforge.environments import Environment, uniform_dome

LOG_EPS = 0.01  # log(x + 0.01) of renders, as in Deschaintre et al. 2018
# the loss relights with each room merged into 4 distant lights: the diffuse light it gives is the same,
# and 16 lights made a phone-flash training step 4x slower than a tripod one at 128 px (measured)
LOSS_ROOM_LIGHTS = 4


def normal_angular_loss(pred_n: torch.Tensor, true_n: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cos) between unit normals (B, 3, H, W)."""
    return (1 - F.cosine_similarity(pred_n, true_n, dim=1, eps=1e-6)).mean()


def rendering_loss(pred: torch.Tensor, true: torch.Tensor, capture: CaptureBatch) -> torch.Tensor:
    """L1 between log renders of predicted and true maps under the same capture (cameras, flash, room)."""
    rp = render_capture(pred, capture)
    with torch.no_grad():  # the target needs no gradient
        rt = render_capture(true, capture)
    return (torch.log(rp + LOG_EPS) - torch.log(rt + LOG_EPS)).abs().mean()


def loss_captures(
    batch: int,
    cfg: LossConfig,
    generator: torch.Generator | None,
    environments: Mapping[str, Environment] | None,
    device: torch.device | None = None,
) -> CaptureBatch:
    """The rendering loss's shots: one random ``render_capture`` of ``render_lights`` shots per sample.

    The room is one of the data set's environments, or an overcast dome where the data set has none.
    """
    rooms = environments or {"uniform-dome": uniform_dome()}
    envs = {name: env.coarsened(LOSS_ROOM_LIGHTS) for name, env in rooms.items()}
    return random_captures(batch, cfg.render_capture, generator, envs, cfg.render_lights, device)


def map_losses(
    pred: torch.Tensor,
    true: torch.Tensor,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
    environments: Mapping[str, Environment] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted loss terms of contract maps (B, 8, H, W) against a target; key "total" is their sum.

    ``environments`` are the room lights of the rendering loss's phone shots (the data set's own).
    """
    p, t = unpack(pred.float()), unpack(true.float())
    terms: dict[str, torch.Tensor] = {}
    for name in MAP_NAMES:
        w = cfg.l1.get(name, 0.0)
        if w:
            terms[f"l1_{name}"] = w * (p[name] - t[name]).abs().mean()
    if cfg.ssim_albedo:
        similarity = cast(torch.Tensor, ssim(p["albedo"], t["albedo"], data_range=1.0))
        terms["ssim_albedo"] = cfg.ssim_albedo * (1 - similarity)
    if cfg.normal_angular:
        terms["normal_angular"] = cfg.normal_angular * normal_angular_loss(p["normal"], t["normal"])
    if cfg.render and cfg.render_lights > 0:
        capture = loss_captures(pred.shape[0], cfg, generator, environments, pred.device)
        terms["render"] = cfg.render * rendering_loss(pred.float(), true.float(), capture)
    terms["total"] = cast(torch.Tensor, sum(terms.values()))
    return terms


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    raise ValueError(f"unknown gan_loss {kind!r}; known: hinge, bce")


def gan_g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    raise ValueError(f"unknown gan_loss {kind!r}; known: hinge, bce")
