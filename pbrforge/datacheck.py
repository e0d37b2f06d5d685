"""``pbrforge check-data`` and ``pbrforge contact-sheet``: look at a data set before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pbrforge.errors import user_errors
from pbrforge.options import MAX_SIDE, OUTPUT_FILE, Command

if TYPE_CHECKING:
    from PIL import Image


@click.command("check-data", cls=Command)
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@user_errors
def check_data(root: Path) -> None:
    """Validate every file of a data set and print its counts.

    \b
    Example:
      pbrforge check-data data/demo
    Exits 2 with one sentence on the first problem; writes nothing.
    """
    from pbrforge.dataset import scan_dataset

    _, summary = scan_dataset(root, deep=True)
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
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=OUTPUT_FILE, required=True, help="PNG to write.")
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
def contact_sheet(root: Path, out: Path, count: int, source: str, tile: int) -> None:
    """Write a PNG of a few samples: three views then the four maps.

    \b
    Example:
      pbrforge contact-sheet data/demo --out sheet.png --count 8 --source dirty
    """
    from pbrforge.fileio import atomic_path, check_output_path

    check_output_path(out, "--out")
    img = contact_sheet_image(root, count, source, tile)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    click.echo(f"wrote {out}")
