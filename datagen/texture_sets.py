"""Find the texture sets of the material libraries artists use, in the layouts those libraries ship.

* ambientCG: ``<Id>_<Res>-PNG_Color.png`` (or ``-JPG_``), ``_NormalGL``/``_NormalDX``, ``_Roughness``,
  ``_Metalness``, ``_Displacement``, ``_AmbientOcclusion``;
* Poly Haven: ``<slug>_diff_<res>``, ``_nor_gl_<res>``/``_nor_dx_<res>``, ``_rough_<res>``, ``_metal_<res>``,
  ``_arm_<res>`` (AO, roughness, metal in R, G, B), ``_disp_<res>``;
* MatSynth as its download script saves it: a folder per material holding ``basecolor``, ``normal``,
  ``height``, ``roughness``, ``metallic`` images and ``metadata.json``;
* glTF 2.0 (``.gltf``/``.glb``): each material with a ``baseColorTexture``.

Discovery only reads names (and glTF JSON): pixels are decoded later, so a broken file skips its set
then, with one warning naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from pbrforge.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

AMBIENTCG = re.compile(
    r"^(?P<id>.+?)_(?P<res>\d+K)-(?:PNG|JPG)_(?P<role>Color|NormalGL|NormalDX|Roughness|Metalness|Displacement|AmbientOcclusion)$",
    re.IGNORECASE,
)
AMBIENTCG_ROLES = {
    "color": "color",
    "normalgl": "normal_gl",
    "normaldx": "normal_dx",
    "roughness": "roughness",
    "metalness": "metallic",
    "displacement": "height",
    "ambientocclusion": "ao",
}
POLYHAVEN = re.compile(
    r"^(?P<id>.+?)_(?P<role>diff|diffuse|nor_gl|nor_dx|rough|metal|arm|disp|ao)_(?P<res>\d+k)$", re.IGNORECASE
)
POLYHAVEN_ROLES = {
    "diff": "color",
    "diffuse": "color",
    "nor_gl": "normal_gl",
    "nor_dx": "normal_dx",
    "rough": "roughness",
    "metal": "metallic",
    "arm": "arm",
    "disp": "height",
    "ao": "ao",
}
MATSYNTH_ROLES = {
    "basecolor": "color",
    "normal": "normal",
    "height": "height",
    "roughness": "roughness",
    "metallic": "metallic",
}
LIBRARIES = ("ambientcg", "polyhaven", "matsynth", "gltf", "photo")
# a resolution tag read as a size, so the largest of several downloads of one material is taken
_RES = re.compile(r"(\d+)", re.ASCII)


@dataclass
class TextureSet:
    """One material of a library: where its files are and what their names state."""

    library: str
    material_id: str
    files: dict[
        str, Path
    ]  # role -> file: color, normal_gl, normal_dx, normal, roughness, metallic, arm, height, ao
    root: Path  # the --materials folder it was found under
    gltf: dict = field(default_factory=dict)  # glTF: material index, factors, texture sources

    @property
    def key(self) -> str:
        """A file-name-safe identity: library and material (the writer makes repeated keys unique)."""
        return f"{self.library}_{re.sub(r'[^A-Za-z0-9]+', '-', self.material_id).strip('-')}"


@dataclass
class Skipped:
    where: str
    why: str
    at_decode: bool = False  # a set found by name that then failed to decode (counted in the sets found)
    root: Path | None = None  # the --materials folder it was found under


def _res_value(res: str) -> int:
    m = _RES.search(res)
    return int(m.group(1)) if m else 0


def _by_name(files: list[Path], pattern: re.Pattern, roles: dict[str, str], library: str, root: Path):
    """Group files named by ``pattern`` into sets, one per material id, keeping its highest resolution.

    Libraries ship one download per resolution, often unzipped into folders of their own
    (``Bricks076_1K-PNG/``, ``Bricks076_2K-PNG/``): one material, however many folders.
    """
    found: dict[str, dict[tuple[int, str, str], dict[str, Path]]] = {}
    for f in files:
        m = pattern.match(f.stem)
        if not m:
            continue
        version = (_res_value(m["res"]), m["res"], str(f.parent))
        found.setdefault(m["id"], {}).setdefault(version, {})[roles[m["role"].lower()]] = f
    sets = []
    for mid, versions in sorted(found.items()):
        best = max(versions, key=lambda v: (v[0], "color" in versions[v], v[2]))
        sets.append(TextureSet(library, mid, dict(sorted(versions[best].items())), root))
    return sets


def _matsynth(folders: list[Path], root: Path) -> list[TextureSet]:
    sets = []
    for folder in folders:
        if not (folder / "metadata.json").is_file():
            continue
        files = {}
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.lower() in MATSYNTH_ROLES:
                files[MATSYNTH_ROLES[f.stem.lower()]] = f
        files["metadata"] = folder / "metadata.json"
        sets.append(TextureSet("matsynth", folder.name, files, root))
    return sets


def _gltf(paths: list[Path], root: Path, skipped: list[Skipped]) -> list[TextureSet]:
    if not paths:
        return []
    try:
        import pygltflib
    except ImportError as e:
        raise DataError(
            f"{root} holds glTF files, and reading them needs pygltflib: pip install 'pbrforge[assets]'"
        ) from e

    sets = []
    for path in paths:
        try:
            gltf = pygltflib.GLTF2().load(str(path))
            if gltf is None:
                raise ValueError("not a glTF file")
        except Exception as e:  # pygltflib raises many types on foreign bytes
            skipped.append(Skipped(str(path), f"unreadable glTF ({type(e).__name__}: {e})"[:200]))
            continue
        for index, material in enumerate(gltf.materials or []):
            name = material.name or f"material{index}"
            pbr = material.pbrMetallicRoughness
            if pbr is None or pbr.baseColorTexture is None:
                skipped.append(Skipped(f"{path}#{name}", "no base colour texture"))
                continue
            sets.append(
                TextureSet(
                    "gltf",
                    f"{path.stem}-{name}",
                    {"gltf": path},
                    root,
                    {
                        "material": index,
                        "base_color_factor": list(pbr.baseColorFactor or [1, 1, 1, 1]),
                        "metallic_factor": 1.0 if pbr.metallicFactor is None else float(pbr.metallicFactor),
                        "roughness_factor": 1.0
                        if pbr.roughnessFactor is None
                        else float(pbr.roughnessFactor),
                        "normal_scale": (
                            float(material.normalTexture.scale or 1.0) if material.normalTexture else 1.0
                        ),
                    },
                )
            )
    return sets


def find_sets(root: Path) -> tuple[list[TextureSet], list[Skipped]]:
    """Every texture set under ``root`` in a known layout, and what was passed over with why."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped: list[Skipped] = []
    sets = _by_name(images, AMBIENTCG, AMBIENTCG_ROLES, "ambientcg", root)
    sets += _by_name(images, POLYHAVEN, POLYHAVEN_ROLES, "polyhaven", root)
    sets += _matsynth(sorted({p.parent for p in files}), root)
    sets += _gltf([p for p in files if p.suffix.lower() in (".gltf", ".glb")], root, skipped)
    for s in sets:
        if s.library != "gltf" and "color" not in s.files:
            skipped.append(Skipped(f"{s.library} {s.material_id} ({s.root})", "no base colour map"))
    usable = [s for s in sets if s.library == "gltf" or "color" in s.files]
    return usable, [replace(s, root=root) for s in skipped]
