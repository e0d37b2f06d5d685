"""Float16 distillation shards: the teacher's maps computed once, stored as safetensors with a manifest.

``shards_dir/shard_00000.safetensors`` holds ``maps``: (N, 8, S, S) float16 in contract order.
``shards_dir/manifest.json`` names the teacher (sha256 and config), channel order, size, dtype and
curriculum, every entry's (sample id, source) -> (shard, row), and every shard's sha256 and byte size.

Writing is atomic and resumable: a shard is written under a temporary name and renamed, then recorded
in a per-rank progress file; the manifest is written last. A second run keeps shards whose hash matches
their record and redoes the rest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from pbrforge.contract import CHANNEL_NAMES, normalize_views, resize_maps
from pbrforge.dataset import PBRDataset
from pbrforge.errors import DataError
from pbrforge.fileio import atomic_path, sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TENSOR_KEY = "maps"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _progress_name(rank: int) -> str:
    return f".progress.rank{rank}.json"


@dataclass(frozen=True)
class ShardPlan:
    """Which (sample id, source) entries go to which shard: a pure function of the data set and shard size."""

    entries: list[tuple[str, str]]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return (len(self.entries) + self.shard_size - 1) // self.shard_size

    def rows(self, shard: int) -> list[tuple[str, str]]:
        return self.entries[shard * self.shard_size : (shard + 1) * self.shard_size]


def _header(
    ckpt_path: Path,
    ckpt_sha: str,
    ckpt: dict,
    output_size: int,
    curriculum: int,
    shard_size: int,
    data_root: Path,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "teacher": {"checkpoint": str(ckpt_path), "sha256": ckpt_sha, "config": ckpt["config"]},
        "channels": list(CHANNEL_NAMES),
        "output_size": output_size,
        "dtype": "float16",
        "curriculum": curriculum,
        "shard_size": shard_size,
        "data_root": str(data_root),
    }


def _identity(h: dict[str, Any]) -> tuple:
    return (h["teacher"]["sha256"], h["output_size"], h["curriculum"], h["shard_size"], h["dtype"])


def _known_good(shards_dir: Path, header: dict[str, Any], plan: ShardPlan) -> dict[str, dict]:
    """Records of shards already complete: from the manifest and progress files, each re-hashed."""
    records: dict[str, dict] = {}
    sources = [shards_dir / MANIFEST] + sorted(shards_dir.glob(".progress.rank*.json"))
    for src in sources:
        if not src.is_file():
            continue
        try:
            data = json.loads(src.read_text())
        except json.JSONDecodeError:
            continue  # a torn progress file: its shards are simply redone
        if _identity(data.get("header", data)) != _identity(header):
            if src.name == MANIFEST:
                raise DataError(
                    f"{shards_dir} holds shards of another teacher, size, curriculum or shard size; "
                    "use a new --shards-dir or pass --overwrite"
                )
            continue
        records.update(data["shards"])
    good = {}
    for name, rec in records.items():
        idx = int(name[6:11])
        path = shards_dir / name
        expected = [list(r) for r in plan.rows(idx)] if idx < plan.num_shards else None
        if (
            path.is_file()
            and rec.get("entries") == expected
            and path.stat().st_size == rec["bytes"]
            and sha256_file(path) == rec["sha256"]
        ):
            good[name] = rec
    return good


def write_shards(
    checkpoint: Path,
    data_root: Path,
    shards_dir: Path,
    shard_output_size: int | None = None,
    shard_size: int = 8,
    curriculum: int = 1,
    batch_size: int = 4,
    device: torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the teacher once over every sample (train and val) and write shards plus manifest.

    Under torchrun each rank writes shards i with i % world == rank; rank 0 merges the manifest.
    Returns the manifest (rank 0) with a "throughput" entry in samples/s.
    """
    from pbrforge.models import model_from_checkpoint
    from pbrforge.trainer import barrier, init_distributed

    device = device or torch.device("cpu")
    info = init_distributed(device)
    shards_dir = Path(shards_dir)
    model, cfg, ckpt = model_from_checkpoint(checkpoint, map_location=device)
    model.to(device)
    teacher_size = cfg.data.output_size
    size = shard_output_size or teacher_size
    if size > teacher_size:
        raise DataError(
            f"--shard-output-size {size} exceeds the teacher's output size {teacher_size}; "
            "shards never upsample"
        )
    ds = PBRDataset(data_root, "all", ckpt["preprocessing"]["image_size"], teacher_size, curriculum)
    plan = ShardPlan(list(ds.entries), shard_size)
    header = _header(
        Path(checkpoint), sha256_file(checkpoint), ckpt, size, curriculum, shard_size, Path(data_root)
    )
    if info.main:
        shards_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for p in list(shards_dir.glob("shard_*.safetensors")) + list(shards_dir.glob(".progress.*")):
                p.unlink()
            (shards_dir / MANIFEST).unlink(missing_ok=True)
    barrier(info)
    good = _known_good(shards_dir, header, plan)
    mine = [i for i in range(plan.num_shards) if i % info.world == info.rank and shard_name(i) not in good]
    done: dict[str, dict] = dict(good)  # progress files carry earlier complete shards forward
    t0, computed = time.perf_counter(), 0
    bar = tqdm(
        total=sum(len(plan.rows(i)) for i in mine),
        desc="teacher -> shards",
        unit="sample",
        disable=not (progress and info.main),
    )
    with torch.no_grad():
        for i in mine:
            rows = plan.rows(i)
            outs = []
            for b in range(0, len(rows), batch_size):
                chunk = rows[b : b + batch_size]
                views = torch.stack([normalize_views(ds.load_views(*e)) for e in chunk]).to(device)
                pred = model(views).float().cpu()
                outs.append(resize_maps(pred, size).to(torch.float16))
                bar.update(len(chunk))
            maps = torch.cat(outs)
            if not torch.isfinite(maps).all():
                raise DataError(f"the teacher produced NaN or inf for shard {i}; the checkpoint is unusable")
            path = shards_dir / shard_name(i)
            with atomic_path(path) as tmp:
                save_file(
                    {TENSOR_KEY: maps.contiguous()},
                    str(tmp),
                    metadata={"entries": json.dumps(rows), "format_version": str(FORMAT_VERSION)},
                )
            done[shard_name(i)] = {
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "rows": len(rows),
                "entries": [list(r) for r in rows],
            }
            computed += len(rows)
            write_json(shards_dir / _progress_name(info.rank), {"header": header, "shards": done})
    bar.close()
    elapsed = time.perf_counter() - t0
    barrier(info)
    if not info.main:
        return {}
    good = _known_good(shards_dir, header, plan)
    missing = [shard_name(i) for i in range(plan.num_shards) if shard_name(i) not in good]
    if missing:
        raise DataError(f"shards {missing[:3]} were not written; run again to resume")
    entries = [
        {"sample_id": sid, "source": src, "shard": shard_name(k // shard_size), "row": k % shard_size}
        for k, (sid, src) in enumerate(plan.entries)
    ]
    manifest = header | {
        "entries": entries,
        "shards": {n: good[n] for n in sorted(good) if int(n[6:11]) < plan.num_shards},
    }
    write_json(shards_dir / MANIFEST, manifest)
    for p in shards_dir.glob(".progress.rank*.json"):
        p.unlink()
    manifest["throughput"] = computed / elapsed if elapsed > 0 and computed else 0.0
    manifest["computed"] = computed
    return manifest


def load_manifest(shards_dir: Path) -> dict[str, Any]:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"missing {path}: run teacher_infer.py first")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e})") from e
    if m.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {m.get('format_version')!r} is not {FORMAT_VERSION}")
    if m.get("channels") != list(CHANNEL_NAMES):
        raise DataError(
            f"{path}: channel order {m.get('channels')} is not the contract's {list(CHANNEL_NAMES)}"
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
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.base)

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
    """Payload bytes of one sample's 8 maps (what the header adds is amortised over a shard)."""
    return 8 * output_size * output_size * torch.empty(0, dtype=dtype).element_size()


# --------------------------------------------------------------------------- command

CLI_EXAMPLES = """
\b
Examples:
  python teacher_infer.py --checkpoint runs/teacher/checkpoints/best.pt --data-root data/demo --shards-dir shards/
  python teacher_infer.py --checkpoint best.pt --data-root data/big --shards-dir shards/ --shard-output-size 1024
  torchrun --nproc_per_node 2 teacher_infer.py --checkpoint best.pt --data-root data/big --shards-dir shards/
  python teacher_infer.py --verify shards/
"""


def _command():
    import click

    from pbrforge.errors import fail, user_errors

    @click.command("shards", epilog=CLI_EXAMPLES)
    @click.option("--checkpoint", type=click.Path(path_type=Path), help="Teacher checkpoint.")
    @click.option("--data-root", type=click.Path(path_type=Path), help="Data set from datagen.")
    @click.option("--shards-dir", type=click.Path(path_type=Path), help="Where shards and manifest.json go.")
    @click.option(
        "--shard-output-size",
        type=int,
        default=None,
        help="Side of the stored maps (antialiased downsampling) [default: the teacher's output size].",
    )
    @click.option("--shard-size", type=int, default=8, show_default=True, help="Samples per shard.")
    @click.option("--render-curriculum", type=click.IntRange(0, 2), default=1, show_default=True)
    @click.option("--batch-size", type=int, default=4, show_default=True)
    @click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True
    )
    @click.option("--overwrite", is_flag=True, help="Discard existing shards instead of resuming.")
    @click.option(
        "--verify",
        "verify_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Only re-hash the shards in this folder and report (exit 2 if any is bad).",
    )
    @click.option("--quiet", is_flag=True)
    @user_errors
    def main(
        checkpoint,
        data_root,
        shards_dir,
        shard_output_size,
        shard_size,
        render_curriculum,
        batch_size,
        device,
        overwrite,
        verify_dir,
        quiet,
    ):
        """Run the teacher once over a data set and write float16 distillation shards."""
        from pbrforge.trainer import resolve_device

        if verify_dir is not None:
            problems = verify_shards(verify_dir)
            m = load_manifest(verify_dir)
            if problems:
                for line in problems:
                    click.echo(line, err=True)
                fail(f"{len(problems)} of {len(m['shards'])} shards in {verify_dir} are bad or missing")
            click.echo(f"ok: {len(m['shards'])} shards, {len(m['entries'])} entries verified")
            return
        if not (checkpoint and data_root and shards_dir):
            raise DataError("--checkpoint, --data-root and --shards-dir are required (or --verify DIR)")
        m = write_shards(
            checkpoint,
            data_root,
            shards_dir,
            shard_output_size,
            shard_size,
            render_curriculum,
            batch_size,
            resolve_device(device),
            overwrite,
            progress=not quiet,
        )
        if m:
            click.echo(
                f"{len(m['entries'])} entries in {len(m['shards'])} shards at {m['output_size']}px; "
                f"computed {m['computed']} samples at {m['throughput']:.2f} samples/s -> {shards_dir}"
            )

    return main


main = _command()
