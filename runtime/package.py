"""Package maps already on disk as the files 3D tools open: an ambientCG PNG set, glb, usdz and MaterialX.

MAPS_DIR is a material folder of the contract (albedo.png, roughness.png, metallic.png, normal.png), as
``run`` and ``datagen`` write them. With --validate each file is checked by its own ecosystem's validator
(Khronos glTF validator, USD's validation framework, MaterialX) and any error is exit code 1.

Examples:
    pbrforge package out/ --emit pngset,gltf,usdz,mtlx --validate
    pbrforge package out/ --emit gltf --output assets/ --name RustyIron
    pbrforge package out/ --emit pngset --bits 16 --normal dx
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.options import OUTPUT_DIR, Command, examples_epilog, old_spellings
from pbrforge.runtime.emit import FORMATS, emit_options

_logger = logging.getLogger(__name__)


@click.command("package", cls=Command, epilog=examples_epilog(__doc__))
@click.argument("maps_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@emit_options(default=",".join(FORMATS))
@old_spellings("--output", "--out")
@click.option("--output", type=OUTPUT_DIR, default=None, help="Folder for the files [default: MAPS_DIR].")
@user_errors
def main(
    maps_dir: Path,
    formats: tuple[str, ...],
    material: str | None,
    bits: str,
    normal: str,
    output: Path | None,
    run_validators: bool,
) -> None:
    """Write material files from a folder of contract maps."""
    from pbrforge.contract import read_material
    from pbrforge.fileio import check_output_dir, exclusive
    from pbrforge.runtime.emit import check_request, default_name, emit
    from pbrforge.runtime.validators import check_files

    output = output or maps_dir
    check_output_dir(output, "--output")
    check_request(formats, normal, run_validators)
    maps = read_material(maps_dir)
    material = material or default_name(output)
    with exclusive(output):
        written = emit(maps, output, material, formats, bits=int(bits), normal=normal)
    if run_validators:
        check_files([p for paths in written.values() for p in paths])


if __name__ == "__main__":
    main()
