"""Room light for the renderer: HDR environment maps read from disk and cut into a few distant lights.

A phone capture always has the room's light in it. An equirectangular HDR map is reduced to K distant
lights by median cut (Debevec 2006, "A median cut algorithm for light probe sampling"): the upper
hemisphere, the only half that lights an upward-facing patch, is split K-1 times at the energy median
along its longer side, and each region becomes one light at its energy centroid. Its power is chosen so
that the diffuse (cosine-weighted) irradiance of the region is kept exactly, not its raw energy. K lights keep the renderer differentiable and cheap; the data set stores them, so a loss or
metric can relight with the very room a sample was rendered in.

Lights are stored normalised: their irradiance on an upward-facing surface has luminance 1, so a
capture states the room's strength as one number relative to the flash.

Maps: OpenEXR (``.exr``, through PyPI's ``openexr``), the base64 data-URI modules of npm
``@pmndrs/assets`` (``.exr.js``, CC0) and Radiance ``.hdr`` (through OpenCV when installed).
"""

from __future__ import annotations

import base64
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbrforge.errors import DataError

DEFAULT_LIGHTS = 16  # median-cut regions per map: a power of two
MAX_MAP_SIDE = 8192
LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance of linear RGB
SUFFIXES = (".exr", ".exr.js", ".hdr")


@dataclass(frozen=True)
class Environment:
    """K distant lights: unit ``directions`` (K, 3) towards each, z up, and RGB ``irradiance`` (K, 3)."""

    name: str
    source: str
    directions: np.ndarray
    irradiance: np.ndarray

    def coarsened(self, count: int) -> Environment:
        """The same room in ``count`` lights: median cut orders its lights so that runs of 2^j are subtrees,
        and each run merges into one light keeping its cosine-weighted irradiance (the sum of E d)."""
        k = len(self.directions)
        if count >= k or k % count:
            return self
        vec = (self.directions[:, None, :] * self.irradiance[:, :, None]).reshape(count, k // count, 3, 3)
        summed = vec.sum(1)  # (count, rgb, xyz): per channel, the sum of irradiance times direction
        luma_vec = np.einsum("c,ncx->nx", LUMA, summed)  # (count, 3)
        norm = np.linalg.norm(luma_vec, axis=1, keepdims=True)
        dirs = np.where(norm > 1e-12, luma_vec / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))
        rgb = np.einsum("ncx,nx->nc", summed, dirs)  # each channel's vector projected on the light's axis
        return Environment(self.name, self.source, dirs, np.clip(rgb, 0, None))

    def as_rows(self) -> list[list[float]]:
        """(K, 6) rows ``dx, dy, dz, r, g, b`` for render_metadata.json."""
        return np.concatenate([self.directions, self.irradiance], 1).round(6).tolist()

    @classmethod
    def from_rows(cls, name: str, source: str, rows: list[list[float]]) -> Environment:
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return cls(name, source, a[:, :3], a[:, 3:])


def environment_name(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_environment_files(folder: Path) -> list[Path]:
    """The HDR maps directly in ``folder``, sorted by name (refused in one sentence when there are none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"environment folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
    if not files:
        raise DataError(f"{folder} holds no environment map ({', '.join(SUFFIXES)})")
    return files


def read_environment_map(path: Path) -> np.ndarray:
    """An equirectangular map as (H, W, 3) float32 linear radiance, row 0 at the zenith, negatives clamped."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".exr.js"):
            img = _read_exr_bytes(_data_uri_bytes(path))
        elif name.endswith(".exr"):
            img = _read_exr_file(path)
        elif name.endswith(".hdr"):
            img = _read_hdr(path)
        else:
            raise DataError(f"{path}: not an environment map ({', '.join(SUFFIXES)})")
    except DataError:
        raise
    except Exception as e:  # a damaged file surfaces as whatever the decoder raises
        raise DataError(f"{path}: cannot decode the environment map ({type(e).__name__}: {e})") from e
    if img.ndim != 3 or img.shape[2] < 3 or min(img.shape[:2]) < 4 or max(img.shape[:2]) > MAX_MAP_SIDE:
        raise DataError(f"{path}: an environment map must be H x W x 3 with sides 4..{MAX_MAP_SIDE}")
    img = np.nan_to_num(img[..., :3].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # DWAB is lossy: a few texels decode slightly negative; light is never negative
    return np.clip(img, 0, None)


def _data_uri_bytes(path: Path) -> bytes:
    text = path.read_text(errors="replace")
    marker = "base64,"
    start = text.find(marker)
    if start < 0:
        raise DataError(f"{path}: no base64 data URI inside")
    start += len(marker)
    end = min((i for i in (text.find("'", start), text.find('"', start)) if i >= 0), default=len(text))
    return base64.b64decode(text[start:end], validate=False)


def _read_exr_bytes(data: bytes) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".exr") as f:  # OpenEXR reads from a path
        f.write(data)
        f.flush()
        return _read_exr_file(Path(f.name))


def _read_exr_file(path: Path) -> np.ndarray:
    try:
        import OpenEXR
    except ImportError as e:
        raise DataError(
            "reading .exr environment maps needs the openexr package (pip install openexr)"
        ) from e
    with OpenEXR.File(str(path)) as f:
        channels = f.channels()
        if "RGB" in channels:
            return np.asarray(channels["RGB"].pixels, dtype=np.float32)
        if all(c in channels for c in "RGB"):
            return np.stack([np.asarray(channels[c].pixels, dtype=np.float32) for c in "RGB"], -1)
    raise DataError(f"{path}: the EXR has no R, G, B channels")


def _read_hdr(path: Path) -> np.ndarray:
    try:
        import cv2
    except ImportError as e:
        raise DataError(
            "reading .hdr environment maps needs OpenCV (pip install opencv-python-headless)"
        ) from e
    img = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: OpenCV cannot read it as a Radiance HDR")
    return img[..., ::-1].astype(np.float32)  # OpenCV gives BGR


def median_cut(radiance: np.ndarray, count: int = DEFAULT_LIGHTS) -> tuple[np.ndarray, np.ndarray]:
    """Median-cut the upper hemisphere of an equirectangular map into ``count`` distant lights.

    Args:
        radiance: (H, W, 3) linear radiance, row 0 at the zenith, column 0 at azimuth 0 (+x), azimuth
            growing towards +y.
        count: number of lights, a power of two.

    Returns:
        Unit directions (K, 3) and RGB irradiance at normal incidence (K, 3): the region's radiance times
        solid angle, times the length of its mean direction (so n . sum over the region is kept).
    """
    if count < 1 or count & (count - 1):
        raise ValueError(f"median cut makes a power of two of lights, not {count}")
    h, w, _ = radiance.shape
    rows = max(1, h // 2)
    theta = (np.arange(rows) + 0.5) * math.pi / h  # polar angle from the zenith
    phi = (np.arange(w) + 0.5) * 2 * math.pi / w
    solid = (math.pi / h) * (2 * math.pi / w) * np.sin(theta)  # (rows,) steradians per texel
    rgb = radiance[:rows].astype(np.float64) * solid[:, None, None]  # (rows, W, 3) irradiance per texel
    energy = rgb @ LUMA
    if not np.isfinite(energy).all() or energy.sum() <= 0:
        raise DataError("the environment map's upper hemisphere holds no light")
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    dirs = np.stack([st * np.cos(phi)[None], st * np.sin(phi)[None], np.broadcast_to(ct, (rows, w))], -1)
    regions = [(0, rows, 0, w)]
    while len(regions) < count:
        regions = [half for r in regions for half in _split(energy, r, theta)]
    out_dirs, out_rgb = [], []
    for r0, r1, c0, c1 in regions:
        e = energy[r0:r1, c0:c1]
        d = (dirs[r0:r1, c0:c1] * e[..., None]).sum((0, 1))
        total = e.sum()
        if np.linalg.norm(d) < 1e-12 or total <= 0:  # a dark or empty region: a powerless light
            out_dirs.append(np.array([0.0, 0.0, 1.0]))
            out_rgb.append(np.zeros(3))
            continue
        # the light keeps the region's cosine-weighted integral, n . sum(L w dw), exactly for every normal
        # the region lies above: a mean of unit vectors is shorter than one, so its power shrinks with it
        out_dirs.append(d / np.linalg.norm(d))
        out_rgb.append(rgb[r0:r1, c0:c1].sum((0, 1)) * np.linalg.norm(d) / total)
    return np.array(out_dirs), np.array(out_rgb)


def _split(energy: np.ndarray, region: tuple[int, int, int, int], theta: np.ndarray) -> list:
    """Halve a region at its energy median along its longer side in angle (width shrinks by sin theta)."""
    r0, r1, c0, c1 = region
    h, w = r1 - r0, c1 - c0
    width = w * 2 * math.sin(theta[(r0 + r1) // 2])  # a texel is 2x taller in angle than wide at the equator
    if h < 2 and w < 2:  # one texel cannot be halved: the other half is an empty, dark region
        return [region, (r0, r0, c0, c0)]
    along_rows = (h >= width and h > 1) or w < 2
    profile = energy[r0:r1, c0:c1].sum(1 if along_rows else 0)
    cut = int(np.searchsorted(np.cumsum(profile), profile.sum() / 2)) + 1
    cut = min(max(cut, 1), len(profile) - 1)
    if along_rows:
        return [(r0, r0 + cut, c0, c1), (r0 + cut, r1, c0, c1)]
    return [(r0, r1, c0, c0 + cut), (r0, r1, c0 + cut, c1)]


def upward_irradiance(directions: np.ndarray, irradiance: np.ndarray) -> float:
    """Luminance of the irradiance the lights give a surface facing +z."""
    return float((irradiance @ LUMA) @ np.clip(directions[:, 2], 0, None))


def load_environment(path: Path, count: int = DEFAULT_LIGHTS) -> Environment:
    """Read one map and cut it into ``count`` lights, normalised to unit upward irradiance."""
    dirs, rgb = median_cut(read_environment_map(path), count)
    up = upward_irradiance(dirs, rgb)
    if up <= 0:
        raise DataError(f"{path}: the environment gives no light to an upward-facing surface")
    return Environment(environment_name(Path(path)), Path(path).name, dirs, rgb / up)


def load_environments(folder: Path, count: int = DEFAULT_LIGHTS) -> dict[str, Environment]:
    """Every map in ``folder``, by name; all are decoded before anything is returned."""
    out: dict[str, Environment] = {}
    for p in find_environment_files(folder):
        env = load_environment(p, count)
        if env.name in out:
            raise DataError(f"{folder} holds two environment maps named {env.name!r}")
        out[env.name] = env
    return out


def uniform_dome(count: int = DEFAULT_LIGHTS) -> Environment:
    """A grey overcast sky: ``count`` equal lights spread over the upper hemisphere (Fibonacci spiral).

    The stand-in room light where no environment map is at hand (a tripod-only data set, old data).
    """
    k = np.arange(count) + 0.5
    z = 1 - k / count  # equal-area bands of the hemisphere
    r = np.sqrt(1 - z * z)
    phi = k * math.pi * (3 - math.sqrt(5))
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    rgb = np.ones((count, 3)) / count
    return Environment("uniform-dome", "built in", dirs, rgb / upward_irradiance(dirs, rgb))


def rotate_z(directions: np.ndarray, angle: float) -> np.ndarray:
    """Directions turned by ``angle`` radians about the patch normal."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return directions @ rot.T
