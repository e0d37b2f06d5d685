"""Synthetic flash captures in MaterialGAN's layout, with the true maps beside them.

A capture scored by ``pbrforge evaluate-capture`` is usually a real one; these are the same thing made
from known maps, so the evaluation can be checked against the truth and a model compared on many samples.
Each photo is a phone held 0-30 degrees off vertical (the first within 10) at a random azimuth, far enough
that the sample fills a 40-70 degree field of view (``pbrforge.captures``' ranges), its flash at the lens.
Unlike a data set's views, one exposure and one flash power serve every photo, as with a phone locked
for a capture: that is what lets an evaluation fit one gain per method.

Folder: ``NN.png`` (sRGB, row 0 at +y), ``camera_pos.txt`` (x,y,z in cm, origin at the sample's centre),
``image_size.txt`` (the side in cm), ``truth/{albedo,roughness,metallic,normal}.png`` (16-bit normal) and
``truth/capture.json`` (the seed, the flash power, the cameras in world units).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pbrforge.capture_eval import CAMERAS_FILE, MIN_PHOTOS, SIDE_FILE
from pbrforge.captures import EXPOSURE, SAMPLE_SIDE_CM, TARGET_IRRADIANCE, framing_distance, phone_eye
from pbrforge.contract import read_material, resize_maps, write_material
from pbrforge.dataset import load_metadata
from pbrforge.errors import DataError
from pbrforge.fileio import replace_path, temp_name, write_json
from pbrforge.render import render, to_display

_logger = logging.getLogger(__name__)

DEFAULT_PHOTOS = 9  # as many as MaterialGAN's real captures


def phone_cameras(n_photos: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) camera positions in world units: one field of view; each shot its own tilt, azimuth, distance."""
    base = framing_distance(rng)
    return np.stack([phone_eye(v == 0, base, rng) for v in range(n_photos)])


def export_capture(
    maps: torch.Tensor,
    out_dir: Path,
    n_photos: int = DEFAULT_PHOTOS,
    seed: int = 0,
    size: int | None = None,
    side_cm: float = SAMPLE_SIDE_CM,
    overwrite: bool = False,
) -> dict:
    """Write a capture of (8, H, W) ``maps`` to ``out_dir`` (built beside it, then renamed); return its record.

    Args:
        maps: contract maps, the truth.
        n_photos: photos to take (at least 4: three inputs and one to score).
        seed: the cameras and the exposure are drawn from it.
        size: side of the photos in pixels [default: the maps']; the maps are resized to it.
        side_cm: the sample's side written to image_size.txt (world units are cm * 2 / side_cm).
        overwrite: replace an existing ``out_dir``.
    """
    out_dir = Path(out_dir)
    if n_photos < MIN_PHOTOS:
        raise DataError(f"a capture needs at least {MIN_PHOTOS} photos, not {n_photos}")
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} exists; pass overwrite to replace it")
    side = size or maps.shape[-1]
    truth = resize_maps(maps.detach().float(), side)
    rng = np.random.default_rng(seed)
    eyes = phone_cameras(n_photos, rng)
    # one locked exposure: the centre gets TARGET_IRRADIANCE x 0.8-1.2 at the shots' mean squared distance
    power = TARGET_IRRADIANCE * rng.uniform(*EXPOSURE) * float(np.mean(np.sum(eyes**2, axis=1)))
    eye_t = torch.from_numpy(eyes).float()[None]  # (1, N, 3)
    with torch.no_grad():
        photos = to_display(render(truth[None], eye_t, power, eye_t))[0]  # (N, 3, S, S): eye = light
    tmp = temp_name(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for i, photo in enumerate(photos):
            arr = np.round(photo.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(tmp / f"{i:02d}.png", format="PNG")
        cm = eyes * side_cm / 2
        (tmp / CAMERAS_FILE).write_text("".join(f"{x:.6f},{y:.6f},{z:.6f}\n" for x, y, z in cm))
        (tmp / SIDE_FILE).write_text(f"{side_cm:g}\n")
        write_material(tmp / "truth", truth, normal_bits=16)
        record = {
            "seed": seed,
            "photos": n_photos,
            "size": side,
            "side_cm": side_cm,
            "flash_power": power,
            "eyes_world": np.round(eyes, 6).tolist(),
            "note": "flash at the camera, one exposure for every photo; world units = cm * 2 / side_cm",
        }
        write_json(tmp / "truth" / "capture.json", record)
        replace_path(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return record


def export_captures(root: Path, count: int, seed: int = 0, n_photos: int = DEFAULT_PHOTOS) -> list[Path]:
    """Captures of the first ``count`` materials of the data set at ``root``, in ``root/captures/<name>/``.

    The data set itself is not touched; each capture draws from its own seed (``seed``, 2, index).
    """
    root = Path(root)
    meta = load_metadata(root)
    names = list(meta["materials"])[:count]
    if len(names) < count:
        _logger.warning(
            f"--export-capture {count}: the data set has {len(names)} materials; exporting them all"
        )
    written = []
    for i, name in enumerate(names):
        maps = read_material(root / "output" / name)
        out = root / "captures" / name
        export_capture(
            maps,
            out,
            n_photos,
            seed=int(np.random.default_rng([seed, 2, i]).integers(1 << 31)),
            overwrite=True,
        )
        written.append(out)
    _logger.info(f"wrote {len(written)} capture(s) in {root / 'captures'}")
    return written
