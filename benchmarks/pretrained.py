"""Build the default model `pbrforge run` uses when none is given, and its quality table of record.

``make pretrained`` runs this. From one seed: a phone-capture data set (procedural and photo-textured
materials; captures mixed phone-flash 0.7, phone-ambient 0.15, tripod 0.15), the ``quick_test`` teacher
trained for ``--teacher-minutes`` of wall clock, float16 shards, and the PLK student at ``--image-size``
(x2 SR) distilled for ``--student-minutes``. The student's shipped weights are written as float16
safetensors with their config (``pbrforge/weights/student_phone.safetensors``); the JSON beside it records
the commands, data, budgets, CPU time and commit (``pbrforge.provenance``) and the held-out quality table:
the student and the mean material on the held-out materials' samples, by the capture each recorded
(phone-flash, phone-ambient, tripod).

This is a CPU-budget model: minutes on 2 cores, not the GPU-days a production model takes. A GPU recipe
differs in scale, not in commands: thousands of materials (``--materials`` with ambientCG / MatSynth sets)
at 512 px, the ``default`` teacher for hours with its GAN, shards at 1024 px, and the student preset at
its own resolution (``student_mnv3_plk_512``) under ``torchrun``.

Examples:
    python benchmarks/pretrained.py
    python benchmarks/pretrained.py --teacher-minutes 2 --student-minutes 2 --count 96 --work /tmp/pt --output /tmp/pt/model.safetensors
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import click
import torch
from budget import budget_config
from torch.utils.data import DataLoader

from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset
from pbrforge.metrics import MapMetrics, mean_map_baseline
from pbrforge.models import DEFAULT_MODEL, model_config, model_from_checkpoint, save_pretrained
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.shards import DistillDataset, ShardSampler
from pbrforge.teacher.shards import write_shards
from pbrforge.trainer import Trainer

MIX = {"phone-flash": 0.7, "phone-ambient": 0.15, "tripod": 0.15}
TESTS = ("phone-flash", "phone-ambient", "tripod")
STUDENT = "student_mnv3_plk_512"
SEED = 7
MAX_BYTES = 15 * 2**20
ERRORS = (
    "albedo/mae",
    "roughness/mae",
    "metallic/mae",
    "normal/angle_mean_deg",
    "albedo/psnr",
    "normal/psnr",
    "rerender/rmse",
)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@torch.no_grad()
def quality(model, val: PBRDataset, mean: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    """Per capture model of the held-out samples (each records its own), the student's and the mean
    material's errors."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for cap in TESTS:
        subset = [i for i, (sid, _) in enumerate(val.entries) if val.capture_of(sid)["model"] == cap]
        if not subset:
            continue
        loader = DataLoader(torch.utils.data.Subset(val, subset), batch_size=8)
        out[cap] = {}
        for name, predict in (
            ("student", model),
            ("mean material", lambda v: mean.expand(len(v), -1, -1, -1)),
        ):
            m = MapMetrics()
            for batch in loader:
                m.update(predict(batch["views"]).float(), batch["target"])
            out[cap][name] = {k: v for k, v in m.compute().items() if k in ERRORS} | {"samples": len(subset)}
    return out


@click.command(epilog=examples_epilog(__doc__))
@click.option("--count", type=click.IntRange(24, 100_000), default=480, show_default=True)
@click.option("--size", type=click.IntRange(64, 1024), default=128, show_default=True, help="Data side.")
@click.option("--image-size", type=click.IntRange(32, 1024), default=64, show_default=True)
@click.option("--teacher-minutes", type=click.FloatRange(0.1, 10_000), default=10.0, show_default=True)
@click.option("--student-minutes", type=click.FloatRange(0.1, 10_000), default=12.0, show_default=True)
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/pretrained"),
    show_default=True,
)
@old_spellings("--output", "--out")
@click.option(
    "--output",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_MODEL,
    show_default=True,
)
def main(
    count: int,
    size: int,
    image_size: int,
    teacher_minutes: float,
    student_minutes: float,
    work: Path,
    out: Path,
) -> None:
    """Train the default phone-capture model on this machine and write it with its quality table."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    meta = data / "input" / "render_metadata.json"
    cached = json.loads(meta.read_text()) if meta.exists() else {}
    per = max(1, round(count / 24 / 2))  # a third of the samples from photo-textured materials
    if (cached.get("size"), cached.get("captures"), cached.get("seed")) != (size, MIX, SEED):
        generate_dataset(
            data,
            count=count * 2 // 3,
            size=size,
            seed=SEED,
            photo_textures=True,
            samples_per_material=per,
            captures=MIX,
            overwrite=True,
        )
    tcfg = budget_config("quick_test", {"model.image_size": size, "model.output_size": size})
    torch.manual_seed(0)
    teacher = Trainer(
        tcfg,
        PBRDataset.for_config(data, "train", tcfg),
        None,
        work / "teacher",
        work / "teacher_ckpt",
        torch.device("cpu"),
    )
    teacher.fit(max_seconds=teacher_minutes * 60)
    teacher_ckpt = work / "teacher_ckpt" / "latest.pt"
    scfg = budget_config(STUDENT, {"model.image_size": image_size, "data.curriculum": tcfg.data.curriculum})
    out_size = model_config(scfg).output_size
    shards = work / f"shards_{out_size}"
    write_shards(teacher_ckpt, data, shards, out_size, 16, tcfg.data.curriculum, batch_size=4)
    train = DistillDataset.for_config(data, shards, "train", scfg)
    student = Trainer(
        scfg,
        train,
        None,
        work / "student",
        work / "student_ckpt",
        torch.device("cpu"),
        sampler=ShardSampler(train, 0),
    )
    student.fit(max_seconds=student_minutes * 60)
    ckpt = work / "student_ckpt" / "latest.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbytes = save_pretrained(ckpt, out)
    if nbytes > MAX_BYTES:
        raise click.ClickException(
            f"{out} is {nbytes / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit"
        )
    model, _, _ = model_from_checkpoint(out)  # judged as shipped: float16 weights read back
    mean = mean_map_baseline(train.base)
    table = quality(model, PBRDataset.for_config(data, "val", scfg), mean)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(
        f"\ndefault model: {STUDENT} at {image_size}->{out_size} px, {nbytes / 2**20:.2f} MiB float16; "
        f"teacher {teacher.global_step} steps, student {student.global_step} steps; "
        f"{wall / 60:.1f} min wall, {cpu / 3600:.2f} CPU-hours"
    )
    print(f"{'tested on':<15} {'model':<14} " + " ".join(f"{k:>22}" for k in ERRORS))
    for cap, rows in table.items():
        for name, row in rows.items():
            print(f"{cap:<15} {name:<14} " + " ".join(f"{row[k]:22.4f}" for k in ERRORS))
    record = out.with_suffix(".json")
    write_result(
        record,
        {
            "model": out.name,
            "bytes": nbytes,
            "student": STUDENT,
            "image_size": image_size,
            "output_size": out_size,
            "data": {"count": len(json.loads(meta.read_text())["samples"]), "size": size, "seed": SEED, "captures": MIX,
                     "materials": "procedural and photo-textured (scikit-image)"},
            "teacher": {"preset": "quick_test", "minutes": teacher_minutes, "steps": teacher.global_step},
            "student_training": {"minutes": student_minutes, "steps": student.global_step},
            "wall_minutes": wall / 60,
            "cpu_hours": cpu / 3600,
            "held_out_quality": table,
        },
    )  # fmt: skip
    print(f"wrote {out} and {record}")


if __name__ == "__main__":
    main()
