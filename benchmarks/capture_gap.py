"""The capture gap: a teacher trained on the tripod rig, on handheld phone-flash captures, or on a mix, each
judged on held-out materials photographed all three ways (tripod, phone-flash, phone-ambient).

Four data sets are generated from one seed, so they hold the same procedural materials and split them the
same way; only the capture differs. The ``quick_test`` teacher trains for the same wall-clock budget on
each training capture and is evaluated on the held-out materials of every test capture. Errors (lower is
better): albedo / roughness / metallic MAE, mean normal angle, the re-render RMSE under the metric's fixed
phone-flash capture, and ``capture/rmse``: the predicted material re-rendered under each test sample's own
recorded capture (cameras, flash, room light) against the true material's render, in sRGB. A row for the
mean training material (no model at all) gives the floor a model must beat.

Examples:
    python benchmarks/capture_gap.py --minutes 4
    python benchmarks/capture_gap.py --minutes 0.5 --count 48 --output benchmarks/results/capture_gap_smoke
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch
from budget import budget_config
from torch.utils.data import DataLoader

from pbrforge.captures import batch_captures, render_capture
from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset
from pbrforge.metrics import MapMetrics, mean_map_baseline
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.render import to_display
from pbrforge.trainer import Trainer

ERRORS = (
    "albedo/mae",
    "roughness/mae",
    "metallic/mae",
    "normal/angle_mean_deg",
    "rerender/rmse",
    "capture/rmse",
)
TRAIN_ON = {
    "tripod": {"tripod": 1.0},
    "phone-flash": {"phone-flash": 1.0},
    "mix": {"phone-flash": 0.6, "phone-ambient": 0.2, "tripod": 0.2},
}
TEST_ON = ("tripod", "phone-flash", "phone-ambient")
SEED = 31


@torch.no_grad()
def evaluate(predict, val: PBRDataset) -> dict[str, float]:
    """Map errors, the fixed-capture re-render RMSE, and the RMSE under each sample's own capture."""
    metrics = MapMetrics()
    envs = val.environments
    sq, n = 0.0, 0
    for batch in DataLoader(val, batch_size=8):
        pred, true = predict(batch["views"]).float(), batch["target"]
        metrics.update(pred, true)
        cap = batch_captures([val.capture_of(s) for s in batch["sample_id"]], envs)
        diff = to_display(render_capture(pred, cap)) - to_display(render_capture(true, cap))
        sq += float(diff.pow(2).mean(dim=(1, 2, 3, 4)).sqrt().sum())
        n += len(pred)
    out = metrics.compute()
    out["capture/rmse"] = sq / max(1, n)
    return {k: out[k] for k in ERRORS}


def make_data(root: Path, name: str, mix: dict[str, float], count: int, size: int) -> Path:
    data = root / f"data_{name}"
    meta = data / "input" / "render_metadata.json"
    cached = json.loads(meta.read_text()) if meta.exists() else {}
    if (cached.get("size"), cached.get("count"), cached.get("captures")) != (size, count, mix):
        generate_dataset(data, count=count, size=size, seed=SEED, captures=mix, overwrite=True)
    return data


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--minutes",
    type=click.FloatRange(0.1, 600),
    default=4.0,
    show_default=True,
    help="Training budget per teacher.",
)
@click.option(
    "--count", type=click.IntRange(24, 100_000), default=144, show_default=True, help="Samples per data set."
)
@click.option("--size", type=click.IntRange(32, 1024), default=128, show_default=True)
@old_spellings("--output", "--out")
@click.option(
    "--output",
    "out",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/capture_gap"),
    show_default=True,
)
def main(minutes: float, count: int, size: int, out: Path) -> None:
    """Train on each capture for one budget; evaluate on held-out materials under every capture."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = budget_config("quick_test", {"model.image_size": size, "model.output_size": size})
    mixes = {**TRAIN_ON, **{t: {t: 1.0} for t in TEST_ON}}
    data = {name: make_data(out, name, mix, count, size) for name, mix in mixes.items()}
    train = {t: PBRDataset.for_config(data[t], "train", cfg) for t in TRAIN_ON}
    val = {t: PBRDataset.for_config(data[t], "val", cfg) for t in TEST_ON}
    table: dict[str, dict[str, dict[str, float]]] = {}
    runs = {}
    for trained_on in TRAIN_ON:
        torch.manual_seed(0)
        start = time.perf_counter()
        trainer = Trainer(
            cfg,
            train[trained_on],
            None,
            out / f"run_{trained_on}",
            out / f"ckpt_{trained_on}",
            torch.device("cpu"),
        )
        trainer.fit(max_seconds=minutes * 60)
        runs[trained_on] = {
            "epochs": trainer.epoch,
            "steps": trainer.global_step,
            "train_seconds": time.perf_counter() - start,
        }
        model = trainer.eval_model.eval()
        table[trained_on] = {t: evaluate(model, val[t]) for t in TEST_ON}
    mean = mean_map_baseline(train["phone-flash"])
    table["mean material"] = {t: evaluate(lambda v: mean.expand(len(v), -1, -1, -1), val[t]) for t in TEST_ON}
    sizes = {"train": {t: len(s) for t, s in train.items()}, "held_out": {t: len(s) for t, s in val.items()}}
    print(
        f"\nquick_test teacher, {minutes:g} min each on {torch.get_num_threads()} threads, {size} px; "
        f"samples: train {sizes['train']}, held-out {sizes['held_out']}"
    )
    print(f"{'trained on':<14} {'tested on':<14} " + " ".join(f"{k:>21}" for k in ERRORS))
    for trained_on, rows in table.items():
        for tested_on, row in rows.items():
            print(f"{trained_on:<14} {tested_on:<14} " + " ".join(f"{row[k]:21.4f}" for k in ERRORS))
    write_result(
        out.parent / f"{out.name}.json",
        {
            "preset": "quick_test",
            "minutes_budget": minutes,
            "size": size,
            "count": count,
            "seed": SEED,
            "train_mixes": TRAIN_ON,
            "samples": sizes,
            "runs": runs,
            "errors": ERRORS,
            "table": table,
        },
    )
    print(f"wrote {out.parent / f'{out.name}.json'}")


if __name__ == "__main__":
    main()
