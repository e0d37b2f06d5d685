# ruff: noqa: E731 - the argv builders read best as one-line lambdas beside the table
"""Hostile but fair input to every command, table-driven and in-process.

Each case must end with exit code 2, at most three lines of output, no traceback, and nothing new (or
changed) at the output path it names. The table is long on purpose: every number, path and file a user can
hand a command is tried in the ways it goes wrong.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pbrforge.cli import main as cli

MAX_LINES = 3


class Boom:
    """A pickle that would write a file if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def _write_meta(root: Path, change: Callable[[dict], object]) -> None:
    path = root / "input" / "render_metadata.json"
    meta = json.loads(path.read_text())
    new = change(meta)
    path.write_text(new if isinstance(new, str) else json.dumps(meta if new is None else new))


@pytest.fixture(scope="module")
def p(tiny_data, tiny_teacher_ckpt, tiny_student_ckpt, tiny_shards, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("hostile")
    ns = SimpleNamespace(root=root, data=tiny_data, teacher=tiny_teacher_ckpt, student=tiny_student_ckpt)
    ns.shards = tiny_shards
    ns.empty = root / "empty.pt"
    ns.empty.write_bytes(b"")
    ns.garbage = root / "garbage.pt"
    ns.garbage.write_bytes(np.random.default_rng(0).bytes(2048))
    ns.marker = root / "pwned.txt"
    ns.pickle = root / "evil.pt"
    ns.pickle.write_bytes(pickle.dumps(Boom(ns.marker)))
    ns.json_file = root / "config.json"
    ns.json_file.write_text('{"format": "pbrforge-checkpoint-1"}')
    ns.a_file = root / "a_file"
    ns.a_file.write_text("not a folder")
    ns.a_dir = root / "a_dir"
    ns.a_dir.mkdir()
    ns.views = root / "views"
    shutil.copytree(tiny_data / "input" / "clean" / "sample_0002", ns.views)
    ns.views2 = root / "views2"
    shutil.copytree(ns.views, ns.views2)
    (ns.views2 / "2.png").unlink()
    ns.maps = next(p for p in sorted((tiny_data / "output").iterdir()) if p.is_dir())
    ns.maps_corrupt = root / "maps_corrupt"
    shutil.copytree(ns.maps, ns.maps_corrupt)
    (ns.maps_corrupt / "roughness.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ns.maps_gray_normal = root / "maps_gray_normal"
    shutil.copytree(ns.maps, ns.maps_gray_normal)
    Image.new("RGB", (32, 32), (128, 128, 128)).save(ns.maps_gray_normal / "normal.png")
    ns.views_corrupt = root / "views_corrupt"
    shutil.copytree(ns.views, ns.views_corrupt)
    (ns.views_corrupt / "1.png").write_bytes((ns.views / "1.png").read_bytes()[:60])
    ns.views_text = root / "views_text"
    ns.views_text.mkdir()
    for i in range(3):
        (ns.views_text / f"{i}.png").write_text("hello")
    # configs that are Python files
    for name, text in {
        "cfg_syntax": "def get_config(:\n",
        "cfg_raises": "raise RuntimeError('boom')\n",
        "cfg_none": "x = 1\n",
        "cfg_wrong": "def get_config():\n    return {'epochs': 3}\n",
        "cfg_call_fails": "def get_config():\n    return 1 / 0\n",
    }.items():
        f = root / f"{name}.py"
        f.write_text(text)
        setattr(ns, name, f)
    # checkpoints
    ckpt = torch.load(tiny_student_ckpt, weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name].view(-1)[0] = float("inf")
    ckpt["ema"] = {}
    ns.inf_ckpt = root / "inf.pt"
    torch.save(ckpt, ns.inf_ckpt)
    ns.noconfig_ckpt = root / "noconfig.pt"
    torch.save(
        {"format": "pbrforge-checkpoint-1", "family": "student", "model": {"w": torch.zeros(1)}},
        ns.noconfig_ckpt,
    )
    ns.badconfig_ckpt = root / "badconfig.pt"
    bad = torch.load(tiny_teacher_ckpt, weights_only=True)
    bad["config"]["training"]["epochs"] = "many"
    torch.save(bad, ns.badconfig_ckpt)
    ns.foreign_ckpt = root / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ns.foreign_ckpt)
    # ONNX files and contracts
    good_contract = {
        "image_size": 32,
        "output_size": 32,
        "sr_scale": 1,
        "family": "student",
        "model_name": "x",
    }
    ns.onnx_random = root / "random" / "m.onnx"
    ns.onnx_random.parent.mkdir()
    ns.onnx_random.write_bytes(np.random.default_rng(1).bytes(4096))
    (root / "random" / "m.contract.json").write_text(json.dumps(good_contract))
    ns.onnx_nocontract = root / "nocontract" / "m.onnx"
    ns.onnx_nocontract.parent.mkdir()
    ns.onnx_nocontract.write_bytes(b"x")
    for label, contract in {
        "nan": good_contract | {"output_size": float("nan")},
        "unknown": good_contract | {"colour": "red"},
        "names": good_contract | {"output_names": ["a", "b"]},
        "huge": good_contract | {"image_size": 10**9},
        "list": [1, 2],
        "text": "not json",
        "empty": "",
        "strsize": good_contract | {"image_size": "32"},
    }.items():
        folder = root / f"contract_{label}"
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"x")
        (folder / "m.contract.json").write_text(
            contract if isinstance(contract, str) else json.dumps(contract)
        )
        setattr(ns, f"contract_{label}", folder / "m.onnx")
    ns.unknown_ext = root / "model.bin"
    ns.unknown_ext.write_bytes(b"x")
    # data sets, each broken one way
    variants = {
        "meta_empty": lambda m: "",
        "meta_notjson": lambda m: "{",
        "meta_nan": lambda m: m.update(light_power=float("nan")),
        "meta_wrongtype": lambda m: m.update(size="big"),
        "meta_missing": lambda m: m.pop("samples"),
        "meta_unknown": lambda m: m.update(extra=1),
        "meta_list": lambda m: [m],
        "meta_material": lambda m: next(iter(m["samples"].values())).update(material="nowhere"),
        "meta_source": lambda m: next(iter(m["samples"].values())).update(sources=["foggy"]),
        "meta_version": lambda m: m.update(format_version=99),
        "meta_huge": lambda m: m.update(size=10**7),
        "meta_bool": lambda m: m.update(count=True),
    }
    for label, change in variants.items():
        d = root / f"data_{label}"
        shutil.copytree(tiny_data, d)
        _write_meta(d, change)
        setattr(ns, f"data_{label}", d)
    ns.data_zero_normal = root / "data_zero_normal"
    shutil.copytree(tiny_data, ns.data_zero_normal)
    normal = sorted((ns.data_zero_normal / "output").iterdir())[0] / "normal.png"
    arr = np.asarray(Image.open(normal)).copy()
    arr[:4, :4] = 128
    Image.fromarray(arr).save(normal)
    ns.data_corrupt_view = root / "data_corrupt_view"
    shutil.copytree(tiny_data, ns.data_corrupt_view)
    view = ns.data_corrupt_view / "input" / "clean" / "sample_0000" / "0.png"
    view.write_bytes(view.read_bytes()[:50])
    ns.data_wrong_size_view = root / "data_wrong_size_view"  # three valid PNGs, but 48 px in a 32 px set
    shutil.copytree(tiny_data, ns.data_wrong_size_view)
    for i in range(3):
        view = ns.data_wrong_size_view / "input" / "clean" / "sample_0005" / f"{i}.png"
        Image.open(view).resize((48, 48)).save(view)
    ns.link = root / "link"
    ns.link.symlink_to(ns.a_dir)
    ns.shards_dup = root / "shards_dup"
    shutil.copytree(tiny_shards, ns.shards_dup)
    m = json.loads((ns.shards_dup / "manifest.json").read_text())
    m["entries"][1] = dict(m["entries"][0])
    (ns.shards_dup / "manifest.json").write_text(json.dumps(m))
    ns.data_missing_view = root / "data_missing_view"
    shutil.copytree(tiny_data, ns.data_missing_view)
    (ns.data_missing_view / "input" / "clean" / "sample_0001" / "1.png").unlink()
    from pbrforge.datagen.writer import generate_dataset

    ns.data_other = root / "data_other"  # same sample ids as tiny_data, other views
    generate_dataset(ns.data_other, count=14, size=32, seed=99, dirty_ratio=0.5, progress=False)
    # shard folders, each broken one way
    for label, change in {
        "v1": lambda m: m.update(format_version=1),
        "nan": lambda m: m.update(output_size=float("nan")),
        "noentries": lambda m: m.update(entries=[]),
        "badrow": lambda m: m["entries"][0].update(row=-1),
        "channels": lambda m: m.update(channels=list(reversed(m["channels"]))),
        "sha": lambda m: m["teacher"].update(sha256="xyz"),
    }.items():
        d = root / f"shards_{label}"
        shutil.copytree(tiny_shards, d)
        m = json.loads((d / "manifest.json").read_text())
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))
        setattr(ns, f"shards_{label}", d)
    ns.shards_damaged = root / "shards_damaged"
    shutil.copytree(tiny_shards, ns.shards_damaged)
    (ns.shards_damaged / "shard_00000.safetensors").write_bytes(b"\x00" * 10)
    return ns


def _state(path: Path) -> object:
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return sorted((str(q.relative_to(path)), q.stat().st_size) for q in path.rglob("*"))


STUDENT = ["--config", "student_mnv3_plk_512", "--image-size", "32", "--set", "model.sr_scale=1"]
TEACHER_TRAIN = lambda p, out, *more: [
    "teacher-train",
    "--data",
    p.data,
    "--output",
    out,
    "--max-steps-per-epoch",
    "1",
    *more,
]
STUDENT_TRAIN = lambda p, out, *more: [
    "student-train",
    *STUDENT,
    "--shards",
    p.shards,
    "--data",
    p.data,
    "--output",
    out,
    *more,
]
EXPORT = lambda p, out, *more: ["export", p.student, "--output", out / "s", "--format", "onnx", *more]
RUN = lambda p, out, *more: ["run", p.student, "--input", p.views, "--output", out, "--align", "none", *more]
SHARDS = lambda p, out, *more: [
    "shards",
    p.teacher,
    "--data",
    p.data,
    "--output",
    out,
    *more,
]
INFER = lambda p, out, *more: ["teacher-infer", p.teacher, "--output", out, *more]
DATAGEN = lambda p, out, *more: ["datagen", "--output", out, "--count", "2", "--size", "16", *more]
SHEET = lambda p, out, *more: ["contact-sheet", "--data", p.data, "--output", out / "s.png", *more]

BAD_NUMBERS = ["0", "-1", "abc", "nan", "1e400", "99999999999"]

# (id, argv(p, out)); ``out`` is a fresh path the command would write to, unless the argv names another target.
CASES: list[tuple[str, Callable]] = []
for opt in ("--count", "--size", "--samples-per-material"):
    CASES += [(f"datagen {opt} {v}", lambda p, o, opt=opt, v=v: DATAGEN(p, o, opt, v)) for v in BAD_NUMBERS]
CASES += [
    (f"datagen --dirty-ratio {v}", lambda p, o, v=v: DATAGEN(p, o, "--dirty-ratio", v))
    for v in ("-0.1", "1.5", "nan", "inf")
]
CASES += [
    ("datagen --seed -1", lambda p, o: DATAGEN(p, o, "--seed", "-1")),
    ("datagen --output under a file", lambda p, o: ["datagen", "--output", p.a_file / "d", "--count", "2"]),
    ("datagen --output is a file", lambda p, o: ["datagen", "--output", p.a_file, "--count", "2"]),
    ("datagen --output non-empty", lambda p, o: ["datagen", "--output", p.views, "--count", "2"]),
]
for label in ("meta_empty", "meta_notjson", "meta_nan", "meta_wrongtype", "meta_missing", "meta_unknown",
              "meta_list", "meta_material", "meta_source", "meta_version", "meta_huge", "meta_bool",
              "zero_normal", "corrupt_view", "missing_view"):  # fmt: skip
    CASES.append(
        (
            f"check-data {label}",
            lambda p, o, label=label: ["check-data", "--data", getattr(p, f"data_{label}")],
        )
    )
CASES += [
    ("check-data missing root", lambda p, o: ["check-data", "--data", p.root / "nowhere"]),
    ("check-data root is a file", lambda p, o: ["check-data", "--data", p.a_file]),
    ("check-data empty folder", lambda p, o: ["check-data", "--data", p.a_dir]),
    ("contact-sheet --count 0", lambda p, o: SHEET(p, o, "--count", "0")),
    ("contact-sheet --tile 0", lambda p, o: SHEET(p, o, "--tile", "0")),
    ("contact-sheet --tile huge", lambda p, o: SHEET(p, o, "--tile", "100000")),
    (
        "contact-sheet --output is a folder",
        lambda p, o: ["contact-sheet", "--data", p.data, "--output", p.a_dir],
    ),
    (
        "contact-sheet --output under a file",
        lambda p, o: ["contact-sheet", "--data", p.data, "--output", p.a_file / "s.png"],
    ),
    (
        "contact-sheet broken data",
        lambda p, o: ["contact-sheet", "--data", p.data_meta_nan, "--output", o / "s.png"],
    ),
]
for opt in ("--epochs", "--batch-size"):
    CASES += [
        (f"teacher-train {opt} {v}", lambda p, o, opt=opt, v=v: TEACHER_TRAIN(p, o, opt, v))
        for v in ("0", "-3", "abc", "1e9")
    ]
CASES += [
    (
        "teacher-train --max-steps-per-epoch -1",
        lambda p, o: TEACHER_TRAIN(p, o, "--max-steps-per-epoch", "-1"),
    ),
    ("teacher-train unknown preset", lambda p, o: TEACHER_TRAIN(p, o, "--config", "nope")),
    ("teacher-train student preset", lambda p, o: TEACHER_TRAIN(p, o, "--config", "student_mnv3_plk_512")),
    ("teacher-train missing .py", lambda p, o: TEACHER_TRAIN(p, o, "--config", str(p.root / "none.py"))),
    ("teacher-train --render-curriculum 5", lambda p, o: TEACHER_TRAIN(p, o, "--render-curriculum", "5")),
    ("teacher-train --device tpu", lambda p, o: TEACHER_TRAIN(p, o, "--device", "tpu")),
    ("teacher-train --device gpu0", lambda p, o: TEACHER_TRAIN(p, o, "--device", "gpu0")),
    (
        "teacher-train missing input",
        lambda p, o: ["teacher-train", "--data", p.root / "no", "--output", o],
    ),
    (
        "teacher-train input is a file",
        lambda p, o: ["teacher-train", "--data", p.a_file, "--output", o],
    ),
    (
        "teacher-train broken data",
        lambda p, o: ["teacher-train", "--data", p.data_meta_missing, "--output", o],
    ),
    ("teacher-train output under a file", lambda p, o: TEACHER_TRAIN(p, p.a_file / "run")),
    (
        "teacher-train checkpoint-dir is a file",
        lambda p, o: TEACHER_TRAIN(p, o, "--checkpoint-dir", p.a_file),
    ),
    ("teacher-train empty output", lambda p, o: TEACHER_TRAIN(p, "")),
    (
        "teacher-train view of the wrong size",
        lambda p, o: ["teacher-train", "--data", p.data_wrong_size_view, "--output", o],
    ),
    (
        "datagen --output is a symlink",
        lambda p, o: ["datagen", "--output", p.link, "--count", "2", "--overwrite"],
    ),
    ("shards --verify duplicate entries", lambda p, o: ["shards", "--verify", p.shards_dup]),
    (
        "shards onto another data set",
        lambda p, o: [
            "shards",
            p.teacher,
            "--data",
            p.data_other,
            "--output",
            p.shards,
        ],
    ),
    (
        "teacher-infer --input with --sample-idx",
        lambda p, o: INFER(p, o, "--input", p.views, "--sample-idx", "2"),
    ),
]
for name in ("cfg_syntax", "cfg_raises", "cfg_none", "cfg_wrong", "cfg_call_fails"):
    CASES.append(
        (
            f"teacher-train --config {name}.py",
            lambda p, o, name=name: TEACHER_TRAIN(p, o, "--config", str(getattr(p, name))),
        )
    )
for item in ("epochs", "training.epochs=abc", "training.epochs=0", "optim.lr=NaN", "optim.lr=-1", "nope.x=1",
             "training.nope=1", "model.image_size=33", "model.image_size=\"64\"", "loss.gan_loss=\"wgan\"",
             "optim.betas=[2, 3]", "training.gan=1", "data.val_fraction=1.5", "model.encoder=\"vgg\""):  # fmt: skip
    CASES.append((f"teacher-train --set {item}", lambda p, o, item=item: TEACHER_TRAIN(p, o, "--set", item)))
for name in (
    "empty",
    "garbage",
    "pickle",
    "json_file",
    "foreign_ckpt",
    "noconfig_ckpt",
    "badconfig_ckpt",
    "student",
):
    CASES.append(
        (
            f"teacher-train --resume {name}",
            lambda p, o, name=name: TEACHER_TRAIN(p, o, "--resume", getattr(p, name)),
        )
    )
CASES += [
    ("teacher-train --resume missing", lambda p, o: TEACHER_TRAIN(p, o, "--resume", p.root / "none.pt")),
    ("teacher-train --resume is a folder", lambda p, o: TEACHER_TRAIN(p, o, "--resume", p.a_dir)),
]
for label in ("v1", "nan", "noentries", "badrow", "channels", "sha", "damaged"):
    CASES.append(
        (
            f"student-train shards {label}",
            lambda p, o, label=label: [
                "student-train",
                *STUDENT,
                "--shards",
                getattr(p, f"shards_{label}"),
                "--data",
                p.data,
                "--output",
                o,
            ],
        )
    )
CASES += [
    (
        "student-train shards of another data set",
        lambda p, o: [
            "student-train",
            *STUDENT,
            "--shards",
            p.shards,
            "--data",
            p.data_other,
            "--output",
            o,
        ],
    ),
    (
        "student-train missing shards",
        lambda p, o: [
            "student-train",
            *STUDENT,
            "--shards",
            p.root / "none",
            "--data",
            p.data,
            "--output",
            o,
        ],
    ),
    ("student-train --image-size 31", lambda p, o: STUDENT_TRAIN(p, o, "--image-size", "31")),
    ("student-train --image-size 48", lambda p, o: STUDENT_TRAIN(p, o, "--image-size", "48")),
    ("student-train --image-size huge", lambda p, o: STUDENT_TRAIN(p, o, "--image-size", "100000")),
    ("student-train teacher preset", lambda p, o: STUDENT_TRAIN(p, o, "--config", "quick_test")),
    ("student-train --set training.gan=true", lambda p, o: STUDENT_TRAIN(p, o, "--set", "training.gan=true")),
    ("student-train --resume teacher", lambda p, o: STUDENT_TRAIN(p, o, "--resume", p.teacher)),
    ("student-train --batch-size 0", lambda p, o: STUDENT_TRAIN(p, o, "--batch-size", "0")),
]
for opt, values in (
    ("--shard-size", ("0", "-1", "x")),
    ("--batch-size", ("0", "x")),
    ("--shard-output-size", ("0", "7", "100000")),
):
    CASES += [(f"shards {opt} {v}", lambda p, o, opt=opt, v=v: SHARDS(p, o, opt, v)) for v in values]
for name in ("empty", "garbage", "pickle", "student", "inf_ckpt", "foreign_ckpt"):
    CASES.append(
        (
            f"shards checkpoint {name}",
            lambda p, o, name=name: [
                "shards",
                getattr(p, name),
                "--data",
                p.data,
                "--output",
                o,
            ],
        )
    )
CASES += [
    ("shards nothing given", lambda p, o: ["shards"]),
    (
        "shards missing data",
        lambda p, o: ["shards", p.teacher, "--data", p.root / "no", "--output", o],
    ),
    (
        "shards broken data",
        lambda p, o: ["shards", p.teacher, "--data", p.data_meta_nan, "--output", o],
    ),
    ("shards upsampling", lambda p, o: SHARDS(p, o, "--shard-output-size", "128")),
    ("shards --output under a file", lambda p, o: SHARDS(p, p.a_file / "s")),
    ("shards --verify damaged", lambda p, o: ["shards", "--verify", p.shards_damaged]),
    ("shards --verify nan manifest", lambda p, o: ["shards", "--verify", p.shards_nan]),
    ("shards --verify missing", lambda p, o: ["shards", "--verify", p.root / "none"]),
]
CASES += [
    ("teacher-infer neither input", lambda p, o: INFER(p, o)),
    (
        "teacher-infer both inputs",
        lambda p, o: INFER(p, o, "--input", p.views, "--data", p.data, "--sample-idx", "0"),
    ),
    ("teacher-infer --sample-idx -1", lambda p, o: INFER(p, o, "--data", p.data, "--sample-idx", "-1")),
    (
        "teacher-infer --sample-idx past the end",
        lambda p, o: INFER(p, o, "--data", p.data, "--sample-idx", "9999"),
    ),
    ("teacher-infer two views", lambda p, o: INFER(p, o, "--input", p.views2)),
    ("teacher-infer corrupt view", lambda p, o: INFER(p, o, "--input", p.views_corrupt)),
    (
        "teacher-infer student checkpoint",
        lambda p, o: ["teacher-infer", p.student, "--input", p.views, "--output", o],
    ),
    ("teacher-infer --output is a file", lambda p, o: INFER(p, p.a_file, "--input", p.views)),
]
for name in (
    "empty",
    "garbage",
    "pickle",
    "json_file",
    "inf_ckpt",
    "foreign_ckpt",
    "noconfig_ckpt",
    "badconfig_ckpt",
):
    CASES.append(
        (
            f"export {name}",
            lambda p, o, name=name: ["export", getattr(p, name), "--output", o / "s", "--format", "onnx"],
        )
    )
CASES += [
    ("export missing checkpoint", lambda p, o: ["export", p.root / "none.pt", "--output", o / "s"]),
    ("export checkpoint is a folder", lambda p, o: ["export", p.a_dir, "--output", o / "s"]),
    ("export --test-resolution 33", lambda p, o: EXPORT(p, o, "--test-resolution", "33")),
    ("export --test-resolution 0", lambda p, o: EXPORT(p, o, "--test-resolution", "0")),
    ("export --test-resolution huge", lambda p, o: EXPORT(p, o, "--test-resolution", "65536")),
    (
        "export --nbits 4 on iOS17",
        lambda p, o: [
            "export",
            p.student,
            "--output",
            o / "s",
            "--format",
            "coreml",
            "--palettization",
            "--nbits",
            "4",
        ],
    ),
    ("export --nbits 3", lambda p, o: EXPORT(p, o, "--nbits", "3")),
    ("export --format bogus", lambda p, o: ["export", p.student, "--output", o / "s", "--format", "bogus"]),
    (
        "export --output is a folder",
        lambda p, o: ["export", p.student, "--output", p.a_dir, "--format", "onnx"],
    ),
    (
        "export --output under a file",
        lambda p, o: ["export", p.student, "--output", p.a_file / "s", "--format", "onnx"],
    ),
    ("export --contract-out is a folder", lambda p, o: EXPORT(p, o, "--contract-out", p.a_dir)),
    ("export tensorrt alone", lambda p, o: EXPORT(p, o)[:-1] + ["tensorrt"]),
]
for opt, values in (
    ("--runs", ("0", "-1", "x")),
    ("--warmup", ("-1",)),
    ("--threads", ("-1", "x")),
    ("--final-size", ("0", "100000")),
):
    CASES += [(f"run {opt} {v}", lambda p, o, opt=opt, v=v: RUN(p, o, opt, v)) for v in values]
for name in ("onnx_random", "onnx_nocontract", "unknown_ext", "empty", "garbage", "pickle", "inf_ckpt", "foreign_ckpt",
             "contract_nan", "contract_unknown", "contract_names", "contract_huge", "contract_list", "contract_text",
             "contract_empty", "contract_strsize"):  # fmt: skip
    CASES.append(
        (
            f"run artifact {name}",
            lambda p, o, name=name: ["run", getattr(p, name), "--input", p.views, "--output", o],
        )
    )
CASES += [
    ("run missing artifact", lambda p, o: ["run", p.root / "none.onnx", "--input", p.views, "--output", o]),
    ("run --backend bogus", lambda p, o: RUN(p, o, "--backend", "bogus")),
    ("run --backend coreml on linux", lambda p, o: RUN(p, o, "--backend", "coreml")),
    ("run --backend onnx on a checkpoint", lambda p, o: RUN(p, o, "--backend", "onnx")),
    ("export --min-target iOS16", lambda p, o: EXPORT(p, o, "--min-target", "iOS16")),
    ("run two views", lambda p, o: ["run", p.student, "--input", p.views2, "--output", o]),
    ("run corrupt view", lambda p, o: ["run", p.student, "--input", p.views_corrupt, "--output", o]),
    ("run text files named png", lambda p, o: ["run", p.student, "--input", p.views_text, "--output", o]),
    ("run missing input", lambda p, o: ["run", p.student, "--input", p.root / "none", "--output", o]),
    ("run input is a file", lambda p, o: ["run", p.student, "--input", p.a_file, "--output", o]),
    ("run --output is a file", lambda p, o: ["run", p.student, "--input", p.views, "--output", p.a_file]),
    (
        "run --output under a file",
        lambda p, o: ["run", p.student, "--input", p.views, "--output", p.a_file / "x"],
    ),
    ("run --reference of another architecture", lambda p, o: RUN(p, o, "--reference", p.teacher)),
    ("run --reference garbage", lambda p, o: RUN(p, o, "--reference", p.garbage)),
    ("run --reference pickle", lambda p, o: RUN(p, o, "--reference", p.pickle)),
    ("run --reference missing", lambda p, o: RUN(p, o, "--reference", p.root / "none.pt")),
    ("datagen --materials a file", lambda p, o: DATAGEN(p, o, "--materials", p.a_file)),
    ("datagen --materials missing", lambda p, o: DATAGEN(p, o, "--materials", p.root / "none")),
    (
        "datagen --materials without sets and --count 0",
        lambda p, o: ["datagen", "--output", o, "--count", "0", "--materials", p.a_dir],
    ),
    ("export --quantize without --calibration", lambda p, o: EXPORT(p, o, "--quantize", "int8")),
    (
        "export --quantize int8 --format coreml",
        lambda p, o: [
            "export",
            p.student,
            "--output",
            o / "s",
            "--format",
            "coreml",
            "--quantize",
            "int8",
            "--calibration",
            p.data,
        ],
    ),
    (
        "export --calibration a file",
        lambda p, o: EXPORT(p, o, "--quantize", "int8", "--calibration", p.a_file),
    ),
    (
        "export --calibration not a data set",
        lambda p, o: EXPORT(p, o, "--quantize", "int8", "--calibration", p.a_dir),
    ),
    (
        "export --qat-steps with --quantize int8 for ONNX only",
        lambda p, o: EXPORT(p, o, "--quantize", "int8", "--data", p.data, "--qat-steps", "5"),
    ),
    (
        "export --qat-steps without --quantize",
        lambda p, o: ["export", p.student, "--output", o / "s", "--format", "coreml", "--qat-steps", "5"],
    ),
    ("export --nbits mixed --format onnx", lambda p, o: EXPORT(p, o, "--palettization", "--nbits", "mixed")),
    (
        "export --budget-db nan",
        lambda p, o: EXPORT(p, o, "--palettization", "--nbits", "mixed", "--budget-db", "nan"),
    ),
    (
        "export --recipe garbage",
        lambda p, o: ["export", p.student, "--output", o / "s", "--format", "coreml", "--recipe", p.garbage],
    ),
    (
        "export --recipe of the wrong format",
        lambda p, o: [
            "export",
            p.student,
            "--output",
            o / "s",
            "--format",
            "coreml",
            "--recipe",
            p.json_file,
        ],
    ),
    ("export --nbits without --palettization", lambda p, o: EXPORT(p, o, "--nbits", "8")),
    (
        "export --budget-db without mixed",
        lambda p, o: ["export", p.student, "--output", o / "s", "--format", "coreml", "--budget-db", "40"],
    ),
    ("export --calibration without a use", lambda p, o: EXPORT(p, o, "--calibration", p.data)),
    ("run --name without --emit", lambda p, o: RUN(p, o, "--name", "x")),
    ("run --bits without --emit", lambda p, o: RUN(p, o, "--bits", "16")),
    (
        "preview --name with a newline",
        lambda p, o: ["preview", p.maps, "--output", o / "p.html", "--name", "a\nb"],
    ),
    ("export --render-psnr-min nan", lambda p, o: EXPORT(p, o, "--render-psnr-min", "nan")),
    ("export --normal-p99-max -1", lambda p, o: EXPORT(p, o, "--normal-p99-max", "-1")),
    ("run --render-psnr-min abc", lambda p, o: RUN(p, o, "--render-psnr-min", "abc")),
    ("run --emit bogus", lambda p, o: RUN(p, o, "--emit", "gltf,fbx")),
    ("run --emit mtlx --normal dx", lambda p, o: RUN(p, o, "--emit", "mtlx", "--normal", "dx")),
    ("run --validate without --emit", lambda p, o: RUN(p, o, "--validate")),
    ("run --name with a slash", lambda p, o: RUN(p, o, "--emit", "gltf", "--name", "a/b")),
    ("run --bits 32", lambda p, o: RUN(p, o, "--emit", "pngset", "--bits", "32")),
    ("package missing folder", lambda p, o: ["package", p.root / "none", "--output", o]),
    ("package a file", lambda p, o: ["package", p.a_file, "--output", o]),
    ("package a folder without maps", lambda p, o: ["package", p.a_dir, "--output", o]),
    ("package corrupt map", lambda p, o: ["package", p.maps_corrupt, "--output", o]),
    ("package zero-length normals", lambda p, o: ["package", p.maps_gray_normal, "--output", o]),
    ("package --output is a file", lambda p, o: ["package", p.maps, "--output", p.a_file]),
    ("package --emit nothing", lambda p, o: ["package", p.maps, "--output", o, "--emit", ","]),
    ("package --name too long", lambda p, o: ["package", p.maps, "--output", o, "--name", "x" * 65]),
    ("preview missing folder", lambda p, o: ["preview", p.root / "none", "--output", o / "p.html"]),
    ("preview a folder without maps", lambda p, o: ["preview", p.a_dir, "--output", o / "p.html"]),
    ("preview corrupt map", lambda p, o: ["preview", p.maps_corrupt, "--output", o / "p.html"]),
    ("preview --output is a folder", lambda p, o: ["preview", p.maps, "--output", p.a_dir]),
    (
        "preview --screenshot under a file",
        lambda p, o: ["preview", p.maps, "--output", o / "p.html", "--screenshot", p.a_file / "s.png"],
    ),
    ("preview two views", lambda p, o: ["preview", p.maps, "--views", p.views2, "--output", o / "p.html"]),
    (
        "preview corrupt view",
        lambda p, o: ["preview", p.maps, "--views", p.views_corrupt, "--output", o / "p.html"],
    ),
    ("unknown command", lambda p, o: ["frobnicate"]),
    ("unknown group option", lambda p, o: ["--colour", "datagen"]),
]


def _target(argv: list) -> Path | None:
    """The output path an argv names (the value after --output)."""
    return Path(argv[argv.index("--output") + 1]) if "--output" in argv else None


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_hostile_input_is_one_sentence(case, p, tmp_path):
    argv = [str(a) for a in dict(CASES)[case](p, tmp_path / "out")]
    target = _target(argv) or tmp_path / "out"
    watched = [target, target.parent, tmp_path]

    def snapshot() -> list:  # the output, its folder, the test's folder, and the top of the shared fixtures
        return [_state(w) for w in watched] + [sorted(q.name for q in p.root.iterdir())]

    before = snapshot()
    r = CliRunner().invoke(cli, argv)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, f"{case}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert "Traceback" not in r.output and 1 <= len(lines) <= MAX_LINES, f"{case}:\n{r.output}"
    assert isinstance(r.exception, SystemExit), f"{case}: {r.exception!r}"
    assert snapshot() == before, f"{case}: something was written"
    assert not p.marker.exists(), "a pickle was executed"


def test_the_table_is_long_enough():
    assert len(CASES) >= 120 and len({c[0] for c in CASES}) == len(CASES)
