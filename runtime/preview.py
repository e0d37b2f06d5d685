"""Look at predicted maps as a material: a self-contained web page, and a screenshot of it from Chromium.

The page shows a sphere and a tipped swatch under a moving point light and a room environment, the three
input views beside them, sliders for the light angle and the exposure, and a toggle per map. three.js is
bundled by ``make install`` from the npm lockfile and inlined with the textures, so the page opens
offline by double-click and nothing is fetched from a CDN. --screenshot renders the page in headless
Chromium with software WebGL (SwiftShader) and saves a PNG.

Examples:
    pbrforge preview out/ --views photos/
    pbrforge preview out/ --views photos/ --output look.html --screenshot look.png
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import click

from pbrforge.errors import user_errors
from pbrforge.options import OUTPUT_FILE, Command, examples_epilog, old_spellings

WEB = Path(__file__).resolve().parent / "web"
BUNDLE = WEB / "dist" / "viewer.js"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SHOT_SIZE = (1280, 720)
SHOT_TIMEOUT = 300  # seconds: software WebGL compiles its shaders on the CPU
_logger = logging.getLogger(__name__)


def parse_title(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """1-120 printable characters (the page escapes them)."""
    if value is not None and not (0 < len(value) <= 120 and value.isprintable()):
        raise click.BadParameter(f"{value[:40]!r} is not a title: 1-120 printable characters")
    return value


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page(maps, name: str, views: list[Path]) -> str:
    """The whole HTML page for contract maps (8, H, W) and up to three view photos."""
    from PIL import Image

    from pbrforge.contract import open_image
    from pbrforge.runtime.texture_set import as_array, png_bytes, textures

    if not BUNDLE.is_file():
        from pbrforge.errors import UnavailableError

        raise UnavailableError(f"the previewer's bundle {BUNDLE} is missing: run make install")
    images = textures(as_array(maps))
    material = {
        "name": name,
        "textures": {k: _data_uri(png_bytes(images[k])) for k in ("albedo", "metallic_roughness", "normal")},
    }
    thumbs = []
    for p in views:
        img = open_image(p).convert("RGB")
        img.thumbnail((256, 256), Image.Resampling.LANCZOS)
        thumbs.append(f'<img alt="{html.escape(p.name)}" src="{_data_uri(png_bytes(img))}">')
    # "</" cannot end a script element early once escaped; JSON and JavaScript read "<\/" as "</"
    script_safe = {
        "MATERIAL": json.dumps(material).replace("</", "<\\/"),
        "BUNDLE": BUNDLE.read_text("utf-8").replace("</", "<\\/"),
    }
    fields = {
        "NAME": html.escape(name),
        "VIEWS": "".join(thumbs),
        "VIEWS_NOTE": "the three input views" if thumbs else "no input views were given (--views)",
        **script_safe,
    }
    template = (WEB / "page.html").read_text("utf-8")
    # one pass: a value that happens to hold "{{...}}" is never expanded again
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: fields[m.group(1)], template)


def browser() -> str:
    """The Chromium to screenshot with; one sentence when none is installed."""
    from pbrforge.errors import UnavailableError

    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise UnavailableError("no Chromium found for --screenshot: apt-get install chromium (make install does)")


def screenshot(page_path: Path, png: Path, size: tuple[int, int] = SHOT_SIZE) -> Path:
    """Render ``page_path`` with the light standing still in headless Chromium (software WebGL) into ``png``."""
    from pbrforge.errors import ToolFailure
    from pbrforge.fileio import atomic_path

    exe = browser()
    with tempfile.TemporaryDirectory(prefix="pbrforge-chromium-") as profile, atomic_path(png) as tmp:
        cmd = [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--enable-unsafe-swiftshader",
            "--use-angle=swiftshader",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=20000",  # let the textures decode and the one frame draw before the shot
            f"--screenshot={tmp}",
            Path(page_path).resolve().as_uri() + "#still",
        ]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=SHOT_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise ToolFailure(
                f"Chromium did not finish the screenshot of {page_path} in {SHOT_TIMEOUT} s"
            ) from e
        if r.returncode != 0 or not tmp.is_file():
            raise ToolFailure(f"Chromium could not screenshot {page_path}: {r.stderr.strip()[-300:]}")
    return png


@click.command("preview", cls=Command, epilog=examples_epilog(__doc__))
@click.argument("maps_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--views",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Folder with the three input photos, shown beside the material.",
)
@old_spellings("--output", "--out")
@click.option(
    "--output", type=OUTPUT_FILE, default=None, help="The page [default: MAPS_DIR/preview_3d.html]."
)
@click.option(
    "--screenshot", "shot", type=OUTPUT_FILE, default=None, help="Also render the page to this PNG."
)
@click.option(
    "--name", default=None, callback=parse_title, help="Title of the page [default: MAPS_DIR's name]."
)
@user_errors
def main(
    maps_dir: Path, views: Path | None, output: Path | None, shot: Path | None, name: str | None
) -> None:
    """Write a 3D preview page of a material folder, and optionally a screenshot of it."""
    from pbrforge.contract import read_material
    from pbrforge.fileio import atomic_path, check_output_path
    from pbrforge.runtime.emit import default_name
    from pbrforge.views import find_views

    output = output or maps_dir / "preview_3d.html"
    check_output_path(output, "--output")
    if shot is not None:
        check_output_path(shot, "--screenshot")
        browser()
    maps = read_material(maps_dir)
    photos = find_views(views) if views is not None else []
    text = page(maps, name or default_name(maps_dir), photos)
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    _logger.info(f"preview: {output} ({len(text) / 1e6:.1f} MB, opens offline)")
    if shot is not None:
        screenshot(output, shot)
        _logger.info(f"screenshot: {shot}")


if __name__ == "__main__":
    main()
