"""The real-capture protocol on synthetic phone captures: a model judged by re-rendering held-out flash
photos, before and after test-time refinement, beside a flat material and the true maps.

K procedural materials (the families in turn) are written as flash captures in MaterialGAN's layout by
datagen/export_capture.py (N photos 0-30 degrees off vertical, the flash at the lens, one exposure). Each
is scored as `pbrforge evaluate-capture DIR C --inputs ... --refine STEPS` scores it: the model
sees the three input photos, every other photo is re-rendered with one gain per method fitted on the inputs,
RMSE and SSIM in sRGB. One evaluation with refinement gives both the model's row (its maps as predicted)
and the refined row. The flat material (the inputs' mean colour) is the floor a model must beat; the true
maps give the floor from below (8-bit photos). Prints the table and writes JSON with provenance.

Examples:
    python benchmarks/real_capture.py runs/student/checkpoints/best.pt
    python benchmarks/real_capture.py best.pt --captures 2 --size 64 --photos 5 --refine 5 \\
        --output benchmarks/results/real_capture_smoke
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch

from pbrforge import capture_eval as ce
from pbrforge.contract import read_material
from pbrforge.datagen.export_capture import export_capture
from pbrforge.datagen.materials import FAMILIES, make_material
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result
from pbrforge.runtime.evaluate_capture import load_predictor

SEED = 41
METHODS = ("model", "refined", "flat", "truth")


def make_captures(root: Path, count: int, size: int, photos: int) -> list[Path]:
    """``count`` captures of procedural materials, each from its own seed, written afresh on every run."""
    families = sorted(FAMILIES)
    rng = np.random.default_rng(SEED)
    folders = []
    for i in range(count):
        family, seed = families[i % len(families)], int(rng.integers(1 << 31))
        maps = torch.from_numpy(make_material(family, seed, size).maps())
        folder = root / f"{family}_{i:03d}"
        export_capture(maps, folder, photos, seed=seed, overwrite=True)
        folders.append(folder)
    return folders


@click.command(epilog=examples_epilog(__doc__))
@old_spellings("checkpoint", "--checkpoint")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--captures", type=click.IntRange(1, 1000), default=12, show_default=True)
@click.option("--photos", type=click.IntRange(ce.MIN_PHOTOS, ce.MAX_PHOTOS), default=9, show_default=True)
@click.option(
    "--size", type=click.IntRange(ce.MIN_PHOTO_SIDE, ce.MAX_SCORE_SIDE), default=256, show_default=True
)
@click.option("--inputs", default="00,01,02", show_default=True, help="The three photos the model sees.")
@click.option(
    "--refine",
    "refine_steps",
    type=click.IntRange(0, 100_000),
    default=200,
    show_default=True,
    help="0: none.",
)
@old_spellings("--output", "--out")
@click.option(
    "--output",
    "out",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/real_capture"),
    show_default=True,
)
def main(
    checkpoint: Path, captures: int, photos: int, size: int, inputs: str, refine_steps: int, out: Path
) -> None:
    """Write synthetic flash captures; score the model CHECKPOINT (PyTorch eager) on their held-out photos,
    with and without refinement."""
    numbers = ce.parse_inputs(inputs)
    folders = make_captures(out / "captures", captures, size, photos)
    predictor = load_predictor(checkpoint=checkpoint)
    rows: dict[str, dict] = {}
    start = time.perf_counter()
    for folder in folders:
        capture = ce.read_capture(folder)
        result = ce.evaluate_capture(
            capture=capture,
            inputs=numbers,
            predictor=predictor,
            output=out / "evaluations" / folder.name,
            refine_steps=refine_steps,
        )
        scores = dict(result.methods)
        scores["truth"] = ce.score_maps(capture, read_material(folder / "truth"), result.inputs)
        rows[folder.name] = {
            "methods": {
                m: {"rmse": s.mean_rmse, "ssim": s.mean_ssim, "gain": s.gain} for m, s in scores.items()
            },
            "refinement": result.to_dict()["refinement"],
        }
    seconds = time.perf_counter() - start
    methods = [m for m in METHODS if all(m in r["methods"] for r in rows.values())]
    mean = {
        m: {k: float(np.mean([r["methods"][m][k] for r in rows.values()])) for k in ("rmse", "ssim")}
        for m in methods
    }
    print(
        f"\n{predictor.name}: {captures} synthetic captures, {photos} photos at {size} px, inputs {inputs}, "
        f"refine {refine_steps} steps; {seconds:.1f} s on {torch.get_num_threads()} threads"
    )
    print(f"{'capture':<22}" + "".join(f" {m + ' RMSE':>13} {m + ' SSIM':>13}" for m in methods))
    for name, r in rows.items():
        print(
            f"{name:<22}"
            + "".join(f" {r['methods'][m]['rmse']:13.4f} {r['methods'][m]['ssim']:13.4f}" for m in methods)
        )
    print(f"{'mean':<22}" + "".join(f" {mean[m]['rmse']:13.4f} {mean[m]['ssim']:13.4f}" for m in methods))
    path = out.parent / f"{out.name}.json"
    write_result(
        path,
        {
            "checkpoint": str(checkpoint),
            "model": predictor.name,
            "captures": captures,
            "photos": photos,
            "size": size,
            "inputs": inputs,
            "refine_steps": refine_steps,
            "seconds": seconds,
            "protocol": "pbrforge.capture_eval: one gain per method fitted on the inputs, sRGB RMSE and SSIM "
            "of the held-out photos; refinement early-stopped on the third input",
            "mean": mean,
            "per_capture": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
