"""The domain gap: a teacher trained on procedural materials only, or on photo-textured materials only,
each judged on held-out materials of both kinds.

Two data sets are generated (procedural; photo-textured from scikit-image's photographs, each photo
quadrant its own material), each split by material. The ``quick_test`` teacher trains for the same
wall-clock budget on each training split; both teachers are evaluated on both held-out splits. Prints
the 2x2 table of albedo / roughness / metallic MAE, mean normal angle and re-render RMSE (lower is
better everywhere) and writes JSON with provenance.

Examples:
    python benchmarks/domain_gap.py --minutes 5
    python benchmarks/domain_gap.py --minutes 1 --output benchmarks/results/domain_gap_smoke
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch
from budget import budget_config
from torch.utils.data import DataLoader

from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset
from pbrforge.metrics import MapMetrics
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.trainer import Trainer

ERRORS = ("albedo/mae", "roughness/mae", "metallic/mae", "normal/angle_mean_deg", "rerender/rmse")
DOMAINS = ("procedural", "photo")


@torch.no_grad()
def evaluate(model, val: PBRDataset) -> dict[str, float]:
    model.eval()
    metrics = MapMetrics()
    for batch in DataLoader(val, batch_size=8):
        metrics.update(model(batch["views"]).float(), batch["target"])
    out = metrics.compute()
    return {k: out[k] for k in ERRORS}


def make_data(root: Path, domain: str, count: int, size: int) -> Path:
    data = root / f"data_{domain}"
    meta = data / "input" / "render_metadata.json"
    per = max(1, round(count / 12))
    expected = count if domain == "procedural" else 12 * per
    cached = json.loads(meta.read_text()) if meta.exists() else {}
    if (cached.get("size"), cached.get("count")) != (size, expected):  # made for other options: make it again
        if domain == "procedural":
            generate_dataset(data, count=count, size=size, seed=21, overwrite=True)
        else:  # 12 photo materials (3 photos x 4 quadrants): as many samples as the procedural set
            generate_dataset(
                data,
                count=0,
                size=size,
                seed=21,
                samples_per_material=per,
                photo_textures=True,
                overwrite=True,
            )
    return data


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--minutes",
    type=click.FloatRange(0.1, 600),
    default=5.0,
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
    default=Path("benchmarks/results/domain_gap"),
    show_default=True,
)
def main(minutes: float, count: int, size: int, out: Path) -> None:
    """Train on each domain for one budget; evaluate on held-out materials of both."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = budget_config("quick_test", {"model.image_size": size, "model.output_size": size})
    data = {d: make_data(out, d, count, size) for d in DOMAINS}
    splits = {d: {s: PBRDataset.for_config(data[d], s, cfg) for s in ("train", "val")} for d in DOMAINS}
    table: dict[str, dict[str, dict[str, float]]] = {}
    runs = {}
    for trained_on in DOMAINS:
        torch.manual_seed(0)
        start = time.perf_counter()
        trainer = Trainer(
            cfg,
            splits[trained_on]["train"],
            None,
            out / f"run_{trained_on}",
            out / f"ckpt_{trained_on}",
            torch.device("cpu"),
        )
        trainer.fit(max_seconds=minutes * 60)
        runs[trained_on] = {"epochs": trainer.epoch, "train_seconds": time.perf_counter() - start}
        table[trained_on] = {d: evaluate(trainer.eval_model, splits[d]["val"]) for d in DOMAINS}
    sizes = {d: {s: len(splits[d][s]) for s in ("train", "val")} for d in DOMAINS}
    print(
        f"\nquick_test teacher, {minutes:g} min each on {torch.get_num_threads()} threads; samples (train/held-out): "
        + ", ".join(f"{d} {sizes[d]['train']}/{sizes[d]['val']}" for d in DOMAINS)
    )
    print(f"{'trained on':<11} {'tested on':<11} " + " ".join(f"{k:>22}" for k in ERRORS))
    for trained_on in DOMAINS:
        for tested_on in DOMAINS:
            row = table[trained_on][tested_on]
            print(f"{trained_on:<11} {tested_on:<11} " + " ".join(f"{row[k]:22.4f}" for k in ERRORS))
    gaps = {
        trained_on: {k: table[trained_on][other][k] - table[trained_on][trained_on][k] for k in ERRORS}
        for trained_on, other in zip(DOMAINS, reversed(DOMAINS), strict=True)
    }
    print("out-of-domain minus in-domain error (positive: worse away from home)")
    for trained_on, gap in gaps.items():
        print(f"{trained_on:<23} " + " ".join(f"{gap[k]:+22.4f}" for k in ERRORS))
    write_result(
        out.parent / f"{out.name}.json",
        {
            "preset": "quick_test",
            "minutes_budget": minutes,
            "size": size,
            "samples": sizes,
            "runs": runs,
            "errors": ERRORS,
            "table": table,
            "out_of_domain_minus_in_domain": gaps,
        },
    )
    print(f"wrote {out.parent / f'{out.name}.json'}")


if __name__ == "__main__":
    main()
