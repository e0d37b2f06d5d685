"""Where a checkpoint's error sits: mean absolute error per map by distance from the image edge.

Padding artefacts show up as an outer ring of higher error. Measured on the held-out materials of the data
the checkpoint was trained on; the last column is the metallic prediction on samples whose true metallic map
is all zero (non-metals), where any value is error.

Examples:
    python benchmarks/edge_error.py benchmarks/results/distill_ckpt/latest.pt
    python benchmarks/edge_error.py runs/student/checkpoints/best.pt --data data/demo
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from torch.utils.data import DataLoader

from pbrforge.contract import MAP_NAMES, unpack
from pbrforge.dataset import PBRDataset
from pbrforge.models import model_config, model_from_checkpoint
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result

RINGS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 1 << 30))  # [lo, hi) pixels from the nearest edge
EDGE = 4  # the "edge" of the squared-error share


def edge_distance(size: int) -> torch.Tensor:
    """(size, size) distance of each pixel to the nearest image edge, 0 on the border."""
    i = torch.arange(size)
    d = torch.minimum(i, size - 1 - i)
    return torch.minimum(d[:, None], d[None, :])


@click.command(epilog=examples_epilog(__doc__))
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/teacher_quality/data"),
    show_default=True,
    help="The data set the checkpoint was trained on (its held-out split is used).",
)
@old_spellings("--output", "--out")
@click.option(
    "--output",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the table as JSON here.",
)
@torch.no_grad()
def main(checkpoint: Path, data: Path, out: Path | None) -> None:
    """Mean absolute error per map by distance from the edge, on held-out materials."""
    model, cfg, _ = model_from_checkpoint(checkpoint)
    val = PBRDataset.for_config(data, "val", cfg)
    side = model_config(cfg).output_size
    preds, trues = [], []
    for batch in DataLoader(val, batch_size=8):
        preds.append(model(batch["views"]).float())
        trues.append(batch["target"].float())
    p, t = unpack(torch.cat(preds)), unpack(torch.cat(trues))
    dist = edge_distance(side)
    err = {n: (p[n] - t[n]).abs().mean(1) for n in MAP_NAMES}  # (N, H, W) per map
    non_metal = t["metallic"].flatten(1).amax(1) == 0
    err["metallic on non-metals"] = p["metallic"][non_metal, 0]
    rows = {}
    for lo, hi in RINGS:
        ring = (dist >= lo) & (dist < hi)
        rows[f"{lo}-{hi if hi < 1 << 30 else 'centre'}"] = {
            k: float(v[:, ring].mean()) for k, v in err.items()
        }
    m = err["metallic on non-metals"]
    share = float((m[:, dist < EDGE] ** 2).sum() / (m**2).sum().clamp_min(1e-12))
    print(f"{checkpoint}: {len(val)} held-out samples ({int(non_metal.sum())} non-metals), {side}px")
    cols = list(err)
    print(f"{'px from edge':<14}" + "".join(f"{c:>24}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<14}" + "".join(f"{r[c]:24.5f}" for c in cols))
    print(
        f"share of the squared metallic error on non-metals within {EDGE} px of the edge: {share:.1%} "
        f"({float((dist < EDGE).float().mean()):.1%} of the pixels)"
    )
    if out is not None:
        write_result(out, {"checkpoint": str(checkpoint), "rings": rows, "edge_share": share})


if __name__ == "__main__":
    main()
