import importlib.util
import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from pbrforge.artifacts import contract_path
from pbrforge.cli import main as cli
from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract
from pbrforge.export.converter import export_artifacts
from pbrforge.export.parity import psnr
from pbrforge.export.wrappers import example_inputs, fold_batchnorm
from pbrforge.models import model_from_checkpoint

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_onnx_names_shapes_and_gate(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert dims == [[1, 3, 32, 32], [1, 1, 32, 32], [1, 1, 32, 32], [1, 3, 32, 32]]
    parity = json.loads(tiny_onnx.with_name(tiny_onnx.name + ".parity.json").read_text())
    assert parity["passed"] and all(r["max_abs"] <= 1e-4 for r in parity["outputs"].values())
    contract = DeployContract.load(contract_path(tiny_onnx))
    assert contract.image_size == 32 and contract.output_names == list(OUTPUT_NAMES)


def test_fold_batchnorm_is_exact_and_skips_shared_convs(tiny_student_ckpt):
    model, _, _ = model_from_checkpoint(tiny_student_ckpt)
    from pbrforge.export.wrappers import PBRExportWrapper

    wrapper = PBRExportWrapper(model).eval()
    norm = wrapper.model.fusion.blocks[0].norm  # reads a conv output that also feeds a residual
    norm.running_mean.fill_(0.5)
    norm.running_var.fill_(4.0)
    example = example_inputs(32)
    folded = fold_batchnorm(wrapper, example)
    with torch.no_grad():
        for a, b in zip(wrapper(*example), folded(*example), strict=True):
            assert psnr(a.numpy(), b.numpy()) > 70
    identity = [
        m
        for m in folded.modules()
        if isinstance(m, torch.nn.BatchNorm2d) and float(m.running_mean.abs().sum()) == 0
    ]
    assert len(identity) > 10  # most BNs were folded away
    # folding that BN into the conv would change the residual too, so it must have been left alone
    assert float(folded.model.fusion.blocks[0].norm.running_mean.mean()) == pytest.approx(0.5)


@pytest.mark.slow
def test_coreml_fp16_spec_and_palettization(tiny_coreml, tiny_student_ckpt):
    ct = pytest.importorskip("coremltools")
    pkg = out = tiny_coreml
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == list(INPUT_NAMES)
    assert all(
        i.type.WhichOneof("Type") == "imageType" and i.type.imageType.width == 32
        for i in spec.description.input
    )
    assert [o.name for o in spec.description.output] == list(OUTPUT_NAMES)
    meta = dict(spec.description.metadata.userDefined)
    assert json.loads(meta["pbrforge.contract"])["output_names"] == list(OUTPUT_NAMES)
    ane = json.loads(out.with_suffix(".ane.json").read_text())
    assert ane["op_counts"].get("constexpr_lut_to_dense", 0) > 0  # LUT ops after palettization
    assert ane["flag_counts"]["fp32_compute"] == 0 and ane["flag_counts"]["kernel_over_13"] == 0
    from pbrforge.export.ane_report import dtype_name
    from pbrforge.export.coreml_export import load_program

    program, _ = load_program(pkg)
    ops = program.functions["main"].operations
    assert {dtype_name(o) for op in ops if op.op_type == "conv" for o in op.outputs} == {"fp16"}
    # the decoder's replicate padding survives conversion as MIL pad ops in that mode, one per 3x3 conv
    pads = [op.inputs["mode"].val for op in ops if op.op_type == "pad"]
    model, _, _ = model_from_checkpoint(tiny_student_ckpt)
    replicated = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.padding_mode == "replicate"
    ]
    assert len(pads) == len(replicated) > 0 and set(pads) == {"replicate"}
    parity = json.loads(pkg.with_name(pkg.name + ".parity.json").read_text())
    assert (
        parity["passed"] and parity["readback"]["matched_to_pytorch"] == parity["readback"]["lut_weights"] > 0
    )
    labels = [c["label"] for c in parity["comparisons"]]
    assert labels == ["Core ML FP16 (emulated)", "Core ML palettized (read back)"]
    for c in parity["comparisons"]:
        assert c["gate"] == "psnr_db" and all(r["psnr_db"] >= 35 for r in c["outputs"].values())


def test_four_bit_needs_ios18(tiny_student_ckpt, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "export",
            str(tiny_student_ckpt),
            "--output",
            str(tmp_path / "s"),
            "--format",
            "coreml",
            "--palettization",
            "--nbits",
            "4",
        ],
    )
    assert r.exit_code == 2 and "need iOS18" in r.output and not (tmp_path / "s.mlpackage").exists()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_absence_is_one_sentence(tiny_student_ckpt, tiny_onnx, tmp_path):
    out = tiny_onnx.with_suffix("")
    r = CliRunner().invoke(
        cli, ["export", str(tiny_student_ckpt), "--output", str(out), "--format", "tensorrt"]
    )
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: TensorRT is not installed")
    assert not out.with_suffix(".plan").exists()


def test_bad_checkpoint_is_one_sentence(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    r = CliRunner().invoke(cli, ["export", str(bad), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a pbrforge checkpoint" in r.output
    bad.write_bytes(b"garbage")
    r = CliRunner().invoke(cli, ["export", str(bad), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a torch.save file of tensors and plain data" in r.output


@pytest.mark.slow
def test_ane_report_flags_fp32(tiny_student_ckpt, tmp_path):
    pytest.importorskip("coremltools")
    out = tmp_path / "fp32"
    result = export_artifacts(tiny_student_ckpt, out, ("coreml",), fp16=False)
    assert not result.failures
    ane = json.loads(out.with_suffix(".ane.json").read_text())
    assert ane["flag_counts"]["fp32_compute"] > 10
