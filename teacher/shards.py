"""Write float16 distillation shards: the teacher run once over a data set, its maps stored as safetensors.

Writing is atomic and resumable: a shard is written under a temporary name and renamed, then recorded
in a per-rank progress file; the manifest is written last. A second run keeps shards whose hash matches
their record and redoes the rest. The manifest records, per sample, a fingerprint of its three input views,
so a student never distils from shards of another data set (``pbrforge.shards`` reads and checks them).

``pbrforge shards`` and ``python shards.py`` are this one command (the script is what torchrun runs;
``teacher_infer.py`` is its old name, kept for one release). ``pbrforge teacher-infer`` is another thing:
the teacher on one capture, for a look at its maps.

Examples:
    python shards.py runs/teacher/checkpoints/best.pt --data data/demo --output shards/
    python shards.py best.pt --data data/big --output shards/ --shard-output-size 1024
    torchrun --nproc_per_node 2 shards.py best.pt --data data/big --output shards/
    pbrforge shards --verify shards/
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pbrforge.errors import DataError, fail, user_errors
from pbrforge.options import (
    DEVICE_CHOICE,
    MAX_SIDE,
    OUTPUT_DIR,
    Command,
    data_option,
    examples_epilog,
    old_spellings,
)

if TYPE_CHECKING:
    import torch

_logger = logging.getLogger(__name__)


def _progress_name(rank: int) -> str:
    return f".progress.rank{rank}.json"


@dataclass(frozen=True)
class ShardPlan:
    """Which (sample id, source) entries go to which shard, with the fingerprint of each entry's input views.

    A pure function of the data set and shard size; a shard is reused only if its recorded fingerprints
    equal today's, so regenerated data under the same sample ids is recomputed, never mislabelled.
    """

    entries: list[tuple[str, str]]
    shard_size: int
    fingerprints: list[str]

    @property
    def num_shards(self) -> int:
        return (len(self.entries) + self.shard_size - 1) // self.shard_size

    def rows(self, shard: int) -> list[tuple[str, str]]:
        return self.entries[shard * self.shard_size : (shard + 1) * self.shard_size]

    def prints(self, shard: int) -> list[str]:
        return self.fingerprints[shard * self.shard_size : (shard + 1) * self.shard_size]


def _header(
    ckpt_path: Path,
    ckpt_sha: str,
    ckpt: dict,
    output_size: int,
    curriculum: int,
    shard_size: int,
    data_root: Path,
) -> dict[str, Any]:
    from pbrforge.contract import CHANNEL_NAMES
    from pbrforge.shards import FORMAT_VERSION

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
    from pbrforge.fileio import sha256_file
    from pbrforge.shards import MANIFEST

    records: dict[str, dict] = {}
    sources = [shards_dir / MANIFEST] + sorted(shards_dir.glob(".progress.rank*.json"))
    for src in sources:
        if not src.is_file():
            continue
        try:
            data = json.loads(src.read_text())
            same = _identity(data.get("header", data)) == _identity(header)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            continue  # a torn or foreign progress file: its shards are simply redone
        if src.name == MANIFEST and same:
            try:
                theirs = [(e["sample_id"], e["source"], e["fingerprint"]) for e in data["entries"]]
            except (KeyError, TypeError):
                theirs = []
            ours = [(sid, s, f) for (sid, s), f in zip(plan.entries, plan.fingerprints, strict=True)]
            same = theirs == ours
            if not same:
                raise DataError(
                    f"{shards_dir} holds shards of another data set (other samples or other views); "
                    "use a new --output or pass --overwrite"
                )
        if not same:
            if src.name == MANIFEST:
                raise DataError(
                    f"{shards_dir} holds shards of another teacher, size, curriculum or shard size; "
                    "use a new --output or pass --overwrite"
                )
            continue
        if isinstance(data.get("shards"), dict):
            records.update(data["shards"])
    good = {}
    for name, rec in records.items():
        try:  # a record that does not describe this plan's shard exactly is redone, never trusted
            idx = int(name[6:11])
            path = shards_dir / name
            if (
                idx < plan.num_shards
                and path.is_file()
                and rec.get("entries") == [list(r) for r in plan.rows(idx)]
                and rec.get("fingerprints") == plan.prints(idx)
                and path.stat().st_size == rec["bytes"]
                and sha256_file(path) == rec["sha256"]
            ):
                good[name] = rec
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
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
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from pbrforge.contract import normalize_views, resize_maps
    from pbrforge.dataset import PBRDataset, input_fingerprint, scan_dataset
    from pbrforge.distributed import barrier, init_distributed
    from pbrforge.fileio import atomic_path, exclusive, remove_stale_temps, sha256_file, write_json
    from pbrforge.models import model_config, model_from_checkpoint
    from pbrforge.shards import FORMAT_VERSION, MANIFEST, TENSOR_KEY, shard_name

    device = device or torch.device("cpu")
    info = init_distributed(device)
    shards_dir = Path(shards_dir)
    model, cfg, ckpt = model_from_checkpoint(checkpoint, family="teacher", map_location=device)
    model.to(device)
    sizes = model_config(cfg)
    size = shard_output_size or sizes.output_size
    if size > sizes.output_size:
        raise DataError(
            f"--shard-output-size {size} exceeds the teacher's output size {sizes.output_size}; shards never upsample"
        )
    scan_dataset(
        Path(data_root), deep=True
    )  # every view and map decoded and checked before anything is written
    ds = PBRDataset(data_root, "all", sizes.image_size, sizes.output_size, curriculum)
    plan = ShardPlan(
        list(ds.entries),
        shard_size,
        [input_fingerprint(Path(data_root), src, sid) for sid, src in ds.entries],
    )
    header = _header(
        Path(checkpoint), sha256_file(checkpoint), ckpt, size, curriculum, shard_size, Path(data_root)
    )
    with contextlib.ExitStack() as lock:
        if info.main:
            lock.enter_context(exclusive(shards_dir))  # a second writer into the same folder is refused
            shards_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(shards_dir)
            if overwrite:
                for p in list(shards_dir.glob("shard_*.safetensors")) + list(shards_dir.glob(".progress.*")):
                    p.unlink()
                (shards_dir / MANIFEST).unlink(missing_ok=True)
        barrier(info)
        good = _known_good(shards_dir, header, plan)
        mine = [
            i for i in range(plan.num_shards) if i % info.world == info.rank and shard_name(i) not in good
        ]
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
                    raise DataError(
                        f"the teacher produced NaN or inf for shard {i}; the checkpoint is unusable"
                    )
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
                    "fingerprints": plan.prints(i),
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
            {
                "sample_id": sid,
                "source": src,
                "shard": shard_name(k // shard_size),
                "row": k % shard_size,
                "fingerprint": plan.fingerprints[k],
            }
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


@click.command("shards", cls=Command, epilog=examples_epilog(__doc__))
@old_spellings("checkpoint", "--checkpoint")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False), required=False)
@data_option("--data-root", required=False, help="The data set to run the teacher over.")
@old_spellings("--output", "--shards-dir")
@click.option("--output", type=OUTPUT_DIR, help="Folder for the shards and manifest.json.")
@click.option(
    "--shard-output-size",
    type=click.IntRange(8, MAX_SIDE),
    default=None,
    help="Side of the stored maps (antialiased downsampling) [default: the teacher's output size].",
)
@click.option(
    "--shard-size", type=click.IntRange(1, 100_000), default=8, show_default=True, help="Samples per shard."
)
@click.option("--render-curriculum", type=click.IntRange(0, 2), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=4, show_default=True)
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Discard existing shards instead of resuming.")
@click.option(
    "--verify",
    "verify_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Only re-hash the shards in this folder and report (exit 2 if any is bad).",
)
@click.option("--quiet", is_flag=True)
@user_errors
def main(
    checkpoint: Path | None,
    data: Path | None,
    output: Path | None,
    shard_output_size: int | None,
    shard_size: int,
    render_curriculum: int,
    batch_size: int,
    device: str,
    overwrite: bool,
    verify_dir: Path | None,
    quiet: bool,
) -> None:
    """Run the teacher CHECKPOINT once over a data set and write float16 distillation shards.

    The same command as `python shards.py`, the script torchrun runs (teacher_infer.py is its old name).
    """
    from pbrforge.distributed import resolve_device
    from pbrforge.shards import load_manifest, verify_shards

    if verify_dir is not None:
        problems = verify_shards(verify_dir)
        m = load_manifest(verify_dir)
        for line in problems:  # every problem with -v; the error names the first
            _logger.debug(line)
        if problems:
            more = f" (+{len(problems) - 1} more; -v lists them)" if len(problems) > 1 else ""
            fail(f"shards in {verify_dir} fail verification: {problems[0]}{more}")
        click.echo(f"ok: {len(m['shards'])} shards, {len(m['entries'])} entries verified")
        return
    if not (checkpoint and data and output):
        raise DataError("give a teacher CHECKPOINT, --data and --output (or --verify DIR)")
    m = write_shards(
        checkpoint,
        data,
        output,
        shard_output_size=shard_output_size,
        shard_size=shard_size,
        curriculum=render_curriculum,
        batch_size=batch_size,
        device=resolve_device(device),
        overwrite=overwrite,
        progress=not quiet,
    )
    if m:
        click.echo(
            f"{len(m['entries'])} entries in {len(m['shards'])} shards at {m['output_size']}px; "
            f"computed {m['computed']} samples at {m['throughput']:.2f} samples/s -> {output}"
        )


if __name__ == "__main__":
    main()
