"""Every registered artifact format through one contract (timm's habit: tests parametrized over the registry).

A format added to ``export/formats.py``'s registry is picked up here and must pass every test or be listed in
``EXPORTED_BY`` / ``NOT_RUNNABLE_HERE`` with its reason: none escapes.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from pbrforge.artifacts import ArtifactPaths, contract_path, report_path
from pbrforge.errors import ConfigError, ParityError, UnavailableError
from pbrforge.export.formats import (
    FAMILIES,
    Built,
    ExportOptions,
    ExportResult,
    by_name,
    for_artifact,
    primary,
    registered,
    run_step,
)
from pbrforge.export.gates import RenderGate
from pbrforge.export.test_vectors import EXPECTED

FORMATS = registered()
NAMES = [f.name for f in FORMATS]
# the session fixture whose export holds each format's artifact (its name is the artifact's stem)
EXPORTED_BY = {
    "onnx": "tiny_onnx",
    "onnx-ort": "tiny_onnx",
    "executorch": "tiny_pte",
    "executorch-int8": "tiny_pte",
    "coreml": "tiny_coreml",
}
# built by tests of their own (test_quantize: int8 ONNX, W8A8) or not runnable on this machine at all
BUILT_ELSEWHERE = {"onnx-int8": "test_quantize.py", "coreml-w8a8": "test_quantize.py"}
NOT_RUNNABLE_HERE = {
    "executorch-coreml": "Core ML delegate: Apple devices only",
    "tensorrt": "no GPU, no TensorRT",
}
RELAXED = RenderGate(0.0, 180.0)  # records the render figures of a 32 px toy model without judging them
QUANTIZED = {"onnx-int8": "int8", "executorch-int8": "int8", "coreml-w8a8": "w8a8"}
PERTURB = 1.02  # every conv weight 2 % off: a different model than the artifact was built from
MARGIN_DB = 1.0  # the gate is set this far below what the true model reached


def test_every_format_is_accounted_for():
    covered = set(EXPORTED_BY) | set(BUILT_ELSEWHERE) | set(NOT_RUNNABLE_HERE)
    assert set(NAMES) == covered, f"a format escapes the tests: {set(NAMES) ^ covered}"
    assert all(by_name(n).check is None for n in NOT_RUNNABLE_HERE)
    assert all(by_name(n).check is not None for n in (*EXPORTED_BY, *BUILT_ELSEWHERE))


def test_registry_is_one_plan():
    assert len({f.suffix for f in FORMATS}) == len(FORMATS)  # the runtime finds a format by its suffix
    for family in FAMILIES:
        assert sum(primary(f) for f in FORMATS if f.family == family) >= 1, family
    for i, fmt in enumerate(FORMATS):  # parents come first, so a plan builds them first
        assert all(NAMES.index(n) < i for n in fmt.needs), fmt.name
    with pytest.raises(ConfigError, match="unknown format"):
        by_name("gif")


@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_names_follow_artifact_paths(fmt, tmp_path):
    paths = ArtifactPaths(tmp_path / "student.v2")  # a dotted name must survive: no .v1/.v2 overwrites
    final = paths.artifact(fmt.suffix)
    assert final.name == "student.v2" + fmt.suffix and final.parent == tmp_path
    assert for_artifact(final) is fmt
    failed = paths.failed(fmt.suffix)
    assert failed.parent == tmp_path and failed.suffix == final.suffix and failed != final
    assert failed.name.startswith("student.v2") and ".failed." in failed.name
    assert contract_path(final).name.startswith("student.v2") and contract_path(final).name.endswith(
        ".contract.json"
    )
    assert report_path(final, "parity").name == final.name + ".parity.json"


def test_dotted_output_keeps_its_name(tiny_student_ckpt, tiny_onnx, tmp_path):
    """The bug ArtifactPaths fixes: ``--output x/student.v2`` wrote ``x/student.onnx`` beside ``student.v2.*``
    (and a ``student.v1`` export beside it would have overwritten it)."""
    pytest.importorskip("onnxruntime")
    from pbrforge.export.converter import export_artifacts

    result = export_artifacts(tiny_student_ckpt, tmp_path / "student.v2", ("onnx",))
    assert not result.failures
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "student.v2.onnx",
        "student.v2.ort",
        "student.v2.contract.json",
        "student.v2.testvectors",
    } <= names
    assert not {"student.onnx", "student.ort", "student.contract.json"} & names


def _job(ckpt, artifact, fmt, data=None, perturb=False, gate=None):
    """The job an export of ``fmt`` would run; with ``perturb`` every conv weight of the model is 2 % off,
    so an artifact built from the true model must fail its gate against it."""
    from pbrforge.export.converter import prepare

    quantize = QUANTIZED.get(fmt.name)
    options = ExportOptions(
        families=(fmt.family,),
        nbits=6 if fmt.name == "coreml" else None,  # as tiny_coreml was exported: its weights are read back
        gate=gate,
        palettized_gate=gate,
        quantize=quantize,
    )
    paths = ArtifactPaths(artifact.with_name(artifact.name[: -len(fmt.suffix)]))
    job = prepare(ckpt, paths, options, data=data if quantize else None)
    if perturb:
        with torch.no_grad():
            for model in (job.wrapper, job.folded):
                for m in model.modules():
                    if isinstance(m, torch.nn.Conv2d):
                        m.weight.mul_(PERTURB)
    return job


def _artifact(request, fmt):
    if fmt.name not in EXPORTED_BY:
        pytest.skip(f"{fmt.name}: {BUILT_ELSEWHERE.get(fmt.name) or NOT_RUNNABLE_HERE[fmt.name]}")
    base = request.getfixturevalue(EXPORTED_BY[fmt.name])
    return base.with_name(base.name[: -len(for_artifact(base).suffix)] + fmt.suffix)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_gate_passes_the_true_model_and_fails_perturbed_weights(fmt, request, tiny_student_ckpt, tiny_data):
    """A render gate set just below what the artifact reaches against its own model (fp32 formats also keep
    their per-value gate) passes it, and fails it against a model whose weights are 2 % off."""
    artifact = _artifact(request, fmt)
    measured = fmt.check(
        _job(tiny_student_ckpt, artifact, fmt, tiny_data, gate=RELAXED), artifact, Built(0.0)
    )
    reached = min(c.render["psnr_db_min"] for c in measured.comparisons if c.render is not None)
    gate = RenderGate(reached - MARGIN_DB, None)
    good = fmt.check(_job(tiny_student_ckpt, artifact, fmt, tiny_data, gate=gate), artifact, Built(0.0))
    assert good.passed is True, good.failure
    job = _job(tiny_student_ckpt, artifact, fmt, tiny_data, perturb=True, gate=gate)
    bad = fmt.check(job, artifact, Built(0.0))
    assert bad.passed is False and "failed" in bad.failure, bad.failure


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_a_failed_artifact_never_replaces_the_good_one(fmt, request, tiny_student_ckpt, tiny_data, tmp_path):
    artifact = _artifact(request, fmt)
    good = tmp_path / artifact.name
    (shutil.copytree if artifact.is_dir() else shutil.copy)(artifact, good)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    job = _job(
        tiny_student_ckpt, good, fmt, tiny_data, perturb=True, gate=RenderGate(200.0, 0.0)
    )  # unreachable

    def rebuild(job, staged):  # the good artifact again, judged against a model it was not built from
        (shutil.copytree if artifact.is_dir() else shutil.copy)(artifact, staged)
        return Built(1.0)

    result = ExportResult()
    row = run_step(job, dataclasses.replace(fmt, build=rebuild, needs=()), result)
    assert row.status == "FAILED" and result.failures == [row.detail]
    failed = job.paths.failed(fmt.suffix)
    assert row.path == str(failed) and failed.exists()
    assert json.loads(report_path(failed, "parity").read_text())["passed"] is False
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert not [n for n in after if ".staged-" in n]
    assert set(before) <= set(after)  # the good artifact is still there, untouched
    if not artifact.is_dir():
        assert good.read_bytes() == artifact.read_bytes()


@pytest.mark.parametrize("fmt", [by_name(n) for n in NOT_RUNNABLE_HERE], ids=list(NOT_RUNNABLE_HERE))
def test_what_cannot_run_here_is_never_ok(fmt, tmp_path):
    """An artifact with no check is kept as unverified, never as ok; a missing tool is a skipped row."""

    def build(job, staged):
        staged.write_bytes(b"built")
        return Built(1.0, note="(unverified: not runnable here)")

    job = dataclasses.make_dataclass("Job", ["paths", "options"])(
        ArtifactPaths(tmp_path / "s"), ExportOptions(families=FAMILIES)
    )
    result = ExportResult()
    row = run_step(job, dataclasses.replace(fmt, build=build, available=lambda: None, needs=()), result)
    assert row.status == "unverified" and row.parity is None and "unverified" in row.detail

    def missing():
        raise UnavailableError("the tool is not installed")

    row = run_step(job, dataclasses.replace(fmt, available=missing, needs=()), result)
    assert row.status == "skipped" and "not installed" in row.detail


SELF_CHECKED = [f for f in FORMATS if f.name in EXPORTED_BY and f.backend != "coreml"]  # Core ML: macOS only


@pytest.mark.slow
@pytest.mark.parametrize("fmt", SELF_CHECKED, ids=[f.name for f in SELF_CHECKED])
def test_self_check_passes_and_fails_as_it_should(fmt, request, tmp_path):
    from pbrforge.deploy import DeployContract
    from pbrforge.runtime.inference import self_check

    artifact = _artifact(request, fmt)
    assert self_check(artifact)["passed"] is True
    bundle = tmp_path / "bundle"
    shutil.copytree(artifact.parent, bundle)
    moved = bundle / artifact.name
    vectors = bundle / DeployContract.load(contract_path(moved)).test_vectors
    expected = load_file(str(vectors / EXPECTED))
    expected["albedo"] = np.clip(expected["albedo"] + 0.2, 0, 1).astype(np.float32)
    save_file(expected, str(vectors / EXPECTED))
    with pytest.raises(ParityError, match="albedo"):
        self_check(moved)
