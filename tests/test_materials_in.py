"""Real materials in: texture sets in the layouts of ambientCG, Poly Haven, MatSynth and glTF, the crops the
data set renders from them, and photo-textured materials."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pbrforge.cli import main as cli
from pbrforge.datagen.imported import load_set, sample_crop, transform_maps, transform_points
from pbrforge.datagen.materials import make_material
from pbrforge.datagen.texture_sets import find_sets
from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset, material_groups, scan_dataset
from pbrforge.render import linear_to_srgb, render, srgb_to_linear

SIZE = 64


def truth(seed: int = 5, family: str = "bricks") -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 8) maps with structure in every channel, and the height they were derived from."""
    m = make_material(family, seed, SIZE)
    maps = m.maps().transpose(1, 2, 0).copy()
    maps[..., 3] = np.linspace(0.1, 0.9, SIZE)[None, :]  # roughness: a ramp needing more than 8 bits
    maps[..., 4] = (np.arange(SIZE)[:, None] % 16 < 8) * np.ones(SIZE)  # metallic stripes
    return maps, (m.height - m.height.min()) / np.ptp(m.height)


def save8(path: Path, x: np.ndarray) -> None:
    arr = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(arr if arr.ndim == 2 or arr.shape[-1] > 1 else arr[..., 0]).save(path)


def save16(path: Path, x: np.ndarray) -> None:
    arr = np.round(np.clip(x, 0, 1) * 65535).astype(np.uint16)
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[-1]
    with open(path, "wb") as f:
        png.Writer(w, h, greyscale=c == 1, bitdepth=16).write(f, arr.reshape(h, w * c).tolist())


def encode_normal(n: np.ndarray, dx: bool = False) -> np.ndarray:
    return (n * (np.array([1, -1, 1]) if dx else 1) + 1) / 2


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Texture sets in every layout, with the odd cases artists' folders hold."""
    root = tmp_path_factory.mktemp("library")
    maps, height = truth()
    # ambientCG: 16-bit, DirectX normals, and a lower resolution of the same material that must be ignored
    acg = root / "ambientcg"
    acg.mkdir()
    save8(acg / "Bricks076_1K-PNG_Color.png", maps[..., :3])
    save16(acg / "Bricks076_1K-PNG_NormalDX.png", encode_normal(maps[..., 5:], dx=True))
    save16(acg / "Bricks076_1K-PNG_Roughness.png", maps[..., 3])
    save8(acg / "Bricks076_1K-PNG_Metalness.png", maps[..., 4])
    save16(acg / "Bricks076_1K-PNG_Displacement.png", height)
    save8(acg / "Bricks076_1K-JPG_AmbientOcclusion.png", np.ones((SIZE, SIZE)))
    Image.new("RGB", (8, 8), (255, 0, 0)).save(acg / "Bricks076_0K-PNG_Color.png")  # a smaller download
    save8(acg / "Plain001_1K-PNG_Color.png", maps[..., :3])  # no roughness, no metalness
    save8(acg / "Plain001_1K-PNG_NormalGL.png", encode_normal(maps[..., 5:]))
    save8(acg / "NoColor001_1K-PNG_Roughness.png", maps[..., 3])  # no base colour: skipped
    # Poly Haven: jpg colour, packed ARM, OpenGL normals; and a set whose colour file is corrupt
    ph = root / "polyhaven"
    ph.mkdir()
    Image.fromarray(np.round(maps[..., :3] * 255).astype(np.uint8)).save(
        ph / "rusty_metal_diff_1k.jpg", quality=98
    )
    save8(ph / "rusty_metal_nor_gl_1k.png", encode_normal(maps[..., 5:]))
    save8(ph / "rusty_metal_arm_1k.png", np.dstack([np.ones((SIZE, SIZE)), maps[..., 3], maps[..., 4]]))
    (ph / "broken_diff_1k.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save8(ph / "broken_rough_1k.png", maps[..., 3])
    # MatSynth: the normal's convention is not in its name (DirectX here), but a height map is
    ms = root / "matsynth" / "train" / "wood" / "Wood001"
    ms.mkdir(parents=True)
    save8(ms / "basecolor.png", maps[..., :3])
    save16(ms / "normal.png", encode_normal(maps[..., 5:], dx=True))
    save16(ms / "height.png", height)
    save8(ms / "roughness.png", maps[..., 3])
    save8(ms / "metallic.png", maps[..., 4])
    (ms / "metadata.json").write_text(json.dumps({"category": "wood", "physical_size": 2.0, "tags": ["x"]}))
    write_glb(root / "gltf" / "crate.glb", maps)
    return root


def write_glb(path: Path, maps: np.ndarray) -> None:
    """A glb whose material has all three textures and factors that scale them."""
    import io

    import pygltflib as g

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [
        maps[..., :3],
        np.dstack([np.ones((SIZE, SIZE)), maps[..., 3], maps[..., 4]]),
        encode_normal(maps[..., 5:]),
    ]
    blob, views = bytearray(), []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(buf.getvalue())))
        blob += buf.getvalue() + b"\0" * (-len(buf.getvalue()) % 4)
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0"),
        bufferViews=views,
        buffers=[g.Buffer(byteLength=len(blob))],
        images=[g.Image(bufferView=i, mimeType="image/png") for i in range(3)],
        textures=[g.Texture(source=i) for i in range(3)],
        materials=[
            g.Material(
                name="Crate",
                pbrMetallicRoughness=g.PbrMetallicRoughness(
                    baseColorTexture=g.TextureInfo(index=0),
                    baseColorFactor=[0.5, 1.0, 1.0, 1.0],
                    metallicRoughnessTexture=g.TextureInfo(index=1),
                    metallicFactor=0.5,
                    roughnessFactor=0.8,
                ),
                normalTexture=g.NormalMaterialTexture(index=2, scale=1.0),
            ),
            g.Material(
                name="Flat", pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorFactor=[1, 0, 0, 1])
            ),
        ],
    )
    gltf.set_binary_blob(bytes(blob))
    gltf.save_binary(str(path))


def sets_by_id(root: Path) -> dict:
    sets, skipped = find_sets(root)
    return {s.material_id: s for s in sets} | {"_skipped": skipped}


# --------------------------------------------------------------------------- discovery and decoding


def test_every_layout_is_found_and_sets_without_colour_are_skipped(library):
    found = sets_by_id(library)
    skipped = found.pop("_skipped")
    assert {k: v.library for k, v in found.items()} == {
        "Bricks076": "ambientcg",
        "Plain001": "ambientcg",
        "rusty_metal": "polyhaven",
        "broken": "polyhaven",
        "Wood001": "matsynth",
        "crate-Crate": "gltf",
    }
    assert found["Bricks076"].files["color"].name == "Bricks076_1K-PNG_Color.png"  # the largest download
    reasons = {s.where.split(" (")[0]: s.why for s in skipped}
    assert reasons["ambientcg NoColor001"] == "no base colour map"
    assert any("Flat" in w and why == "no base colour texture" for w, why in reasons.items())


def test_directx_normals_are_converted_and_16_bits_survive(library):
    maps, _ = truth()
    src = load_set(sets_by_id(library)["Bricks076"])
    assert src.normal_source == "DirectX, by file name, converted"
    np.testing.assert_allclose(src.normal, maps[..., 5:], atol=1e-3)
    np.testing.assert_allclose(src.roughness, maps[..., 3], atol=1e-4)  # 8 bits would be off by 2e-3
    assert np.abs(src.roughness - np.round(maps[..., 3] * 255) / 255).max() > 1e-3


def test_unstated_handedness_is_judged_against_the_height_map(library):
    maps, _ = truth()
    src = load_set(sets_by_id(library)["Wood001"])
    assert "DirectX" in src.normal_source and "height map" in src.normal_source
    np.testing.assert_allclose(src.normal, maps[..., 5:], atol=1e-3)


def test_packed_arm_and_missing_maps(library):
    maps, _ = truth()
    found = sets_by_id(library)
    ph = load_set(found["rusty_metal"])
    np.testing.assert_allclose(ph.roughness, maps[..., 3], atol=0.5 / 255 + 1e-6)  # ARM green
    np.testing.assert_allclose(ph.metallic, maps[..., 4], atol=0.5 / 255 + 1e-6)  # ARM blue
    plain = load_set(found["Plain001"])
    assert np.all(plain.roughness == 0.5) and np.all(plain.metallic == 0)
    assert any("no roughness map, using 0.5" in n for n in plain.notes)
    assert any("no metallic map, using 0" in n for n in plain.notes)


def test_gltf_textures_are_multiplied_by_their_factors(library):
    maps, _ = truth()
    src = load_set(sets_by_id(library)["crate-Crate"])
    tex = torch.from_numpy(np.round(maps[..., :3] * 255) / 255)
    expected = linear_to_srgb(srgb_to_linear(tex) * torch.tensor([0.5, 1.0, 1.0])).numpy()
    np.testing.assert_allclose(src.albedo, expected, atol=1e-5)  # the factor acts on linear colour
    stored = np.round(maps[..., 3].astype(np.float64) * 255) / 255  # as the fixture's 8-bit texture holds it
    np.testing.assert_allclose(src.roughness, stored * 0.8, atol=1e-5)
    np.testing.assert_allclose(src.metallic, np.round(maps[..., 4] * 255) / 255 * 0.5, atol=1e-5)
    np.testing.assert_allclose(src.normal, maps[..., 5:], atol=1.5e-2)


# --------------------------------------------------------------------------- crops: rotation done right


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("mirror", [False, True])
def test_rendering_a_turned_material_equals_turning_its_render(turns, mirror):
    """Turn the maps (normals as vectors) and the lights with them: the render is the turned render."""
    maps = torch.from_numpy(make_material("bricks", 2, 48).maps())[None]
    lights = torch.tensor([[[0.9, 0.4, 2.0], [-1.1, 0.7, 1.8], [0.2, -1.3, 2.2]]])
    turned = transform_maps(maps, turns, mirror)
    got = render(turned, transform_points(lights, turns, mirror))

    def pixels(x: torch.Tensor) -> torch.Tensor:  # the same motion of pixels, nothing turned inside them
        x = torch.flip(x, dims=[-1]) if mirror else x
        return torch.rot90(x, turns, dims=(-2, -1))

    expected = pixels(render(maps, lights))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    if turns or mirror:  # moving the normal map's pixels without turning its vectors is wrong, visibly
        naive = pixels(maps)
        wrong = render(naive, transform_points(lights, turns, mirror))
        assert (wrong - expected).abs().max() > 0.05


def test_crops_record_how_they_were_taken_and_stay_unit(library):
    src = load_set(sets_by_id(library)["Bricks076"])
    maps, record = sample_crop(src, 32, np.random.default_rng(0))
    assert maps.shape == (8, 32, 32) and np.isfinite(maps).all()
    assert np.allclose(np.linalg.norm(maps[5:], axis=0), 1, atol=1e-4)
    x0, y0, side = record["crop"]
    assert 32 <= side <= SIZE and 0 <= x0 <= SIZE - side and 0 <= y0 <= SIZE - side
    assert record["scale"] == side / 32 and record["rotation"] in (0, 90, 180, 270)


# --------------------------------------------------------------------------- the data set


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_imported_data_set_is_deterministic_mixed_and_split_by_material(library, tmp_path):
    kwargs = dict(count=6, size=32, seed=4, samples_per_material=3, progress=False, material_dirs=[library])
    meta = generate_dataset(tmp_path / "a", **kwargs)
    generate_dataset(tmp_path / "b", **kwargs)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")  # down to the bytes
    assert meta["imports"]["found"] == 8 and meta["imports"]["used"] == 5
    skipped = {s["where"]: s["why"] for s in meta["imports"]["skipped"]}
    assert any("broken" in w and "corrupt" in why for w, why in skipped.items())
    _, summary = scan_dataset(tmp_path / "a", deep=True)
    assert summary.sources == {"procedural": 6, "ambientcg": 6, "polyhaven": 3, "matsynth": 3, "gltf": 3}
    origin = meta["materials"]["ambientcg_Bricks076_01"]["origin"]
    assert origin["files"]["normal_dx"] == "ambientcg/Bricks076_1K-PNG_NormalDX.png"
    assert origin["normal"] == "DirectX, by file name, converted" and origin["mirror"] in (True, False)
    assert meta["materials"]["matsynth_Wood001_00"]["origin"]["info"] == {
        "category": "wood",
        "physical_size": 2.0,
    }
    groups = material_groups(meta)
    train = PBRDataset(tmp_path / "a", "train", 32, 32, val_fraction=0.4, seed=1)
    val = PBRDataset(tmp_path / "a", "val", 32, 32, val_fraction=0.4, seed=1)
    train_groups = {groups[train.material_of(s)] for s, _ in train.entries}
    val_groups = {groups[val.material_of(s)] for s, _ in val.entries}
    assert val_groups and not train_groups & val_groups  # no crop of a held-out set is trained on


def test_check_data_prints_counts_per_source(library, tmp_path):
    generate_dataset(tmp_path / "d", count=2, size=32, progress=False, material_dirs=[library / "polyhaven"])
    r = CliRunner().invoke(cli, ["check-data", "--data", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert re.search(r"samples by source\s+polyhaven 2, procedural 2\n", r.output), r.output
    assert re.search(r"samples by capture\s+phone-flash 4\n", r.output), r.output


def test_nothing_usable_is_one_sentence_and_writes_nothing(library, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "datagen",
            "--output",
            str(tmp_path / "none"),
            "--count",
            "0",
            "--materials",
            str(library / "polyhaven" / ".."),
        ]
        + ["--size", "16"],
    )
    assert r.exit_code == 0, r.output  # the library itself is usable
    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    (only_broken / "x_diff_1k.png").write_bytes(b"junk")
    (only_broken / "y_1K-PNG_Roughness.png").write_bytes(b"junk")
    r = CliRunner().invoke(
        cli,
        [
            "datagen",
            "--output",
            str(tmp_path / "never"),
            "--count",
            "0",
            "--materials",
            str(only_broken),
            "--size",
            "16",
        ],
    )
    assert r.exit_code == 2 and "no usable material set" in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error")]) == 1
    assert not (tmp_path / "never").exists()


def test_unusable_folders_beside_procedural_samples_are_named(library, tmp_path):
    """Procedural samples still make a data set, but each --materials folder that gave nothing says why."""
    only_broken, unrelated = tmp_path / "only_broken", tmp_path / "unrelated"
    only_broken.mkdir()
    unrelated.mkdir()
    (only_broken / "x_diff_1k.png").write_bytes(b"junk")  # a Poly Haven set that cannot be decoded
    (only_broken / "y_1K-PNG_Roughness.png").write_bytes(b"junk")  # an ambientCG set without base colour
    (unrelated / "notes.txt").write_text("not a texture")
    args = ["datagen", "--output", str(tmp_path / "d"), "--count", "2", "--size", "16"]
    folders = [only_broken, unrelated, library / "polyhaven"]
    r = CliRunner().invoke(cli, [*args, *(a for f in folders for a in ("--materials", str(f)))])
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.output.splitlines() if "gave no usable material set" in ln]
    assert len(warned) == 2 and all(ln.startswith("warning: --materials ") for ln in warned), r.output
    assert str(only_broken) in warned[0] and "every set in it was skipped (2;" in warned[0], warned[0]
    assert str(unrelated) in warned[1] and "ambientCG, Poly Haven, MatSynth or glTF" in warned[1], warned[1]
    meta = json.loads((tmp_path / "d" / "input" / "render_metadata.json").read_text())
    assert meta["imports"]["used"] == 1 and meta["count"] == 2 + 2  # procedural + rusty_metal's crops


@pytest.mark.slow
def test_photo_textured_materials_are_plausible_and_held_out_by_quadrant(tmp_path):
    meta = generate_dataset(
        tmp_path / "p", count=0, size=32, samples_per_material=1, progress=False, photo_textures=True
    )
    assert meta["imports"]["used"] == 12  # three photos, four quadrants each
    assert {m["origin"]["library"] for m in meta["materials"].values()} == {"photo"}
    for mid in ("photo_brick-q0_00", "photo_grass-q3_00"):
        maps = torch.from_numpy(
            np.stack(
                [
                    np.asarray(Image.open(tmp_path / "p" / "output" / mid / f"{n}.png"), np.float32)
                    for n in ("roughness", "metallic")
                ]
            )
            / 255
        )
        assert maps[1].max() == 0  # photographs of brick and grass are dielectrics
        assert (
            maps[0].min() >= 0.3 and maps[0].max() <= 0.95 and maps[0].std() > 0.01
        )  # roughness varies with contrast
    groups = material_groups(meta)
    assert len(set(groups.values())) == 12  # each quadrant its own group
    train = PBRDataset(tmp_path / "p", "train", 32, 32, val_fraction=0.25, seed=0)
    val = PBRDataset(tmp_path / "p", "val", 32, 32, val_fraction=0.25, seed=0)
    held = {groups[val.material_of(s)] for s, _ in val.entries}
    assert len(held) == 3 and not held & {groups[train.material_of(s)] for s, _ in train.entries}
    normal = np.asarray(
        Image.open(tmp_path / "p" / "output" / "photo_gravel-q1_00" / "normal.png"), np.float32
    )
    assert normal[..., :2].std() > 5  # the height of a gravel photo is not flat
    assert not math.isnan(float(normal.mean()))


def test_one_material_in_per_resolution_folders_is_one_set_at_its_highest_resolution(tmp_path):
    maps, _ = truth()
    for res, side in (("1K", 32), ("2K", 64)):
        folder = tmp_path / f"Rock020_{res}-PNG"
        folder.mkdir()
        save8(
            folder / f"Rock020_{res}-PNG_Color.png",
            np.asarray(Image.fromarray(np.round(maps[..., :3] * 255).astype(np.uint8)).resize((side, side)))
            / 255,
        )
    sets, _ = find_sets(tmp_path)
    assert len(sets) == 1 and sets[0].files["color"].parent.name == "Rock020_2K-PNG"


def test_sets_sharing_a_name_keep_their_own_maps(tmp_path):
    maps, height = truth()
    for i, parent in enumerate(("train", "test")):
        ms = tmp_path / parent / "Tile001"
        ms.mkdir(parents=True)
        save8(ms / "basecolor.png", np.full((SIZE, SIZE, 3), 0.2 + 0.5 * i))
        (ms / "metadata.json").write_text("{}")
    meta = generate_dataset(
        tmp_path / "d",
        count=0,
        size=16,
        samples_per_material=1,
        progress=False,
        material_dirs=[tmp_path, tmp_path],
    )
    assert sorted(meta["materials"]) == [
        "matsynth_Tile001-2_00",
        "matsynth_Tile001_00",
    ]  # the folder given twice counts once
    colours = {
        m: np.asarray(Image.open(tmp_path / "d" / "output" / m / "albedo.png")).mean()
        for m in meta["materials"]
    }
    assert len({round(c) for c in colours.values()}) == 2


def test_a_flat_height_map_does_not_decide_handedness(tmp_path):
    maps, _ = truth()
    ms = tmp_path / "Flat001"
    ms.mkdir()
    save8(ms / "basecolor.png", maps[..., :3])
    save8(ms / "normal.png", encode_normal(maps[..., 5:], dx=True))
    save8(ms / "height.png", np.full((SIZE, SIZE), 0.5))
    (ms / "metadata.json").write_text("{}")
    src = load_set(find_sets(tmp_path)[0][0])
    assert src.normal_source == "assumed OpenGL" and any("flat or unrelated" in n for n in src.notes)
