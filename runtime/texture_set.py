"""Contract maps as the textures other tools read: ambientCG-named PNG sets and glTF's packed texture.

ambientCG's names are what artists' tools and asset browsers recognise: ``NAME_Color.png`` (sRGB),
``NAME_Roughness.png``, ``NAME_Metalness.png`` and ``NAME_NormalGL.png`` or ``NAME_NormalDX.png``
(data, linear). DirectX normal maps store -Y: the same vectors with the green channel flipped.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pbrforge.contract import MAP_NAMES, MAPS, NUM_CHANNELS, encode_map, validate
from pbrforge.fileio import atomic_path

NORMAL_CONVENTIONS = ("gl", "dx")
SUFFIXES = {"albedo": "Color", "roughness": "Roughness", "metallic": "Metalness"}


def as_array(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """A checked (8, H, W) float32 copy of contract maps."""
    x = torch.as_tensor(np.asarray(maps, dtype=np.float32) if isinstance(maps, np.ndarray) else maps)
    x = x.detach().float().cpu()
    if x.ndim != 3 or x.shape[0] != NUM_CHANNELS:
        raise ValueError(f"expected contract maps (8, H, W), got {tuple(x.shape)}")
    validate(x[None], "maps to package")
    return x.numpy().copy()


def map_file(name: str, material: str, normal: str = "gl") -> str:
    """The ambientCG file name of one contract map."""
    suffix = SUFFIXES.get(name) or ("NormalDX" if normal == "dx" else "NormalGL")
    return f"{material}_{suffix}.png"


def write_pngset(
    maps: np.ndarray, folder: Path, material: str, bits: int = 8, normal: str = "gl"
) -> list[Path]:
    """Write the four ambientCG-named PNGs, each atomically; returns their paths in contract order."""
    paths = []
    for name in MAP_NAMES:
        value = maps[MAPS[name].slice].copy()
        if name == "normal" and normal == "dx":
            value[1] = -value[1]
        path = Path(folder) / map_file(name, material, normal)
        with atomic_path(path) as tmp:
            encode_map(name, value, bits=bits).save(tmp, format="PNG")
        paths.append(path)
    return paths


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def metallic_roughness(maps: np.ndarray) -> Image.Image:
    """glTF's packed texture: G = roughness, B = metallic (linear); R is unused and set to 1 (no occlusion)."""
    rough = maps[MAPS["roughness"].slice][0]
    metal = maps[MAPS["metallic"].slice][0]
    packed = np.stack([np.ones_like(rough), rough, metal], axis=-1)
    return Image.fromarray(np.round(np.clip(packed, 0, 1) * 255).astype(np.uint8), mode="RGB")


def textures(maps: np.ndarray) -> dict[str, Image.Image]:
    """8-bit images of every texture a material file needs, by role (the packed one included)."""
    out = {name: encode_map(name, maps[MAPS[name].slice]) for name in MAP_NAMES}
    out["metallic_roughness"] = metallic_roughness(maps)
    return out  # type: ignore[return-value]  # 8-bit encodings are PIL images
