"""Capture damage for "dirty" views: what a phone adds between the surface and the PNG."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class CaptureDamage:
    """Ranges the damage is drawn from (uniform unless noted)."""

    exposure_log_std: float = 0.15  # per view, log-normal exposure jitter
    white_balance: float = 0.08  # per channel gain in 1 +- this
    vignetting: tuple[float, float] = (0.1, 0.35)  # radial falloff strength
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # pixels
    shift_px: float = 1.5  # misregistration, each axis, per view
    noise_std: tuple[float, float] = (0.005, 0.02)  # read noise in [0, 1] units
    shot_noise: tuple[float, float] = (0.0, 0.01)  # signal-dependent noise
    jpeg_quality: tuple[int, int] = (55, 90)


def linear_damage(radiance: np.ndarray, rng: np.random.Generator, cfg: CaptureDamage) -> np.ndarray:
    """Exposure, white balance and vignetting on (V, 3, H, W) linear radiance."""
    v, _, h, w = radiance.shape
    exposure = np.exp(rng.normal(0, cfg.exposure_log_std, (v, 1, 1, 1)))
    wb = 1 + rng.uniform(-cfg.white_balance, cfg.white_balance, (1, 3, 1, 1))
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    vig = 1 - rng.uniform(*cfg.vignetting) * (xx**2 + yy**2) / 2
    return radiance * exposure * wb * vig[None, None]


def display_damage(view: np.ndarray, rng: np.random.Generator, cfg: CaptureDamage) -> Image.Image:
    """Misregistration, blur, noise and JPEG on one (3, H, W) sRGB view in [0, 1]."""
    img = Image.fromarray(np.round(np.clip(view, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0), "RGB")
    dx, dy = rng.uniform(-cfg.shift_px, cfg.shift_px, 2)
    img = img.transform(
        img.size,
        Image.Transform.AFFINE,
        (1, 0, dx, 0, 1, dy),
        resample=Image.Resampling.BILINEAR,
        fillcolor=None,
    )
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_sigma)))
    x = np.asarray(img, dtype=np.float32) / 255
    sigma = rng.uniform(*cfg.noise_std) + rng.uniform(*cfg.shot_noise) * np.sqrt(x)
    x = np.clip(x + rng.normal(0, 1, x.shape) * sigma, 0, 1)
    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8), "RGB").save(
        buf, "JPEG", quality=int(rng.integers(*cfg.jpeg_quality))
    )
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")
