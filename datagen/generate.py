"""Generate a procedural PBR data set rendered with the shared GGX renderer.

Examples:
    python datagen/generate.py --out data/demo --count 64 --size 256 --seed 0 --dirty-ratio 0.5
    pbrforge datagen --out data/big --count 2000 --size 512 --samples-per-material 4
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.options import MAX_SIDE, OUTPUT_DIR, Command, FiniteFloatRange, examples_epilog


@click.command("datagen", cls=Command, epilog=examples_epilog(__doc__))
@click.option("--out", type=OUTPUT_DIR, required=True, help="Data root to create.")
@click.option(
    "--count", type=click.IntRange(1, 1_000_000), default=64, show_default=True, help="Number of samples."
)
@click.option(
    "--size",
    type=click.IntRange(16, MAX_SIDE),
    default=256,
    show_default=True,
    help="Side of views and maps in pixels.",
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option(
    "--dirty-ratio",
    type=FiniteFloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Fraction of samples that also get a damaged capture.",
)
@click.option(
    "--samples-per-material",
    type=click.IntRange(1, 1_000_000),
    default=2,
    show_default=True,
    help="Samples sharing one material (differing in lighting).",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@user_errors
def main(
    out: Path,
    count: int,
    size: int,
    seed: int,
    dirty_ratio: float,
    samples_per_material: int,
    overwrite: bool,
) -> None:
    """Render procedural materials into three-view captures and ground-truth maps."""
    from pbrforge.datagen.writer import generate_dataset
    from pbrforge.dataset import scan_dataset

    t0 = time.perf_counter()
    generate_dataset(out, count, size, seed, dirty_ratio, samples_per_material, overwrite)
    elapsed = time.perf_counter() - t0
    _, summary = scan_dataset(out)
    click.echo(summary.table())
    click.echo(f"generated in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
