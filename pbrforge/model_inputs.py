"""A model spec's inputs read from files, as the spec says (``run --input`` and ``--quantize int8 --data``).

- an image input (``kind="image"``, 1 or 3 channels) from ``.png``/``.jpg``/``.jpeg`` (8- or 16-bit), its 0..1
  pixel values mapped onto the input's encoding (``-1..1`` for a diffusion model's image);
- any input from ``.safetensors`` (the tensor under the input's name, or the file's only tensor);
- a small tensor (a rate, a noise level) from ``.json``: a number, filled into the input's shape, or nested
  lists of exactly its shape.

A run takes an image at the size the graph was exported at; calibration (``fit=True``) scales a photo's shorter
side to the exported side and crops the centre, so any folder of photos calibrates any image graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pbrforge.errors import DataError
from pbrforge.fileio import read_tensors
from pbrforge.modelspec import TensorSpec

if TYPE_CHECKING:
    import torch

IMAGE_FILES = (".png", ".jpg", ".jpeg")
MAX_JSON_BYTES = 1 << 20  # a JSON input is a number or a small tensor, never an image


def read_input(path: Path, spec: TensorSpec, fit: bool = False) -> torch.Tensor:
    """One file as a tensor of ``spec``'s dtype, batch first (shape and range are checked by the caller)."""
    import torch

    suffix = path.suffix.lower()
    if suffix in IMAGE_FILES:
        return read_image(path, spec, fit)
    if suffix == ".safetensors":
        tensors = read_tensors(path)
        if spec.name not in tensors and len(tensors) != 1:
            raise DataError(f"{path}: holds {len(tensors)} tensors and none named {spec.name!r}")
        value = tensors.get(spec.name, next(iter(tensors.values()), None))
        if value is None:
            raise DataError(f"{path}: holds no tensor")
        return value.contiguous()
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DataError(f"{path}: a JSON input is a number or a small tensor; this file is over 1 MiB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON number or list of numbers ({e})") from e
    if array.ndim == 0:
        array = np.full(spec.shape, float(array))
    if spec.dtype.startswith("int") and np.isfinite(array).all() and (array != np.round(array)).any():
        raise DataError(f"{path}: {spec.name} takes whole numbers ({spec.dtype})")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: holds NaN or infinite values")
    return torch.from_numpy(array).to(getattr(torch, spec.dtype))


def takes_images(spec: TensorSpec) -> bool:
    """Can a picture file feed this input (a 1- or 3-channel image)?"""
    return spec.kind == "image" and spec.shape[1] in (1, 3)


def read_image(path: Path, spec: TensorSpec, fit: bool = False) -> torch.Tensor:
    """A picture as ``spec``'s image: (1, C, H, W) on its encoding; with ``fit``, scaled and centre-cropped to
    the exported height and width."""
    import torch

    from pbrforge.contract import is_rgb16, read_rgb16
    from pbrforge.views import image_to_float

    if not takes_images(spec):
        raise DataError(
            f"{path}: {spec.name} is a {spec.kind} of shape {spec.shape}, not a 1- or 3-channel image: "
            "give it as NAME.safetensors"
        )
    pixels = torch.from_numpy(read_rgb16(path)) if is_rgb16(path) else image_to_float(path)  # (3, H, W)
    if spec.shape[1] == 1:
        if not torch.equal(pixels[0], pixels[1]) or not torch.equal(pixels[0], pixels[2]):
            raise DataError(f"{path}: {spec.name} takes one channel; this image is in colour")
        pixels = pixels[:1]
    if fit:
        pixels = _fit(pixels.float(), spec.shape[-2], spec.shape[-1])
    low, high = spec.encoding
    return (low + (high - low) * pixels.double())[None].to(getattr(torch, spec.dtype))


def _fit(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale so the picture covers height x width (antialiased), then keep the centre."""
    import torch.nn.functional as F

    h, w = pixels.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    scaled = F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return scaled[:, top : top + height, left : left + width].clamp(0, 1)
