"""Material files out (PNG set, glb, usdz, MaterialX), each judged by its own ecosystem's validator, and the
3D preview rendered in headless Chromium and judged from its pixels."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pbrforge.cli import main as cli
from pbrforge.contract import MAPS, decode_map, read_material, write_material
from pbrforge.render import srgb_to_linear

WEB = Path(__file__).resolve().parents[1] / "runtime" / "web"


def need(ready: bool, what: str) -> None:
    """Skip on a bare machine, but in CI (make install sets everything up) a missing tool is a failure."""
    if not ready:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing in CI: make install should have set it up")
        pytest.skip(f"{what} is not set up (make install)")


def need_validator() -> None:
    need(
        shutil.which("node") is not None and (WEB / "node_modules" / "gltf-validator").is_dir(),
        "the glTF validator",
    )


def need_browser() -> None:
    need(
        (WEB / "dist" / "viewer.js").is_file()
        and any(shutil.which(b) for b in ("chromium", "chromium-browser")),
        "Chromium and the previewer bundle",
    )


def uniform(albedo, roughness: float, metallic: float, size: int = 64) -> torch.Tensor:
    x = torch.zeros(8, size, size)
    x[0:3] = torch.tensor(albedo).view(3, 1, 1)
    x[3], x[4], x[7] = roughness, metallic, 1.0
    return x


@pytest.fixture
def maps() -> torch.Tensor:
    """Maps with structure in every channel: gradients and a tilted, varying normal."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 48, 48, generator=g)
    x[5:] = torch.nn.functional.normalize(x[5:] * 2 - 1 + torch.tensor([0.0, 0.0, 2.0]).view(3, 1, 1), dim=0)
    return x


@pytest.fixture
def maps_dir(tmp_path, maps) -> Path:
    write_material(tmp_path / "Rusty Plate", maps)
    return tmp_path / "Rusty Plate"


def package(*args: str):
    return CliRunner().invoke(cli, ["package", *map(str, args)])


# --------------------------------------------------------------------------- PNG set


@pytest.mark.parametrize("bits", [8, 16])
def test_pngset_uses_ambientcg_names_and_keeps_the_values(maps_dir, maps, tmp_path, bits):
    out = tmp_path / "set"
    r = package(maps_dir, "--emit", "pngset", "--output", out, "--name", "Plate01", "--bits", str(bits))
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "Plate01_Color.png",
        "Plate01_Metalness.png",
        "Plate01_NormalGL.png",
        "Plate01_Roughness.png",
    ]
    src = read_material(maps_dir)  # what was on disk: 8-bit
    tol = 0.5 / 255 + (1 / 65535 if bits == 16 else 0) + 1e-6
    for name, suffix in (("albedo", "Color"), ("roughness", "Roughness"), ("metallic", "Metalness")):
        assert (out / f"Plate01_{suffix}.png").read_bytes()[24] == bits  # the PNG header's bit depth
        got = decode_map(name, out / f"Plate01_{suffix}.png")
        np.testing.assert_allclose(got, src[MAPS[name].slice].numpy(), atol=tol)
    normal = decode_map("normal", out / "Plate01_NormalGL.png")
    np.testing.assert_allclose(normal, src[MAPS["normal"].slice].numpy(), atol=2e-3 if bits == 16 else 6e-3)


def test_directx_normals_flip_green_only(maps_dir, tmp_path):
    r = package(maps_dir, "--emit", "pngset", "--output", tmp_path / "dx", "--name", "P", "--normal", "dx")
    assert r.exit_code == 0, r.output
    gl = np.asarray(Image.open(maps_dir / "normal.png")).astype(int)
    dx = np.asarray(Image.open(tmp_path / "dx" / "P_NormalDX.png")).astype(int)
    # decoded, renormalised and re-encoded: equal to one step, with y negated
    assert np.abs(dx[..., [0, 2]] - gl[..., [0, 2]]).max() <= 1
    assert np.abs(dx[..., 1] - (255 - gl[..., 1])).max() <= 1
    assert np.abs(dx[..., 1] - gl[..., 1]).max() > 100  # the flip is real on these maps


# --------------------------------------------------------------------------- glb


def test_glb_passes_the_khronos_validator_with_the_contract_packed(maps_dir, tmp_path):
    import pygltflib

    need_validator()
    r = package(maps_dir, "--emit", "gltf", "--output", tmp_path / "g", "--name", "Plate", "--validate")
    assert r.exit_code == 0, r.output
    assert "gltf-validator" in r.output and re.search(r"\b0 errors, 0 warnings", r.output)
    glb = tmp_path / "g" / "Plate.glb"
    gltf = pygltflib.GLTF2().load(str(glb))
    assert [m.name for m in gltf.meshes] == ["sphere", "swatch"]
    assert len(gltf.materials) == 1 and all(p.material == 0 for m in gltf.meshes for p in m.primitives)
    pbr = gltf.materials[0].pbrMetallicRoughness
    blob = gltf.binary_blob()

    def image(texture_index: int) -> np.ndarray:
        view = gltf.bufferViews[gltf.images[gltf.textures[texture_index].source].bufferView]
        data = blob[view.byteOffset : view.byteOffset + view.byteLength]
        from io import BytesIO

        return np.asarray(Image.open(BytesIO(data)).convert("RGB")).astype(np.float32) / 255

    src = read_material(maps_dir).numpy()
    mr = image(pbr.metallicRoughnessTexture.index)
    np.testing.assert_allclose(mr[..., 1], src[3], atol=0.5 / 255 + 1e-6)  # G = roughness
    np.testing.assert_allclose(mr[..., 2], src[4], atol=0.5 / 255 + 1e-6)  # B = metallic
    np.testing.assert_allclose(
        image(pbr.baseColorTexture.index), src[0:3].transpose(1, 2, 0), atol=0.5 / 255 + 1e-6
    )
    assert gltf.materials[0].normalTexture.index is not None


def test_the_glb_validator_does_fail_a_broken_file(maps_dir, tmp_path):
    """A validator that cannot fail proves nothing: a glb whose index accessor overruns its buffer is caught."""
    import pygltflib

    from pbrforge.runtime.validators import validate_glb

    need_validator()
    assert package(maps_dir, "--emit", "gltf", "--output", tmp_path, "--name", "P").exit_code == 0
    gltf = pygltflib.GLTF2().load(str(tmp_path / "P.glb"))
    gltf.accessors[gltf.meshes[0].primitives[0].indices].count *= 4
    gltf.save_binary(str(tmp_path / "broken.glb"))
    verdict = validate_glb(tmp_path / "broken.glb")
    assert not verdict.passed and verdict.errors >= 1, verdict.messages


# --------------------------------------------------------------------------- usdz


def test_usdz_passes_every_registered_usd_validator(maps_dir, tmp_path):
    from pxr import Usd, UsdGeom, UsdShade

    r = package(maps_dir, "--emit", "usdz", "--output", tmp_path, "--name", "Plate", "--validate")
    assert r.exit_code == 0, r.output
    assert "pxr.UsdValidation" in r.output and re.search(r"\b0 errors", r.output)
    usdz = tmp_path / "Plate.usdz"
    inside = zipfile.ZipFile(usdz).namelist()
    assert inside[0].endswith(".usdc") and sum(n.endswith(".png") for n in inside) == 4  # textures packed
    stage = Usd.Stage.Open(str(usdz))
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0 and UsdGeom.GetStageUpAxis(stage) == "Y"
    surface = UsdShade.Shader(stage.GetPrimAtPath("/Root/Materials/Plate/PreviewSurface"))
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    connected = {i.GetBaseName() for i in surface.GetInputs() if i.HasConnectedSource()}
    assert connected == {"diffuseColor", "roughness", "metallic", "normal"}
    normal_tex = UsdShade.Shader(stage.GetPrimAtPath("/Root/Materials/Plate/NormalTexture"))
    assert tuple(normal_tex.GetInput("scale").Get()) == (2, 2, 2, 1)
    assert tuple(normal_tex.GetInput("bias").Get()) == (-1, -1, -1, 0)
    assert normal_tex.GetInput("sourceColorSpace").Get() == "raw"
    for shape in ("Sphere", "Swatch"):
        prim = stage.GetPrimAtPath(f"/Root/{shape}")
        assert (
            UsdShade.MaterialBindingAPI(prim).ComputeBoundMaterial()[0].GetPath() == "/Root/Materials/Plate"
        )


def test_usd_validation_does_fail_a_stage_without_units(tmp_path):
    from pxr import Sdf, Usd, UsdGeom, UsdUtils

    from pbrforge.runtime.validators import validate_usdz

    layer = tmp_path / "bare.usda"
    stage = Usd.Stage.CreateNew(str(layer))
    UsdGeom.Xform.Define(stage, "/Root")  # no default prim, no metersPerUnit, no upAxis
    stage.GetRootLayer().Save()
    assert UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(tmp_path / "bare.usdz"))
    verdict = validate_usdz(tmp_path / "bare.usdz")
    assert not verdict.passed, verdict.messages


# --------------------------------------------------------------------------- MaterialX


def test_mtlx_validates_against_the_standard_libraries_and_finds_its_pngs(maps_dir, tmp_path):
    import MaterialX as mx

    r = package(maps_dir, "--emit", "mtlx", "--output", tmp_path, "--name", "Plate", "--validate")
    assert r.exit_code == 0, r.output
    doc = mx.createDocument()
    mx.readFromXmlFile(doc, str(tmp_path / "Plate.mtlx"))
    files = {n.getInputValue("file") for n in doc.getNodes("image")}
    assert files == {f"Plate_{s}.png" for s in ("Color", "Roughness", "Metalness", "NormalGL")}
    assert all((tmp_path / f).is_file() for f in files)
    assert doc.getNodes("standard_surface") and doc.getNodes("normalmap")


def test_the_mtlx_validator_does_fail_a_mistyped_document(maps_dir, tmp_path):
    from pbrforge.runtime.validators import validate_mtlx

    assert package(maps_dir, "--emit", "mtlx", "--output", tmp_path, "--name", "P").exit_code == 0
    text = (
        (tmp_path / "P.mtlx")
        .read_text()
        .replace('name="metalness" type="float"', 'name="metalness" type="color3"')
    )
    (tmp_path / "bad.mtlx").write_text(text)
    assert not validate_mtlx(tmp_path / "bad.mtlx").passed
    (tmp_path / "P_Color.png").unlink()  # a referenced file gone
    assert not validate_mtlx(tmp_path / "P.mtlx").passed


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "args, says",
    [
        (["--emit", "fbx"], "not a comma-separated list"),
        (["--emit", "gltf,gltf"], "not a comma-separated list"),
        (["--emit", ""], "not a comma-separated list"),
        (["--emit", "mtlx", "--normal", "dx"], "MaterialX"),
        (["--name", "../evil"], "not a material name"),
        (["--name", ""], "not a material name"),
        (["--bits", "12"], "12"),
    ],
)
def test_package_refuses_bad_requests_before_writing(maps_dir, tmp_path, args, says):
    out = tmp_path / "never"
    r = package(maps_dir, *args, "--output", out)
    assert r.exit_code == 2 and says in r.output, r.output
    assert not out.exists()


def test_package_refuses_a_folder_without_maps(tmp_path):
    (tmp_path / "empty").mkdir()
    r = package(tmp_path / "empty", "--output", tmp_path / "never")
    assert r.exit_code == 2 and "albedo.png" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- preview in a real browser


def shot_of(tmp_path: Path, name: str, maps: torch.Tensor) -> np.ndarray:
    write_material(tmp_path / name, maps)
    r = CliRunner().invoke(
        cli, ["preview", str(tmp_path / name), "--screenshot", str(tmp_path / f"{name}.png")]
    )
    assert r.exit_code == 0, r.output
    return np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).astype(np.float32) / 255


def highlight_tint(shot: np.ndarray) -> tuple[np.ndarray, float]:
    """Linear colour the highlight adds on the sphere over its body, and that colour's min/max channel ratio.

    The sphere stands in the left half of the canvas (the side panel is the right 300 px).
    """
    canvas = shot[:, : shot.shape[1] - 300]
    sphere = torch.from_numpy(canvas[:, : canvas.shape[1] // 2]).permute(2, 0, 1)
    lin = srgb_to_linear(sphere).permute(1, 2, 0).numpy()
    lum = lin.mean(-1)
    lit = lum > 0.02  # the sphere, not the background
    top = lin[lum >= np.quantile(lum[lit], 0.998)].mean(0)
    added = top - np.median(lin[lit], axis=0)
    return added, float(added.min() / added.max())


@pytest.mark.slow
def test_preview_screenshot_shows_a_tinted_metal_and_a_white_dielectric_highlight(tmp_path):
    need_browser()
    orange = (0.95, 0.55, 0.2)
    metal = shot_of(tmp_path, "metal", uniform(orange, 0.3, 1.0))
    plastic = shot_of(tmp_path, "plastic", uniform(orange, 0.3, 0.0))
    background = metal[5, 5]
    for shot in (metal, plastic):
        canvas = shot[:, :-300]
        drawn = np.abs(canvas - background).max(-1) > 0.1
        assert drawn.mean() > 0.15, "the WebGL canvas did not draw"  # sphere and swatch cover ~30% of it
        assert canvas.std() > 0.05, "the frame is blank"
    metal_added, metal_ratio = highlight_tint(metal)
    plastic_added, plastic_ratio = highlight_tint(plastic)
    # a metal reflects the light tinted by its albedo (little blue from orange); a dielectric reflects it white
    assert metal_ratio < 0.5 and metal_added.argmin() == 2, metal_added
    assert plastic_ratio > 0.7, plastic_added


def test_preview_page_is_self_contained(maps_dir, tmp_path):
    need_browser()
    views = tmp_path / "views"
    views.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (60 * i, 80, 90)).save(views / f"v{i}.png")
    r = CliRunner().invoke(
        cli, ["preview", str(maps_dir), "--views", str(views), "--output", str(tmp_path / "p.html")]
    )
    assert r.exit_code == 0, r.output
    text = (tmp_path / "p.html").read_text()
    assert (
        "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    )  # nothing fetched
    assert text.count("data:image/png;base64,") == 3 + 3  # three textures, three views
    material = text.split('<script id="material" type="application/json">')[1].split("</script>")[0]
    assert set(json.loads(material)["textures"]) == {"albedo", "metallic_roughness", "normal"}


@pytest.mark.slow
def test_preview_says_so_without_webgl(maps_dir, tmp_path):
    from pbrforge.runtime.preview import browser, page

    need_browser()
    (tmp_path / "p.html").write_text(page(read_material(maps_dir), "P", []))
    r = subprocess.run(
        [browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-webgl", "--dump-dom",
         "--virtual-time-budget=5000", (tmp_path / "p.html").as_uri() + "#still"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert 'data-state="no-webgl"' in r.stdout and "needs WebGL" in r.stdout


@pytest.mark.slow
def test_run_emits_every_format_and_validates_it(tiny_student_ckpt, tmp_path, tiny_data):
    need_validator()
    views = tiny_data / "input" / "clean" / "sample_0002"
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        ["run", str(tiny_student_ckpt), "--input", str(views), "--align", "none", "--output", str(out), "--final-size", "64",
         "--emit", "pngset,gltf,usdz,mtlx", "--name", "S2", "--validate"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(re.findall(r"\b0 errors, 0 warnings", r.output)) == 3, r.output
    for name in ("S2_Color.png", "S2_NormalGL.png", "S2.glb", "S2.usdz", "S2.mtlx", "albedo.png"):
        assert (out / name).is_file(), name
    # the emitted set holds the same maps as the contract folder beside it
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "S2_Color.png")), np.asarray(Image.open(out / "albedo.png"))
    )
