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
    corner_px: float = 2.0  # misregistration: each frame corner moves this far, each axis (a homography)
    noise_std: tuple[float, float] = (0.005, 0.02)  # read noise in [0, 1] units
    shot_noise: tuple[float, float] = (0.0, 0.01)  # signal-dependent noise
    jpeg_quality: tuple[int, int] = (55, 90)


def perspective_coefficients(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL's 8 perspective coefficients taking output points ``dst`` (4, 2) to input points ``src`` (4, 2).

    PIL samples the input at ((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1)).
    """
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.array(rows), np.array(rhs)))


def linear_damage(radiance: np.ndarray, rng: np.random.Generator, cfg: CaptureDamage) -> np.ndarray:
    """Exposure, white balance and vignetting on (V, 3, H, W) linear radiance."""
    v, _, h, w = radiance.shape
    exposure = np.exp(rng.normal(0, cfg.exposure_log_std, (v, 1, 1, 1)))
    wb = 1 + rng.uniform(-cfg.white_balance, cfg.white_balance, (1, 3, 1, 1))
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    vig = 1 - rng.uniform(*cfg.vignetting) * (xx**2 + yy**2) / 2
    return radiance * exposure * wb * vig[None, None]


def display_damage(view: np.ndarray, rng: np.random.Generator, cfg: CaptureDamage) -> Image.Image:
    """Misregistration, blur, noise and JPEG on one (3, H, W) sRGB view in [0, 1].

    Misregistration is what a homography fitted to a handheld shot leaves: a small residual homography
    that moves each corner of the frame by up to ``corner_px`` pixels.
    """
    img = Image.fromarray(np.round(np.clip(view, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0), "RGB")
    w, h = img.size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    moved = corners + rng.uniform(-cfg.corner_px, cfg.corner_px, corners.shape)
    img = img.transform(
        img.size,
        Image.Transform.PERSPECTIVE,
        perspective_coefficients(corners, moved),
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
