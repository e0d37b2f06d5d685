"""Write a procedural PBR data set: materials, their three-view clean and dirty captures, and metadata.

The layout is the one ``pbrforge.dataset`` reads; everything is built beside the output folder and renamed.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pbrforge import __version__
from pbrforge.contract import write_material
from pbrforge.datagen.capture import CaptureDamage, display_damage, linear_damage
from pbrforge.datagen.materials import FAMILIES, make_material
from pbrforge.dataset import FORMAT_VERSION, METADATA_FILE
from pbrforge.errors import DataError
from pbrforge.fileio import exclusive, write_json
from pbrforge.render import DEFAULT_CAMERA, DEFAULT_LIGHT_POWER, render, to_display, view_lights

LIGHT_DISTANCE = 2.2
ELEVATION_RANGE = (35.0, 60.0)


def generate_dataset(
    out: Path,
    count: int,
    size: int,
    seed: int = 0,
    dirty_ratio: float = 0.5,
    samples_per_material: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a complete data set to ``out`` atomically (built beside it, then renamed) and return its metadata."""
    out = Path(out)
    if count < 1 or size < 16 or not 0 <= dirty_ratio <= 1 or samples_per_material < 1:
        raise DataError(
            "need --count >= 1, --size >= 16, 0 <= --dirty-ratio <= 1, --samples-per-material >= 1"
        )
    if out.is_symlink():
        raise DataError(f"{out} is a symbolic link; give the real folder to write the data set to")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not empty; pass --overwrite to replace it")
    with exclusive(out):  # a second run into the same folder is refused rather than raced
        tmp = out.with_name(f".{out.name}.tmp-datagen")
        if tmp.exists():
            shutil.rmtree(tmp)
        rng = np.random.default_rng(seed)
        families = sorted(FAMILIES)
        n_mat = math.ceil(count / samples_per_material)
        materials = {}
        for i in range(n_mat):
            fam = families[i % len(families)]
            materials[f"{fam}_{i:03d}"] = {"family": fam, "seed": int(rng.integers(1 << 31))}
        mat_names = list(materials)
        samples = {}
        damage = CaptureDamage()
        try:
            maps_cache: dict[str, torch.Tensor] = {}
            for name, m in tqdm(materials.items(), desc="materials", disable=not progress):
                maps = torch.from_numpy(make_material(m["family"], m["seed"], size).maps())
                write_material(tmp / "output" / name, maps)
                maps_cache[name] = maps
            for j in tqdm(range(count), desc="samples", disable=not progress):
                sid = f"sample_{j:04d}"
                mat = mat_names[j % n_mat]
                s_rng = np.random.default_rng([seed, j])
                lights = view_lights(
                    float(s_rng.uniform(0, 2 * math.pi)),
                    float(s_rng.uniform(*ELEVATION_RANGE)),
                    LIGHT_DISTANCE,
                )
                power = DEFAULT_LIGHT_POWER * float(s_rng.uniform(0.8, 1.2))
                with torch.no_grad():
                    radiance = render(maps_cache[mat][None], lights[None], power)[0]  # (V, 3, H, W)
                sources = ["clean"] + (["dirty"] if s_rng.random() < dirty_ratio else [])
                clean = to_display(radiance).numpy()
                _write_views(tmp / "input" / "clean" / sid, [v for v in clean])
                if "dirty" in sources:
                    damaged = to_display(
                        torch.from_numpy(linear_damage(radiance.numpy(), s_rng, damage))
                    ).numpy()
                    _write_views(
                        tmp / "input" / "dirty" / sid, [display_damage(v, s_rng, damage) for v in damaged]
                    )
                samples[sid] = {
                    "material": mat,
                    "sources": sources,
                    "lights": lights.tolist(),
                    "light_power": power,
                }
            meta = {
                "format_version": FORMAT_VERSION,
                "generator": f"pbrforge.datagen {__version__}",
                "seed": seed,
                "size": size,
                "count": count,
                "dirty_ratio": dirty_ratio,
                "camera": list(DEFAULT_CAMERA),
                "light_power": DEFAULT_LIGHT_POWER,
                "light_distance": LIGHT_DISTANCE,
                "samples": samples,
                "materials": materials,
            }
            write_json(tmp / "input" / METADATA_FILE, meta)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return meta


def _write_views(folder: Path, views: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(views):
        img = (
            v
            if isinstance(v, Image.Image)
            else Image.fromarray(np.round(np.clip(v, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0), "RGB")
        )
        img.save(folder / f"{i}.png", format="PNG")
