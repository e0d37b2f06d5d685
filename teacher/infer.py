"""Run a trained teacher on three photos, or on a sample of a data set, and write the four maps as PNGs.

It is not ``pbrforge run TEACHER.pt``: run treats a checkpoint as a deployed model (the export wrapper on
the CPU, maps upscaled to --final-size, parity and latency reports), while this looks at the teacher as
trained, on --device, at its own output size, from photos or a data set sample (--data with --sample-idx),
and writes the views it saw beside the maps.

Handheld photos are registered onto the first one before the model sees them (--align, as in
``pbrforge run``: features, corners with --corners FILE, markers, or none for rectified views).

Examples:
    python teacher/infer.py runs/teacher/checkpoints/best.pt --input photos/ --output out/
    python teacher/infer.py runs/teacher/checkpoints/best.pt --input rectified/ --output out/ --align none
    python teacher/infer.py runs/teacher/checkpoints/best.pt --data data/demo --sample-idx 3 --output out/
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pbrforge.errors import DataError, user_errors
from pbrforge.options import (
    DEVICE_CHOICE,
    OUTPUT_DIR,
    Command,
    align_options,
    data_option,
    examples_epilog,
    old_spellings,
)

if TYPE_CHECKING:
    import torch


def predict(model: torch.nn.Module, views01: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(3, 3, h, w) views in [0, 1] -> (8, S, S) maps, using the contract's normalisation."""
    import torch

    from pbrforge.contract import normalize_views

    with torch.no_grad():
        return model(normalize_views(views01)[None].to(device))[0].float().cpu()


@click.command("teacher-infer", cls=Command, epilog=examples_epilog(__doc__))
@old_spellings("checkpoint", "--checkpoint")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False), required=True)
@old_spellings("--input", "--input-dir")
@click.option(
    "--input",
    "input_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A folder with three photos.",
)
@data_option("--data-root", required=False, help="A data set from datagen ...")
@click.option(
    "--sample-idx",
    type=click.IntRange(0, None),
    default=None,
    help="... and the index of a sample in it (all splits).",
)
@click.option("--source", type=click.Choice(["clean", "dirty"]), default="clean", show_default=True)
@align_options
@old_spellings("--output", "--out-dir")
@click.option("--output", type=OUTPUT_DIR, required=True, help="Folder for the maps and the views.")
@click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True)
@user_errors
def main(
    checkpoint: Path,
    input_dir: Path | None,
    data: Path | None,
    sample_idx: int | None,
    source: str,
    align: str,
    corners: Path | None,
    output: Path,
    device: str,
) -> None:
    """Predict albedo, roughness, metallic and normal maps with a teacher CHECKPOINT as trained.

    Unlike `pbrforge run`, which runs any checkpoint as deployed (export wrapper on the CPU, maps upscaled,
    parity and latency reports), this runs on --device at the teacher's own output size, also on a data set
    sample, and writes the views it saw.
    """
    if (input_dir is None) == (data is None) or (data is None) != (sample_idx is None):
        raise DataError("give either --input, or --data with --sample-idx")
    from PIL import Image

    from pbrforge.contract import write_material
    from pbrforge.dataset import PBRDataset
    from pbrforge.distributed import resolve_device
    from pbrforge.fileio import atomic_path, write_json
    from pbrforge.models import model_config, model_from_checkpoint
    from pbrforge.registration import overlay_png
    from pbrforge.views import check_align, read_registered_views

    check_align(align, corners)  # before the model loads, whichever input is given

    dev = resolve_device(device)
    model, cfg, _ = model_from_checkpoint(checkpoint, family="teacher", map_location=dev)
    model.to(dev)
    sizes = model_config(cfg)
    reg = None
    if input_dir is not None:
        views, _, reg = read_registered_views(input_dir, sizes.image_size, align, corners)
    elif data is not None and sample_idx is not None:  # the one other way in, checked above
        ds = PBRDataset(
            data, "all", sizes.image_size, sizes.output_size, curriculum={"clean": 0, "dirty": 2}[source]
        )
        if not 0 <= sample_idx < len(ds):
            raise DataError(f"--sample-idx {sample_idx} is outside 0..{len(ds) - 1}")
        views = ds.load_views(*ds.entries[sample_idx])
    maps = predict(model, views, dev)
    write_material(output, maps)
    if reg is not None:
        write_json(output / "registration.json", reg.to_json())
        overlay_png(reg, output / "registration.png")
    for i, v in enumerate(views):
        with atomic_path(output / f"view_{i}.png") as tmp:
            Image.fromarray((v.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
                tmp, format="PNG"
            )
    click.echo(f"wrote albedo, roughness, metallic, normal and 3 views to {output}")


if __name__ == "__main__":
    main()
