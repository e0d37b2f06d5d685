"""Texture sets decoded into contract maps, and the random crops the data set renders from them.

Colour and data: base colour is sRGB and stays so (the contract's albedo is sRGB-encoded); every other map
is linear data. 8- and 16-bit files are decoded to float32 at once, so 16-bit precision lasts until the
contract's PNGs are written. DirectX normals (-Y) are flipped to the contract's OpenGL convention; a set
whose name does not say which it is, is judged against its height map, or else assumed OpenGL with a
warning. A missing roughness map means 0.5 and a missing metallic map 0, each with a warning.

Sampling: each sample is a square crop whose side covers 1 to 4 source texels per output pixel
(``TEXEL_DENSITY``, log-uniform; less only when the source is smaller), resized with antialiasing, then
mirrored or not and rotated by a multiple of 90 degrees. The normal map is transformed as vectors, so the
rendered sample is the rotated render of the unrotated one (``tests/test_materials_in.py`` proves it).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pbrforge.contract import NORMAL_CHANNELS, pack
from pbrforge.datagen.texture_sets import TextureSet
from pbrforge.errors import DataError
from pbrforge.options import MAX_IMAGE_SIDE
from pbrforge.render import linear_to_srgb, srgb_to_linear

TEXEL_DENSITY = (1.0, 4.0)  # source texels per output pixel, log-uniform
DEFAULT_ROUGHNESS = 0.5
DEFAULT_METALLIC = 0.0
PHOTOS = {  # scikit-image's texture photographs (grayscale) and the tint that makes each a base colour
    "brick": (0.80, 0.45, 0.33),
    "grass": (0.42, 0.62, 0.25),
    "gravel": (0.72, 0.68, 0.60),
}
PHOTO_BUMP = 6.0  # normal strength of photo-derived height
HANDEDNESS_MIN_CORRELATION = 0.05  # below this the height map cannot tell OpenGL from DirectX
_logger = logging.getLogger(__name__)


@dataclass
class SourceMaps:
    """A texture set at its own resolution in the contract's conventions: (H, W[, 3]) float32 arrays."""

    albedo: np.ndarray  # sRGB in [0, 1]
    roughness: np.ndarray
    metallic: np.ndarray
    normal: np.ndarray  # unit, OpenGL
    normal_source: str  # what the normal map's convention was and how it was known
    notes: list[str] = field(default_factory=list)  # the warnings given while reading it


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Image bytes -> (H, W, C) float32 in [0, 1]; 16-bit PNGs keep their 16 bits (pypng reads 48-bit RGB)."""
    from PIL import Image

    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 16:
            import png

            w, h, rows, info = png.Reader(bytes=data).asDirect()
            if max(w, h) > MAX_IMAGE_SIDE:
                raise DataError(
                    f"{where} is {w}x{h}; images larger than {MAX_IMAGE_SIDE} px a side are refused"
                )
            raw = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, info["planes"])
            return raw.astype(np.float32) / 65535.0
        img = Image.open(io.BytesIO(data))
        if max(img.size) > MAX_IMAGE_SIDE:
            raise DataError(
                f"{where} is {img.size[0]}x{img.size[1]}; images larger than {MAX_IMAGE_SIDE} px a side are refused"
            )
        img.load()
        if img.mode.startswith("I"):  # 16-bit gray
            arr = np.asarray(img, dtype=np.float32) / 65535.0
        elif img.mode in ("1", "L", "LA"):
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        else:  # RGB, RGBA, palette, CMYK...: alpha is not a material channel
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except DataError:
        raise
    except Exception as e:  # PIL and pypng raise many types on broken files
        detail = re.sub(
            r" at 0x[0-9a-f]+", "", str(e)
        )  # no memory addresses: the metadata stays reproducible
        raise DataError(f"{where}: corrupt or unreadable image ({type(e).__name__}: {detail})") from e
    return arr[..., None] if arr.ndim == 2 else arr


def _read(path: Path) -> np.ndarray:
    return decode_image(Path(path).read_bytes(), str(path))


def _gray(x: np.ndarray) -> np.ndarray:
    """One channel: the first of RGB(A) (data maps are stored gray or replicated)."""
    return x[..., 0]


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[..., :1], 3, axis=-1) if x.shape[-1] < 3 else x[..., :3]


def normals_from_height(height: np.ndarray, strength: float, tiled: bool = True) -> np.ndarray:
    """OpenGL unit normals (H, W, 3) of a height field by central differences (+x right, +y up the image).

    ``tiled`` wraps around the edges (texture sets tile); a photo does not, so its edges are one-sided.
    """
    h = np.pad(height * strength, 1, mode="wrap" if tiled else "edge")
    dx = (h[1:-1, 2:] - h[1:-1, :-2]) * 0.5
    d_row = (h[2:, 1:-1] - h[:-2, 1:-1]) * 0.5
    n = np.stack([-dx, d_row, np.ones_like(dx)], axis=-1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def handedness_from_height(normal: np.ndarray, height: np.ndarray) -> str | None:
    """'gl', 'dx' or None (undecided): does the map's green channel agree with the height's slope the way its red one does?

    Independent of the height's sign and scale: for an OpenGL map both channels correlate with the
    height-derived normal with the same sign; a DirectX map flips green only.
    """
    ref = normals_from_height(height, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.corrcoef(normal[..., 0].ravel(), ref[..., 0].ravel())[0, 1]
        cy = np.corrcoef(normal[..., 1].ravel(), ref[..., 1].ravel())[0, 1]
    if not (np.isfinite(cx) and np.isfinite(cy)) or min(abs(cx), abs(cy)) < HANDEDNESS_MIN_CORRELATION:
        return None  # a flat or unrelated height map says nothing
    return "gl" if np.sign(cx) == np.sign(cy) else "dx"


def _unit_normal(raw: np.ndarray, where: str) -> np.ndarray:
    n = _rgb(raw) * 2 - 1
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    if float(np.median(length)) < 0.5:
        raise DataError(f"{where}: not a normal map (most texels have almost zero length)")
    return (n / np.maximum(length, 1e-6)).astype(np.float32)


# --------------------------------------------------------------------------- one texture set


def load_set(ts: TextureSet) -> SourceMaps:
    """Decode a texture set; DataError (one sentence naming the file) when a file cannot be used."""
    if ts.library == "gltf":
        try:
            return _load_gltf(ts)
        except DataError:
            raise
        except (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError) as e:
            # a texture without a PNG/JPEG source (KHR_texture_basisu, EXT_texture_webp), a bad index, a lost .bin
            raise DataError(
                f"{ts.files['gltf']}: material {ts.material_id} cannot be read ({type(e).__name__}: {e})"
            ) from e
    if ts.library == "photo":
        return photo_source(ts.material_id)
    f = ts.files
    notes: list[str] = []
    albedo = _rgb(_read(f["color"]))
    h, w = albedo.shape[:2]

    def data_map(role: str) -> np.ndarray | None:
        if role not in f:
            return None
        x = _gray(_read(f[role]))
        if x.shape != (h, w):
            raise DataError(f"{f[role]} is {x.shape[1]}x{x.shape[0]}, but its base colour is {w}x{h}")
        return x

    arm = _read(f["arm"]) if "arm" in f else None
    if arm is not None and arm.shape[:2] != (h, w):
        raise DataError(f"{f['arm']} is {arm.shape[1]}x{arm.shape[0]}, but its base colour is {w}x{h}")
    roughness = data_map("roughness")
    if roughness is None and arm is not None:
        roughness = _rgb(arm)[..., 1]
    metallic = data_map("metallic")
    if metallic is None and arm is not None:
        metallic = _rgb(arm)[..., 2]
    height = data_map("height")
    name = f"{ts.library} {ts.material_id}"
    if roughness is None:
        notes.append(f"{name}: no roughness map, using {DEFAULT_ROUGHNESS}")
        roughness = np.full((h, w), DEFAULT_ROUGHNESS, np.float32)
    if metallic is None:
        notes.append(f"{name}: no metallic map, using {DEFAULT_METALLIC:g}")
        metallic = np.full((h, w), DEFAULT_METALLIC, np.float32)
    normal_file = next((f[r] for r in ("normal_gl", "normal_dx", "normal") if r in f), None)
    if normal_file is None:
        if height is not None:
            normal, source = normals_from_height(height, 0.05 * w), "derived from the height map"
        else:
            notes.append(f"{name}: no normal or height map, the surface is flat")
            normal, source = np.dstack([np.zeros((h, w, 2)), np.ones((h, w, 1))]).astype(np.float32), "flat"
    else:
        normal = _unit_normal(_read(normal_file), str(normal_file))
        if normal.shape[:2] != (h, w):
            raise DataError(
                f"{normal_file} is {normal.shape[1]}x{normal.shape[0]}, but its base colour is {w}x{h}"
            )
        if "normal_gl" in f:
            convention, source = "gl", "OpenGL, by file name"
        elif "normal_dx" in f:
            convention, source = "dx", "DirectX, by file name, converted"
        elif height is not None and (judged := handedness_from_height(normal, height)) is not None:
            convention = judged
            source = (
                f"{'OpenGL' if convention == 'gl' else 'DirectX, converted'}, judged against the height map"
            )
        else:
            convention, source = "gl", "assumed OpenGL"
            why = "its height map is flat or unrelated" if height is not None else "there is no height map"
            notes.append(
                f"{normal_file.name}: the name does not say OpenGL or DirectX and {why}; assumed OpenGL"
            )
        if convention == "dx":
            normal = normal * np.array([1, -1, 1], np.float32)
    for note in notes:
        _logger.warning(note)
    return SourceMaps(
        albedo, roughness.astype(np.float32), metallic.astype(np.float32), normal, source, notes
    )


def _load_gltf(ts: TextureSet) -> SourceMaps:
    """A glTF material: its textures (embedded, data URI or beside the file) times its factors."""
    import base64
    import urllib.parse

    import pygltflib

    path = ts.files["gltf"]
    gltf = pygltflib.GLTF2().load(str(path))
    material = gltf.materials[ts.gltf["material"]]
    pbr = material.pbrMetallicRoughness

    def texture(info) -> np.ndarray | None:
        if info is None:
            return None
        image = gltf.images[gltf.textures[info.index].source]
        where = f"{path}#image{gltf.textures[info.index].source}"
        if image.bufferView is not None:
            view = gltf.bufferViews[image.bufferView]
            blob = gltf.binary_blob() if path.suffix.lower() == ".glb" else _buffer(gltf, view.buffer, path)
            data = bytes(blob[(view.byteOffset or 0) : (view.byteOffset or 0) + view.byteLength])
        elif image.uri and image.uri.startswith("data:"):
            data = base64.b64decode(image.uri.split(",", 1)[1])
        else:
            file = (path.parent / urllib.parse.unquote(image.uri or "")).resolve()
            if not file.is_file() or path.parent.resolve() not in file.parents:
                raise DataError(f"{where}: texture {image.uri!r} is not a file beside {path.name}")
            data, where = file.read_bytes(), str(file)
        return decode_image(data, where)

    factor = np.asarray(ts.gltf["base_color_factor"][:3], np.float32)
    base = texture(pbr.baseColorTexture)
    if base is None:  # texture_sets lists only materials with one: the file changed since
        raise DataError(f"{path}: material {ts.gltf['material']} has no baseColorTexture")
    color = _rgb(base)
    h, w = color.shape[:2]
    # the factor multiplies linear colour: decode sRGB, scale, encode again
    albedo = linear_to_srgb(srgb_to_linear(torch.from_numpy(color)) * torch.from_numpy(factor)).numpy()
    mr = texture(pbr.metallicRoughnessTexture)
    notes: list[str] = []
    if mr is not None and mr.shape[:2] != (h, w):
        mr = _resize_hwc(mr, h, w)
    roughness = (_rgb(mr)[..., 1] if mr is not None else np.ones((h, w), np.float32)) * ts.gltf[
        "roughness_factor"
    ]
    metallic = (_rgb(mr)[..., 2] if mr is not None else np.ones((h, w), np.float32)) * ts.gltf[
        "metallic_factor"
    ]
    raw_normal = texture(material.normalTexture)
    if raw_normal is None:
        normal, source = np.dstack([np.zeros((h, w, 2)), np.ones((h, w, 1))]).astype(np.float32), "flat"
    else:
        if raw_normal.shape[:2] != (h, w):
            raw_normal = _resize_hwc(raw_normal, h, w)
        n = _rgb(raw_normal) * 2 - 1
        n[..., :2] *= ts.gltf["normal_scale"]
        normal = (n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)).astype(np.float32)
        source = "OpenGL, as glTF specifies"
    return SourceMaps(
        np.clip(albedo, 0, 1).astype(np.float32),
        np.clip(roughness, 0, 1).astype(np.float32),
        np.clip(metallic, 0, 1).astype(np.float32),
        normal,
        source,
        notes,
    )


def _buffer(gltf, index: int, path: Path) -> bytes:
    import base64
    import urllib.parse

    uri = gltf.buffers[index].uri or ""
    if uri.startswith("data:"):
        return base64.b64decode(uri.split(",", 1)[1])
    file = (path.parent / urllib.parse.unquote(uri)).resolve()
    if not file.is_file() or path.parent.resolve() not in file.parents:
        raise DataError(f"{path}: buffer {uri!r} is not a file beside {path.name}")
    return file.read_bytes()


def _resize_hwc(x: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    return (
        F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        .permute(1, 2, 0)
        .numpy()
    )


# --------------------------------------------------------------------------- photo-textured materials


def photo_source(name: str) -> SourceMaps:
    """A scikit-image texture photograph as a material: colour and height from the photo, roughness from contrast.

    The photos are grayscale: the base colour is the photo times a fixed tint per photo (``PHOTOS``). The
    height is the blurred luminance, the normal its central differences, and the roughness rises with
    the local contrast (rough where the photo is busy, smoother where it is flat); metallic is 0.
    """
    import skimage.data
    from skimage.filters import gaussian

    photo, _, quarter = name.partition("-q")
    if photo not in PHOTOS:
        raise DataError(f"unknown photo texture {photo!r}; known: {', '.join(PHOTOS)}")
    gray = np.asarray(getattr(skimage.data, photo)(), np.float32) / 255.0
    if quarter:  # one quadrant of the photo: a held-out split never sees the others' texels
        q = int(quarter)
        half = gray.shape[0] // 2
        gray = gray[(q // 2) * half : (q // 2 + 1) * half, (q % 2) * half : (q % 2 + 1) * half]
    albedo = np.clip(gray[..., None] * np.asarray(PHOTOS[photo], np.float32) * 1.4, 0, 1)
    height = gaussian(gray, sigma=1.0)
    mean = gaussian(gray, sigma=4.0)
    contrast = np.sqrt(np.maximum(gaussian(gray * gray, sigma=4.0) - mean * mean, 0))
    lo, hi = np.quantile(contrast, [0.05, 0.95])
    roughness = 0.35 + 0.55 * np.clip((contrast - lo) / max(hi - lo, 1e-6), 0, 1)
    return SourceMaps(
        albedo.astype(np.float32),
        roughness.astype(np.float32),
        np.zeros_like(gray),
        normals_from_height(height, PHOTO_BUMP, tiled=False),
        "derived from the photo's height",
    )


def photo_sets(quarters: bool = True) -> list[TextureSet]:
    """The photo-textured materials: each photo's four quadrants, so splits by material hold out whole regions."""
    ids = [f"{p}-q{q}" for p in PHOTOS for q in range(4)] if quarters else list(PHOTOS)
    return [TextureSet("photo", i, {}, Path("skimage.data")) for i in ids]


# --------------------------------------------------------------------------- crops


def transform_maps(maps: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """Mirror left-right (if asked), then rotate counter-clockwise by ``quarter_turns`` x 90 degrees.

    Pixels move and normals turn with them: mirroring negates x, a quarter turn maps (x, y) to (-y, x).
    """
    x = maps.clone()
    if mirror:
        x = torch.flip(x, dims=[-1])
        x[..., NORMAL_CHANNELS.start, :, :] *= -1
    for _ in range(quarter_turns % 4):
        x = torch.rot90(x, 1, dims=(-2, -1))
        nx = x[..., NORMAL_CHANNELS.start, :, :].clone()
        x[..., NORMAL_CHANNELS.start, :, :] = -x[..., NORMAL_CHANNELS.start + 1, :, :]
        x[..., NORMAL_CHANNELS.start + 1, :, :] = nx
    return x


def transform_points(points: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """The same mirror and turn for points (..., 3) around the patch's centre (light positions)."""
    p = points.clone()
    if mirror:
        p[..., 0] = -p[..., 0]
    for _ in range(quarter_turns % 4):
        p = torch.stack([-p[..., 1], p[..., 0], p[..., 2]], dim=-1)
    return p


def sample_crop(src: SourceMaps, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One random crop as (8, size, size) contract maps, and the record of how it was taken."""
    h, w = src.albedo.shape[:2]
    density = math.exp(rng.uniform(math.log(TEXEL_DENSITY[0]), math.log(TEXEL_DENSITY[1])))
    side = max(1, min(h, w, round(size * density)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    turns, mirror = int(rng.integers(4)), bool(rng.random() < 0.5)

    def crop(a: np.ndarray) -> torch.Tensor:
        a = a[y0 : y0 + side, x0 : x0 + side]
        a = a[..., None] if a.ndim == 2 else a
        t = torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None]
        return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]

    # colour is averaged in linear light, then encoded as sRGB again
    albedo = linear_to_srgb(crop(srgb_to_linear(torch.from_numpy(src.albedo)).numpy()))
    maps = pack(
        {
            "albedo": albedo,
            "roughness": crop(src.roughness).clamp(0, 1),
            "metallic": crop(src.metallic).clamp(0, 1),
            "normal": F.normalize(crop(src.normal), dim=0, eps=1e-6),
        }
    )
    maps = transform_maps(maps, turns, mirror)
    record = {
        "crop": [x0, y0, side],
        "scale": side / size,
        "rotation": 90 * turns,
        "mirror": mirror,
    }
    return maps.numpy(), record


def metadata_of(ts: TextureSet) -> dict:
    """What a MatSynth set's metadata.json says that is worth keeping (category, physical size)."""
    meta_file = ts.files.get("metadata")
    if meta_file is None:
        return {}
    try:
        meta = json.loads(Path(meta_file).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_file}: unreadable metadata ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_file}: metadata is not a JSON object")
    return {k: meta[k] for k in ("category", "physical_size") if isinstance(meta.get(k), str | int | float)}
