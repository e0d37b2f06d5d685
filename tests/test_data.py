import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pbrforge.cli import main as cli
from pbrforge.contract import NUM_CHANNELS, validate
from pbrforge.datagen.materials import FAMILIES, make_material
from pbrforge.datagen.writer import generate_dataset
from pbrforge.dataset import PBRDataset, scan_dataset
from pbrforge.errors import DataError


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_families_at_least_six_and_consistent():
    assert len(FAMILIES) >= 6
    for fam in FAMILIES:
        maps = torch.from_numpy(make_material(fam, 1, 32).maps())
        validate(maps, fam)


def test_layout(tiny_data):
    meta = json.loads((tiny_data / "input" / "render_metadata.json").read_text())
    assert len(meta["samples"]) == 14
    for sid, s in meta["samples"].items():
        for src in s["sources"]:
            assert sorted(p.name for p in (tiny_data / "input" / src / sid).iterdir()) == [
                "0.png",
                "1.png",
                "2.png",
            ]
        assert (tiny_data / "output" / s["material"] / "normal.png").is_file()
    by_mat = {}
    for sid, s in meta["samples"].items():
        by_mat.setdefault(s["material"], []).append(sid)
    assert max(len(v) for v in by_mat.values()) >= 2  # samples share materials
    assert not list(tiny_data.parent.glob(".*tmp*"))  # nothing half-written left behind


def test_deterministic_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_dataset(a, count=4, size=24, seed=7, progress=False)
    generate_dataset(b, count=4, size=24, seed=7, progress=False)
    assert tree_digest(a) == tree_digest(b)
    generate_dataset(b, count=4, size=24, seed=8, progress=False, overwrite=True)
    assert tree_digest(a) != tree_digest(b)


def test_refuses_to_clobber(tmp_path):
    generate_dataset(tmp_path / "d", count=2, size=16, progress=False)
    with pytest.raises(DataError, match="--overwrite"):
        generate_dataset(tmp_path / "d", count=2, size=16, progress=False)


def test_dirty_differs_from_clean(tiny_data):
    meta = json.loads((tiny_data / "input" / "render_metadata.json").read_text())
    sid = next(s for s, v in meta["samples"].items() if "dirty" in v["sources"])
    ds = PBRDataset(tiny_data, split="all", image_size=32, output_size=32)
    clean, dirty = ds.load_views(sid, "clean"), ds.load_views(sid, "dirty")
    assert (clean - dirty).abs().mean() > 0.005


def test_dataset_shapes_ranges_and_split(tiny_data):
    train = PBRDataset(tiny_data, "train", image_size=24, output_size=16, curriculum=1, val_fraction=0.3)
    val = PBRDataset(tiny_data, "val", image_size=24, output_size=16, curriculum=1, val_fraction=0.3)
    item = train[0]
    assert item["views"].shape == (3, 3, 24, 24)
    assert item["target"].shape == (NUM_CHANNELS, 16, 16)
    validate(item["target"])
    assert item["views"].min() < 0  # normalised, not [0, 1]
    train_mats = {train.material_of(s) for s, _ in train.entries}
    val_mats = {val.material_of(s) for s, _ in val.entries}
    assert train_mats and val_mats and not train_mats & val_mats


def test_curricula(tiny_data):
    _, summary = scan_dataset(tiny_data)
    counts = {c: len(PBRDataset(tiny_data, "all", 16, 16, curriculum=c)) for c in (0, 1, 2)}
    assert counts == {0: summary.clean, 1: summary.clean + summary.dirty, 2: summary.dirty}


def test_check_data_ok(tiny_data):
    r = CliRunner().invoke(cli, ["check-data", "--data", str(tiny_data)])
    assert r.exit_code == 0, r.output
    assert "samples" in r.output and "14" in r.output


def test_contact_sheet(tiny_data, tmp_path):
    out = tmp_path / "sheet.png"
    r = CliRunner().invoke(
        cli, ["contact-sheet", "--data", str(tiny_data), "--output", str(out), "--count", "2", "--tile", "16"]
    )
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(out).size == (16 * 7, 16 * 2)


def _broken(tiny_data, tmp_path, mutate) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(tiny_data, root)
    mutate(root)
    return root


def _meta_edit(fn):
    def mutate(root):
        p = root / "input" / "render_metadata.json"
        meta = json.loads(p.read_text())
        fn(meta)
        p.write_text(json.dumps(meta))

    return mutate


def _first_view(root):
    return root / "input" / "clean" / "sample_0000" / "0.png"


BAD_CASES = {
    "missing metadata": (lambda r: (r / "input" / "render_metadata.json").unlink(), "missing"),
    "unknown metadata key": (
        _meta_edit(lambda m: m.update(colour="blue")),
        "colour: Extra inputs are not permitted",
    ),
    "sample absent from metadata": (_meta_edit(lambda m: m["samples"].pop("sample_0001")), "absent from"),
    "missing material folder": (
        lambda r: shutil.rmtree(next((r / "output").iterdir())),
        "missing material folder",
    ),
    "missing view": (lambda r: _first_view(r).unlink(), "expected exactly 3"),
    "extra view": (
        lambda r: shutil.copy(_first_view(r), _first_view(r).with_name("3.png")),
        "expected exactly 3",
    ),
    "corrupt png": (lambda r: _first_view(r).write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "corrupt"),
    "wrong size": (
        lambda r: __import__("PIL.Image").Image.new("RGB", (8, 8)).save(_first_view(r)),
        "expected 32x32",
    ),
    "wrong mode": (lambda r: __import__("PIL.Image").Image.new("L", (32, 32)).save(_first_view(r)), "mode L"),
    "empty": (_meta_edit(lambda m: m["samples"].clear()), None),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_check_data_bad_input(tiny_data, tmp_path, case):
    mutate, message = BAD_CASES[case]
    root = _broken(tiny_data, tmp_path, mutate)
    if case == "empty":
        for d in (root / "input" / "clean", root / "input" / "dirty"):
            shutil.rmtree(d, ignore_errors=True)
        message = "empty"
    before = sorted(p for p in root.rglob("*"))
    r = CliRunner().invoke(cli, ["check-data", "--data", str(root)])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1  # one sentence
    assert sorted(p for p in root.rglob("*")) == before  # nothing written


def test_datagen_cli(tmp_path):
    r = CliRunner().invoke(cli, ["datagen", "--output", str(tmp_path / "d"), "--count", "3", "--size", "16"])
    assert r.exit_code == 0, r.output
    assert "samples" in r.output
    r = CliRunner().invoke(cli, ["datagen", "--output", str(tmp_path / "d"), "--count", "3", "--size", "16"])
    assert r.exit_code == 2 and "--overwrite" in r.output
