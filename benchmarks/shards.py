"""Why shards exist: storage per sample, write throughput, and one student epoch fed by shards against the
same epoch computing the teacher online, measured in one run.

Examples:
    python benchmarks/shards.py
    python benchmarks/shards.py --teacher-config high_quality --count 16
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pbrforge.config import load_config
from pbrforge.contract import resize_maps
from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset
from pbrforge.losses import map_losses
from pbrforge.models import build_model, model_config
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.shards import DistillDataset, ShardSampler, shard_bytes_per_sample
from pbrforge.teacher.model import discriminator_factory
from pbrforge.teacher.shards import write_shards
from pbrforge.trainer import Trainer

GOAL_RATIO = 5.0


def student_epoch(student, cfg, loader, teacher=None, teacher_size: int | None = None) -> float:
    """One epoch of distillation steps; with ``teacher`` the teacher's maps are computed per batch."""
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student.train()
    t0 = time.perf_counter()
    for batch in loader:
        if teacher is not None:
            b, v, c, h, w = batch["views"].shape
            with torch.no_grad():  # the teacher sees views at its own size, as when the shards were written
                big = F.interpolate(
                    batch["views"].reshape(b * v, c, h, w),
                    size=(teacher_size, teacher_size),
                    mode="bilinear",
                    align_corners=False,
                ).reshape(b, v, c, teacher_size, teacher_size)
                target_t = resize_maps(teacher(big), model_config(cfg).output_size)
        else:
            target_t = batch["teacher"]
        pred = student(batch["views"])
        alpha = cfg.loss.distill_alpha
        loss = (
            alpha * map_losses(pred, target_t, cfg.loss)["total"]
            + (1 - alpha) * map_losses(pred, batch["target"], cfg.loss)["total"]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--teacher-config", default="default", show_default=True, help="Teacher preset (random weights)."
)
@click.option("--count", type=int, default=24, show_default=True)
@click.option("--student-size", type=int, default=64, show_default=True)
@old_spellings("--output", "--out")
@click.option(
    "--output", "out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True
)
def main(teacher_config: str, count: int, student_size: int, out: Path) -> None:
    """Measure shard storage, write throughput and the shard-fed vs online-teacher epoch time."""
    work = out / "shards_work"
    tcfg = load_config(teacher_config)
    tsize = model_config(tcfg).image_size
    data = work / "data"
    generate_dataset(data, count=count, size=tsize, seed=5, dirty_ratio=0.0, overwrite=True, progress=False)
    train_set = PBRDataset(data, "all", tsize, model_config(tcfg).output_size, curriculum=0)
    trainer = Trainer(
        tcfg,
        train_set,
        None,
        work / "t",
        work / "tc",
        torch.device("cpu"),
        progress=False,
        make_discriminator=discriminator_factory(tcfg),
    )
    ckpt = trainer.save("teacher.pt")  # random weights: throughput does not depend on them
    scfg = load_config("student_mnv3_plk_512").override({"model.image_size": student_size})
    s_out = model_config(scfg).output_size
    t0 = time.perf_counter()
    m = write_shards(ckpt, data, work / "shards", s_out, 8, 0, batch_size=2, overwrite=True)
    write_s = time.perf_counter() - t0
    shard_files = list((work / "shards").glob("shard_*.safetensors"))
    measured = sum(p.stat().st_size for p in shard_files) / len(m["entries"])
    ds = DistillDataset(data, work / "shards", student_size, s_out, 0, "all")
    loader = DataLoader(ds, batch_size=4, sampler=ShardSampler(ds))
    torch.manual_seed(0)
    student = build_model(scfg)
    teacher = trainer.eval_model.eval()
    shard_epoch = student_epoch(student, scfg, loader)
    online_epoch = student_epoch(student, scfg, loader, teacher, tsize)
    rows = {
        "bytes/sample fp16 @1024": shard_bytes_per_sample(1024, torch.float16),
        "bytes/sample fp16 @2048": shard_bytes_per_sample(2048, torch.float16),
        "bytes/sample fp32 @1024": shard_bytes_per_sample(1024, torch.float32),
        "bytes/sample fp32 @2048": shard_bytes_per_sample(2048, torch.float32),
        f"measured bytes/sample fp16 @{s_out} (with headers)": measured,
        "write throughput (samples/s)": len(m["entries"]) / write_s,
        "student epoch, shards (s)": shard_epoch,
        f"student epoch, online {teacher_config} teacher (s)": online_epoch,
        "speed-up from shards (x)": online_epoch / shard_epoch,
    }
    width = max(len(k) for k in rows)
    print(
        f"\nshards benchmark: teacher {teacher_config} ({tsize}px, random weights), student {student_size}px -> "
        f"{s_out}px, {len(ds)} samples, {torch.get_num_threads()} threads"
    )
    for k, v in rows.items():
        print(f"{k:<{width}}  {v / 2**20:10.2f} MiB" if "bytes" in k else f"{k:<{width}}  {v:10.2f}")
    ratio = rows["speed-up from shards (x)"]
    print(f"goal >= {GOAL_RATIO}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'} ({ratio:.2f}x)")
    result = {
        "teacher": teacher_config,
        "teacher_size": tsize,
        "student_size": student_size,
        "samples": len(ds),
        "rows": rows,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio >= GOAL_RATIO,
    }
    path = out / f"shards_{teacher_config}.json"
    write_result(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
