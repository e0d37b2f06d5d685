"""Write a PBR data set: procedural and imported materials, their three-view clean and dirty captures, metadata.

The layout is the one ``pbrforge.dataset`` reads; everything is built beside the output folder and renamed.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pbrforge import __version__
from pbrforge.captures import (
    DEFAULT_CAPTURES,
    TRIPOD_LIGHT_DISTANCE,
    batch_captures,
    draw_capture,
    needs_environment,
    render_capture,
)
from pbrforge.contract import write_material
from pbrforge.datagen.capture import CaptureDamage, display_damage, linear_damage
from pbrforge.datagen.imported import load_set, metadata_of, photo_sets, sample_crop
from pbrforge.datagen.materials import FAMILIES, make_material
from pbrforge.datagen.texture_sets import Skipped, TextureSet, find_sets
from pbrforge.dataset import FORMAT_VERSION, METADATA_FILE
from pbrforge.environments import Environment, load_environments
from pbrforge.errors import DataError
from pbrforge.fileio import exclusive, write_json
from pbrforge.render import DEFAULT_CAMERA, DEFAULT_LIGHT_POWER, to_display

# CC0 HDR maps of npm @pmndrs/assets, installed by `make install` from datagen/hdri/package-lock.json
DEFAULT_ENVIRONMENTS = (
    Path(__file__).resolve().parent / "hdri" / "node_modules" / "@pmndrs" / "assets" / "hdri"
)
_logger = logging.getLogger(__name__)


def resolve_environments(mix: Mapping[str, float], folder: Path | None) -> dict[str, Environment]:
    """The room lights a capture mix needs, all decoded before anything is written ({} for tripod only)."""
    if not needs_environment(mix):
        return {}
    if folder is None:
        if not DEFAULT_ENVIRONMENTS.is_dir():
            raise DataError(
                "phone captures need environment maps for their room light: run `make install` "
                "(it installs npm @pmndrs/assets) or pass --environments DIR with .exr or .hdr files"
            )
        folder = DEFAULT_ENVIRONMENTS
    return load_environments(folder)


def generate_dataset(
    out: Path,
    count: int,
    size: int,
    seed: int = 0,
    dirty_ratio: float = 0.5,
    samples_per_material: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    material_dirs: Sequence[Path] = (),
    photo_textures: bool = False,
    captures: Mapping[str, float] = DEFAULT_CAPTURES,
    environments_dir: Path | None = None,
) -> dict:
    """Write a complete data set to ``out`` atomically (built beside it, then renamed) and return its metadata.

    ``count`` procedural samples come first; then, for every texture set found under ``material_dirs``
    (and the photo-textured materials), ``samples_per_material`` samples, each from its own random crop.
    Each sample's capture model is drawn from the ``captures`` mix (name -> weight, ``pbrforge.captures``);
    phone captures take their room light from the maps in ``environments_dir`` (default: @pmndrs/assets).
    """
    out = Path(out)
    if count < 0 or size < 16 or not 0 <= dirty_ratio <= 1 or samples_per_material < 1:
        raise DataError(
            "need --count >= 0, --size >= 16, 0 <= --dirty-ratio <= 1, --samples-per-material >= 1"
        )
    if out.is_symlink():
        raise DataError(f"{out} is a symbolic link; give the real folder to write the data set to")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not empty; pass --overwrite to replace it")
    sets, skipped = find_all_sets(material_dirs, photo_textures)
    if count == 0 and not sets:
        raise DataError(_nothing_usable(material_dirs, skipped))
    envs = resolve_environments(captures, environments_dir)
    mix = {k: float(v) for k, v in captures.items()}
    render_sample = partial(_render_sample, mix=mix, environments=envs)
    with exclusive(out):  # a second run into the same folder is refused rather than raced
        tmp = out.with_name(f".{out.name}.tmp-datagen")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            materials: dict[str, dict] = {}
            samples: dict[str, dict] = {}
            if count:
                _procedural(
                    tmp,
                    count,
                    size,
                    seed,
                    dirty_ratio,
                    samples_per_material,
                    materials,
                    samples,
                    progress,
                    render_sample,
                )
            used_sets = _imported(
                tmp,
                sets,
                size,
                seed,
                dirty_ratio,
                samples_per_material,
                materials,
                samples,
                skipped,
                progress,
                render_sample,
            )
            if not samples:
                raise DataError(_nothing_usable(material_dirs, skipped))
            _warn_unused_folders(material_dirs, used_sets, skipped)
            meta = {
                "format_version": FORMAT_VERSION,
                "generator": f"pbrforge.datagen {__version__}",
                "seed": seed,
                "size": size,
                "count": len(samples),
                "dirty_ratio": dirty_ratio,
                "camera": list(DEFAULT_CAMERA),
                "light_power": DEFAULT_LIGHT_POWER,
                "light_distance": TRIPOD_LIGHT_DISTANCE,
                "samples": samples,
                "materials": materials,
                "captures": mix,
                "environments": {
                    name: {"source": e.source, "lights": e.as_rows()} for name, e in sorted(envs.items())
                },
            }
            if material_dirs or photo_textures:
                meta["imports"] = {
                    "found": len(sets) + sum(1 for s in skipped if not s.at_decode),
                    "used": len(used_sets),
                    "skipped": [{"where": s.where, "why": s.why} for s in skipped],
                }
            write_json(tmp / "input" / METADATA_FILE, meta)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return meta


def find_all_sets(
    material_dirs: Sequence[Path], photo_textures: bool
) -> tuple[list[TextureSet], list[Skipped]]:
    """The texture sets of every --materials folder (refused in one sentence if one is not a folder)."""
    sets: list[TextureSet] = []
    skipped: list[Skipped] = []
    for d in dict.fromkeys(Path(d).resolve() for d in material_dirs):  # a folder given twice counts once
        if not d.is_dir():
            raise DataError(f"--materials {d} is not a folder")
        found, passed = find_sets(d)
        sets += found
        skipped += passed
    if photo_textures:
        sets += photo_sets()
    return sets, skipped


def _nothing_usable(material_dirs: Sequence[Path], skipped: list[Skipped]) -> str:
    if not material_dirs and not skipped:
        return (
            "--count is 0 and neither --materials nor --photo-textures was given: there is nothing to render"
        )
    where = ", ".join(str(d) for d in material_dirs) or "the photo textures"
    why = f"; skipped: {skipped[0].where} ({skipped[0].why})" if skipped else ""
    return (
        f"no usable material set was found under {where} and --count is 0, so there is nothing to render{why}"
    )


def _warn_unused_folders(
    material_dirs: Sequence[Path], used_sets: Sequence[TextureSet], skipped: list[Skipped]
) -> None:
    """One warning per --materials folder that gave the data set nothing, saying why (the rest rendered)."""
    used = {ts.root for ts in used_sets}
    folders: dict[Path, Path] = {}
    for d in material_dirs:
        folders.setdefault(Path(d).resolve(), Path(d))
    for folder, given in folders.items():
        if folder in used:
            continue
        mine = [s for s in skipped if s.root == folder]
        why = (
            f"every set in it was skipped ({len(mine)}; the first, {mine[0].where}: {mine[0].why})"
            if mine
            else "nothing in it is laid out as ambientCG, Poly Haven, MatSynth or glTF"
        )
        _logger.warning(f"--materials {given} gave no usable material set: {why}")


def _procedural(
    tmp, count, size, seed, dirty_ratio, samples_per_material, materials, samples, progress, render_sample
) -> None:
    rng = np.random.default_rng(seed)
    families = sorted(FAMILIES)
    n_mat = math.ceil(count / samples_per_material)
    for i in range(n_mat):
        fam = families[i % len(families)]
        materials[f"{fam}_{i:03d}"] = {"family": fam, "seed": int(rng.integers(1 << 31))}
    mat_names = list(materials)
    maps_cache: dict[str, torch.Tensor] = {}
    for name in tqdm(mat_names, desc="materials", disable=not progress):
        maps = torch.from_numpy(
            make_material(materials[name]["family"], materials[name]["seed"], size).maps()
        )
        write_material(tmp / "output" / name, maps)
        maps_cache[name] = maps
    for j in tqdm(range(count), desc="samples", disable=not progress):
        mat = mat_names[j % n_mat]
        samples[f"sample_{j:04d}"] = render_sample(
            tmp, f"sample_{j:04d}", maps_cache[mat], mat, seed, j, dirty_ratio
        )


def _imported(
    tmp,
    sets,
    size,
    seed,
    dirty_ratio,
    samples_per_material,
    materials,
    samples,
    skipped,
    progress,
    render_sample,
) -> list[TextureSet]:
    """Render ``samples_per_material`` crops of each set; a set that cannot be read is skipped with a warning.

    Returns the sets that were rendered.
    """
    used: list[TextureSet] = []
    keys: dict[str, int] = {}
    for index, ts in enumerate(tqdm(sets, desc="material sets", disable=not progress or not sets)):
        try:
            src = load_set(ts)
            info = metadata_of(ts)
        except DataError as e:
            skipped.append(Skipped(f"{ts.library} {ts.material_id}", str(e), at_decode=True, root=ts.root))
            _logger.warning(f"skipped {ts.library} {ts.material_id}: {e}")
            continue
        used.append(ts)
        keys[ts.key] = keys.get(ts.key, 0) + 1  # two MatSynth folders or glTF files may share a name
        key = ts.key if keys[ts.key] == 1 else f"{ts.key}-{keys[ts.key]}"
        files = {role: _relative(p, ts.root) for role, p in ts.files.items()}
        if ts.library == "photo":
            files = {"photo": f"skimage.data.{ts.material_id.split('-q')[0]}"}
        for k in range(samples_per_material):
            crop_seed = [seed, 1, index, k]
            maps, record = sample_crop(src, size, np.random.default_rng(crop_seed))
            mid = f"{key}_{k:02d}"
            materials[mid] = {
                "family": ts.library,
                "seed": int(np.random.default_rng(crop_seed).integers(1 << 31)),
                "group": key,
                "origin": {
                    "library": ts.library,
                    "material_id": ts.material_id,
                    "root": str(ts.root),
                    "files": files,
                    **record,
                    "normal": src.normal_source,
                    "notes": src.notes,
                    "info": info,
                },
            }
            write_material(tmp / "output" / mid, maps)
            j = len(samples)
            sid = f"sample_{j:04d}"
            samples[sid] = render_sample(tmp, sid, torch.from_numpy(maps), mid, seed, j, dirty_ratio)
    if sets:
        _logger.info(
            f"material sets: {len(sets) + sum(1 for s in skipped if not s.at_decode)} found, {len(used)} used, {len(skipped)} skipped"
            + "".join(f"\n  skipped {s.where}: {s.why}" for s in skipped)
        )
    return used


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _render_sample(
    tmp: Path,
    sid: str,
    maps: torch.Tensor,
    material: str,
    seed: int,
    j: int,
    dirty_ratio: float,
    mix: Mapping[str, float],
    environments: Mapping[str, Environment],
) -> dict:
    """Render one sample's three views (and its dirty capture, by chance) from its own seeded generator."""
    damage = CaptureDamage()
    s_rng = np.random.default_rng([seed, j])
    names = list(mix)
    model = names[int(s_rng.choice(len(names), p=[mix[n] for n in names]))]
    capture = draw_capture(model, s_rng, sorted(environments))
    with torch.no_grad():
        radiance = render_capture(maps[None], batch_captures([capture], environments))[0]  # (V, 3, H, W)
    sources = ["clean"] + (["dirty"] if s_rng.random() < dirty_ratio else [])
    clean = to_display(radiance).numpy()
    _write_views(tmp / "input" / "clean" / sid, [v for v in clean])
    if "dirty" in sources:
        damaged = to_display(torch.from_numpy(linear_damage(radiance.numpy(), s_rng, damage))).numpy()
        _write_views(tmp / "input" / "dirty" / sid, [display_damage(v, s_rng, damage) for v in damaged])
    return {"material": material, "sources": sources, "capture": capture}


def _write_views(folder: Path, views: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(views):
        img = (
            v
            if isinstance(v, Image.Image)
            else Image.fromarray(np.round(np.clip(v, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0), "RGB")
        )
        img.save(folder / f"{i}.png", format="PNG")
