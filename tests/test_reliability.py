"""The four silent-corruption bugs, each pinned by a regression test, and the loaders fuzzed with hypothesis.

Fuzz budget: FUZZ_EXAMPLES examples per test, eight tests over six loaders (view PNGs, render metadata, shard
manifest, deployment contract, checkpoints, ONNX bytes), each asserting that nothing but our own PBRForgeError escapes.
They are marked slow: ``make test`` runs them, ``make test-fast`` does not.
"""

import contextlib
import io
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pbrforge.errors import DataError, PBRForgeError

FUZZ_EXAMPLES = 60
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


# --------------------------------------------------------------------------- 1. a NaN never passes a gate


def test_nan_output_fails_every_gate_naming_the_output():
    from pbrforge.export.parity import Comparison, compare, psnr

    ref = {
        n: np.zeros((1, c, 4, 4), np.float32)
        for n, c in (("albedo", 3), ("roughness", 1), ("metallic", 1), ("normal", 3))
    }
    bad = {n: v.copy() for n, v in ref.items()}
    bad["metallic"][0, 0, 1, 1] = np.nan
    figures = compare(ref, bad)
    assert math.isnan(figures["metallic"]["psnr_db"]) and math.isnan(psnr(ref["metallic"], bad["metallic"]))
    for gate, limit in (("max_abs", 1e-4), ("psnr_db", 35.0)):
        c = Comparison("test", figures, gate, limit)
        assert c.failure is not None and "metallic" in c.failure and "NaN" in c.failure
    assert Comparison("test", compare(ref, ref), "psnr_db", 35.0).failure is None


def test_checkpoint_with_one_nan_weight_is_refused_before_export(tiny_student_ckpt, tmp_path):
    from click.testing import CliRunner

    from pbrforge.cli import main

    ckpt = torch.load(tiny_student_ckpt, weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name].view(-1)[0] = float("nan")
    ckpt["ema"] = {}
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    r = CliRunner().invoke(
        main, ["export", str(bad), "--output", str(tmp_path / "a" / "student"), "--format", "onnx"]
    )
    assert r.exit_code == 2 and "NaN" in r.output and name in r.output
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- 2. a failed export keeps the good one


@pytest.mark.slow
def test_failed_export_never_replaces_the_good_artifact(tiny_student_ckpt, tiny_onnx, tmp_path):
    from pbrforge.export.converter import export_artifacts

    out = tmp_path / "student"
    shutil.copy(tiny_onnx, out.with_suffix(".onnx"))
    good = out.with_suffix(".onnx").read_bytes()
    # float rounding alone exceeds 1e-12: no artifact can pass, so the gate must hold
    result = export_artifacts(tiny_student_ckpt, out, ("onnx",), fp32_max_abs=1e-12)
    assert result.failures and "ONNX parity failed" in result.failures[0]
    assert out.with_suffix(".onnx").read_bytes() == good
    failed = tmp_path / "student.failed.onnx"
    report = json.loads((tmp_path / "student.failed.onnx.parity.json").read_text())
    assert failed.is_file() and report["passed"] is False
    assert not (tmp_path / "student.contract.json").exists()  # no artifact passed, so no contract
    assert not [p for p in tmp_path.iterdir() if ".staged-" in p.name or ".tmp-" in p.name]


# --------------------------------------------------------------------------- 3. shards of another data set


def _data_root(shards: Path) -> Path:
    return Path(json.loads((shards / "manifest.json").read_text())["data_root"])


def test_shards_of_another_data_set_with_the_same_ids_are_refused(tiny_shards, tmp_path):
    from pbrforge.shards import DistillDataset

    other = tmp_path / "other"  # the same data set but for one view of one sample: same ids, other inputs
    shutil.copytree(_data_root(tiny_shards), other)
    view = other / "input" / "clean" / "sample_0005" / "1.png"
    Image.fromarray(255 - np.asarray(Image.open(view))).save(view)
    with pytest.raises(DataError, match="other input views than sample sample_0005"):
        DistillDataset(other, tiny_shards, 64, 32, 1, "all", check_hashes=False)


# --------------------------------------------------------------------------- 4. best.pt survives a kill


def test_kill_between_checkpoints_keeps_best_and_cleans_temps(tiny_data, tmp_path, monkeypatch):
    """Killed after best.pt and before latest.pt in epoch 2: resume redoes epoch 2 and best.pt is epoch 2's."""
    from helpers import tiny_teacher_config

    from pbrforge.dataset import PBRDataset
    from pbrforge.trainer import Trainer

    cfg = tiny_teacher_config(epochs=2)
    monkeypatch.setattr(
        Trainer, "validate", lambda self: ({"loss": 10.0 - self.epoch}, None)
    )  # always improves

    def trainer():
        train = PBRDataset.for_config(tiny_data, "train", cfg)
        val = PBRDataset.for_config(tiny_data, "val", cfg)
        return Trainer(
            cfg, train, val, tmp_path / "out", tmp_path / "ckpt", torch.device("cpu"), progress=False
        )

    real_save = Trainer.save

    def dying_save(self, name):
        if name == "latest.pt" and self.epoch == 1:
            (self.checkpoint_dir / ".latest.tmp-999999999.pt").write_bytes(b"")  # what kill -9 leaves behind
            raise KeyboardInterrupt
        return real_save(self, name)

    monkeypatch.setattr(Trainer, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer().fit()
    monkeypatch.setattr(Trainer, "save", real_save)
    ckpt = tmp_path / "ckpt"
    epoch = lambda name: torch.load(ckpt / name, weights_only=True)["epoch"]  # noqa: E731
    assert (epoch("best.pt"), epoch("latest.pt")) == (1, 0)  # best was written first
    resumed = trainer()
    resumed.resume(ckpt / "latest.pt")
    resumed.fit()
    assert (epoch("best.pt"), epoch("latest.pt")) == (1, 1)
    assert torch.load(ckpt / "best.pt", weights_only=True)["best"] == 9.0
    assert not list(ckpt.glob(".*tmp-*"))  # the dead run's temp file was cleaned


def test_concurrent_run_into_the_same_output_is_refused(tmp_path):
    from pbrforge.fileio import exclusive

    first = exclusive(tmp_path / "out")
    first.__enter__()
    with pytest.raises(DataError, match="another pbrforge run is writing"), exclusive(tmp_path / "out"):
        pass
    first.__exit__(None, None, None)
    with exclusive(tmp_path / "out"):  # released when the first run ends
        pass


def test_full_disk_is_one_sentence(tmp_path, monkeypatch):
    import errno
    import os

    from click.testing import CliRunner

    from pbrforge.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "d"))

    monkeypatch.setattr(os, "replace", full)
    r = CliRunner().invoke(main, ["datagen", "--output", str(tmp_path / "d"), "--count", "2", "--size", "16"])
    assert r.exit_code == 2 and "disk is full" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "d").exists()


def test_float_image_with_nan_and_oversized_image_are_refused(tmp_path):
    from pbrforge.views import image_to_float

    arr = np.full((8, 8), 0.5, np.float32)
    arr[2, 2] = np.nan
    Image.fromarray(arr, mode="F").save(tmp_path / "f.png", format="TIFF")  # a float image under a .png name
    with pytest.raises(DataError, match="NaN or inf"):
        image_to_float(tmp_path / "f.png")
    Image.new("RGB", (20000, 1)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match="larger than 16384"):
        image_to_float(tmp_path / "wide.png")


def test_a_second_run_into_the_same_output_is_refused_by_the_command(tmp_path):
    from click.testing import CliRunner

    from pbrforge.cli import main
    from pbrforge.fileio import exclusive

    with exclusive(tmp_path / "d"):  # as if another datagen were writing there now
        r = CliRunner().invoke(
            main, ["datagen", "--output", str(tmp_path / "d"), "--count", "2", "--size", "16"]
        )
    assert r.exit_code == 2 and "another pbrforge run is writing" in r.output
    assert not (tmp_path / "d").exists()


def test_shards_of_changed_views_are_refused_then_rewritten(tiny_teacher_ckpt, tiny_shards, tmp_path):
    from pbrforge.shards import DistillDataset
    from pbrforge.teacher.shards import write_shards

    data = tmp_path / "d"
    shutil.copytree(_data_root(tiny_shards), data)
    out = tmp_path / "s"
    write_shards(tiny_teacher_ckpt, data, out, 32, 4, 1, progress=False)
    view = data / "input" / "clean" / "sample_0005" / "1.png"
    Image.fromarray(255 - np.asarray(Image.open(view))).save(view)  # regenerated data, same sample ids
    with pytest.raises(DataError, match="shards of another data set"):  # never silently relabelled
        write_shards(tiny_teacher_ckpt, data, out, 32, 4, 1, progress=False)
    again = write_shards(tiny_teacher_ckpt, data, out, 32, 4, 1, overwrite=True, progress=False)
    assert again["computed"] == len(again["entries"])
    DistillDataset(data, out, 64, 32, 1, "all")  # the fingerprints agree with the data again


def test_exif_rotation_is_applied(tmp_path):
    from pbrforge.views import image_to_float

    yy, xx = np.mgrid[0:24, 0:40]
    smooth = np.stack([xx * 6, yy * 10, (xx + yy) * 3], axis=-1).astype(np.uint8)  # no two corners alike
    upright = Image.fromarray(smooth)
    upright.save(tmp_path / "upright.jpg", quality=95)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the camera stored it sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and says: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    a, b = image_to_float(tmp_path / "upright.jpg"), image_to_float(tmp_path / "rotated.jpg")
    assert a.shape == b.shape == (3, 24, 40)
    assert float((a - b).abs().mean()) < 0.02


def test_zero_length_normals_are_refused(tiny_data, tmp_path):
    from pbrforge.dataset import scan_dataset

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    normal = next((data / "output").iterdir()) / "normal.png"
    arr = np.asarray(Image.open(normal)).copy()
    arr[3, 3] = (128, 128, 128)
    Image.fromarray(arr).save(normal)
    with pytest.raises(DataError, match="zero length"):
        scan_dataset(data, deep=True)


# --------------------------------------------------------------------------- fuzzing: only DataError escapes


def _only_data_errors(fn, *args):
    with contextlib.suppress(PBRForgeError):  # anything else (a traceback for the user) fails the test
        fn(*args)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_view_files(tmp_path_factory, blob):
    from pbrforge.views import image_to_float

    path = tmp_path_factory.mktemp("v") / "0.png"
    head = b"\x89PNG\r\n\x1a\n" if blob[:1] == b"\x00" else b""
    path.write_bytes(head + blob)
    _only_data_errors(image_to_float, path)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=256), st.integers(0, 3))
def test_fuzz_truncated_real_png(tmp_path_factory, noise, cut):
    from pbrforge.views import image_to_float

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    path = tmp_path_factory.mktemp("v") / "0.png"
    path.write_bytes(data[: len(data) // (cut + 1)] + noise)
    _only_data_errors(image_to_float, path)


@pytest.mark.slow
@FUZZ
@given(JSON)
def test_fuzz_metadata(tiny_data, tmp_path_factory, value):
    from pbrforge.dataset import load_metadata

    root = tmp_path_factory.mktemp("m")
    (root / "input").mkdir()
    real = json.loads((tiny_data / "input" / "render_metadata.json").read_text())
    doc = value if not isinstance(value, dict) else real | value  # mostly-valid documents reach deeper
    (root / "input" / "render_metadata.json").write_text(json.dumps(doc))
    _only_data_errors(load_metadata, root)


@pytest.mark.slow
@FUZZ
@given(JSON)
def test_fuzz_manifest(tiny_shards, tmp_path_factory, value):
    from pbrforge.shards import load_manifest

    root = tmp_path_factory.mktemp("s")
    real = json.loads((tiny_shards / "manifest.json").read_text())
    doc = value if not isinstance(value, dict) else real | value
    (root / "manifest.json").write_text(json.dumps(doc))
    _only_data_errors(load_manifest, root)


@pytest.mark.slow
@FUZZ
@given(JSON)
def test_fuzz_contract(tmp_path_factory, value):
    from pbrforge.deploy import DeployContract

    good = {"image_size": 64, "output_size": 128, "sr_scale": 2, "family": "student", "model_name": "s"}
    path = tmp_path_factory.mktemp("c") / "m.contract.json"
    path.write_text(json.dumps(value if not isinstance(value, dict) else good | value))
    _only_data_errors(DeployContract.load, path)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=512) | JSON.map(lambda v: pickle.dumps(v)))
def test_fuzz_checkpoint_bytes(tmp_path_factory, blob):
    from pbrforge.models import model_from_checkpoint

    path = tmp_path_factory.mktemp("k") / "x.pt"
    path.write_bytes(blob)
    _only_data_errors(model_from_checkpoint, path)


@pytest.mark.slow
@FUZZ
@given(JSON)
def test_fuzz_checkpoint_structure(tiny_teacher_ckpt, tmp_path_factory, value):
    from pbrforge.models import model_from_checkpoint

    ckpt = torch.load(tiny_teacher_ckpt, weights_only=True)
    if isinstance(value, dict):
        key = next(iter(value), "config")
        target = ckpt["config"] if key.startswith("c") else ckpt
        target.update(value)
    else:
        ckpt["config"] = value
    path = tmp_path_factory.mktemp("k") / "x.pt"
    torch.save(ckpt, path)
    _only_data_errors(model_from_checkpoint, path)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_onnx_bytes(tmp_path_factory, blob):
    from pbrforge.runtime.backends import load_runner

    folder = tmp_path_factory.mktemp("o")
    (folder / "m.onnx").write_bytes(blob)
    good = {"image_size": 64, "output_size": 128, "sr_scale": 2, "family": "student", "model_name": "s"}
    (folder / "m.contract.json").write_text(json.dumps(good))
    _only_data_errors(load_runner, folder / "m.onnx", "auto", 1)


def test_stale_temps_are_removed_and_an_artifact_moved_aside_is_restored(tmp_path):
    """A run killed between the two renames of a folder artifact leaves only ``.NAME.old-PID``: it comes back."""
    import os

    from pbrforge.fileio import remove_stale_temps

    (tmp_path / ".student.old-999999999.mlpackage").mkdir()
    (tmp_path / ".student.staged-999999999.onnx").write_text("half")
    (tmp_path / ".latest.tmp-999999999.pt").write_bytes(b"")
    mine = tmp_path / f".live.tmp-{os.getpid()}.pt"  # a live writer's file is never touched
    mine.write_bytes(b"")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "student.mlpackage"])
