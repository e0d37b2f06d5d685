"""Teacher quality on held-out materials against a trivial baseline (the training set's mean maps).

Trains the ``quick_test`` preset for a wall-clock budget on a freshly generated set, then measures
per-map PSNR / SSIM / MAE, normal angle and re-render RMSE on the validation materials (never seen in
training) for the teacher and for the baseline. Prints a table, writes JSON and a grid PNG.

Examples:
    python benchmarks/teacher_quality.py --minutes 10
    python benchmarks/teacher_quality.py --minutes 2 --count 64 --output benchmarks/results/teacher_quality_smoke
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pbrforge.config import load_config
from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset
from pbrforge.metrics import MapMetrics, mean_map_baseline
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.trainer import Trainer, comparison_grid

# metric -> True when higher is better
REPORTED = {"psnr": True, "ssim": True, "mae": False}


@torch.no_grad()
def evaluate(model, val: PBRDataset, baseline: torch.Tensor) -> tuple[dict, dict, dict]:
    model.eval()
    m_model, m_base, first = MapMetrics(), MapMetrics(), None
    for batch in DataLoader(val, batch_size=8):
        pred = model(batch["views"]).float()
        m_model.update(pred, batch["target"])
        m_base.update(baseline.expand_as(batch["target"]), batch["target"])
        if first is None:
            first = {"views": batch["views"], "pred": pred, "target": batch["target"]}
    return m_model.compute(), m_base.compute(), first


@click.command(epilog=examples_epilog(__doc__))
@click.option("--minutes", type=float, default=10.0, show_default=True, help="Training wall-clock budget.")
@click.option("--count", type=int, default=192, show_default=True, help="Generated samples.")
@click.option("--size", type=int, default=128, show_default=True)
@old_spellings("--output", "--out")
@click.option(
    "--output",
    "out",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/teacher_quality"),
    show_default=True,
)
def main(minutes: float, count: int, size: int, out: Path) -> None:
    """Train quick_test for a budget; compare with the mean-map baseline on held-out materials."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "input" / "render_metadata.json").exists():
        generate_dataset(data, count=count, size=size, seed=11, dirty_ratio=0.5, overwrite=True)
    cfg = load_config("quick_test")
    cfg = cfg.override(
        {
            "model.image_size": size,
            "model.output_size": size,
            "training.grid_every": 0,
        }
    )
    train = PBRDataset.for_config(data, "train", cfg)
    val = PBRDataset.for_config(data, "val", cfg)
    device = torch.device("cpu")
    # The budget, not an epoch count, ends training: LR drops on plateaus of the training loss.
    cfg = cfg.override({"training.epochs": 10_000, "optim.scheduler": "plateau", "optim.plateau_patience": 1})
    start = time.perf_counter()
    trainer = Trainer(cfg, train, None, out / "run", out / "ckpt", device)
    trainer.fit(max_seconds=minutes * 60)
    epochs = trainer.epoch
    train_s = time.perf_counter() - start
    teacher, base, first = evaluate(trainer.eval_model, val, mean_map_baseline(train))
    rows = []
    for key in sorted(teacher):
        metric = key.split("/")[-1]
        higher = REPORTED.get(metric, False)
        delta = teacher[key] - base[key]
        rows.append(
            {
                "metric": key,
                "teacher": teacher[key],
                "baseline": base[key],
                "delta": delta,
                "teacher_better": delta > 0 if higher else delta < 0,
            }
        )
    width = max(len(r["metric"]) for r in rows)
    print(
        f"\nteacher quick_test, {epochs} epochs in {train_s / 60:.1f} min on {torch.get_num_threads()} threads; "
        f"{len(train)} train / {len(val)} held-out samples ({len(train.meta['materials'])} materials)"
    )
    print(f"{'metric':<{width}}  {'teacher':>9}  {'baseline':>9}  {'delta':>8}  better")
    for r in rows:
        print(
            f"{r['metric']:<{width}}  {r['teacher']:9.4f}  {r['baseline']:9.4f}  {r['delta']:+8.4f}  "
            f"{'yes' if r['teacher_better'] else 'NO'}"
        )
    result = {
        "preset": "quick_test",
        "minutes_budget": minutes,
        "train_seconds": train_s,
        "epochs": epochs,
        "train_samples": len(train),
        "val_samples": len(val),
        "rows": rows,
        "teacher_beats_baseline_everywhere": all(r["teacher_better"] for r in rows),
    }
    write_result(out / "teacher_quality.json", result)
    Image.fromarray(comparison_grid(first["views"], first["pred"], first["target"], rows=6)).save(
        out / "grid.png"
    )
    print(f"wrote {out / 'teacher_quality.json'} and {out / 'grid.png'}")


if __name__ == "__main__":
    main()
