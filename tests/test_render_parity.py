"""Render-space parity: the figures a material is judged by, their gates, and reports that carry them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pbrforge.cli import main as cli
from pbrforge.contract import unpack
from pbrforge.datagen.materials import make_material
from pbrforge.export.gates import RENDER_KEYS, RenderGate
from pbrforge.export.render_parity import parity_lights, render_figures


def named(maps: torch.Tensor) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in unpack(maps).items()}


@pytest.fixture
def material() -> torch.Tensor:
    return torch.from_numpy(make_material("rusty_metal", 3, 48).maps())[None]


def test_eleven_lights_include_the_three_capture_lights():
    lights = parity_lights()
    assert lights.shape == (11, 3)
    elevations = torch.rad2deg(torch.asin(lights[:, 2] / lights.norm(dim=1)))
    assert torch.allclose(elevations[:3], torch.tensor(45.0), atol=1e-4)
    assert (elevations[3:7] < 25).all() and (elevations[7:] > 65).all()
    assert torch.cdist(lights, lights).add(torch.eye(11) * 10).min() > 0.5  # eleven distinct directions
    azimuths = torch.rad2deg(torch.atan2(lights[:, 1], lights[:, 0])) % 360
    assert sorted(azimuths[3:7].round().tolist()) == [45, 135, 225, 315]
    assert sorted(azimuths[7:].round().tolist()) == [0, 90, 180, 270]


def test_identical_maps_are_perfect(material):
    f = render_figures(named(material), named(material))
    assert set(f) == set(RENDER_KEYS)
    assert f["psnr_db_min"] > 150 and f["normal_deg_p99"] < 1e-3 and f["albedo_de2000_mean"] < 1e-6
    assert f["metallic_flip_share"] == 0 and f["roughness_mae"] == 0
    assert RenderGate().judge(f, "x") is None


def test_normals_turned_by_five_degrees_read_five_degrees_and_fail_the_gate(material):
    material[:, 5:8] = torch.tensor([0.0, 0.0, 1.0]).view(
        1, 3, 1, 1
    )  # flat, so a turn about x is the angle itself
    turned = material.clone()
    a = math.radians(5)
    n = turned[:, 5:8]
    y, z = n[:, 1].clone(), n[:, 2].clone()
    n[:, 1], n[:, 2] = y * math.cos(a) - z * math.sin(a), y * math.sin(a) + z * math.cos(a)
    f = render_figures(named(material), named(turned))
    assert f["normal_deg_mean"] == pytest.approx(5, abs=0.01) and f["normal_deg_p99"] == pytest.approx(
        5, abs=0.01
    )
    failure = RenderGate(psnr_db_min=None).judge(f, "FP16")
    assert failure == "FP16 render parity failed: normal_deg_p99 5.00 deg exceeds 2 deg"


def test_metallic_flips_colour_shift_and_roughness_are_measured(material):
    other = material.clone()
    other[:, 4] = 0.49
    base = material.clone()
    base[:, 4] = 0.51
    base[:, 4, :12] = 0.2  # a quarter of the rows stays on the same side
    other[:, 3] += 0.1
    other[:, 0] = (other[:, 0] * 0.8).clamp(0, 1)
    f = render_figures(named(base), named(other))
    assert f["metallic_flip_share"] == pytest.approx(0.75)
    assert f["roughness_mae"] == pytest.approx(0.1, abs=1e-6)
    assert f["albedo_de2000_mean"] > 1  # a visible colour shift
    assert f["psnr_db_min"] < 40
    assert "psnr_db_min" in RenderGate().judge(f, "int8")


def test_a_nan_fails_every_render_gate(material):
    bad = material.clone()
    bad[0, 3, 0, 0] = float("nan")
    f = render_figures(named(material), named(bad))
    assert all(math.isnan(f[k]) for k in RENDER_KEYS)
    assert "psnr_db_min nan" in RenderGate().judge(f, "ONNX")


@pytest.mark.slow
def test_export_reports_carry_render_figures_and_the_gate_can_fail(tiny_student_ckpt, tmp_path):
    r = CliRunner().invoke(
        cli, ["export", str(tiny_student_ckpt), "--output", str(tmp_path / "s"), "--format", "onnx"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "s.onnx.parity.json").read_text())
    assert set(report["render"]) == set(RENDER_KEYS) and report["render"]["psnr_db_min"] > 80
    assert "rendered under 11 lights" in r.output
    # an impossible gate fails: exit 2 naming the figure, the artifact kept aside as .failed
    r = CliRunner().invoke(
        cli,
        [
            "export",
            str(tiny_student_ckpt),
            "--output",
            str(tmp_path / "t"),
            "--format",
            "onnx",
            "--render-psnr-min",
            "199",
        ],
    )
    assert r.exit_code == 2 and "psnr_db_min" in r.output, r.output
    assert (tmp_path / "t.failed.onnx").is_file() and not (tmp_path / "t.onnx").exists()


@pytest.mark.slow
def test_run_fails_a_perturbed_model_naming_the_figure(tiny_student_ckpt, tiny_data, tmp_path):
    ckpt = torch.load(tiny_student_ckpt, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for v in ckpt["model"].values():
        if v.is_floating_point() and v.ndim == 4:
            v.mul_(1 + 0.3 * torch.randn(v.shape, generator=g))
    ckpt["ema"] = {}
    perturbed = tmp_path / "perturbed.pt"
    torch.save(ckpt, perturbed)
    views = tiny_data / "input" / "clean" / "sample_0002"
    args = [
        "run",
        str(perturbed),
        "--input",
        str(views),
        "--align",
        "none",
        "--reference",
        str(tiny_student_ckpt),
        "--runs",
        "1",
        "--warmup",
        "0",
    ]
    r = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "out")])
    assert r.exit_code == 2 and "render parity failed" in r.output, r.output
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["passed"] is False and report["render"]["psnr_db_min"] < 40
    # the same model against itself passes
    r = CliRunner().invoke(
        cli, [*args[:1], str(tiny_student_ckpt), *args[2:], "--output", str(tmp_path / "same")]
    )
    assert r.exit_code == 0, r.output
