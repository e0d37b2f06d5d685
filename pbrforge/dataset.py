"""The on-disk data set layout, its strict validation, and the training ``PBRDataset``.

Layout (written by the data generator)::

    ROOT/input/render_metadata.json
    ROOT/input/{clean,dirty}/sample_XXXX/{0,1,2}.png
    ROOT/output/<material>/{albedo,roughness,metallic,normal}.png

Every sample has a clean capture; a fraction of them also a dirty one under the same id. Samples that
share a material differ in lighting. Train/val are split by material, never by sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from pbrforge.contract import (
    MAP_NAMES,
    MAPS,
    NUM_VIEWS,
    decode_map,
    normalize_views,
    open_image,
    read_material,
    resize_maps,
)
from pbrforge.errors import DataError
from pbrforge.views import load_view

if TYPE_CHECKING:
    from pbrforge.config import TrainConfig

METADATA_FILE = "render_metadata.json"
SOURCES = ("clean", "dirty")
CURRICULA = {0: ("clean",), 1: ("clean", "dirty"), 2: ("dirty",)}
FORMAT_VERSION = 2  # 2: each sample records its capture (cameras, lights, room light); 1 still loads


@dataclass
class DatasetSummary:
    root: str
    samples: int
    materials: int
    clean: int
    dirty: int
    resolution: int
    families: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(
        default_factory=dict
    )  # samples per material source (procedural, a library)
    captures: dict[str, int] = field(default_factory=dict)  # samples per capture model

    def table(self) -> str:
        rows = [
            ("root", self.root),
            ("samples", self.samples),
            ("materials", self.materials),
            ("clean captures", self.clean),
            ("dirty captures", self.dirty),
            ("resolution", f"{self.resolution}x{self.resolution}"),
            ("families", ", ".join(f"{k} {v}" for k, v in sorted(self.families.items()))),
            ("samples by source", ", ".join(f"{k} {v}" for k, v in sorted(self.sources.items()))),
            ("samples by capture", ", ".join(f"{k} {v}" for k, v in sorted(self.captures.items()))),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def view_paths(root: Path, source: str, sample_id: str) -> list[Path]:
    return [Path(root) / "input" / source / sample_id / f"{i}.png" for i in range(NUM_VIEWS)]


def input_fingerprint(root: Path, source: str, sample_id: str) -> str:
    """sha256 over the bytes of a sample's three view files: what a model's output for it depends on."""
    h = hashlib.sha256()
    for p in view_paths(root, source, sample_id):
        h.update(p.read_bytes())
    return h.hexdigest()


def load_metadata(root: Path) -> dict:
    """Read render_metadata.json and check it against its schema (unknown keys are an error, not ignored)."""
    from pbrforge.fileio import read_json
    from pbrforge.schemas import RenderMetadata, check

    path = Path(root) / "input" / METADATA_FILE
    if not Path(root).is_dir():
        raise DataError(f"data root {root} does not exist")
    if not path.is_file():
        raise DataError(f"missing {path}: {root} is not a pbrforge data set")
    meta = check(RenderMetadata, read_json(path), str(path)).model_dump()
    for sid, s in meta["samples"].items():
        if s["material"] not in meta["materials"]:
            raise DataError(f"{path}: sample {sid} names material {s['material']!r}, which is not listed")
        _upgrade_capture(meta, sid, s, path)
    return meta


def _upgrade_capture(meta: dict, sid: str, s: dict, path: Path) -> None:
    """Give a format-1 sample its tripod capture record; check a format-2 record's views and room light."""
    from pbrforge.captures import tripod_record

    if meta["format_version"] == 1:
        if s["lights"] is None or s["light_power"] is None or s["capture"] is not None:
            raise DataError(f"{path}: format-1 sample {sid} needs lights and light_power and no capture")
        s["capture"] = tripod_record(s["lights"], s["light_power"], meta["camera"])
    elif s["capture"] is None or s["lights"] is not None or s["light_power"] is not None:
        raise DataError(
            f"{path}: format-2 sample {sid} needs a capture record (and no lights or light_power)"
        )
    c = cast(dict, s["capture"])
    lengths = {len(c["eyes"]), len(c["lights"]), len(c["light_power"])}
    if lengths != {NUM_VIEWS} or any(len(v) != 3 for v in c["eyes"] + c["lights"]):
        raise DataError(
            f"{path}: sample {sid}'s capture needs {NUM_VIEWS} eyes, lights and powers of 3 values"
        )
    if any(p < 0 for p in c["light_power"]) or any(e[2] <= 0 for e in c["eyes"]):
        raise DataError(f"{path}: sample {sid}'s capture has a negative power or a camera below the sample")
    env = c["environment"]
    if env is not None and env["id"] not in meta["environments"]:
        raise DataError(f"{path}: sample {sid} names environment {env['id']!r}, which is not listed")


def environments_of(meta: Mapping) -> dict:
    """The data set's environments as ``pbrforge.environments.Environment`` objects, by name."""
    from pbrforge.environments import Environment

    return {
        name: Environment.from_rows(name, e["source"], e["lights"])
        for name, e in meta["environments"].items()
    }


def scan_dataset(root: Path, deep: bool = False) -> tuple[dict, DatasetSummary]:
    """Check that disk and metadata agree; with ``deep`` also decode every PNG and check modes and sizes."""
    root = Path(root)
    meta = load_metadata(root)
    size = int(meta["size"])
    if not meta["samples"]:
        raise DataError(f"{root}: the data set is empty (no samples in {METADATA_FILE})")
    for source in SOURCES:
        folder = root / "input" / source
        if not folder.is_dir():
            continue
        for d in sorted(folder.iterdir()):
            if d.is_dir() and d.name not in meta["samples"]:
                raise DataError(f"{d}: sample {d.name} is absent from {METADATA_FILE}")
            if d.is_dir() and source not in meta["samples"][d.name]["sources"]:
                raise DataError(f"{d}: {METADATA_FILE} does not list source {source!r} for {d.name}")
    counts = {"clean": 0, "dirty": 0}
    for sid, s in meta["samples"].items():
        for source in s["sources"]:
            folder = root / "input" / source / sid
            if not folder.is_dir():
                raise DataError(f"missing sample folder {folder} listed in {METADATA_FILE}")
            pngs = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png")
            expected = [f"{i}.png" for i in range(NUM_VIEWS)]
            if pngs != expected:
                raise DataError(f"{folder} holds views {pngs}, expected exactly {NUM_VIEWS}: {expected}")
            if deep:
                for p in view_paths(root, source, sid):
                    _check_png(p, "RGB", size)
            counts[source] += 1
    families: dict[str, int] = {}
    for mid, m in meta["materials"].items():
        folder = root / "output" / mid
        if not folder.is_dir():
            raise DataError(f"missing material folder {folder} named in {METADATA_FILE}")
        for name in MAP_NAMES:
            p = folder / f"{name}.png"
            if not p.is_file():
                raise DataError(f"missing file: {p}")
            if deep:
                decode_map(name, p, size)  # checks mode, size and decodability
        families[m["family"]] = families.get(m["family"], 0) + 1
    sources: dict[str, int] = {}
    for s in meta["samples"].values():
        origin = meta["materials"][s["material"]].get("origin")
        kind = origin["library"] if origin else "procedural"
        sources[kind] = sources.get(kind, 0) + 1
    captures: dict[str, int] = {}
    for s in meta["samples"].values():
        captures[s["capture"]["model"]] = captures.get(s["capture"]["model"], 0) + 1
    summary = DatasetSummary(
        str(root),
        len(meta["samples"]),
        len(meta["materials"]),
        counts["clean"],
        counts["dirty"],
        size,
        families,
        sources,
        captures,
    )
    return meta, summary


def _check_png(path: Path, mode: str, size: int) -> None:
    img = open_image(path)
    if img.mode != mode:
        raise DataError(f"{path}: mode {img.mode}, expected {mode}")
    if img.size != (size, size):
        raise DataError(f"{path}: {img.size[0]}x{img.size[1]}, expected {size}x{size}")


def split_materials(groups: Mapping[str, str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Seeded split by material group (``material -> group``): no group has materials in both sets.

    Crops of one imported texture set share its group, so a held-out set is never seen in training;
    a procedural material is its own group.
    """
    names = sorted(set(groups.values()))
    if len(names) < 2 or val_fraction <= 0:
        return set(groups), set()
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    held_out = {names[i] for i in order[:n_val]}
    val = {m for m, g in groups.items() if g in held_out}
    return set(groups) - val, val


def material_groups(meta: Mapping) -> dict[str, str]:
    """Each material's group: its texture set for imported crops, itself for procedural materials."""
    return {mid: m.get("group") or mid for mid, m in meta["materials"].items()}


class PBRDataset(Dataset):
    """Samples of a generated data set: normalised views (3, 3, h, w) and contract targets (8, H, W).

    Args:
        root: data root.
        split: "train", "val" or "all".
        image_size: side of each input view after antialiased resizing.
        output_size: side of the targets.
        curriculum: 0 clean only, 1 clean and dirty as on disk, 2 dirty only.
    """

    def __init__(
        self,
        root: Path,
        split: str = "train",
        image_size: int = 256,
        output_size: int = 256,
        curriculum: int = 1,
        val_fraction: float = 0.2,
        seed: int = 0,
    ):
        if curriculum not in CURRICULA:
            raise DataError(f"render curriculum {curriculum} is not one of {sorted(CURRICULA)}")
        if split not in ("train", "val", "all"):
            raise DataError(f"split {split!r} is not one of train, val, all")
        self.root = Path(root)
        self.meta, self.summary = scan_dataset(self.root)
        self.image_size, self.output_size, self.curriculum = image_size, output_size, curriculum
        train, val = split_materials(material_groups(self.meta), val_fraction, seed)
        keep = {"train": train, "val": val, "all": train | val}[split]
        sources = CURRICULA[curriculum]
        self.entries: list[tuple[str, str]] = [
            (sid, src)
            for sid, s in sorted(self.meta["samples"].items())
            if s["material"] in keep
            for src in sources
            if src in s["sources"]
        ]
        if not self.entries and split != "val":
            raise DataError(f"{root}: no samples for split {split!r} with render curriculum {curriculum}")

    @classmethod
    def for_config(cls, root: Path, split: str, cfg: TrainConfig) -> PBRDataset:
        """The split a training config describes, at its model's sizes."""
        from pbrforge.models import model_config

        m, d = model_config(cfg), cfg.data
        return cls(root, split, m.image_size, m.output_size, d.curriculum, d.val_fraction, d.split_seed)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def environments(self) -> dict:
        """The room lights this data set was rendered with (empty for tripod-only or format-1 data)."""
        return environments_of(self.meta)

    def capture_of(self, sample_id: str) -> dict:
        """The capture record of a sample: its cameras, lights and room light."""
        return self.meta["samples"][sample_id]["capture"]

    def material_of(self, sample_id: str) -> str:
        return self.meta["samples"][sample_id]["material"]

    def load_views(self, sample_id: str, source: str) -> torch.Tensor:
        """(3, 3, h, w) views in [0, 1] (not normalised)."""
        return torch.stack([load_view(p, self.image_size) for p in view_paths(self.root, source, sample_id)])

    def load_target(self, sample_id: str) -> torch.Tensor:
        return resize_maps(
            read_material(self.root / "output" / self.material_of(sample_id)), self.output_size
        )

    def __getitem__(self, idx: int) -> dict:
        sid, source = self.entries[idx]
        return {
            "views": normalize_views(self.load_views(sid, source)),
            "target": self.load_target(sid),
            "sample_id": sid,
            "source": source,
        }


__all__ = ["PBRDataset", "DatasetSummary", "scan_dataset", "load_metadata", "split_materials", "MAPS"]
