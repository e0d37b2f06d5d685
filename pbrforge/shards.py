"""Float16 distillation shards as the student reads them: the manifest, its checks, and the data set over them.

``shards_dir/shard_00000.safetensors`` holds ``maps``: (N, 8, S, S) float16 in contract order.
``shards_dir/manifest.json`` names the teacher (sha256 and config), channel order, size, dtype and
curriculum, every entry's (sample id, source) -> (shard, row) with a fingerprint of its input views, and
every shard's sha256 and byte size. The stage that runs the teacher writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from pbrforge.contract import CHANNEL_NAMES, NUM_CHANNELS
from pbrforge.dataset import PBRDataset, input_fingerprint
from pbrforge.errors import DataError
from pbrforge.fileio import sha256_file

if TYPE_CHECKING:
    from pbrforge.config import TrainConfig

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: entries carry the fingerprint of their input views
TENSOR_KEY = "maps"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def load_manifest(shards_dir: Path) -> dict[str, Any]:
    """Read manifest.json and check it against its schema and the contract's channel order."""
    from pbrforge.fileio import read_json
    from pbrforge.schemas import Manifest, check

    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"missing {path}: no distillation shards were written to {shards_dir}")
    data = read_json(path)
    if isinstance(data, dict) and data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
            "write the shards again"
        )
    m = check(Manifest, data, str(path)).model_dump()
    if m["channels"] != list(CHANNEL_NAMES):
        raise DataError(f"{path}: channel order {m['channels']} is not the contract's {list(CHANNEL_NAMES)}")
    bad_rows = [e for e in m["entries"] if e["row"] >= m["shard_size"]]
    if bad_rows:
        raise DataError(
            f"{path}: entry {bad_rows[0]['sample_id']} has row {bad_rows[0]['row']} past the shard size"
        )
    return m


def verify_shards(shards_dir: Path) -> list[str]:
    """Re-hash every shard; return one line per bad or missing shard (empty when all is well)."""
    m = load_manifest(shards_dir)
    problems = []
    for name, rec in tqdm(sorted(m["shards"].items()), desc="verify", unit="shard", leave=False):
        path = Path(shards_dir) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {rec['bytes']}")
        elif sha256_file(path) != rec["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    seen: dict[tuple[str, str], int] = {}
    for e in m["entries"]:
        seen[(e["sample_id"], e["source"])] = seen.get((e["sample_id"], e["source"]), 0) + 1
    problems += [f"entry {sid} ({src}) is listed {n} times" for (sid, src), n in seen.items() if n > 1]
    places = [(e["shard"], e["row"]) for e in m["entries"]]
    if len(set(places)) != len(places):
        problems.append("two entries point at the same shard row")
    referenced = {e["shard"] for e in m["entries"]}
    problems += [
        f"{n}: referenced by entries but not listed in shards" for n in sorted(referenced - set(m["shards"]))
    ]
    return problems


# --------------------------------------------------------------------------- reading


class DistillDataset(Dataset):
    """Views at the student's ``image_size``, true maps and the teacher's maps at ``output_size``, by sample id.

    The manifest must match the data set: every sample present, the same curriculum and output size,
    unaltered shards, and (when given) the expected teacher checkpoint hash.
    """

    def __init__(
        self,
        data_root: Path,
        shards_dir: Path,
        image_size: int,
        output_size: int,
        curriculum: int = 1,
        split: str = "train",
        val_fraction: float = 0.2,
        seed: int = 0,
        teacher_sha256: str | None = None,
        check_hashes: bool = True,
    ):
        self.shards_dir = Path(shards_dir)
        self.manifest = m = load_manifest(shards_dir)
        if m["output_size"] != output_size:
            raise DataError(
                f"shards in {shards_dir} are {m['output_size']}x{m['output_size']}, but the student "
                f"predicts {output_size}x{output_size}; rewrite them with --shard-output-size {output_size}"
            )
        if m["curriculum"] != curriculum:
            raise DataError(
                f"shards in {shards_dir} were written for render curriculum {m['curriculum']}, "
                f"this run uses {curriculum}"
            )
        if teacher_sha256 is not None and m["teacher"]["sha256"] != teacher_sha256:
            raise DataError(
                f"shards in {shards_dir} come from another teacher checkpoint "
                f"(sha256 {m['teacher']['sha256'][:12]}…, expected {teacher_sha256[:12]}…)"
            )
        if check_hashes:
            bad = verify_shards(shards_dir)
            if bad:
                raise DataError(
                    f"shards in {shards_dir} are damaged: {bad[0]}"
                    + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
                )
        self.base = PBRDataset(data_root, split, image_size, output_size, curriculum, val_fraction, seed)
        self.index = {(e["sample_id"], e["source"]): (e["shard"], e["row"]) for e in m["entries"]}
        missing = [e for e in self.base.entries if e not in self.index]
        if missing:
            raise DataError(
                f"shards in {shards_dir} lack sample {missing[0][0]} ({missing[0][1]}); "
                "they were written for another data set"
            )
        prints = {(e["sample_id"], e["source"]): e.get("fingerprint") for e in m["entries"]}
        for sid, src in self.base.entries:
            if prints[(sid, src)] != input_fingerprint(self.base.root, src, sid):
                raise DataError(
                    f"shards in {shards_dir} were computed from other input views than sample {sid} ({src}) "
                    f"of {data_root}: they belong to another data set; write them again from this one"
                )
        self._handles: dict[str, Any] = {}

    @classmethod
    def for_config(
        cls, data_root: Path, shards_dir: Path, split: str, cfg: TrainConfig, check_hashes: bool = True
    ) -> DistillDataset:
        """The split a student's training config describes, at its model's sizes."""
        from pbrforge.models import model_config

        m, d = model_config(cfg), cfg.data
        return cls(
            data_root,
            shards_dir,
            m.image_size,
            m.output_size,
            d.curriculum,
            split,
            d.val_fraction,
            d.split_seed,
            check_hashes=check_hashes,
        )

    def __len__(self) -> int:
        return len(self.base)

    @property
    def environments(self) -> dict:
        """The room lights of the data set under the shards (the rendering loss relights with them)."""
        return self.base.environments

    def shard_of(self, idx: int) -> str:
        return self.index[self.base.entries[idx]][0]

    def teacher_maps(self, sample_id: str, source: str) -> torch.Tensor:
        shard, row = self.index[(sample_id, source)]
        if shard not in self._handles:  # memory-mapped; opened once per worker
            self._handles[shard] = safe_open(str(self.shards_dir / shard), framework="pt")
        return self._handles[shard].get_slice(TENSOR_KEY)[row : row + 1][0].float()

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.base[idx]
        item["teacher"] = self.teacher_maps(item["sample_id"], item["source"])
        return item

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen their own handles
        return self.__dict__ | {"_handles": {}}


class ShardSampler(Sampler[int]):
    """Visit samples shard by shard (shard order shuffled, rows shuffled within) so each shard is read once.

    Under DDP each rank takes a contiguous run of that order, padded so all ranks take the same count.
    """

    def __init__(self, dataset: DistillDataset, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.groups: dict[str, list[int]] = {}
        for i in range(len(dataset)):
            self.groups.setdefault(dataset.shard_of(i), []).append(i)
        self.seed, self.world, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.per_rank = (len(dataset) + num_replicas - 1) // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        names = sorted(self.groups)
        out: list[int] = []
        for k in rng.permutation(len(names)):
            rows = self.groups[names[k]]
            out += [rows[j] for j in rng.permutation(len(rows))]
        return out

    def __iter__(self):
        order = self.order()
        order += order[: self.per_rank * self.world - len(order)]  # pad, as DistributedSampler does
        return iter(order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank])

    def __len__(self) -> int:
        return self.per_rank


def shard_bytes_per_sample(output_size: int, dtype: torch.dtype = torch.float16) -> int:
    """Payload bytes of one sample's maps (what the header adds is amortised over a shard)."""
    return NUM_CHANNELS * output_size * output_size * torch.empty(0, dtype=dtype).element_size()
