"""The shipped default model: float16 safetensors with its config, loaded as a checkpoint, run with no model given."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pbrforge import models
from pbrforge.cli import main as cli
from pbrforge.errors import DataError

HALF_ATOL = 2e-2  # float16 weights against float32: the maps move by rounding, not by more
MAX_BYTES = 15 * 2**20


@pytest.mark.slow
def test_pretrained_round_trip_and_run_without_a_model(tiny_student_ckpt, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "w" / "student_phone.safetensors"
    out.parent.mkdir()
    nbytes = models.save_pretrained(tiny_student_ckpt, out)
    assert 0 < nbytes == out.stat().st_size
    full, cfg, _ = models.model_from_checkpoint(tiny_student_ckpt)
    half, cfg2, ckpt = models.model_from_checkpoint(out)
    as_json = lambda c: json.loads(json.dumps(c.to_dict()))  # noqa: E731 - tuples are lists in JSON
    assert as_json(cfg2) == as_json(cfg) and ckpt["format"] == models.PRETRAINED_FORMAT
    views = torch.rand(1, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(half(views), full(views), atol=HALF_ATOL, rtol=0)
    # `pbrforge run` with no model runs the default
    monkeypatch.setattr(models, "DEFAULT_MODEL", out)
    views_dir = tiny_data / "input" / "clean" / "sample_0000"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            "--input",
            str(views_dir),
            "--output",
            str(tmp_path / "o"),
            "--align",
            "none",
            "--final-size",
            "32",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "albedo.png").is_file()
    monkeypatch.setattr(models, "DEFAULT_MODEL", tmp_path / "missing.safetensors")
    r = CliRunner().invoke(cli, ["run", "--input", str(views_dir), "--output", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "make pretrained" in r.output and not (tmp_path / "o2").exists(), r.output


def test_foreign_safetensors_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(DataError, match="not a pbrforge pretrained model"):
        models.model_from_checkpoint(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="not a safetensors file"):
        models.model_from_checkpoint(junk)
    nan = tmp_path / "nan.safetensors"
    meta = {"format": models.PRETRAINED_FORMAT, "config": json.dumps({"family": "student"})}
    save_file({"w": torch.tensor([float("nan")])}, str(nan), metadata=meta)
    with pytest.raises(DataError, match="NaN"):
        models.model_from_checkpoint(nan)


@pytest.mark.skipif(not models.DEFAULT_MODEL.is_file(), reason="make pretrained builds the default model")
def test_shipped_default_model_loads_and_fits_the_budget():
    assert models.DEFAULT_MODEL.stat().st_size <= MAX_BYTES
    model, cfg, _ = models.model_from_checkpoint(models.DEFAULT_MODEL)
    record = json.loads(models.DEFAULT_MODEL.with_suffix(".json").read_text())
    assert record["bytes"] == models.DEFAULT_MODEL.stat().st_size and record["provenance"]["commit"]
    sizes = models.model_config(cfg)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 3, sizes.image_size, sizes.image_size))
    assert out.shape == (1, 8, sizes.output_size, sizes.output_size) and torch.isfinite(out).all()
