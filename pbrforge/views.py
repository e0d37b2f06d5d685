"""Reading three photos from a folder for inference, whatever their mode and size.

Rules (documented in the README): image files are ``.png``, ``.jpg`` or ``.jpeg``; the first three by
sorted name are used (more is a warning naming them, fewer an error). Modes: RGB as is; RGBA/LA drop
alpha; grayscale is replicated to RGB; 16-bit is scaled by 1/65535; palette and CMYK are converted to
RGB. Each view is resized with antialiasing to the model's square input, with a warning when its aspect
ratio is not 1:1.

Handheld photos do not line up pixel for pixel, and the model needs three views of one rectified
surface. ``read_registered_views`` registers them first (``pbrforge.registration``): feature matching
with a RANSAC homography onto the first photo (``features``, the default for photos), the sample's four
corners per photo (``corners``), printed ArUco markers (``markers``), or nothing when the photos are
already rectified (``none``, which reads them exactly as ``read_view_folder`` does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageOps

from pbrforge.contract import NUM_VIEWS, open_image
from pbrforge.errors import DataError

if TYPE_CHECKING:
    from pbrforge.registration import Registration

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


_logger = logging.getLogger(__name__)


def image_to_float(path: Path) -> torch.Tensor:
    """Any supported image -> (3, H, W) float in [0, 1]."""
    img = open_image(path)
    img = ImageOps.exif_transpose(img)  # a photo taken rotated is read as it was seen, like the upright one
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: the image holds NaN or inf values")
        arr = np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / (65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0)
        arr = np.repeat(arr[..., None], 3, axis=2)
    else:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.clip(arr, 0, 1)).permute(2, 0, 1).contiguous()


def find_views(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"input folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < NUM_VIEWS:
        raise DataError(f"{folder} holds {len(files)} image(s); {NUM_VIEWS} views are needed (png or jpg)")
    if len(files) > NUM_VIEWS:
        _logger.warning(
            f"{folder} holds {len(files)} images; using the first {NUM_VIEWS} by name: "
            f"{', '.join(p.name for p in files[:NUM_VIEWS])}"
        )
    return files[:NUM_VIEWS]


def resize_view(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, size, size) with antialiasing (a no-op at the right size)."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1)


def load_view(path: Path, size: int | None = None) -> torch.Tensor:
    """One view file -> (3, H, W) float in [0, 1], resized to ``size`` when given (data sets, contact sheets)."""
    x = image_to_float(path)
    return x if size is None else resize_view(x, size)


def read_view_folder(folder: Path, size: int) -> tuple[torch.Tensor, list[Path]]:
    """(3, 3, size, size) views in [0, 1] and the files used."""
    paths = find_views(folder)
    views = []
    for p in paths:
        x = image_to_float(p)
        h, w = x.shape[-2:]
        if abs(w / h - 1) > 0.01:
            _logger.warning(
                f"{p.name} is {w}x{h}; the model takes square views, so it is stretched to {size}x{size}"
            )
        views.append(resize_view(x, size))
    return torch.stack(views), paths


def check_align(align: str, corners: Path | None) -> None:
    """--align corners and --corners come together or not at all (one sentence, exit 2)."""
    if (align == "corners") != (corners is not None):
        raise DataError("--align corners needs --corners FILE, and --corners needs --align corners")


def read_registered_views(
    folder: Path, size: int, align: str = "features", corners: Path | None = None
) -> tuple[torch.Tensor, list[Path], Registration | None]:
    """(3, 3, size, size) views in [0, 1] registered onto the first photo, the files used, and the record.

    Args:
        folder: three photos (the first three by name).
        size: the model's input side.
        align: ``features``, ``corners``, ``markers`` or ``none`` (read as they are; no record).
        corners: with ``corners``, a JSON file of the sample's four corners in each photo.

    A photo that cannot be registered is refused in one sentence naming it, before anything is written.
    """
    from pbrforge.registration import read_corners, register_views

    check_align(align, corners)
    if align == "none":
        views, used = read_view_folder(folder, size)
        return views, used, None
    paths = find_views(folder)
    images = [image_to_float(p).permute(1, 2, 0).numpy() for p in paths]
    quads = read_corners(corners, len(paths)) if corners is not None else None
    reg = register_views(images, align, corners=quads, names=[p.name for p in paths])
    views = torch.stack(
        [resize_view(torch.from_numpy(v).permute(2, 0, 1).contiguous(), size) for v in reg.views]
    )
    return views, paths, reg
