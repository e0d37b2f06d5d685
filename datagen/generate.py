"""Generate a PBR data set rendered with the shared GGX renderer: procedural materials, and real ones.

--materials DIR (repeatable) finds texture sets under DIR in the layouts of ambientCG, Poly Haven and
MatSynth, and glTF 2.0 materials (.gltf/.glb), and renders --samples-per-material random crops of each
(1-4 source texels per pixel, mirrored and turned by multiples of 90 degrees, normals turned with them).
--photo-textures adds scikit-image's texture photographs (brick, grass, gravel; each quadrant a material)
as photo-textured materials. Sets without base colour or with unreadable files are skipped with a
warning; the run ends with a summary and one warning per --materials folder that gave nothing usable (naming
it and why), and a run with nothing usable at all is one sentence and exit code 2.

--capture mixes capture models (pbrforge.captures), NAME[:WEIGHT] separated by commas: phone-flash (the
default: a handheld phone, its flash beside the lens, room light always on), phone-ambient (room light
only) and tripod (the old fixed camera with a side light). Each sample records its capture. Phone captures
light the room with HDR maps: npm @pmndrs/assets' 18 CC0 maps (make install) or --environments DIR.

--output is the data root this writes (--data names a data set a command reads; what a command writes is
--output, a data set included).

--export-capture N also writes flash captures of the first N materials in MaterialGAN's layout, with their
true maps, under OUTPUT/captures/<material>/ (datagen/export_capture.py), for `pbrforge evaluate-capture`.

Examples:
    python datagen/generate.py --output data/demo --count 64 --size 256 --seed 0 --dirty-ratio 0.5
    pbrforge datagen --output data/mix --count 64 --capture phone-flash:0.6,phone-ambient:0.2,tripod:0.2
    pbrforge datagen --output data/rig --count 64 --capture tripod
    pbrforge datagen --output data/myrooms --count 64 --environments ~/hdris
    pbrforge datagen --output data/big --count 2000 --size 512 --samples-per-material 4
    pbrforge datagen --output data/real --count 0 --materials ~/ambientcg --materials ~/polyhaven --size 256
    pbrforge datagen --output data/mixed --count 64 --photo-textures --size 128
    pbrforge datagen --output data/demo --count 16 --size 256 --export-capture 4
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.options import (
    CAPTURE_MIX,
    MAX_SIDE,
    OUTPUT_DIR,
    Command,
    FiniteFloatRange,
    examples_epilog,
    old_spellings,
)


@click.command("datagen", cls=Command, epilog=examples_epilog(__doc__))
@old_spellings("--output", "--out")
@click.option("--output", type=OUTPUT_DIR, required=True, help="Data set (its root folder) to create.")
@click.option(
    "--count",
    type=click.IntRange(0, 1_000_000),
    default=64,
    show_default=True,
    help="Procedural samples (0: imported materials only).",
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
@click.option(
    "--materials",
    "material_dirs",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    multiple=True,
    help="Folder of texture sets (ambientCG, Poly Haven, MatSynth, glTF); repeatable.",
)
@click.option("--photo-textures", is_flag=True, help="Add scikit-image's texture photographs as materials.")
@click.option(
    "--capture",
    "capture_mix",
    type=CAPTURE_MIX,
    default="phone-flash",
    show_default=True,
    help="Capture models and weights: phone-flash, phone-ambient, tripod (e.g. phone-flash:0.8,tripod:0.2).",
)
@click.option(
    "--environments",
    "environments_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Folder of .exr/.hdr environment maps for the room light [default: npm @pmndrs/assets].",
)
@click.option(
    "--export-capture",
    type=click.IntRange(0, 10_000),
    default=0,
    help="Also write flash captures of the first N materials under OUTPUT/captures/ (evaluate-capture's layout).",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --output.")
@user_errors
def main(
    output: Path,
    count: int,
    size: int,
    seed: int,
    dirty_ratio: float,
    samples_per_material: int,
    material_dirs: tuple[Path, ...],
    photo_textures: bool,
    capture_mix: dict[str, float],
    environments_dir: Path | None,
    export_capture: int,
    overwrite: bool,
) -> None:
    """Render procedural and imported materials into three-view captures and ground-truth maps."""
    from pbrforge.datagen.writer import generate_dataset
    from pbrforge.dataset import scan_dataset

    t0 = time.perf_counter()
    generate_dataset(
        output,
        count,
        size,
        seed,
        dirty_ratio,
        samples_per_material,
        overwrite,
        material_dirs=material_dirs,
        photo_textures=photo_textures,
        captures=capture_mix,
        environments_dir=environments_dir,
    )
    if export_capture:
        from pbrforge.datagen.export_capture import export_captures

        export_captures(output, export_capture, seed)
    elapsed = time.perf_counter() - t0
    _, summary = scan_dataset(output)
    click.echo(summary.table())
    click.echo(f"generated in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
