import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pbrforge.cli import main as cli
from pbrforge.contract import read_material
from pbrforge.deploy import DeployContract, contract_path
from pbrforge.runtime.run_inference import upscale
from pbrforge.views import image_to_float

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture()
def views_dir(tiny_data, tmp_path):
    d = tmp_path / "views"
    shutil.copytree(tiny_data / "input" / "clean" / "sample_0002", d)
    return d


def _run(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


@pytest.mark.parametrize("which", ["onnx", "torch"])
def test_backends_write_maps_and_reports(which, tiny_onnx, tiny_student_ckpt, views_dir, tmp_path):
    artifact = tiny_onnx if which == "onnx" else tiny_student_ckpt
    out = tmp_path / "out"
    r = _run(
        artifact,
        "--input",
        views_dir,
        "--output",
        out,
        "--reference",
        tiny_student_ckpt,
        "--runs",
        "3",
        "--warmup",
        "1",
        "--final-size",
        "96",
    )
    assert r.exit_code == 0, r.output
    maps = read_material(out)
    assert maps.shape == (8, 96, 96)
    assert Image.open(out / "preview.png").size == (256 * 7, 256)
    parity = json.loads((out / "parity.json").read_text())
    assert set(parity["outputs"]) == {"albedo", "roughness", "metallic", "normal"}
    assert all({"max_abs", "mean_abs", "psnr_db"} <= set(v) for v in parity["outputs"].values())
    assert all(v["max_abs"] <= 1e-4 for v in parity["outputs"].values())
    latency = json.loads((out / "latency.json").read_text())
    assert "torch eager" in latency["backends"]
    for v in latency["backends"].values():
        assert {"median_ms", "p90_ms", "speedup_vs_eager", "threads", "runs"} <= set(v) and v["median_ms"] > 0
    assert (out / "latency.png").stat().st_size > 1000
    assert "median ms" in r.output and "PSNR" in r.output


def test_upscale_lanczos_keeps_contract():
    import torch

    from pbrforge.contract import activate, validate

    maps = activate(torch.randn(8, 16, 16))
    big = upscale(maps, 64)
    assert big.shape == (8, 64, 64)
    validate(big)
    torch.testing.assert_close(big[5:].norm(dim=0), torch.ones(64, 64))


def test_fewer_than_three_views(tiny_onnx, views_dir, tmp_path):
    (views_dir / "2.png").unlink()
    r = _run(tiny_onnx, "--input", views_dir, "--output", tmp_path / "o")
    assert r.exit_code == 2 and "3 views are needed" in r.output
    assert not (tmp_path / "o").exists()


def test_more_than_three_warns_and_names_used(tiny_onnx, views_dir, tmp_path):
    shutil.copy(views_dir / "0.png", views_dir / "9.png")
    r = _run(tiny_onnx, "--input", views_dir, "--output", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "0.png, 1.png, 2.png" in r.output


def test_modes_and_sizes_are_converted(tiny_onnx, views_dir, tmp_path):
    rgb = np.asarray(Image.open(views_dir / "0.png"))
    Image.fromarray(rgb).convert("RGBA").save(views_dir / "0.png")
    Image.fromarray(rgb).convert("L").resize((40, 30)).save(views_dir / "1.png")
    gray16 = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(views_dir / "2.png")
    x = image_to_float(views_dir / "2.png")
    assert x.shape[0] == 3 and float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.max()) > 0.1
    r = _run(tiny_onnx, "--input", views_dir, "--output", tmp_path / "o", "--final-size", "64")
    assert r.exit_code == 0, r.output
    assert "stretched" in r.output  # the 40x30 view's aspect-ratio warning


def test_palette_and_jpeg(tiny_onnx, views_dir, tmp_path):
    Image.open(views_dir / "0.png").convert("P").save(views_dir / "0.png")
    Image.open(views_dir / "1.png").save(views_dir / "1.jpg", quality=90)
    (views_dir / "1.png").unlink()
    r = _run(tiny_onnx, "--input", views_dir, "--output", tmp_path / "o", "--final-size", "64")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "name, message",
    [
        ("model.mlpackage", "needs macOS"),
        ("model.plan", "TensorRT"),
        ("model.bin", "cannot tell the backend"),
        ("missing.onnx", "does not exist"),
    ],
)
def test_unavailable_backends_are_one_sentence(name, message, views_dir, tmp_path):
    import platform

    if name.endswith(".mlpackage") and platform.system() == "Darwin":
        pytest.skip("Core ML predicts on macOS")
    if name != "missing.onnx":
        (tmp_path / name).mkdir() if name.endswith(".mlpackage") else (tmp_path / name).write_bytes(b"x")
        DeployContract(32, 32, 1, "student", "x").save(contract_path(tmp_path / name))
    r = _run(tmp_path / name, "--input", views_dir, "--output", tmp_path / "o")
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1


def test_contract_round_trip_and_mobile_contract(tmp_path):
    c = DeployContract(
        image_size=512, output_size=1024, sr_scale=2, family="student", model_name="student_mnv3_plk_512"
    )
    c.save(tmp_path / "c.json")
    assert DeployContract.load(tmp_path / "c.json") == c
    mobile = DeployContract.load(ROOT / "mobile_app" / "contract.json")
    assert mobile.input_names == ["view_0", "view_1", "view_2"]
    assert mobile.output_names == ["albedo", "roughness", "metallic", "normal"]
    assert mobile.output_size == mobile.image_size * mobile.sr_scale and mobile.final_size == 2048
    (tmp_path / "bad.json").write_text('{"image_size": 1}')
    from pbrforge.errors import DataError

    with pytest.raises(DataError, match="not a pbrforge deployment contract"):
        DeployContract.load(tmp_path / "bad.json")
