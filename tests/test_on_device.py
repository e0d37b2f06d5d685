"""On-device runtimes run here: ExecuTorch programs, and the self-check vectors any runtime checks itself with."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import QAT_STEPS, ROOT
from safetensors.numpy import load_file

from pbrforge.artifacts import contract_path
from pbrforge.cli import main as cli
from pbrforge.deploy import OUTPUT_NAMES, DeployContract
from pbrforge.export.test_vectors import EXPECTED, TOLERANCES


def _run(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def _copy_artifact(artifact, dest):
    """The artifact, its contract and its vectors in another folder (as an app bundle would hold them)."""
    dest.mkdir()
    contract = DeployContract.load(contract_path(artifact))
    shutil.copy(contract_path(artifact), dest / contract_path(artifact).name)
    shutil.copytree(artifact.parent / contract.test_vectors, dest / contract.test_vectors)
    if artifact.is_dir():
        shutil.copytree(artifact, dest / artifact.name)
    else:
        shutil.copy(artifact, dest / artifact.name)
    return dest / artifact.name


def test_pte_is_delegated_gated_and_listed(tiny_pte):
    parity = json.loads(tiny_pte.with_name(tiny_pte.name + ".parity.json").read_text())
    assert parity["backend"] == "executorch xnnpack" and parity["passed"] is True
    assert all(r["max_abs"] <= 1e-4 for r in parity["outputs"].values())
    delegation = parity["delegation"]
    assert delegation["delegate"] == "xnnpack" and delegation["delegated_subgraphs"] >= 1
    assert delegation["delegated_nodes"] > delegation["non_delegated_nodes"]
    # replicate padding and the view max go to XNNPACK as slices, cat and maximum (xnnpack_friendly)
    assert not {"aten_index_tensor", "aten_amax_default"} & set(delegation["non_delegated_ops"]), delegation
    contract = DeployContract.load(contract_path(tiny_pte))
    assert contract.test_vectors == "student.testvectors"
    meta = json.loads((tiny_pte.parent / contract.test_vectors / TOLERANCES).read_text())
    assert meta["artifacts"]["student.pte"]["tensor"] == {"figure": "max_abs", "limit": 1e-4}
    expected = load_file(str(tiny_pte.parent / contract.test_vectors / EXPECTED))
    assert [expected[n].shape[0] for n in OUTPUT_NAMES] == [2, 2, 2, 2]
    assert "student.coreml.pte" not in meta["artifacts"]  # never run here, so no tolerance


def test_coreml_delegated_pte_is_built_and_unverified(tiny_pte_export):
    pte, result = tiny_pte_export
    row = next(r for r in result.rows if r.format == "executorch-coreml")
    coreml = pte.with_name("student.coreml.pte")
    assert row.status == "unverified" and row.path == str(coreml) and "unverified" in row.detail, (
        result.table()
    )
    delegation = json.loads(coreml.with_name(coreml.name + ".delegation.json").read_text())
    assert delegation["delegate"] == "coreml" and delegation["delegated_nodes"] > 0
    r = _run(coreml, "--self-check")  # this runtime has no Core ML delegate: one sentence, exit 2
    assert r.exit_code == 2 and "runs only on Apple devices" in r.output, r.output


def test_pte_runs_with_reference(tiny_pte, tiny_student_ckpt, tiny_data, tmp_path):
    views = tiny_data / "input" / "clean" / "sample_0002"
    r = _run(
        tiny_pte,
        "--input",
        views,
        "--align",
        "none",
        "--output",
        tmp_path / "out",
        "--reference",
        tiny_student_ckpt,
        "--runs",
        3,
    )
    assert r.exit_code == 0, r.output
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert parity["backend"] == "executorch" and parity["passed"] is True
    latency = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert {"torch eager", "executorch"} <= set(latency["backends"])


@pytest.mark.parametrize("which", ["tiny_onnx", "tiny_pte"])
def test_self_check_passes_without_checkpoint_or_photos(which, request, tmp_path):
    artifact = _copy_artifact(request.getfixturevalue(which), tmp_path / "bundle")
    r = _run(artifact, "--self-check")
    assert r.exit_code == 0, r.output
    assert "self-check passed" in r.output


def test_ort_is_gated_checked_for_mobile_and_self_checks(tiny_onnx, tmp_path):
    ort = tiny_onnx.with_suffix(".ort")
    parity = json.loads(ort.with_name(ort.name + ".parity.json").read_text())
    assert parity["passed"] is True and all(r["max_abs"] <= 1e-4 for r in parity["outputs"].values())
    usability = parity["mobile_usability"]
    for provider in ("NNAPI", "CoreML MLProgram"):
        p = usability["providers"][provider]
        # the mobile rewrite's goal: one NPU partition holding every node, so no NPU-CPU copies per run
        assert p["partition_sizes"] == [p["nodes"]] and p["nodes_handled"] == p["nodes"] > 100, p
        assert p["verdict"] == "YES" and p["unsupported_ops"] == [] and p["nodes_with_dynamic_input"] == 0
    assert {"HardSwish", "ReduceMax", "ReduceL2", "Pad"} <= set(parity["mobile_rewrites"])
    deployment = json.loads(tiny_onnx.with_name("student.deployment.json").read_text())
    assert deployment["onnxruntime_mobile"] == usability
    r = _run(_copy_artifact(ort, tmp_path / "bundle"), "--self-check")
    assert r.exit_code == 0 and "self-check passed" in r.output, r.output
    (tmp_path / "bundle" / "student.ort").write_bytes(b"not a model")
    r = _run(tmp_path / "bundle" / "student.ort", "--self-check")
    assert r.exit_code == 2 and "is not an ONNX model that ONNX Runtime can load" in r.output, r.output


def _shift_output(model_path, name, by, dest):
    """A perturbed artifact: ``by`` added to one output only, after the model's last node."""
    model = onnx.load(str(model_path))
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if o == name else o for o in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(by, np.float32), f"{name}_shift"))
    model.graph.node.append(onnx.helper.make_node("Add", [f"{name}_raw", f"{name}_shift"], [name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))


@pytest.mark.parametrize("name", ["albedo", "metallic"])
def test_self_check_fails_naming_the_perturbed_output(name, tiny_onnx, tmp_path):
    artifact = _copy_artifact(tiny_onnx, tmp_path / "bundle")
    _shift_output(tiny_onnx, name, 0.05, artifact)
    r = _run(artifact, "--self-check")
    assert r.exit_code == 2, r.output
    assert f"self-check failed for {artifact.name}" in r.output and f"worst output {name}" in r.output


def test_self_check_fails_on_nan(tiny_onnx, tmp_path):
    artifact = _copy_artifact(tiny_onnx, tmp_path / "bundle")
    _shift_output(tiny_onnx, "roughness", float("nan"), artifact)
    r = _run(artifact, "--self-check")
    assert r.exit_code == 2 and "output roughness holds NaN" in r.output, r.output


def test_self_check_hostile_vectors(tiny_onnx, tmp_path):
    artifact = _copy_artifact(tiny_onnx, tmp_path / "bundle")
    vectors = artifact.parent / "student.testvectors"
    meta = json.loads((vectors / TOLERANCES).read_text())
    cases = {
        "outside its folder": {**meta, "inputs": [["../../etc/passwd"] * 3]},
        "is not a pbrforge self-check file": {**meta, "version": 99},
        "has no tolerance for student.onnx": {**meta, "artifacts": {}},
        "judges nothing": {
            **meta,
            "artifacts": {
                "student.onnx": {"tensor": None, "render": {"psnr_db_min": None, "normal_deg_p99": None}}
            },
        },
    }
    for sentence, broken in cases.items():
        (vectors / TOLERANCES).write_text(json.dumps(broken))
        r = _run(artifact, "--self-check")
        assert r.exit_code == 2 and sentence in r.output and "Traceback" not in r.output, (sentence, r.output)
    (vectors / TOLERANCES).write_text(json.dumps(meta))
    (vectors / EXPECTED).write_bytes(b"not safetensors")
    r = _run(artifact, "--self-check")
    assert r.exit_code == 2 and "not a readable safetensors file" in r.output, r.output
    shutil.rmtree(vectors)
    r = _run(artifact, "--self-check")
    assert r.exit_code == 2 and "missing self-check vectors" in r.output, r.output


def test_self_check_refuses_other_options(tiny_onnx, tmp_path):
    r = _run(tiny_onnx, "--self-check", "--input", tmp_path)
    assert r.exit_code == 2 and "--self-check needs no --input" in r.output, r.output
    r = _run(tiny_onnx)
    assert r.exit_code == 2 and "Missing option '--input'" in r.output, r.output


def test_qat_int8_pte_passes_the_default_render_gate(tiny_pte_export):
    pte, result = tiny_pte_export
    out = pte.with_suffix("")
    rows = {r.format: r for r in result.rows}
    assert rows["executorch"].status == "ok" and not result.failures, result.table()
    int8 = out.with_name("student.int8.pte")
    assert rows["executorch-int8"].status == "ok", result.table()
    parity = json.loads(int8.with_name(int8.name + ".parity.json").read_text())
    assert parity["calibration_samples"] >= 1
    # quantization-aware fine-tuned, and held to the default render gate on views it never saw
    assert parity["passed"] is True and parity["render"]["psnr_db_min"] >= 40.0, parity["render"]
    assert parity["render"]["normal_deg_p99"] <= 2.0, parity["render"]
    recipe = json.loads(int8.with_name(int8.name + ".recipe.json").read_text())
    assert recipe["qat"]["steps"] == QAT_STEPS and recipe["qat"]["training_samples"] >= 1
    assert recipe["budget_reached"] and recipe["points"] > 0
    # every layer is either int8 or kept float with its reason
    assert len(recipe["int8"]) + len(recipe["float"]) == recipe["points"]
    assert all(layer["why"] for layer in recipe["float"])
    # the view fusion's own ops stay fp32 (quantized, ExecuTorch 1.5.1's XNNPACK executor cannot run them),
    # kept by node: its convolutions are int8, so nearly every weight is (by module type, 38% stayed float)
    assert "model.fusion" in parity["delegation"]["kept_float"]
    weights = parity["delegation"]["weights"]
    assert weights["int8_weights"] > 0 and weights["float_share"] < 0.05, weights
    # int8 weights are a quarter of the fp32 bytes
    assert int8.stat().st_size < 0.5 * out.with_suffix(".pte").stat().st_size
    r = _run(int8, "--self-check")  # its own tolerance: what it reached at export, less a margin
    assert r.exit_code == 0, r.output


SWIFT = ROOT / "mobile_app" / "ios" / "PBRForge"


def _swift_keys(struct: str) -> set[str]:
    """The JSON keys a Swift Codable struct reads: the raw values of its CodingKeys."""
    source = "\n".join(p.read_text() for p in SWIFT.glob("*.swift"))
    body = re.search(
        rf"struct {struct}\b.*?enum CodingKeys: String, CodingKey \{{(.*?)\n\s*\}}", source, re.S
    )
    assert body, f"no CodingKeys in {struct}"
    keys = set(re.findall(r'=\s*"([a-z_]+)"', body.group(1)))
    cases = re.findall(r"\bcase\b([^\n]*)", body.group(1))
    assert sum(len(c.split(",")) for c in cases) == len(keys), "every key is spelled out as a raw value"
    return keys


def test_swift_reads_only_fields_the_exporter_writes(tiny_onnx):
    from dataclasses import asdict

    contract = DeployContract.load(contract_path(tiny_onnx))
    assert _swift_keys("PBRContract") <= set(asdict(contract))
    vectors = tiny_onnx.parent / contract.test_vectors
    meta = json.loads((vectors / TOLERANCES).read_text())
    assert _swift_keys("PBRTestVectors") <= set(meta)
    tolerance = meta["artifacts"][tiny_onnx.name]
    assert _swift_keys("PBRTolerance") <= set(tolerance)
    assert _swift_keys("PBRTensorTolerance") <= set(tolerance["tensor"])
    assert meta["expected"] == EXPECTED and meta["output_names"] == list(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:  # what SafeTensors.floats accepts: float32, (N, C, S, S)
        header_len = int.from_bytes((vectors / EXPECTED).read_bytes()[:8], "little")
        header = json.loads((vectors / EXPECTED).read_bytes()[8 : 8 + header_len])
        assert header[name]["dtype"] == "F32" and header[name]["shape"][0] == len(meta["inputs"])
    from pbrforge.export import coreml_export

    key = re.search(r'metadataKey = "([^"]+)"', (SWIFT / "PBRContract.swift").read_text()).group(1)
    assert f'user_defined_metadata["{key}"]' in Path(coreml_export.__file__).read_text()


class _PadsAndFusesViews(torch.nn.Module):
    """Replicate padding and a max and mean over three views: the ops XNNPACK would leave outside."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 5, 3, padding=1, padding_mode="replicate")

    def forward(self, x):
        v = torch.nn.functional.pad(x, (2, 1, 0, 3), mode="replicate").unflatten(0, (1, 3))  # (1, V, C, H, W)
        return self.conv(x), v.amax(1), v.mean(1, keepdim=True), x.mean((2, 3), keepdim=True)


def test_xnnpack_rewrite_is_exact_and_leaves_no_gather_or_view_reduction():
    from pbrforge.export.executorch_export import xnnpack_friendly

    model, x = _PadsAndFusesViews().eval(), torch.randn(3, 4, 6, 7)
    before = torch.export.export(model, (x,))
    after = xnnpack_friendly(before)
    ops = {str(n.target) for n in after.graph.nodes if n.op == "call_function"}
    assert not {o for o in ops if "pad" in o or "index" in o or "amax" in o}, ops
    assert sum(str(n.target) == "aten.mean.dim" for n in after.graph.nodes) == 1  # the spatial mean stays
    with torch.no_grad():
        for want, got in zip(model(x), after.module()(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
