"""Teacher vs distilled student vs the mean-map baseline on held-out materials.

Reuses the teacher and data of ``benchmarks/teacher_quality.py`` (run it first), writes shards, distils
a student for a wall-clock budget, then reports per-map PSNR / SSIM / MAE, normal angle and re-render
RMSE for all three. Goal: the student within 1 dB PSNR of the teacher on every map.

Examples:
    python benchmarks/distill.py
    python benchmarks/distill.py --set 'model.decoder_padding="zeros"' --output benchmarks/results/zeros
    python benchmarks/distill.py --student student_mnv3_vit_512 --image-size 64 --minutes 10
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from budget import budget_config
from torch.utils.data import DataLoader

from pbrforge.dataset import PBRDataset
from pbrforge.metrics import MapMetrics, mean_map_baseline
from pbrforge.models import model_config, model_from_checkpoint
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.shards import DistillDataset, ShardSampler
from pbrforge.teacher.shards import write_shards
from pbrforge.trainer import Trainer

GOAL_DB = 1.0


@torch.no_grad()
def evaluate(models: dict, val_for: dict, baseline: torch.Tensor) -> dict[str, dict[str, float]]:
    results = {}
    for name, model in models.items():
        m = MapMetrics()
        for batch in DataLoader(val_for[name], batch_size=8):
            m.update(model(batch["views"]).float(), batch["target"])
        results[name] = m.compute()
    m = MapMetrics()
    for batch in DataLoader(val_for["teacher"], batch_size=8):
        m.update(baseline.expand_as(batch["target"]), batch["target"])
    results["baseline"] = m.compute()
    return results


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/teacher_quality"),
    show_default=True,
    help="teacher_quality's output (data/ and ckpt/latest.pt).",
)
@click.option("--student", default="student_mnv3_plk_1024", show_default=True, help="Student preset.")
@click.option("--image-size", type=int, default=128, show_default=True, help="Student input size.")
@click.option(
    "--minutes", type=float, default=10.0, show_default=True, help="Student budget (teacher_quality's: 10)."
)
@click.option("--set", "extra", multiple=True, help="Override any student config field: section.key=value.")
@old_spellings("--output", "--out")
@click.option(
    "--output", "out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True
)
def main(
    work: Path, student: str, image_size: int, minutes: float, extra: tuple[str, ...], out: Path
) -> None:
    """Distil a student from the teacher_quality teacher and compare the three on held-out materials."""
    data, teacher_ckpt = work / "data", work / "ckpt" / "latest.pt"
    if not teacher_ckpt.exists():
        raise click.ClickException(f"{teacher_ckpt} is missing: run benchmarks/teacher_quality.py first")
    teacher, tcfg, _ = model_from_checkpoint(teacher_ckpt)
    cfg = budget_config(
        student, {"model.image_size": image_size, "data.curriculum": tcfg.data.curriculum}, extra
    )
    cfg = cfg.override({"data.val_fraction": tcfg.data.val_fraction, "data.split_seed": tcfg.data.split_seed})
    out_size, teacher_sizes = model_config(cfg).output_size, model_config(tcfg)
    if out_size > teacher_sizes.output_size:
        raise click.ClickException(
            f"student output {out_size}px exceeds the teacher's {teacher_sizes.output_size}px"
        )
    shards_dir = out / f"distill_shards_{out_size}"
    write_shards(teacher_ckpt, data, shards_dir, out_size, 8, tcfg.data.curriculum, batch_size=4)
    d = cfg.data
    train = DistillDataset.for_config(data, shards_dir, "train", cfg)
    trainer = Trainer(
        cfg,
        train,
        None,
        out / "distill_run",
        out / "distill_ckpt",
        torch.device("cpu"),
        sampler=ShardSampler(train, cfg.training.seed),
    )
    trainer.fit(max_seconds=minutes * 60)
    student_model = trainer.eval_model.eval()
    val_student = PBRDataset.for_config(data, "val", cfg)
    val_teacher = PBRDataset(
        data, "val", teacher_sizes.image_size, out_size, d.curriculum, d.val_fraction, d.split_seed
    )

    class Resized(torch.nn.Module):  # the teacher judged at the student's output size
        def forward(self, views):
            from pbrforge.contract import resize_maps

            return resize_maps(teacher(views), out_size)

    res = evaluate(
        {"teacher": Resized().eval(), "student": student_model},
        {"teacher": val_teacher, "student": val_student},
        mean_map_baseline(train.base),
    )
    keys = sorted(res["teacher"])
    print(
        f"\ndistillation: {student} at {image_size}->{out_size}px, {trainer.epoch} epochs in {minutes:.0f} min; "
        f"{len(val_student)} held-out samples{'; ' + ', '.join(extra) if extra else ''}"
    )
    print(f"{'metric':<24} {'teacher':>9} {'student':>9} {'baseline':>9} {'student-teacher':>16}")
    for k in keys:
        print(
            f"{k:<24} {res['teacher'][k]:9.4f} {res['student'][k]:9.4f} {res['baseline'][k]:9.4f} "
            f"{res['student'][k] - res['teacher'][k]:+16.4f}"
        )
    gaps = {k: res["teacher"][k] - res["student"][k] for k in keys if k.endswith("/psnr")}
    met = all(g <= GOAL_DB for g in gaps.values())
    print(
        f"goal: student within {GOAL_DB} dB PSNR of the teacher on every map: {'met' if met else 'NOT met'} "
        f"(gaps: {', '.join(f'{k} {v:+.2f} dB' for k, v in gaps.items())})"
    )
    write_result(
        out / "distill.json",
        {
            "student": student,
            "image_size": image_size,
            "output_size": out_size,
            "epochs": trainer.epoch,
            "minutes": minutes,
            "overrides": list(extra),
            "metrics": res,
            "psnr_gap_db": gaps,
            "goal_met": met,
        },
    )
    print(f"wrote {out / 'distill.json'}")


if __name__ == "__main__":
    main()
