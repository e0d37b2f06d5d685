"""Scoring against a capture in MaterialGAN's layout: refusals, known maps, the flat floor, refinement."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pbrforge import capture_eval as ce
from pbrforge.captures import batch_captures, render_capture
from pbrforge.cli import main as cli
from pbrforge.contract import read_material
from pbrforge.datagen.export_capture import export_capture
from pbrforge.datagen.materials import make_material
from pbrforge.errors import DataError

SIDE = 48
PHOTOS = 5
INPUTS = (0, 2, 4)
# 8-bit photos of the very maps that rendered them: quantisation (1/255/sqrt(12) ~ 0.0011) and little else
KNOWN_MAPS_RMSE_MAX = 0.004
KNOWN_MAPS_SSIM_MIN = 0.99
GAIN_RTOL = 0.02  # the fitted gain finds the exported flash power
REFINE_STEPS = 40


def _maps(family: str = "painted_metal", seed: int = 5, side: int = SIDE) -> torch.Tensor:
    return torch.from_numpy(make_material(family, seed, side).maps())


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    """A synthetic capture of a known material: 5 photos at 48 px, its truth in truth/."""
    out = tmp_path_factory.mktemp("capture") / "painted"
    export_capture(_maps(), out, n_photos=PHOTOS, seed=1)
    return out


def test_export_writes_the_layout(capture):
    record = json.loads((capture / "truth" / "capture.json").read_text())
    assert sorted(p.name for p in capture.glob("*.png")) == [f"{i:02d}.png" for i in range(PHOTOS)]
    cm = np.loadtxt(capture / "camera_pos.txt", delimiter=",")
    side_cm = float((capture / "image_size.txt").read_text())
    np.testing.assert_allclose(cm * 2 / side_cm, record["eyes_world"], atol=1e-5)
    tilt = np.degrees(np.arccos(cm[:, 2] / np.linalg.norm(cm, axis=1)))
    assert (cm[:, 2] > 0).all() and tilt.max() <= 30 + 1e-6 and tilt[0] <= 10 + 1e-6
    assert read_material(capture / "truth").shape == (8, SIDE, SIDE)
    with Image.open(capture / "00.png") as img:
        assert img.size == (SIDE, SIDE) and img.mode == "RGB"


def test_known_maps_score_perfectly_and_flat_scores_worse(capture, tmp_path):
    truth = read_material(capture / "truth")
    result = ce.evaluate_capture(
        capture=capture, inputs=INPUTS, predictor=ce.fixed_maps(truth, "truth"), output=tmp_path / "eval"
    )
    model, flat = result.methods["model"], result.methods["flat"]
    assert result.held_out == ["01", "03"]
    assert model.mean_rmse < KNOWN_MAPS_RMSE_MAX and model.mean_ssim > KNOWN_MAPS_SSIM_MIN
    assert flat.mean_rmse > 5 * model.mean_rmse and flat.mean_ssim < model.mean_ssim
    power = json.loads((capture / "truth" / "capture.json").read_text())["flash_power"]
    assert model.gain == pytest.approx(power, rel=GAIN_RTOL)
    # what was written: the report, one comparison per held-out photo (photo | model | flat), the maps
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["inputs"] == ["00", "02", "04"] and report["held_out"] == ["01", "03"]
    assert set(report["methods"]) == {"model", "flat"} and report["refinement"] is None
    assert report["methods"]["model"]["per_photo"]["01"]["rmse"] == pytest.approx(model.rmse["01"])
    for name in ("01", "03"):
        with Image.open(tmp_path / "eval" / f"compare_{name}.png") as img:
            assert img.size == (3 * SIDE, SIDE)
    assert read_material(tmp_path / "eval" / "maps").shape == (8, SIDE, SIDE)
    assert "mean" in result.table()


def test_records_batch_like_any_capture(capture):
    """A record per photo goes through captures.batch_captures and renders what the scorer renders."""
    cap = ce.read_capture(capture)
    truth = read_material(capture / "truth")
    batch = batch_captures(cap.records(), {})
    assert batch.eyes.shape == (PHOTOS, 1, 3) and torch.equal(batch.eyes, batch.flash)
    assert batch.env_directions is None and float(batch.cone_exponent.abs().max()) == 0
    torch.testing.assert_close(render_capture(truth[None], batch)[:, 0], ce.render_photos(truth, cap.eyes))


def test_gain_is_least_squares_in_linear_light():
    maps = _maps(side=32)
    eyes = torch.tensor([[0.3, -0.2, 2.0], [-0.5, 0.4, 1.8]])
    radiance = ce.render_photos(maps, eyes)
    photos = ce.to_display(radiance * 3.0)
    assert ce.fit_gain(radiance, photos) == pytest.approx(3.0, rel=1e-3)
    white = torch.ones_like(photos)
    with pytest.raises(DataError, match="clipped"):
        ce.fit_gain(radiance, white)


def _perturbed(truth: torch.Tensor) -> torch.Tensor:
    """Rougher and tinted: a shape change the gain cannot absorb."""
    out = truth.clone()
    out[3] = (out[3] + 0.3).clamp(0, 1)
    out[:3] = (out[:3] * torch.tensor([0.8, 1.0, 1.15])[:, None, None]).clamp(0, 1)
    return out


def test_refinement_improves_the_held_out_photos(capture, tmp_path):
    start = _perturbed(read_material(capture / "truth"))
    result = ce.evaluate_capture(
        capture=capture,
        inputs=INPUTS,
        predictor=ce.fixed_maps(start, "perturbed"),
        output=tmp_path / "eval",
        refine_steps=REFINE_STEPS,
    )
    r = result.refinement
    assert r is not None and r.best_step > 0 and r.best_rmse < r.start_rmse
    assert result.methods["refined"].mean_rmse < result.methods["model"].mean_rmse
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["refinement"]["validated_on"] == "04"
    assert report["comparison_panels"] == ["photo", "model", "flat", "refined"]
    with Image.open(tmp_path / "eval" / "compare_01.png") as img:
        assert img.size == (4 * SIDE, SIDE)
    assert read_material(tmp_path / "eval" / "refined").shape == (8, SIDE, SIDE)


def test_refinement_never_ends_worse_than_its_start(capture):
    cap = ce.read_capture(capture)
    start = _perturbed(read_material(capture / "truth"))
    pos = list(INPUTS)
    wild = ce.RefineSettings(steps=3, lr=50.0)  # steps this large only make things worse
    r = ce.refine(start, cap.photos[pos], cap.eyes[pos], wild)
    assert r.best_step == 0 and r.best_rmse == r.start_rmse
    assert torch.equal(r.maps, start)


# --------------------------------------------------------------------------- refusals through the CLI


def _break(name: str, folder: Path) -> list[str]:
    """Damage a copy of a good capture one way; return extra CLI arguments (default inputs 00,01,02)."""
    cams = folder / "camera_pos.txt"
    rows = cams.read_text().splitlines()
    if name == "missing folder":
        shutil.rmtree(folder)
    elif name == "too few photos":
        for k in (3, 4):
            (folder / f"{k:02d}.png").unlink()
    elif name == "gap in numbering":
        (folder / "03.png").rename(folder / "07.png")
    elif name == "two photos with one number":
        shutil.copy(folder / "03.png", folder / "3.png")
    elif name == "camera count":
        cams.write_text("\n".join(rows[:-1]))
    elif name == "nan camera":
        cams.write_text("\n".join(["nan,0,20", *rows[1:]]))
    elif name == "negative z":
        cams.write_text("\n".join(["1,2,-20", *rows[1:]]))
    elif name == "two values":
        cams.write_text("\n".join(["1,2", *rows[1:]]))
    elif name == "huge camera":
        cams.write_text("\n".join(["1e300,0,20", *rows[1:]]))
    elif name == "binary cameras":
        cams.write_bytes(b"\xff\xfe\x00\x01")
    elif name == "missing cameras":
        cams.unlink()
    elif name == "missing side":
        (folder / "image_size.txt").unlink()
    elif name == "negative side":
        (folder / "image_size.txt").write_text("-16")
    elif name == "nan side":
        (folder / "image_size.txt").write_text("nan")
    elif name == "two sides":
        (folder / "image_size.txt").write_text("16 16")
    elif name == "non-square photo":
        Image.new("RGB", (SIDE, SIDE // 2)).save(folder / "02.png")
    elif name == "sizes differ":
        Image.new("RGB", (SIDE * 2, SIDE * 2)).save(folder / "02.png")
    elif name == "corrupt photo":
        (folder / "01.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif name == "input does not exist":
        return ["--inputs", "00,01,09"]
    elif name == "two inputs":
        return ["--inputs", "00,01"]
    elif name == "repeated input":
        return ["--inputs", "00,01,01"]
    elif name == "inputs not numbers":
        return ["--inputs", "a,b,c"]
    return []


REFUSALS = {
    "missing folder": "does not exist",
    "too few photos": "at least 4",
    "gap in numbering": "03.png is missing",
    "two photos with one number": "two photos numbered 3",
    "camera count": "4 camera(s) for 5 photos",
    "nan camera": "not a finite number",
    "negative z": "above the sample",
    "two values": "has 2 values",
    "huge camera": "cm away",
    "binary cameras": "not a UTF-8",
    "missing cameras": "missing",
    "missing side": "missing",
    "negative side": "more than 0",
    "nan side": "not a finite number",
    "two sides": "one number",
    "non-square photo": "rectified to the square",
    "sizes differ": "share one size",
    "corrupt photo": "corrupt or unreadable",
    "input does not exist": "names photo 09",
    "two inputs": "3 different photo numbers",
    "repeated input": "3 different photo numbers",
    "inputs not numbers": "not a list of photo numbers",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_capture_is_one_sentence(case, capture, tmp_path):
    folder = tmp_path / "cap"
    shutil.copytree(capture, folder)
    extra = _break(case, folder)
    args = ["evaluate-capture", str(folder), str(tmp_path / "none.pt")]
    args += extra or ["--inputs", "00,01,02"]
    r = CliRunner().invoke(cli, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, f"{case}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}:\n{r.output}"
    assert REFUSALS[case] in lines[0], f"{case}: {lines[0]}"
    assert not (folder / "evaluation").exists()


def test_artifact_and_checkpoint_are_one_or_the_other(capture, tmp_path):
    both = [
        "evaluate-capture",
        str(capture),
        str(tmp_path / "a.onnx"),
        "--checkpoint",
        str(tmp_path / "c.pt"),
    ]
    for args in (both, ["evaluate-capture", str(capture)]):
        r = CliRunner().invoke(cli, [*args, "--inputs", "00,01,02"])
        assert r.exit_code == 2, r.output


def test_parse_inputs():
    assert ce.parse_inputs("00,03,04") == (0, 3, 4)
    assert ce.parse_inputs(" 1, 2 ,3 ") == (1, 2, 3)
    with pytest.raises(DataError):
        ce.parse_inputs("1,2,-3")


# --------------------------------------------------------------------------- with a real model


@pytest.mark.slow
def test_cli_scores_a_checkpoint_with_refinement(tiny_student_ckpt, tmp_path):
    folder = tmp_path / "cap"
    export_capture(_maps("bricks", 2, 32), folder, n_photos=4, seed=3)
    out = tmp_path / "eval"
    args = ["evaluate-capture", str(folder), str(tiny_student_ckpt), "--inputs", "00,01,02"]
    r = CliRunner().invoke(cli, [*args, "--refine", "3", "--output", str(out)])
    assert r.exit_code == 0, f"{r.output}\n{r.exception!r}"
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["methods"]) == {"model", "flat", "refined"} and report["held_out"] == ["03"]
    for m in report["methods"].values():
        assert math.isfinite(m["mean"]["rmse"]) and 0 <= m["mean"]["rmse"] <= 1
    assert report["refinement"]["validation_rmse_best"] <= report["refinement"]["validation_rmse_start"]
    assert (out / "compare_03.png").is_file() and "mean" in r.output


def test_datagen_exports_captures_and_keeps_the_data_set(tmp_path):
    base = ["datagen", "--count", "2", "--size", "32", "--capture", "tripod", "--dirty-ratio", "0"]
    plain, more = tmp_path / "plain", tmp_path / "more"
    assert CliRunner().invoke(cli, [*base, "--output", str(plain)]).exit_code == 0
    r = CliRunner().invoke(cli, [*base, "--output", str(more), "--export-capture", "1"])
    assert r.exit_code == 0, r.output
    meta = json.loads((more / "input" / "render_metadata.json").read_text())
    first = next(iter(meta["materials"]))
    assert [p.name for p in (more / "captures").iterdir()] == [first]
    assert len(list((more / "captures" / first).glob("*.png"))) == 9
    assert (more / "input" / "render_metadata.json").read_text() == (
        plain / "input" / "render_metadata.json"
    ).read_text()
    for view in (plain / "input" / "clean").rglob("*.png"):
        assert view.read_bytes() == (more / view.relative_to(plain)).read_bytes()
