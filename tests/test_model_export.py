"""Any model through the gated deploy path (issue #26): the InvISP example both ways, a failing gate, bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pbrforge.cli import main as cli
from pbrforge.errors import ConfigError, DataError
from pbrforge.modelspec import load_spec

ROOT = Path(__file__).resolve().parents[1]
INVISP = f"{ROOT / 'examples' / 'invisp' / 'model.py'}:spec"
EDM = f"{ROOT / 'examples' / 'edm_denoiser' / 'model.py'}:spec"
CODEC = f"{ROOT / 'examples' / 'hyperprior_codec' / 'model.py'}:spec"

# a graph whose Python state moves between calls: eager and the exported graph disagree, so the gate must fail
DRIFTING = """
import torch
from pbrforge.modelspec import GraphSpec, ModelSpec, TensorSpec

class Drifting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls

def build():
    image = TensorSpec("image", (1, 3, 16, 16), valid=(0.0, 1.0))
    return ModelSpec("drifting", {"main": GraphSpec(Drifting(), (image,), (TensorSpec("out", (1, 3, 16, 16)),))})
"""


@pytest.fixture(scope="module")
def invisp(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("executorch")
    from pbrforge.export.model_export import export_model

    out = tmp_path_factory.mktemp("invisp") / "invisp"
    return export_model(load_spec(INVISP), out, ("onnx", "executorch")), out


def test_invisp_both_directions_pass_their_gates_in_every_runtime(invisp):
    result, out = invisp
    assert result.failures == []
    assert {(a.graph, a.format) for a in result.artifacts} == {
        (g, f) for g in ("forward", "reverse") for f in ("onnx", "executorch")
    }
    for a in result.artifacts:
        assert a.status == "ok" and Path(a.path).exists(), a
        (verdict,) = a.verdicts.values()
        assert verdict.metric == "max_abs" and verdict.passed and verdict.figure < 1e-4, verdict
    for ext in (".onnx", ".pte"):
        assert (out.parent / f"invisp.forward{ext}").is_file() and (
            out.parent / f"invisp.reverse{ext}"
        ).is_file()


def test_invisp_round_trips_through_the_artifacts(invisp):
    result, _ = invisp
    trips = {p["format"]: p for p in result.pipelines}
    assert set(trips) == {"onnx", "executorch"}
    for trip in trips.values():
        assert trip["against"] == "its own target" and trip["verdict"]["passed"]
        assert trip["verdict"]["figure"] > 100, trip  # fp32 forward then reverse: rounding only


def test_the_lu_weights_are_folded_before_export_and_the_manifest_says_so(invisp):
    result, _ = invisp
    manifest = json.loads(result.manifest.read_text())
    assert manifest["passed"] is True and set(manifest["graphs"]) == {"forward", "reverse"}
    captured, fold, rewrite = manifest["graphs"]["reverse"]["passes"]
    assert fold["pass"] == "fold parameter-only subgraphs" and fold["kept"]
    assert fold["changed"]["aten.inverse.default"] == 4 and fold["max_abs_vs_eager"] < 1e-6
    assert fold["ops_after"] < captured["ops"]
    assert rewrite["pass"] == "rewrite converter gaps" and rewrite["changed"] == {} and not rewrite["kept"]
    raw = manifest["graphs"]["forward"]["inputs"][0]
    assert raw["name"] == "raw" and raw["valid"] == [0.0, 1.0] and raw["gate"] == "max_abs"


def test_the_export_checks_itself_on_its_test_vectors_with_no_pytorch_model(invisp, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    result, out = invisp
    manifest = out.parent / "invisp.model.json"
    r = CliRunner().invoke(cli, ["run", str(manifest), "--self-check"])
    assert r.exit_code == 0, r.output
    lines = [
        line for line in r.output.splitlines() if line.startswith(("forward ", "reverse "))
    ]  # not C++ logs
    assert len(lines) == 4 and all(": ok on 2 cases" in line for line in lines), r.output
    assert (
        "invisp.pte method forward: ok on 2 cases" in r.output and "invisp.pte method reverse: ok" in r.output
    )
    # a copy moved elsewhere still finds its artifacts; one expected value off by 1e-3 fails its gate
    moved = tmp_path / "moved"
    shutil.copytree(out.parent, moved)
    vectors = moved / "invisp.testvectors" / "reverse.safetensors"
    tensors = load_file(str(vectors))
    tensors["1.out.raw"][0, 0, 0, 0] += 1e-3
    save_file(tensors, str(vectors))
    r = CliRunner().invoke(cli, ["run", str(moved / "invisp.model.json"), "--self-check"])
    assert r.exit_code == 2 and "invisp.reverse.onnx case 1: raw failed its gate: max_abs" in r.output, (
        r.output
    )
    r = CliRunner().invoke(cli, ["run", str(manifest)])
    assert r.exit_code == 2 and "Missing option '--input' (or give --self-check)" in r.output, r.output


def _png16(path: Path) -> np.ndarray:
    import png

    w, h, rows, _ = png.Reader(filename=str(path)).asDirect()
    return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, 3) / 65535.0


def test_run_feeds_a_graph_files_read_as_its_spec_says_and_the_round_trip_closes(invisp, tmp_path):
    from PIL import Image
    from safetensors.torch import load_file

    from pbrforge.export.model_export import artifact_call

    _, out = invisp
    manifest = out.parent / "invisp.model.json"
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(photo).save(tmp_path / "in" / "raw.png")
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(manifest),
            "--graph",
            "forward",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "fwd"),
        ],
    )
    assert r.exit_code == 0 and "forward (onnx) ran in" in r.output, r.output
    raw = torch.from_numpy(photo / 255.0).permute(2, 0, 1)[None].float()
    spec = load_spec(INVISP)
    (expected,) = artifact_call("onnx", out.parent / "invisp.forward.onnx", spec.graphs["forward"].inputs)(
        raw
    )
    srgb = load_file(str(tmp_path / "fwd" / "outputs.safetensors"))["srgb"]
    assert torch.equal(srgb, expected)  # the PNG's 0..255 became the input's 0..1 encoding
    report = json.loads((tmp_path / "fwd" / "run.json").read_text())
    assert report["graph"] == "forward" and report["format"] == "onnx" and report["outputs"]["srgb"]["png"]
    shown = _png16(tmp_path / "fwd" / "srgb.png")
    assert np.abs(shown - srgb[0].permute(1, 2, 0).clamp(0, 1).numpy()).max() < 1 / 65535
    # the forward's tensor back through the reverse, in ExecuTorch: the photo again, to rounding
    (tmp_path / "back").mkdir()
    (tmp_path / "fwd" / "outputs.safetensors").rename(tmp_path / "back" / "srgb.safetensors")
    r = CliRunner().invoke(
        cli,
        ["run", str(manifest), "--graph", "reverse", "--backend", "executorch"]
        + ["--input", str(tmp_path / "back"), "--output", str(tmp_path / "rev")],
    )
    assert r.exit_code == 0 and "reverse (executorch) ran in" in r.output, r.output
    again = load_file(str(tmp_path / "rev" / "outputs.safetensors"))["raw"]
    psnr = 10 * torch.log10(1 / ((again - raw) ** 2).mean())
    assert psnr > 100, psnr


@pytest.mark.parametrize(
    ("files", "args", "says"),
    [
        ({"raw.png": (64, 64)}, [], "holds graphs forward, reverse: choose one with --graph"),
        (
            {"raw.png": (64, 64)},
            ["--graph", "sideways"],
            "has no graph 'sideways'; it holds forward, reverse",
        ),
        ({}, ["--graph", "forward"], "has no file for input 'raw'"),
        (
            {"raw.png": (64, 64), "raw.json": 0.5},
            ["--graph", "forward"],
            "has more than one file for input 'raw'",
        ),
        (
            {"raw.png": (48, 64)},
            ["--graph", "forward"],
            "must have shape (1, 3, 64, 64) (the size it was exported at)",
        ),
        ({"raw.json": 3.0}, ["--graph", "forward"], "outside the 0..1 the model is defined on"),
        ({"raw.json": "NaN"}, ["--graph", "forward"], "holds NaN or infinite values"),
        (
            {"raw.safetensors": b"not a safetensors file"},
            ["--graph", "forward"],
            "not a readable safetensors file",
        ),
        (
            {"raw.png": (64, 64)},
            ["--graph", "forward", "--backend", "coreml"],
            "--backend coreml cannot run a --model export here",
        ),
        (
            {"raw.png": (64, 64)},
            ["--graph", "forward", "--final-size", "128"],
            "--final-size is about PBR artifacts",
        ),
    ],
)
def test_run_refuses_bad_inputs_in_one_sentence_before_writing(invisp, tmp_path, files, args, says):
    from PIL import Image

    _, out = invisp
    folder = tmp_path / "in"
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, tuple):
            Image.new("RGB", content[::-1], (10, 20, 30)).save(folder / name)
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(str(content))
    result = tmp_path / "result"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(out.parent / "invisp.model.json"),
            "--input",
            str(folder),
            "--output",
            str(result),
            *args,
        ],
    )
    assert r.exit_code == 2, r.output
    assert says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not result.exists()


def test_a_multi_graph_spec_ships_as_one_multifunction_core_ml_package(tmp_path):
    pytest.importorskip("coremltools")
    from pbrforge.export.model_export import export_model

    result = export_model(load_spec(INVISP), tmp_path / "invisp", ("coreml",))
    assert result.failures == []
    (bundle,) = result.bundles
    assert bundle["status"] == "not run" and bundle["methods"] == ["forward", "reverse"]
    assert "functions and their tensors read back" in bundle["detail"]
    # the merge stores equal weights once: one package is well under the two single-graph ones
    assert bundle["bytes"] < 0.7 * bundle["single_packages_bytes"], bundle
    import coremltools as ct

    read = ct.models.MLModel(str(tmp_path / "invisp.mlpackage"), skip_model_load=True).get_spec()
    assert read.specificationVersion >= 9 and read.description.defaultFunctionName == "forward"
    assert sorted(read.mlProgram.functions) == ["forward", "reverse"]


def test_an_artifact_refuses_input_outside_the_range_the_model_is_defined_on(invisp):
    from pbrforge.export.model_export import artifact_call

    result, out = invisp
    spec = load_spec(INVISP)
    run = artifact_call("onnx", out.parent / "invisp.forward.onnx", spec.graphs["forward"].inputs)
    assert run(torch.full((1, 3, 64, 64), 0.5))[0].shape == (1, 3, 64, 64)
    with pytest.raises(DataError, match="outside the 0..1 the model is defined on"):
        run(torch.full((1, 3, 64, 64), 3.0))
    with pytest.raises(DataError, match="NaN"):
        run(torch.full((1, 3, 64, 64), float("nan")))


def test_the_edm_step_ships_and_its_sampler_holds_through_the_artifact(tmp_path):
    pytest.importorskip("onnxruntime")
    from pbrforge.export.model_export import artifact_call, export_model

    spec = load_spec(EDM)
    result = export_model(spec, tmp_path / "edm", ("onnx",))
    assert result.failures == []
    (restore,) = result.pipelines
    # 15 denoiser calls from sigma 80 down, each in ONNX Runtime: the final image as eager's, to rounding
    assert restore["against"] == "eager" and restore["verdict"]["figure"] > 80, restore
    step = artifact_call("onnx", tmp_path / "edm.denoise.onnx", spec.graphs["denoise"].inputs)
    x, _, dark = spec.graphs["denoise"].example_inputs(0)
    with pytest.raises(DataError, match="sigma: values span 100..100, outside the 0.002..80"):
        step(x, torch.tensor([100.0]), dark)  # past the schedule the model was trained on
    # the sampler's every call, as eager PyTorch made it, ships in the test vectors and replays in the artifact
    from safetensors.torch import load_file, save_file

    from pbrforge.errors import ParityError
    from pbrforge.runtime.model_check import self_check

    manifest = tmp_path / "edm.model.json"
    assert json.loads(manifest.read_text())["pipeline_traces"] == {"restore": "pipeline.restore.safetensors"}
    trace = tmp_path / "edm.testvectors" / "pipeline.restore.safetensors"
    steps = load_file(str(trace))
    sigmas = [float(steps[f"{k}.denoise.in.1"]) for k in range(15)]
    assert sigmas[0] == pytest.approx(80.0) and sigmas == sorted(sigmas, reverse=True)
    assert "pipeline restore onnx: ok on its 15 eager steps" in self_check(manifest)
    steps["14.denoise.out.0"][0, 0, 0, 0] += 0.01
    save_file(steps, str(trace))
    with pytest.raises(
        ParityError, match=r"pipeline restore \(onnx\) step 14, graph denoise: denoised failed"
    ):
        self_check(manifest)


def test_the_codec_round_trips_through_a_range_coder_with_its_coder_graphs_exact(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("executorch")
    pytest.importorskip("constriction")
    from pbrforge.export.model_export import artifact_call, export_model

    spec = load_spec(CODEC)
    result = export_model(spec, tmp_path / "codec", ("onnx", "executorch"))
    assert result.failures == []
    for a in result.artifacts:
        if a.graph in ("prior", "context"):  # their indexes pick the coder's models: exact, on the CPU
            index = a.verdicts[f"index{1 if a.graph == 'prior' else 2}"]
            assert index.metric == "exact" and index.figure == 0 and index.passed
            assert "entropy coder" in a.placement
        else:
            assert "entropy coder" not in a.placement
    for trip in result.pipelines:  # encode to bits and decode, every graph an artifact
        assert trip["verdict"]["passed"] and trip["verdict"]["figure"] > 80, trip
        figures = trip["figures"]
        assert figures["symbols_decoded_exactly"] is True and figures["bpp"] > 0
        assert figures["distinct_scale_indexes"] >= 8  # the exact gate has indexes to get wrong
    analysis = artifact_call("onnx", tmp_path / "codec.analysis.onnx", spec.graphs["analysis"].inputs)
    image, _ = spec.graphs["analysis"].example_inputs(0)
    with pytest.raises(DataError, match="rate: values span 5..5, outside the 0..4"):
        analysis(image, torch.tensor([5.0]))  # the assert CRDR had, which the exported graph lost


def test_a_graph_that_fails_its_gate_is_kept_as_failed_and_the_command_exits_2(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "drifting.py"
    model.write_text(textwrap.dedent(DRIFTING))
    out = tmp_path / "art" / "drift"
    out.parent.mkdir()
    r = CliRunner().invoke(
        cli, ["export", "--model", f"{model}:build", "--output", str(out), "--format", "onnx"]
    )
    assert r.exit_code == 2, r.output
    assert "main (onnx): FAILED: out: max_abs" in r.output.strip().splitlines()[-1]
    assert (out.parent / "drift.main.failed.onnx").is_file() and not (out.parent / "drift.main.onnx").exists()
    manifest = json.loads((out.parent / "drift.model.json").read_text())
    assert manifest["passed"] is False
    (artifact,) = manifest["graphs"]["main"]["artifacts"]
    assert artifact["status"] == "FAILED" and not artifact["verdicts"]["out"]["passed"]


# three graphs: an encoder gated in PSNR (int8 passes), a decoder held to max_abs 1e-4 (int8 cannot pass), and
# an indexer whose int32 outputs feed an entropy coder (int8 refused)
CODER = """
import torch
from torch import nn
from pbrforge.modelspec import GraphSpec, ModelSpec, TensorSpec

class Index(nn.Module):
    def forward(self, code):
        return (code.abs() * 4).round().clamp(0, 15).to(torch.int32)

def build():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encode = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        decode = nn.Sequential(nn.ConvTranspose2d(8, 3, 2, stride=2), nn.Sigmoid())
    image = TensorSpec("image", (1, 3, 32, 32), color="srgb", valid=(0.0, 1.0))
    code = TensorSpec("code", (1, 8, 16, 16), kind="latent", encoding=(-4.0, 4.0), gate="psnr:30")
    return ModelSpec("coder", {
        "encode": GraphSpec(encode, (image,), (code,)),
        "decode": GraphSpec(decode, (code,), (TensorSpec("decoded", image.shape, color="srgb"),)),
        "index": GraphSpec(Index(), (code,), (TensorSpec("idx", code.shape, dtype="int32", kind="symbols", encoding=(0.0, 15.0)),)),
    })

def loose():
    # the decoder judged by PSNR, and the round trip through every graph (the coder's index graph included)
    from dataclasses import replace
    from pbrforge.modelspec import Pipeline
    spec = build()
    decode = spec.graphs["decode"]
    decode.outputs = (replace(decode.outputs[0], gate="psnr:30"),)

    def round_trip(call):
        x = spec.graphs["encode"].inputs[0].example(seed=5)
        code = call("encode", (x,))[0]
        call("index", (code,))
        return call("decode", (code,))[0], None

    spec.pipelines = {"round": Pipeline(("encode", "index", "decode"), round_trip, gate="psnr:25")}
    return spec
"""


def test_int8_onnx_is_calibrated_upstream_first_held_to_each_gate_and_refused_for_the_coder(tmp_path):
    pytest.importorskip("onnxruntime")
    from safetensors.torch import save_file

    model = tmp_path / "coder.py"
    model.write_text(textwrap.dedent(CODER))
    samples = tmp_path / "samples"
    samples.mkdir()
    g = torch.Generator().manual_seed(1)
    for k in range(6):
        save_file({"image": torch.rand((1, 3, 32, 32), generator=g)}, str(samples / f"{k}.safetensors"))
    out = tmp_path / "art" / "coder"
    args = ["export", "--model", f"{model}:build", "--output", str(out), "--format", "onnx"]
    r = CliRunner().invoke(cli, [*args, "--quantize", "int8", "--data", str(samples)])
    assert r.exit_code == 2, r.output
    assert "decode (onnx int8): FAILED: decoded: max_abs" in r.output.strip().splitlines()[-1], r.output
    manifest = json.loads((out.parent / "coder.model.json").read_text())
    int8 = {
        name: next(a for a in about["artifacts"] if a["precision"] == "int8")
        for name, about in manifest["graphs"].items()
    }
    assert int8["encode"]["status"] == "ok" and int8["encode"]["path"] == "coder.encode.int8.onnx"
    assert int8["encode"]["verdicts"]["code"]["metric"] == "psnr"
    assert (
        int8["encode"]["detail"] == f"calibrated on 6 samples from {samples}; judged on the spec's examples"
    )
    # the decoder is calibrated on the encoder's outputs for the same samples, then fails its 1e-4 gate
    assert int8["decode"]["detail"] == (
        f"calibrated on 6 samples from {samples} (code from graph encode); judged on code from graph encode"
    )
    assert int8["decode"]["status"] == "FAILED" and (out.parent / "coder.decode.failed.int8.onnx").is_file()
    assert int8["index"]["status"] == "refused" and "entropy coder" in int8["index"]["detail"]
    assert not list(out.parent.glob("coder.index*int8*"))
    r = CliRunner().invoke(cli, [*args, "--data", str(samples)])
    assert r.exit_code == 2 and "--data calibrates --quantize: give --quantize int8 too" in r.output, r.output


def test_int8_pte_and_the_pipelines_run_through_the_int8_graphs_judged_where_each_meets_its_inputs(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("executorch")
    from pbrforge.export.model_export import export_model

    model = tmp_path / "coder.py"
    model.write_text(textwrap.dedent(CODER))
    result = export_model(
        load_spec(f"{model}:loose"), tmp_path / "c", ("onnx", "executorch"), quantize="int8"
    )
    assert result.failures == [], result.failures
    int8 = {(a.graph, a.format): a for a in result.artifacts if a.precision == "int8"}
    for fmt, ext in (("onnx", ".onnx"), ("executorch", ".pte")):
        assert int8[("encode", fmt)].status == "ok" and int8[("encode", fmt)].path.endswith(
            f"c.encode.int8{ext}"
        )
        # the decoder is judged on codes its encoder gives, as it meets them in the round trip
        assert int8[("decode", fmt)].detail.endswith("judged on code from graph encode")
        assert int8[("decode", fmt)].verdicts["decoded"].figure >= 30
        assert int8[("index", fmt)].status == "refused"
    pipes = {p["format"]: p["verdict"] for p in result.pipelines}
    assert set(pipes) == {"onnx", "executorch", "onnx int8", "executorch int8"}
    assert all(v["passed"] for v in pipes.values())
    # int8 moves the round trip, and the report says how far: below fp32's figure, above the 25 dB gate
    assert 25 <= pipes["executorch int8"]["figure"] < pipes["executorch"]["figure"]
    assert 25 <= pipes["onnx int8"]["figure"] < pipes["onnx"]["figure"]
    # self-check holds each int8 graph to the inputs it was judged on, with no PyTorch model
    from pbrforge.runtime.model_check import self_check

    lines = self_check(tmp_path / "c.model.json")
    assert "decode onnx int8: ok on 2 cases" in lines and "decode executorch int8: ok on 2 cases" in lines
    manifest = json.loads((tmp_path / "c.model.json").read_text())
    decode = {(a["format"], a["precision"]): a["vectors"] for a in manifest["graphs"]["decode"]["artifacts"]}
    assert (
        decode[("onnx", "int8")] == "decode.fed.safetensors"
        and decode[("onnx", "fp32")] == "decode.safetensors"
    )


class Gaps(torch.nn.Module):
    """Ops some converter lacks: exp2 (ExecuTorch's edge dialect), outer and diag (Core ML), a float64 detour."""

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        table = torch.outer(v, v).to(torch.float64).sum().to(torch.float32)
        # a vector's diagonal matrix, and a matrix's diagonal
        scaled = torch.diag(v * 2) * torch.diag(torch.outer(v, v + 1))
        return torch.exp2(x) + table + scaled.sum()


def test_converter_gaps_are_rewritten_into_ops_every_backend_has():
    from pbrforge.export.model_export import capture
    from pbrforge.modelspec import GraphSpec, TensorSpec

    graph = GraphSpec(
        Gaps(),
        (TensorSpec("x", (1, 3, 8, 8), valid=(-2.0, 2.0)), TensorSpec("v", (4,), kind="tensor")),
        (TensorSpec("y", (1, 3, 8, 8), encoding=(0.0, 8.0)),),
    )
    example = graph.example_inputs(0)
    program, passes = capture("gaps", graph, example)
    rewrite = passes[2]
    assert rewrite["kept"] and rewrite["max_abs_vs_eager"] < 1e-6, rewrite
    assert rewrite["changed"]["aten.exp2.default"] == 1 and rewrite["changed"]["aten.outer.default"] == 2
    assert rewrite["changed"]["aten.diag.default"] == 2
    assert rewrite["changed"]["aten.to.dtype"] == 1  # the float64 detour, now float32
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not ops & {"aten.exp2.default", "aten.outer.default", "aten.diag.default"}
    assert torch.allclose(program.module()(*example), Gaps()(*example), atol=1e-5)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "nowhere.py:spec"], "model file nowhere.py does not exist"),
        (["--model", "pbrforge.nothing_here:spec"], "cannot import 'pbrforge.nothing_here'"),
        (
            ["--model", f"{INVISP}", "--palettization"],
            "--palettization: only for pbrforge checkpoints, not for --model",
        ),
        (
            ["--model", f"{INVISP}", "--quantize", "w8a8"],
            "--model quantizes to int8 (ONNX and ExecuTorch) only, not w8a8",
        ),
        (
            ["--model", f"{INVISP}", "--quantize", "int8", "--format", "coreml"],
            "--quantize int8 with --model writes int8 ONNX and .pte: include onnx or executorch",
        ),
        (["--model", f"{INVISP}", "--format", "tensorrt"], "--model exports to onnx, executorch, coreml"),
        (["--model", f"{INVISP}", "best.pt"], "give either a CHECKPOINT or --model, not both or neither"),
        ([], "give either a CHECKPOINT or --model, not both or neither"),
    ],
)
def test_bad_model_requests_are_one_sentence_and_exit_2(tmp_path, args, says):
    out = tmp_path / "x"
    r = CliRunner().invoke(cli, ["export", *args, "--output", str(out)])
    assert r.exit_code == 2, r.output
    assert says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert list(tmp_path.iterdir()) == []  # nothing written before the inputs are validated


def _photo(path: Path, seed: int, size: tuple[int, int] = (40, 56)) -> None:
    from PIL import Image

    g = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size[1])[None, :, None] * g.uniform(0.3, 1.0, 3)
    pixels = np.clip(ramp + g.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_int8_calibrates_on_a_folder_of_photos_read_as_the_spec_reads_an_image(tmp_path):
    from pbrforge.export.model_export import calibration_sets

    spec = load_spec(INVISP)
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        _photo(photos / f"street_{k}.jpg", k)
    sets = calibration_sets(spec, photos)
    # a photo is sRGB: it feeds the reverse (sRGB -> RAW); the forward takes RAW, so it keeps the spec's examples
    assert sets["reverse"].source == f"3 samples from {photos}"
    assert sets["forward"].source == "16 of the spec's example inputs"
    first = sets["reverse"].inputs[0][0]
    assert first.shape == spec.graphs["reverse"].inputs[0].shape  # 40 x 56 scaled and centre-cropped
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0 and float(first.std()) > 0.05

    named = tmp_path / "named"
    named.mkdir()
    for k in range(2):
        _photo(named / f"s{k}.raw.png", 10 + k)  # SAMPLE.INPUT.png: feeds the input named raw
    sets = calibration_sets(spec, named)
    assert sets["forward"].source == f"2 samples from {named}"
    assert sets["reverse"].source == f"2 samples from {named} (srgb from graph forward)"

    drifting = tmp_path / "drifting.py"
    drifting.write_text(textwrap.dedent(DRIFTING))
    with pytest.raises(
        DataError, match="no input of 'drifting' takes an sRGB image: name them SAMPLE.INPUT.png"
    ):
        calibration_sets(load_spec(f"{drifting}:build"), photos)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .safetensors files and no .png/.jpg pictures"):
        calibration_sets(spec, tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        calibration_sets(spec, tmp_path / "missing")


# CRDR's pattern: tensor-value asserts guard the inputs, which no torch.export (strict or not) can capture
GUARDED = """
import torch
from pbrforge.modelspec import GraphSpec, ModelSpec, TensorSpec

class Scale(torch.nn.Module):
    def forward(self, y):
        assert y.min() >= -100, "latent too small"
        return y * 2

class Guarded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.scale = Scale()

    def forward(self, x, rate):
        assert (rate >= 0).all() and (rate <= 4).all(), "rate must be in 0..4"
        assert 0 <= x.min() and bool((x <= 1).all())
        # super() gives forward a __class__ cell, which the forward rebuilt without asserts must keep
        return super().__call__(x, rate) if x is None else self.scale(self.conv(x)) * rate

def build(rate_valid=None):
    x = TensorSpec("image", (1, 3, 16, 16), valid=(0.0, 1.0))
    rate = TensorSpec("rate", (1,), kind="tensor", encoding=(0.0, 4.0), valid=rate_valid)
    return ModelSpec("guarded", {"main": GraphSpec(Guarded(), (x, rate), (TensorSpec("out", (1, 3, 16, 16)),))})

def too_wide():
    return build(rate_valid=(0.0, 9.0))

class Rebound(torch.nn.Module):
    def forward(self, x, rate):
        rate = rate / 100  # the assert below bounds rate / 100, not the input
        assert (rate >= 0).all() and (rate <= 4).all()
        if x.shape[0] > 1:  # an assert that may not run bounds nothing
            assert (x <= 0.5).all()
        return x * rate

def rebound():
    x = TensorSpec("image", (1, 3, 16, 16), valid=(0.0, 1.0))
    rate = TensorSpec("rate", (1,), kind="tensor", encoding=(0.0, 400.0))
    return ModelSpec("rebound", {"main": GraphSpec(Rebound(), (x, rate), (TensorSpec("out", (1, 3, 16, 16)),))})
"""


def test_tensor_asserts_are_taken_out_for_capture_and_become_the_ranges_runners_check(tmp_path):
    pytest.importorskip("onnxruntime")
    from pbrforge.export.model_export import artifact_call, export_model
    from pbrforge.modelspec import tensor_spec

    model = tmp_path / "guarded.py"
    model.write_text(textwrap.dedent(GUARDED))
    spec = load_spec(f"{model}:build")
    with pytest.raises(Exception, match="data-dependent"):  # as written, no capture takes it
        torch.export.export(spec.graphs["main"].module, spec.graphs["main"].example_inputs(), strict=False)
    result = export_model(spec, tmp_path / "g", ("onnx",))
    assert result.failures == []
    passes = result.passes["main"]
    assert [p["pass"] for p in passes[:2]] == ["torch.export (non-strict)", "torch.export (without asserts)"]
    assert not passes[0]["kept"] and passes[1]["kept"] and passes[1]["max_abs_vs_eager"] <= 1e-4
    removed = {a["assert"].split(",")[0]: a["bounds"] for a in passes[1]["asserts"]}
    assert removed["assert (rate >= 0).all() and (rate <= 4).all()"] == {"rate": [0.0, 4.0]}
    assert removed["assert y.min() >= -100"] == {}  # a submodule's argument is no graph input
    assert "rate: valid (0, 4) (the spec had no range)" in passes[1]["ranges"]
    manifest = json.loads((tmp_path / "g.model.json").read_text())
    rate = tensor_spec(manifest["graphs"]["main"]["inputs"][1])
    assert rate.valid == (0.0, 4.0)
    call = artifact_call("onnx", tmp_path / "g.main.onnx", (spec.graphs["main"].inputs[0], rate))
    with pytest.raises(DataError, match=r"rate: values span 5..5, outside the 0..4 the model is defined on"):
        call(torch.rand(1, 3, 16, 16), torch.tensor([5.0]))
    # an argument the forward rebinds, and an assert under an if, give no range
    rebound = export_model(load_spec(f"{model}:rebound"), tmp_path / "r", ("onnx",))
    assert rebound.failures == []
    assert rebound.passes["main"][1]["ranges"] == []
    assert [a["bounds"] for a in rebound.passes["main"][1]["asserts"]] == [{}, {}]
    assert rebound.spec.graphs["main"].inputs[1].valid is None
    # the class itself keeps its asserts
    with pytest.raises(AssertionError, match="rate must be in 0..4"):
        spec.graphs["main"].module(torch.rand(1, 3, 16, 16), torch.tensor([5.0]))


def test_a_spec_whose_examples_break_its_models_own_asserts_is_told_so_in_one_sentence(tmp_path):
    from pbrforge.export.model_export import export_model

    model = tmp_path / "guarded.py"
    model.write_text(textwrap.dedent(GUARDED))
    with pytest.raises(
        ConfigError, match=r"graph 'main' fails on its spec's own example inputs: AssertionError"
    ):
        export_model(load_spec(f"{model}:too_wide"), tmp_path / "g", ("onnx",))
    assert list(tmp_path.iterdir()) == [model]
