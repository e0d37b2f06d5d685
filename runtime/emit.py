"""Which material files to write beside the contract's maps, shared by ``run --emit`` and ``package``.

One decorator declares the options for both commands, and ``emit`` writes every requested file
atomically after the maps were checked against the contract.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

FORMATS = ("pngset", "gltf", "usdz", "mtlx")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_logger = logging.getLogger(__name__)


def parse_formats(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> tuple[str, ...]:
    """``pngset,gltf`` -> ('pngset', 'gltf'); an unknown or repeated name is a usage error."""
    if value is None:
        return ()
    names = [v.strip() for v in value.split(",")]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not all(names) or len(set(names)) != len(names):
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of distinct formats from {', '.join(FORMATS)}"
        )
    return tuple(names)


def parse_name(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    if value is not None and not NAME.match(value):
        raise click.BadParameter(
            f"{value!r} is not a material name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return value


def emit_options(default: str | None) -> Callable:
    """The --emit, --name, --bits, --normal and --validate options; ``default`` is --emit's default list."""

    def decorate(f: Callable) -> Callable:
        f = click.option(
            "--validate",
            "run_validators",
            is_flag=True,
            help="Check each glb, usdz and mtlx with its own ecosystem's validator; an error is exit code 1.",
        )(f)
        f = click.option(
            "--normal",
            type=click.Choice(("gl", "dx")),
            default="gl",
            show_default=True,
            help="Normal map convention of the PNG set: OpenGL (+Y up) or DirectX (green flipped).",
        )(f)
        f = click.option(
            "--bits",
            type=click.Choice(("8", "16")),
            default="8",
            show_default=True,
            help="Bit depth of the PNG set (glb and usdz embed 8-bit textures).",
        )(f)
        f = click.option(
            "--name",
            "material",
            callback=parse_name,
            default=None,
            help="Material name used in file names [default: the output folder's name].",
        )(f)
        return click.option(
            "--emit",
            "formats",
            callback=parse_formats,
            default=default,
            show_default=default is not None,
            help=f"Material files to write, comma-separated: {', '.join(FORMATS)}.",
        )(f)

    return decorate


@dataclass(frozen=True)
class AssetRequest:
    """What ``run --emit`` asked for; ``material`` None means the output folder's name."""

    formats: tuple[str, ...]
    material: str | None = None
    bits: int = 8
    normal: str = "gl"
    validate: bool = False


def check_request(formats: tuple[str, ...], normal: str, validate: bool = False) -> None:
    """Refuse a combination that cannot be written (or validated), before anything is."""
    from pbrforge.errors import DataError

    if "mtlx" in formats and normal == "dx":
        raise DataError(
            "--normal dx cannot go with mtlx: MaterialX's normalmap node reads OpenGL (+Y up) maps"
        )
    missing = [m for f, m in (("gltf", "pygltflib"), ("usdz", "pxr"), ("mtlx", "MaterialX")) if f in formats]
    import importlib.util

    absent = [m for m in missing if importlib.util.find_spec(m) is None]
    if absent:
        raise DataError(
            f"{', '.join(absent)} is not installed: pip install 'pbrforge[assets]' (make install does)"
        )
    if validate and "gltf" in formats:
        from pbrforge.runtime.validators import gltf_validator

        gltf_validator()  # Node and the npm package, or one sentence now rather than after the writing


def default_name(folder: Path) -> str:
    """The folder's name made into a material name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(folder).resolve().name)[:64].lstrip("._-")
    return name or "material"


def emit(
    maps, folder: Path, material: str, formats: tuple[str, ...], bits: int = 8, normal: str = "gl"
) -> dict[str, list[Path]]:
    """Write each requested file into ``folder``; mtlx brings the PNG set it references."""
    from pbrforge.runtime.texture_set import as_array, write_pngset

    x = as_array(maps)
    folder = Path(folder)
    written: dict[str, list[Path]] = {}
    if "pngset" in formats or "mtlx" in formats:
        written["pngset"] = write_pngset(x, folder, material, bits=bits, normal=normal)
    if "gltf" in formats:
        from pbrforge.runtime.gltf_asset import write_glb

        written["gltf"] = [write_glb(x, folder / f"{material}.glb", material)]
    if "usdz" in formats:
        from pbrforge.runtime.usd_asset import write_usdz

        written["usdz"] = [write_usdz(x, folder / f"{material}.usdz", material)]
    if "mtlx" in formats:
        from pbrforge.runtime.mtlx_asset import write_mtlx

        written["mtlx"] = [write_mtlx(folder / f"{material}.mtlx", material, normal)]
    for fmt, paths in written.items():
        _logger.info(f"{fmt}: {', '.join(p.name for p in paths)}")
    return written
