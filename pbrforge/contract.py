"""The output contract every stage shares: 8 channels, their order, ranges and PNG encodings.

Channel order (C = 8): albedo R, G, B | roughness | metallic | normal X, Y, Z.

* albedo: sRGB-encoded base colour in [0, 1] (as stored in a texture); the renderer linearises it.
* roughness: perceptual roughness in [0, 1] (GGX alpha = roughness ** 2).
* metallic: [0, 1], 1 = metal.
* normal: a unit vector in tangent space, OpenGL convention (+X right, +Y up, +Z out of the surface).

On disk a material folder holds ``albedo.png`` (8-bit sRGB RGB), ``roughness.png`` and
``metallic.png`` (8-bit gray) and ``normal.png`` ((n + 1) / 2 as 8- or 16-bit RGB).
Nothing else in the project defines these facts: import them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pbrforge.errors import DataError
from pbrforge.fileio import atomic_path
from pbrforge.options import MAX_IMAGE_SIDE

NUM_CHANNELS = 8
NUM_VIEWS = 3
MAP_NAMES: tuple[str, ...] = ("albedo", "roughness", "metallic", "normal")


@dataclass(frozen=True)
class MapSpec:
    name: str
    channels: int
    start: int
    png_mode: str  # PIL mode on disk
    description: str

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.channels)


MAPS: dict[str, MapSpec] = {
    "albedo": MapSpec("albedo", 3, 0, "RGB", "sRGB base colour in [0, 1]"),
    "roughness": MapSpec("roughness", 1, 3, "L", "perceptual roughness in [0, 1]"),
    "metallic": MapSpec("metallic", 1, 4, "L", "metalness in [0, 1]"),
    "normal": MapSpec("normal", 3, 5, "RGB", "unit tangent-space normal (OpenGL +Y), PNG stores (n + 1) / 2"),
}
CHANNEL_NAMES: tuple[str, ...] = (
    "albedo_r",
    "albedo_g",
    "albedo_b",
    "roughness",
    "metallic",
    "normal_x",
    "normal_y",
    "normal_z",
)
UNIT_INTERVAL_MAPS = ("albedo", "roughness", "metallic")
NORMAL_CHANNELS = MAPS["normal"].slice
UNIT_CHANNELS = slice(0, NORMAL_CHANNELS.start)  # the unit-interval maps are every channel before the normal
NORMAL_TOLERANCE = 1e-3  # |‖n‖ - 1| accepted for a decoded normal
MIN_NORMAL_LENGTH = 0.5  # a stored normal shorter than this before renormalising is corrupt, not quantised

# Input normalisation shared by training, export wrappers and the runtime (ImageNet statistics,
# the convention of the timm encoders).
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)


def contract_dict() -> dict:
    """The contract as JSON-able data (embedded in exports and mobile_app/contract.json)."""
    return {
        "channels": list(CHANNEL_NAMES),
        "maps": {
            m.name: {
                "channels": m.channels,
                "start": m.start,
                "png_mode": m.png_mode,
                "range": _range(m.name),
                "description": m.description,
            }
            for m in MAPS.values()
        },
        "normal_convention": "tangent space, OpenGL (+X right, +Y up, +Z out)",
        "normal_png_encoding": "(n + 1) / 2",
        "input_views": NUM_VIEWS,
        "input_mean": list(INPUT_MEAN),
        "input_std": list(INPUT_STD),
    }


def _range(name: str) -> list[float]:
    return [-1.0, 1.0] if name == "normal" else [0.0, 1.0]


# --------------------------------------------------------------------------- packing


def pack(maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Stack named maps (..., c, H, W) into the (..., 8, H, W) contract tensor."""
    missing = [n for n in MAP_NAMES if n not in maps]
    if missing:
        raise ValueError(f"cannot pack: missing maps {missing}")
    for name in MAP_NAMES:
        if maps[name].shape[-3] != MAPS[name].channels:
            raise ValueError(
                f"map {name!r} has {maps[name].shape[-3]} channels, expected {MAPS[name].channels}"
            )
    return torch.cat([maps[n] for n in MAP_NAMES], dim=-3)


def unpack(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a (..., 8, H, W) tensor into named maps (views, not copies)."""
    if x.shape[-3] != NUM_CHANNELS:
        raise ValueError(f"expected {NUM_CHANNELS} channels in dim -3, got shape {tuple(x.shape)}")
    return {n: x[..., MAPS[n].slice, :, :] for n in MAP_NAMES}


def activate(raw: torch.Tensor) -> torch.Tensor:
    """Map raw network outputs (..., 8, H, W) into contract ranges: sigmoid maps, L2-normalised normals."""
    if not isinstance(raw, torch.fx.Proxy):  # symbolic tracing (Core ML's quantizer) has no shape to check
        unpack(raw)  # checks the channel count
    normal = torch.nn.functional.normalize(raw[..., NORMAL_CHANNELS, :, :], dim=-3, eps=1e-6)
    return torch.cat([torch.sigmoid(raw[..., UNIT_CHANNELS, :, :]), normal], dim=-3)


def validate(x: torch.Tensor, what: str = "maps") -> None:
    """Raise DataError if x breaks the contract (shape, NaN, ranges, normal length)."""
    if x.ndim < 3 or x.shape[-3] != NUM_CHANNELS:
        raise DataError(f"{what} have shape {tuple(x.shape)}, expected (..., {NUM_CHANNELS}, H, W)")
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contain NaN or inf values")
    parts = unpack(x.float())
    for name in UNIT_INTERVAL_MAPS:
        lo, hi = parts[name].min().item(), parts[name].max().item()
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise DataError(f"{what}: {name} spans [{lo:.4f}, {hi:.4f}], outside [0, 1]")
    err = (parts["normal"].norm(dim=-3) - 1).abs().max().item()
    if err > 2e-2:
        raise DataError(f"{what}: normals are not unit vectors (max |‖n‖ - 1| = {err:.4f})")


# --------------------------------------------------------------------------- PNG encodings


def encode_map(name: str, value: np.ndarray, bits: int = 8) -> Image.Image | Png16:
    """Encode one map (c, H, W) float array in contract range into an 8- or 16-bit image."""
    spec = MAPS[name]
    if value.shape[0] != spec.channels:
        raise ValueError(f"{name}: expected {spec.channels} channels, got {value.shape[0]}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if name == "normal":
        value = (value + 1.0) * 0.5
    value = np.clip(value, 0.0, 1.0)
    if bits == 16:
        return Png16(np.round(value * 65535).astype(np.uint16))
    arr = np.round(value * 255).astype(np.uint8)
    if spec.channels == 1:
        return Image.fromarray(arr[0], mode="L")
    return Image.fromarray(arr.transpose(1, 2, 0), mode="RGB")


class Png16:
    """A 16-bit gray or RGB image; PIL cannot write 48-bit RGB, so pypng writes both."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr  # (1 or 3, H, W) uint16

    def save(self, path: Path, format: str = "PNG") -> None:  # noqa: A002 - mirrors PIL.Image.save
        import png

        c, h, w = self.arr.shape
        rows = self.arr.transpose(1, 2, 0).reshape(h, w * c)
        with open(path, "wb") as f:
            png.Writer(w, h, greyscale=c == 1, bitdepth=16).write(f, rows.tolist())


def decode_map(name: str, path: Path, size: int | None = None) -> np.ndarray:
    """Read one map PNG into a (c, H, W) float32 array in contract range.

    Raises DataError for a missing, corrupt, wrong-mode or wrong-size file.
    """
    spec = MAPS[name]
    img = open_image(path)
    if spec.channels == 1 and img.mode not in ("L", "I;16", "I"):
        raise DataError(f"{path}: {name} must be a grayscale PNG, found mode {img.mode}")
    if spec.channels == 3 and img.mode not in ("RGB",) and not (name == "normal" and is_rgb16(path)):
        raise DataError(f"{path}: {name} must be an RGB PNG, found mode {img.mode}")
    if size is not None and img.size != (size, size):
        raise DataError(f"{path}: {name} is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
    if name == "normal" and is_rgb16(path):
        value = read_rgb16(path)
    else:
        arr = np.asarray(img)
        scale = 65535.0 if arr.dtype == np.uint16 or img.mode.startswith("I") else 255.0
        value = arr.astype(np.float32) / scale
        value = value[None] if value.ndim == 2 else value.transpose(2, 0, 1)
    if name == "normal":
        value = value * 2.0 - 1.0
        length = np.linalg.norm(value, axis=0, keepdims=True)
        short = int((length < MIN_NORMAL_LENGTH).sum())
        if short:
            raise DataError(
                f"{path}: {short} normal(s) have (almost) zero length, e.g. the colour (128, 128, 128); "
                "a normal map stores unit vectors"
            )
        value = value / length
    return np.ascontiguousarray(value, dtype=np.float32)


def is_rgb16(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] == 2


def read_rgb16(path: Path) -> np.ndarray:
    import png

    try:
        w, h, rows, _ = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, 3)
    except Exception as e:
        raise DataError(f"{path}: corrupt 16-bit PNG ({type(e).__name__}: {e})") from e
    return arr.astype(np.float32).transpose(2, 0, 1) / 65535.0


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, turning every failure into one DataError sentence."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    try:
        img = Image.open(path)  # reads the header only: the size is known before any pixel is decoded
        if max(img.size) > MAX_IMAGE_SIDE:
            raise DataError(
                f"{path} is {img.size[0]}x{img.size[1]}; images larger than {MAX_IMAGE_SIDE} px a side are refused"
            )
        img.load()
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for truncated/corrupt files
        raise DataError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e})") from e
    return img


# --------------------------------------------------------------------------- material folders


def write_material(folder: Path, maps: torch.Tensor | np.ndarray, normal_bits: int = 8) -> None:
    """Write a (8, H, W) contract tensor as the four PNGs of a material folder, each atomically."""
    x = (
        maps.detach().float().cpu().numpy()
        if isinstance(maps, torch.Tensor)
        else np.asarray(maps, np.float32)
    )
    if x.ndim != 3 or x.shape[0] != NUM_CHANNELS:
        raise ValueError(f"write_material expects (8, H, W), got {x.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in MAP_NAMES:
        img = encode_map(name, x[MAPS[name].slice], bits=normal_bits if name == "normal" else 8)
        with atomic_path(folder / f"{name}.png") as tmp:
            img.save(tmp, format="PNG")


def read_material(folder: Path, size: int | None = None) -> torch.Tensor:
    """Read a material folder into a (8, H, W) float32 contract tensor."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"missing material folder: {folder}")
    parts = [decode_map(n, folder / f"{n}.png", size) for n in MAP_NAMES]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) != 1:
        raise DataError(f"{folder}: maps have different sizes {sorted(shapes)}")
    return torch.from_numpy(np.concatenate(parts, axis=0))


def to_preview(maps: torch.Tensor) -> list[np.ndarray]:
    """The four maps of a (8, H, W) tensor as displayable (H, W, 3) arrays in [0, 1]."""
    parts = unpack(maps.detach().float().cpu())
    out = []
    for name in MAP_NAMES:
        v = parts[name]
        if name == "normal":
            v = (v + 1) * 0.5
        if v.shape[0] == 1:
            v = v.expand(3, -1, -1)
        out.append(v.clamp(0, 1).permute(1, 2, 0).numpy())
    return out


# --------------------------------------------------------------------------- resizing and normalisation


def resize_maps(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (..., 8, H, W) maps with antialiasing; normals are renormalised afterwards."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:]).float()
    out = torch.nn.functional.interpolate(
        flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    out = torch.cat(
        [
            out[:, UNIT_CHANNELS].clamp(0, 1),
            torch.nn.functional.normalize(out[:, NORMAL_CHANNELS], dim=1, eps=1e-6),
        ],
        dim=1,
    )
    return out.reshape(*lead, NUM_CHANNELS, size, size)


def normalize_views(views: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> the network's input normalisation."""
    mean = torch.tensor(INPUT_MEAN, dtype=views.dtype, device=views.device).view(3, 1, 1)
    std = torch.tensor(INPUT_STD, dtype=views.dtype, device=views.device).view(3, 1, 1)
    return (views - mean) / std
