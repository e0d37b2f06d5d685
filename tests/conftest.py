"""Shared fixtures: tiny generated data sets so every test runs in seconds on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from pbrforge.datagen.writer import generate_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate_dataset(root, count=14, size=32, seed=3, dirty_ratio=0.5, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_teacher_ckpt(tiny_data, tmp_path_factory) -> Path:
    """A tiny teacher trained for two steps: enough to exercise every downstream stage."""
    from helpers import tiny_teacher_config

    from pbrforge.dataset import PBRDataset
    from pbrforge.trainer import Trainer

    cfg = tiny_teacher_config(epochs=1)
    tmp = tmp_path_factory.mktemp("teacher")
    train = PBRDataset.for_config(tiny_data, "train", cfg)
    Trainer(cfg, train, None, tmp / "out", tmp / "ckpt", torch.device("cpu"), progress=False).fit()
    return tmp / "ckpt" / "latest.pt"


@pytest.fixture(scope="session")
def tiny_shards(tiny_data, tiny_teacher_ckpt, tmp_path_factory) -> Path:
    from pbrforge.teacher.shards import write_shards

    out = tmp_path_factory.mktemp("shards") / "s32"
    write_shards(
        tiny_teacher_ckpt, tiny_data, out, shard_output_size=32, shard_size=4, curriculum=1, progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_student_ckpt(tiny_data, tiny_shards, tmp_path_factory) -> Path:
    """A student (PLK, SR x1, 32 px) distilled for two steps from the tiny shards."""
    from click.testing import CliRunner
    from helpers import tiny_student_args

    from pbrforge.cli import main

    out = tmp_path_factory.mktemp("student")
    r = CliRunner().invoke(main, tiny_student_args(tiny_data, tiny_shards, out))
    assert r.exit_code == 0, r.output
    return out / "checkpoints" / "latest.pt"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_student_ckpt, tmp_path_factory) -> Path:
    from pbrforge.export.converter import export_artifacts

    out = tmp_path_factory.mktemp("onnx") / "student"
    result = export_artifacts(tiny_student_ckpt, out, ("onnx",))
    assert not result.failures, result.failures
    return out.with_suffix(".onnx")


@pytest.fixture(scope="session")
def tiny_pte_export(tiny_student_ckpt, tiny_data, tmp_path_factory):
    """The tiny student as ExecuTorch programs, in one export: XNNPACK fp32 (run and gated here), int8
    calibrated on the tiny data's held-out views and fine-tuned with quantization-aware training, held to the
    default render gate (40 dB, 2 deg), and Core ML (built only)."""
    pytest.importorskip("executorch")
    from helpers import QAT_STEPS

    from pbrforge.export.converter import export_artifacts

    out = tmp_path_factory.mktemp("pte") / "student"
    result = export_artifacts(
        tiny_student_ckpt,
        out,
        ("executorch",),
        quantize="int8",
        data=tiny_data,
        qat_steps=QAT_STEPS,
        progress=False,
    )
    assert not result.failures, result.failures
    return out.with_suffix(".pte"), result


@pytest.fixture(scope="session")
def tiny_pte(tiny_pte_export) -> Path:
    return tiny_pte_export[0]


@pytest.fixture(scope="session")
def tiny_coreml(tiny_student_ckpt, tmp_path_factory) -> Path:
    """The tiny student as a 6-bit palettized Core ML package (its weights read back for parity)."""
    pytest.importorskip("coremltools")
    from pbrforge.export.converter import export_artifacts

    out = tmp_path_factory.mktemp("coreml") / "s"
    result = export_artifacts(tiny_student_ckpt, out, ("coreml",), nbits=6)
    assert not result.failures, result.failures
    return out.with_suffix(".mlpackage")


SLOW_FIXTURES = {
    "tiny_onnx",
    "tiny_pte",
    "tiny_pte_export",
    "tiny_coreml",
}  # an export and its parity run: ~15 s on 2 cores


def pytest_collection_modifyitems(items):
    """A test that needs an exported artifact is slow, whatever it checks."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
