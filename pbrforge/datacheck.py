"""``pbrforge check-data`` and ``pbrforge contact-sheet``: look at a data set before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pbrforge.errors import user_errors
from pbrforge.options import MAX_SIDE, OUTPUT_FILE, Command, data_option, old_spellings

if TYPE_CHECKING:
    from PIL import Image


@click.command("check-data", cls=Command)
@data_option("ROOT")
@user_errors
def check_data(data: Path) -> None:
    """Validate every file of a data set and print its counts.

    \b
    Example:
      pbrforge check-data --data data/demo
    Exits 2 with one sentence on the first problem; writes nothing.
    """
    from pbrforge.dataset import scan_dataset

    _, summary = scan_dataset(data, deep=True)
    click.echo(summary.table())
    click.echo("ok")


def contact_sheet_image(root: Path, count: int = 6, source: str = "clean", tile: int = 128) -> Image.Image:
    """Rows of samples: 3 views | albedo, roughness, metallic, normal."""
    import numpy as np
    from PIL import Image

    from pbrforge.contract import read_material, resize_maps, to_preview
    from pbrforge.dataset import scan_dataset, view_paths
    from pbrforge.views import load_view

    meta, _ = scan_dataset(root)
    ids = [sid for sid, s in sorted(meta["samples"].items()) if source in s["sources"]][:count]
    rows = []
    for sid in ids:
        views = [load_view(p, tile).permute(1, 2, 0).numpy() for p in view_paths(root, source, sid)]
        maps = resize_maps(read_material(Path(root) / "output" / meta["samples"][sid]["material"]), tile)
        rows.append(np.concatenate(views + to_preview(maps), axis=1))
    sheet = np.concatenate(rows, axis=0)
    return Image.fromarray(np.round(sheet * 255).astype(np.uint8), "RGB")


@click.command("contact-sheet", cls=Command)
@data_option("ROOT")
@old_spellings("--output", "--out")
@click.option("--output", type=OUTPUT_FILE, required=True, help="PNG to write.")
@click.option("--count", type=click.IntRange(1, 256), default=6, show_default=True, help="Samples (rows).")
@click.option("--source", type=click.Choice(["clean", "dirty"]), default="clean", show_default=True)
@click.option(
    "--tile",
    type=click.IntRange(16, MAX_SIDE // 8),
    default=128,
    show_default=True,
    help="Tile side in pixels.",
)
@user_errors
def contact_sheet(data: Path, output: Path, count: int, source: str, tile: int) -> None:
    """Write a PNG of a few samples: three views then the four maps.

    \b
    Example:
      pbrforge contact-sheet --data data/demo --output sheet.png --count 8 --source dirty
    """
    from pbrforge.fileio import atomic_path, check_output_path

    check_output_path(output, "--output")
    img = contact_sheet_image(data, count, source, tile)
    with atomic_path(output) as tmp:
        img.save(tmp, format="PNG")
    click.echo(f"wrote {output}")
