"""Procedural material families: each draws consistent albedo, roughness, metallic and height from a seed.

Every family returns a ``Material`` whose normals come from its height field, so the maps agree with
each other the way a scanned material's do. Noise is value noise summed over octaves (fBm), tileable
and vectorised in numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pbrforge.contract import pack

FamilyFn = Callable[[np.random.Generator, int], "Material"]
FAMILIES: dict[str, FamilyFn] = {}


@dataclass
class Material:
    family: str
    albedo: np.ndarray  # (3, H, W) sRGB in [0, 1]
    roughness: np.ndarray  # (H, W)
    metallic: np.ndarray  # (H, W)
    height: np.ndarray  # (H, W) in pixels-equivalent units
    bump: float  # normal strength

    def normal(self) -> np.ndarray:
        """Unit tangent-space normals (3, H, W), OpenGL +Y up (row 0 is the top)."""
        h = self.height * self.bump
        dx = (np.roll(h, -1, axis=1) - np.roll(h, 1, axis=1)) * 0.5  # d/dx, x to the right
        dy_down = (np.roll(h, -1, axis=0) - np.roll(h, 1, axis=0)) * 0.5  # d/drow
        n = np.stack([-dx, dy_down, np.ones_like(h)])  # +Y up, so dh/dy = -dh/drow
        return (n / np.linalg.norm(n, axis=0, keepdims=True)).astype(np.float32)

    def maps(self) -> np.ndarray:
        """The (8, H, W) contract array."""
        maps = {
            "albedo": np.clip(self.albedo, 0, 1),
            "roughness": np.clip(self.roughness, 0, 1)[None],
            "metallic": np.clip(self.metallic, 0, 1)[None],
            "normal": self.normal(),
        }
        return pack(
            {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in maps.items()}
        ).numpy()


def register_family(fn: FamilyFn) -> FamilyFn:
    FAMILIES[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------- noise


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Tileable smooth value noise in [0, 1] on a cells x cells lattice."""
    lattice = rng.random((cells, cells))
    t = np.arange(size) * cells / size
    i0 = np.floor(t).astype(int)
    f = t - i0
    f = f * f * (3 - 2 * f)
    i1 = (i0 + 1) % cells
    rows0, rows1 = lattice[i0], lattice[i1]  # (S, cells)
    top = rows0[:, i0] * (1 - f)[None] + rows0[:, i1] * f[None]
    bot = rows1[:, i0] * (1 - f)[None] + rows1[:, i1] * f[None]
    return top * (1 - f)[:, None] + bot * f[:, None]


def fbm(
    rng: np.random.Generator, size: int, base_cells: int = 4, octaves: int = 5, gain: float = 0.5
) -> np.ndarray:
    out, amp, total = np.zeros((size, size)), 1.0, 0.0
    for o in range(octaves):
        cells = min(base_cells * 2**o, size)
        out += amp * value_noise(rng, size, cells)
        total += amp
        amp *= gain
    return out / total


def _tint(rng: np.random.Generator, base: tuple[float, float, float], jitter: float) -> np.ndarray:
    return np.clip(np.asarray(base) + rng.uniform(-jitter, jitter, 3), 0.02, 0.98)[:, None, None]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="xy")


# --------------------------------------------------------------------------- families


@register_family
def bricks(rng: np.random.Generator, size: int) -> Material:
    rows = int(rng.integers(4, 9))
    cols = max(2, rows // 2)
    x, y = _grid(size)
    row = np.floor(y * rows)
    xs = x * cols + 0.5 * (row % 2)
    col = np.floor(xs)
    mortar_w = rng.uniform(0.04, 0.09)
    fx, fy = xs - col, y * rows - row
    edge = np.minimum.reduce([fx, 1 - fx, (fy) * cols / rows * 2, (1 - fy) * cols / rows * 2])
    brick = np.clip((edge - mortar_w) / 0.03, 0, 1)
    per_brick = np.random.default_rng(int(rng.integers(1 << 31))).random((rows + 1, cols + 2))
    shade = per_brick[row.astype(int) % (rows + 1), col.astype(int) % (cols + 2)]
    grain = fbm(rng, size, 8, 4)
    brick_col = _tint(rng, (0.55, 0.25, 0.18), 0.12) * (0.75 + 0.35 * shade + 0.2 * (grain - 0.5))
    mortar_col = _tint(rng, (0.7, 0.68, 0.62), 0.08) * (0.9 + 0.2 * grain)
    albedo = brick_col * brick + mortar_col * (1 - brick)
    rough = 0.75 + 0.15 * grain * brick + 0.2 * (1 - brick)
    height = 3.0 * brick + 0.8 * grain
    return Material("bricks", albedo, rough, np.zeros_like(rough), height, rng.uniform(0.8, 1.5))


@register_family
def wood(rng: np.random.Generator, size: int) -> Material:
    x, y = _grid(size)
    warp = fbm(rng, size, 3, 4)
    freq = rng.uniform(12, 30)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (freq * (x + 0.15 * warp) + 2.0 * warp))
    streak = fbm(rng, size, 16, 3)
    light = _tint(rng, (0.62, 0.42, 0.24), 0.08)
    dark = light * rng.uniform(0.45, 0.65)
    t = rings**2 * 0.8 + 0.2 * streak
    albedo = dark * t + light * (1 - t)
    varnish = rng.uniform(0.25, 0.6)
    rough = varnish + 0.15 * rings
    height = 0.6 * rings + 0.4 * streak
    return Material("wood", albedo, rough, np.zeros_like(rough), height, rng.uniform(0.4, 1.0))


@register_family
def rusty_metal(rng: np.random.Generator, size: int) -> Material:
    n = fbm(rng, size, 4, 6)
    thresh = rng.uniform(0.45, 0.6)
    rust = np.clip((n - thresh) / 0.06, 0, 1)
    fine = fbm(rng, size, 24, 3)
    metal_col = _tint(rng, (0.75, 0.74, 0.72), 0.1)
    rust_col = _tint(rng, (0.45, 0.2, 0.08), 0.06) * (0.7 + 0.5 * fine)
    albedo = metal_col * (1 - rust) + rust_col * rust
    rough = (rng.uniform(0.15, 0.35) + 0.1 * fine) * (1 - rust) + (0.85 + 0.1 * fine) * rust
    height = 1.5 * rust * (0.5 + fine) + 0.2 * fine
    return Material("rusty_metal", albedo, rough, 1 - rust, height, rng.uniform(0.6, 1.4))


@register_family
def painted_metal(rng: np.random.Generator, size: int) -> Material:
    n = fbm(rng, size, 6, 6)
    chip = np.clip((n - rng.uniform(0.58, 0.68)) / 0.03, 0, 1)
    paint = _tint(rng, tuple(rng.uniform(0.1, 0.8, 3)), 0.05)
    metal_col = _tint(rng, (0.8, 0.8, 0.8), 0.05)
    albedo = paint * (1 - chip) + metal_col * chip
    rough = rng.uniform(0.3, 0.6) * (1 - chip) + rng.uniform(0.15, 0.3) * chip
    height = 1.0 * (1 - chip) + 0.1 * fbm(rng, size, 32, 2)
    return Material("painted_metal", albedo, rough, chip, height, rng.uniform(1.0, 2.0))


@register_family
def stone(rng: np.random.Generator, size: int) -> Material:
    n = fbm(rng, size, 4, 6)
    cracks = np.abs(fbm(rng, size, 6, 4) - 0.5)
    crack = np.clip(1 - cracks / 0.03, 0, 1)
    base = _tint(rng, (0.5, 0.48, 0.45), 0.12)
    albedo = base * (0.7 + 0.6 * (n - 0.5)) * (1 - 0.5 * crack)
    rough = 0.65 + 0.3 * n
    height = 4 * n - 2 * crack
    return Material("stone", albedo, rough, np.zeros_like(rough), height, rng.uniform(0.5, 1.2))


@register_family
def fabric(rng: np.random.Generator, size: int) -> Material:
    x, y = _grid(size)
    threads = int(rng.integers(16, 40))
    wx = np.sin(2 * np.pi * threads * x)
    wy = np.sin(2 * np.pi * threads * y)
    over = (np.floor(threads * x) + np.floor(threads * y)) % 2
    weave = over * (0.5 + 0.5 * wx**2) + (1 - over) * (0.5 + 0.5 * wy**2)
    base = _tint(rng, tuple(rng.uniform(0.1, 0.8, 3)), 0.05)
    fuzz = fbm(rng, size, 16, 3)
    albedo = base * (0.7 + 0.3 * weave) * (0.9 + 0.2 * fuzz)
    rough = 0.85 + 0.1 * fuzz
    height = 1.2 * weave + 0.2 * fuzz
    return Material("fabric", albedo, rough, np.zeros_like(rough), height, rng.uniform(0.8, 1.6))


@register_family
def plaster(rng: np.random.Generator, size: int) -> Material:
    n = fbm(rng, size, 8, 6, gain=0.6)
    pits = np.clip((rng.random((size, size)) - 0.995) * 200, 0, 1)
    base = _tint(rng, (0.78, 0.76, 0.72), 0.1)
    albedo = base * (0.85 + 0.3 * (n - 0.5)) * (1 - 0.4 * pits)
    rough = 0.8 + 0.15 * n
    height = 2 * n - 1.5 * pits
    return Material("plaster", albedo, rough, np.zeros_like(rough), height, rng.uniform(0.5, 1.0))


def make_material(family: str, seed: int, size: int) -> Material:
    """Draw one material of ``family`` deterministically from ``seed``."""
    if family not in FAMILIES:
        raise KeyError(f"unknown material family {family!r}; known: {sorted(FAMILIES)}")
    mat = FAMILIES[family](np.random.default_rng(seed), size)
    mat.albedo = np.broadcast_to(mat.albedo, (3, size, size)).astype(np.float32)
    return mat
