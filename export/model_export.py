"""Export any model a spec describes (``--model``, issue #26): every graph to ONNX, ExecuTorch and Core ML, gated.

Per graph, the pre-export passes run first, each checked against eager PyTorch and listed in the manifest:

- capture with ``torch.export`` (non-strict, so Python-side code around the tensors is traced through);
- fold parameter-only subgraphs into constants (``torch.fx.experimental.const_fold``): weights a model computes
  at run time from its parameters (an LU-parametrised 1x1 conv, its ``torch.inverse``) become plain weights, so
  no backend needs the linear algebra;
- rewrite the few ops a converter lacks (``REWRITES``: ``exp2``, ``outer``/``ger``; float64 as float32).

A pass that changes nothing, or moves an output more than ``PASS_MAX_ABS`` of its span, is undone.

A graph whose outputs feed an entropy coder (``kind="symbols"``) is built for fp32 on the CPU in every format.
Every artifact then runs in its own runtime (ONNX Runtime, ExecuTorch's XNNPACK) on the spec's example inputs
and each output is held to its own gate (``pbrforge.gate_metrics``: ``max_abs``, ``psnr``, ``exact``, or one a
user registered). Core ML converts here but runs only on macOS: its package is written and marked not run.
The spec's pipelines (a round trip, a sampler's steps) then run through the artifacts, each graph's inputs
checked against its spec (shape, dtype, and the value range exported graphs no longer assert), and are judged
end to end. A graph that failed a gate is kept as ``OUTPUT.GRAPH.failed.EXT``; ``OUTPUT.model.json`` lists
graphs, tensors, host glue, passes and every verdict.

A spec with more than one graph also ships as one file per format: a multi-method ``OUTPUT.pte`` (each method
judged) and a multifunction ``OUTPUT.mlpackage`` (read back). ``quantize="int8"`` adds static int8 QDQ ONNX
and XNNPACK int8 ``.pte`` per graph, calibrated upstream first (``calibration_sets``), held to the same gates on
the inputs each graph meets behind its upstream graphs, and run through the pipelines.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbrforge.errors import ConfigError, DataError, UnavailableError
from pbrforge.fileio import atomic_path, read_tensors, remove, replace_path, write_json
from pbrforge.gate_metrics import Verdict, judge
from pbrforge.modelspec import GraphSpec, ModelSpec, Pipeline, TensorSpec, check_values

log = logging.getLogger(__name__)

FORMATS = ("onnx", "executorch", "coreml")
EXTENSIONS = {"onnx": ".onnx", "executorch": ".pte", "coreml": ".mlpackage"}
CHECK_SEEDS = (0, 1)  # example inputs each artifact is judged on
PASS_MAX_ABS = (
    1e-4  # a pre-export pass may move an output this far (share of its span) from eager, or is undone
)
VECTORS = ".testvectors"  # OUTPUT.testvectors/GRAPH.safetensors
NOT_RUN = "converted; not run here (Core ML runs only on macOS)"
CALIBRATION_EXAMPLES = 16  # a graph with no --calibration samples is calibrated on this many spec examples
MAX_SAMPLES = 64  # calibration samples read from a folder (sorted by name)
MAX_TRACE_BYTES = 64 << 20  # a pipeline's eager trace larger than this is not written to the test vectors
INT8_PLACEMENT = {
    "onnx": "int8 QDQ (per-channel weights, MinMax activations), ONNX Runtime's CPU provider",
    "executorch": "int8 (XNNPACK's symmetric per-channel weights, MinMax activations via PT2E), XNNPACK (CPU)",
}
PLACEMENT = {  # (format, feeds an entropy coder) -> where it computes, as the artifact is built
    ("onnx", False): "fp32, ONNX Runtime's CPU provider (an app may add an NPU provider)",
    ("onnx", True): "fp32, CPU provider only: it feeds an entropy coder",
    ("executorch", False): "fp32, XNNPACK (CPU)",
    ("executorch", True): "fp32, XNNPACK (CPU): it feeds an entropy coder",
    ("coreml", False): "fp32 package, any compute unit (the Neural Engine runs FP16)",
    ("coreml", True): "fp32, CPU only: it feeds an entropy coder",
}

Tensors = tuple[torch.Tensor, ...]


@dataclass
class GraphArtifact:
    """One graph in one format: where it is, and how each output fared on each example."""

    graph: str
    format: str
    path: str = ""
    status: str = "ok"  # ok | FAILED | not run (Core ML here) | error (the converter failed; detail says why)
    seconds: float = 0.0
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # output -> the worst verdict over examples
    placement: str = ""
    detail: str = ""
    precision: str = "fp32"  # or int8 (``--quantize int8``: ONNX QDQ, XNNPACK .pte)
    vectors: str = ""  # the test-vector file it is held to (GRAPH.safetensors, or GRAPH.fed.safetensors)

    @property
    def label(self) -> str:
        """The format, with the precision when it is not fp32 (``onnx int8``)."""
        return self.format if self.precision == "fp32" else f"{self.format} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "format": self.format,
            "precision": self.precision,
            "path": self.path,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "verdicts": {k: v.to_dict() for k, v in self.verdicts.items()},
            "placement": self.placement,
            "detail": self.detail,
            "vectors": self.vectors,
        }


@dataclass
class ModelExport:
    """What ``export_model`` did: the passes per graph, every artifact, every pipeline, and the manifest."""

    spec: ModelSpec
    manifest: Path
    passes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    artifacts: list[GraphArtifact] = field(default_factory=list)
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    bundles: list[dict[str, Any]] = field(default_factory=list)  # one artifact for all graphs, per format
    traces: dict[str, str] = field(default_factory=dict)  # pipeline -> its eager trace in the test vectors

    @property
    def failures(self) -> list[str]:
        bad = [
            f"{b['path'] or b['format']}: {b['detail']}"
            for b in self.bundles
            if b["status"] in ("FAILED", "error")
        ]
        bad += [
            f"{a.graph} ({a.label}): {a.status}: {_worst(a.verdicts) or a.detail}"
            for a in self.artifacts
            if a.status in ("FAILED", "error")
        ]
        return bad + [
            f"pipeline {p['pipeline']} ({p['format']}): {p['verdict']['metric']} {p['verdict']['figure']:.4g} "
            f"(limit {p['verdict']['limit']:g}) {p['verdict']['detail']}"
            for p in self.pipelines
            if not p["verdict"]["passed"]
        ]

    def table(self) -> str:
        lines = [
            f"{'graph':<14} {'format':<11} {'status':<8} {'seconds':>8}  outputs (metric figure / limit)"
        ]
        for a in self.artifacts:
            shown = "; ".join(f"{k}: {v.metric} {v.figure:.4g} / {v.limit:g}" for k, v in a.verdicts.items())
            lines.append(f"{a.graph:<14} {a.label:<11} {a.status:<8} {a.seconds:8.1f}  {shown or a.detail}")
        for b in self.bundles:
            lines.append(
                f"{'all graphs':<14} {b['format']:<11} {b['status']:<8} {'':>8}  {b['path']}: methods "
                f"{', '.join(b['methods'])}, {b['bytes'] / 2**20:.2f} MiB"
            )
        for p in self.pipelines:
            v = p["verdict"]
            ok = "ok" if v["passed"] else "FAILED"
            lines.append(
                f"{'pipeline ' + p['pipeline']:<14} {p['format']:<11} {ok:<8} {'':>8}  "
                f"{v['metric']} {v['figure']:.4g} / {v['limit']:g} {v['detail']}; against {p['against']}"
                + "".join(
                    f"; {k} {x:.4g}" if isinstance(x, float) else f"; {k} {x}"
                    for k, x in p["figures"].items()
                )
            )
        return "\n".join(lines)


def _first_line(e: BaseException) -> str:
    """An exception's first line: a converter's or quantizer's reason, for one sentence in a report."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _reason(e: BaseException) -> str:
    """What a report records for a step that failed: the exception's type and first line."""
    return f"{type(e).__name__}: {_first_line(e)[:300]}"


def _worst(verdicts: dict[str, Verdict]) -> str:
    return "; ".join(f"{k}: {v.sentence()}" for k, v in verdicts.items() if not v.passed)


def _as_tuple(value: Any) -> Tensors:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, tuple | list) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise ConfigError(f"a graph must return a tensor or a tuple of tensors, not {type(value).__name__}")


def _op_kinds(graph: torch.fx.Graph) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            kinds[str(node.target)] = kinds.get(str(node.target), 0) + 1
    return kinds


def _distance(got: Tensors, expected: Tensors, spec: GraphSpec) -> float:
    """Largest difference over the outputs, each as a share of its encoded span."""
    return max(
        float((g.double() - e.double()).abs().max()) / t.span
        for g, e, t in zip(got, expected, spec.outputs, strict=True)
    )


def capture(name: str, graph: GraphSpec, example: Tensors) -> tuple[torch.export.ExportedProgram, list[dict]]:
    """The graph as an ExportedProgram after the pre-export passes, and what each pass did."""
    from torch.fx.experimental import const_fold

    module = graph.module.eval()
    with torch.no_grad():
        expected = _as_tuple(module(*example))
    if len(expected) != len(graph.outputs):
        raise ConfigError(
            f"graph {name!r} returns {len(expected)} tensors but its spec lists {len(graph.outputs)}"
        )
    program, passes = _export_retrying(name, graph, module, example, expected)
    captured = program.module()
    ops = _op_kinds(captured.graph)
    passes[-1]["ops"] = sum(ops.values())
    folded = const_fold.split_const_subgraphs(captured)
    folded.run_folding()
    kept = _op_kinds(folded.graph)
    current = _checked(
        passes,
        "fold parameter-only subgraphs",
        {k: n - kept.get(k, 0) for k, n in ops.items() if n > kept.get(k, 0)},
        folded,
        captured,
        graph,
        example,
        expected,
    )
    rewritten = copy.deepcopy(current)
    current = _checked(
        passes,
        "rewrite converter gaps",
        rewrite_gaps(rewritten),
        rewritten,
        current,
        graph,
        example,
        expected,
    )
    if current is not captured:
        with torch.no_grad():
            program = torch.export.export(current, example, strict=False)
    return program, passes


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Torch's own logs and graph dumps while a capture is tried: a failed try is reported in one sentence."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("torch")]
    levels = [(lg, lg.level) for lg in [*loggers, logging.getLogger("torch")]]
    for lg, _ in levels:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


def _export_retrying(
    name: str, graph: GraphSpec, module: torch.nn.Module, example: Tensors, expected: Tensors
) -> tuple[torch.export.ExportedProgram, list[dict[str, Any]]]:
    """Capture non-strict; if that fails, without the model's tensor asserts (their bounds become the inputs'
    ranges, ``assert_ranges``); then strict. The first way that captures is kept, and each try is listed."""
    from pbrforge.export.assert_ranges import asserts_removed, has_asserts, input_ranges

    passes: list[dict[str, Any]] = []
    failures: list[str] = []
    for how in ("non-strict", "without asserts", "strict"):
        if how == "without asserts" and not has_asserts(module):
            continue
        try:
            with torch.no_grad(), _quiet_torch():
                if how == "without asserts":
                    with asserts_removed(module) as removed:
                        program = torch.export.export(module, example, strict=False)
                else:
                    program = torch.export.export(module, example, strict=how == "strict")
        except Exception as e:  # the user's model: each way's reason, said if none captures it
            failures.append(f"{how}: {_first_line(e)[:200]}")
            passes.append({"pass": f"torch.export ({how})", "kept": False, "error": failures[-1]})
            continue
        record: dict[str, Any] = {"pass": f"torch.export ({how})", "kept": True}
        if how == "without asserts":
            with torch.no_grad():
                record["max_abs_vs_eager"] = _distance(_as_tuple(program.module()(*example)), expected, graph)
            if record["max_abs_vs_eager"] > PASS_MAX_ABS:
                raise ConfigError(
                    f"graph {name!r}: without its asserts the model computes something else "
                    f"({record['max_abs_vs_eager']:.3g} of an output's span from eager)"
                )
            # the inputs now hold the ranges the asserts held, and runners check them
            graph.inputs, ranges = input_ranges(module, graph.inputs, removed)
            record |= {"asserts": [r.to_dict() for r in removed], "ranges": ranges}
        passes.append(record)
        return program, passes
    raise ConfigError(f"graph {name!r} cannot be captured by torch.export: {'; '.join(failures)}")


def _checked(
    passes: list[dict[str, Any]],
    name: str,
    changed: dict[str, int],
    after: torch.fx.GraphModule,
    before: torch.fx.GraphModule,
    graph: GraphSpec,
    example: Tensors,
    expected: Tensors,
) -> torch.fx.GraphModule:
    """Record a pass; keep its result only if it changed something and moved no output past PASS_MAX_ABS."""
    record: dict[str, Any] = {
        "pass": name,
        "changed": changed,
        "ops_after": sum(n for n in _op_kinds(after.graph).values()),
    }
    if changed:
        with torch.no_grad():
            record["max_abs_vs_eager"] = _distance(_as_tuple(after(*example)), expected, graph)
    record["kept"] = bool(changed) and record["max_abs_vs_eager"] <= PASS_MAX_ABS
    passes.append(record)
    return after if record["kept"] else before


Rewrite = Callable[[torch.fx.GraphModule, torch.fx.Node], "torch.fx.Node | None"]


def _exp2(module: torch.fx.GraphModule, node: torch.fx.Node) -> torch.fx.Node:
    scaled = module.graph.call_function(torch.ops.aten.mul.Tensor, (node.args[0], math.log(2.0)))
    return module.graph.call_function(torch.ops.aten.exp.default, (scaled,))


def _outer(module: torch.fx.GraphModule, node: torch.fx.Node) -> torch.fx.Node:
    a, b = node.args[:2]
    column = module.graph.call_function(torch.ops.aten.unsqueeze.default, (a, 1))
    row = module.graph.call_function(torch.ops.aten.unsqueeze.default, (b, 0))
    return module.graph.call_function(torch.ops.aten.mul.Tensor, (column, row))


def _diag(module: torch.fx.GraphModule, node: torch.fx.Node) -> torch.fx.Node | None:
    """``diag`` of the main diagonal as a product with a constant identity: a vector's diagonal matrix is
    ``eye * v[None]``; a matrix's diagonal is ``(m * eye).sum`` along its longer side. None (kept) otherwise."""
    source = node.args[0]
    offset = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if offset != 0 or value is None or value.dim() not in (1, 2):
        return None
    rows, cols = (value.shape[0], value.shape[0]) if value.dim() == 1 else tuple(value.shape)
    if not all(isinstance(d, int) for d in (rows, cols)):
        return None
    name = f"_diag_eye_{len([n for n in module.graph.nodes if n.op == 'get_attr'])}"
    dtype = torch.float32 if value.dtype == torch.float64 else value.dtype  # float64 is rewritten as float32
    module.register_buffer(name, torch.eye(rows, cols, dtype=dtype))
    eye = module.graph.get_attr(name)
    if value.dim() == 1:
        row = module.graph.call_function(torch.ops.aten.unsqueeze.default, (source, 0))
        return module.graph.call_function(torch.ops.aten.mul.Tensor, (eye, row))
    masked = module.graph.call_function(torch.ops.aten.mul.Tensor, (source, eye))
    return module.graph.call_function(torch.ops.aten.sum.dim_IntList, (masked, [1 if rows <= cols else 0]))


def _float32(module: torch.fx.GraphModule, node: torch.fx.Node) -> torch.fx.Node:
    args = tuple(torch.float32 if a is torch.float64 else a for a in node.args)
    kwargs = {k: torch.float32 if v is torch.float64 else v for k, v in node.kwargs.items()}
    return module.graph.call_function(node.target, args, kwargs)  # type: ignore[arg-type]


def _asks_float64(node: torch.fx.Node) -> bool:
    return any(a is torch.float64 for a in (*node.args, *node.kwargs.values()))


# ops some converter lacks (Core ML: ger/outer, diag; ExecuTorch's edge dialect: exp2; mobile GPUs and NPUs:
# float64)
REWRITES: dict[Any, Rewrite] = {
    torch.ops.aten.exp2.default: _exp2,
    torch.ops.aten.outer.default: _outer,
    torch.ops.aten.ger.default: _outer,
    torch.ops.aten.diag.default: _diag,
}


def rewrite_gaps(module: torch.fx.GraphModule) -> dict[str, int]:
    """Replace, in place, the ops of ``REWRITES`` and float64 casts and factories (as float32); counts by op."""
    graph, done = module.graph, dict[str, int]()
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        build = REWRITES.get(node.target)
        if build is None and _asks_float64(node):
            build = _float32
        if build is None:
            continue
        with graph.inserting_before(node):
            new = build(module, node)
        if new is None:
            continue
        new.meta = dict(node.meta)  # the same value: later rewrites read its shape
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        done[str(node.target)] = done.get(str(node.target), 0) + 1
    if done:
        graph.lint()
        module.recompile()
    return done


def _write(
    fmt: str, program: torch.export.ExportedProgram, graph: GraphSpec, example: Tensors, path: Path
) -> None:
    if fmt == "onnx":
        import onnx

        with atomic_path(path) as tmp:
            onnx_program = torch.onnx.export(
                program,
                example,
                dynamo=True,
                input_names=[t.name for t in graph.inputs],
                output_names=[t.name for t in graph.outputs],
                verbose=False,
            )
            if onnx_program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            onnx_program.save(str(tmp))
            onnx.checker.check_model(str(tmp), full_check=True)
    elif fmt == "executorch":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        with atomic_path(path) as tmp:
            tmp.write_bytes(edge.to_executorch().buffer)
    else:
        from pbrforge.export.coreml_export import _ct, save_mlpackage

        ct = _ct()
        mlmodel = ct.convert(
            program.run_decompositions({}),
            inputs=[ct.TensorType(name=t.name, shape=t.shape) for t in graph.inputs],
            outputs=[ct.TensorType(name=t.name) for t in graph.outputs],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS17,
            # the Neural Engine computes in FP16: a graph that feeds a coder stays on the CPU in fp32
            compute_units=ct.ComputeUnit.CPU_ONLY if graph.feeds_coder else ct.ComputeUnit.ALL,
        )
        save_mlpackage(mlmodel, path)


def artifact_call(
    fmt: str, path: Path, inputs: tuple[TensorSpec, ...], threads: int = 2, method: str = "forward"
) -> Any:
    """A function running the artifact at ``path`` (for a multi-method ``.pte``, its ``method``) on tensors, each
    checked against ``inputs`` first; None for a format that does not run here (Core ML)."""
    if fmt == "onnx":
        from pbrforge.export.onnx_export import onnx_session

        session = onnx_session(path, threads=threads)

        def run_onnx(*values: torch.Tensor) -> Tensors:
            check_values(inputs, values)
            feed = {t.name: v.numpy() for t, v in zip(inputs, values, strict=True)}
            return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feed))

        return run_onnx
    if fmt == "executorch":
        from pbrforge.export.executorch_export import load_method

        loaded = load_method(path, threads=threads, name=method)

        def run_pte(*values: torch.Tensor) -> Tensors:
            check_values(inputs, values)
            return tuple(o.clone() for o in loaded.execute([v.contiguous() for v in values]))

        return run_pte
    return None


def _judge(graph: GraphSpec, call: Any, examples: Sequence[Tensors], expected: Sequence[Tensors]) -> dict:
    """Per output, its worst verdict over the examples: a failing one, else the one nearest its limit."""
    worst: dict[str, Verdict] = {}
    for inputs, reference in zip(examples, expected, strict=True):
        got = _as_tuple(call(*inputs))
        if len(got) != len(graph.outputs):
            worst["outputs"] = Verdict("count", len(got), len(graph.outputs), False, "tensors returned")
            continue
        for spec, ref, out in zip(graph.outputs, reference, got, strict=True):
            verdict = judge(spec.judged_by, ref.numpy(), out.numpy(), spec.span)
            old = worst.get(spec.name)
            if old is None or (old.passed and (not verdict.passed or _farther(verdict, old))):
                worst[spec.name] = verdict
    return worst


def _farther(new: Verdict, old: Verdict) -> bool:
    """Is ``new`` closer to its limit than ``old`` (PSNR: lower; errors and counts: higher)?"""
    if math.isnan(new.figure):
        return True
    return new.figure < old.figure if new.metric == "psnr" else new.figure > old.figure


def export_model(
    spec: ModelSpec,
    output: Path,
    formats: Sequence[str] = FORMATS,
    quantize: str | None = None,
    calibration: Path | None = None,
) -> ModelExport:
    """Every graph of ``spec`` in every format, judged; then the pipelines through the artifacts; the manifest.

    With ``quantize="int8"`` each graph is also written as static int8 (``OUTPUT.GRAPH.int8.onnx`` QDQ and
    ``OUTPUT.GRAPH.int8.pte`` XNNPACK, for the formats asked), calibrated by ``calibration_sets``, held to the
    same per-output gates as fp32 on the inputs it meets behind its upstream graphs (``upstream_fed``), and
    run through the pipelines (graphs refused int8, those feeding a coder, ship in fp32 beside them).
    """
    if quantize not in (None, "int8"):
        raise ConfigError(f"--model quantizes to int8 (ONNX and ExecuTorch) only, not {quantize}")
    if quantize and not set(formats) & set(INT8_PLACEMENT):
        raise ConfigError(
            "--quantize int8 with --model writes int8 ONNX and .pte: include onnx or executorch"
        )
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    if "executorch" in formats:
        from pbrforge.export.executorch_export import executorch_available

        executorch_available()
    if "coreml" in formats:
        from pbrforge.export.coreml_export import _ct

        _ct()
    output = Path(output)
    result = ModelExport(spec, output.with_name(output.name + ".model.json"))
    examples = {name: [g.example_inputs(seed) for seed in CHECK_SEEDS] for name, g in spec.graphs.items()}
    for name, g in spec.graphs.items():
        for inputs in examples[name]:
            g.check_inputs(inputs)  # a spec whose own examples break its ranges is the spec's error
    expected: dict[str, list[Tensors]] = {}
    for name, g in spec.graphs.items():
        try:
            with torch.no_grad():
                expected[name] = [_as_tuple(g.module.eval()(*x)) for x in examples[name]]
        except ConfigError:
            raise
        except Exception as e:  # the user's model on its own spec's examples: an assert, a shape error
            raise ConfigError(f"graph {name!r} fails on its spec's own example inputs: {_reason(e)}") from e
    calibrating = calibration_sets(spec, calibration) if quantize else None  # read and checked before writing
    programs = {}  # every graph captured before anything is written: a model torch.export refuses writes nothing
    for name, g in spec.graphs.items():
        programs[name], result.passes[name] = capture(name, g, examples[name][0])
    write_vectors(output.with_name(output.name + VECTORS), spec, examples, expected)
    calls: dict[tuple[str, str], Any] = {}
    for name, g in spec.graphs.items():
        program = programs[name]
        for fmt in formats:
            final = output.with_name(f"{output.name}.{name}{EXTENSIONS[fmt]}")
            failed = output.with_name(f"{output.name}.{name}.failed{EXTENSIONS[fmt]}")
            staged = output.with_name(f".{output.name}.{name}.staged{EXTENSIONS[fmt]}")
            artifact = GraphArtifact(
                name, fmt, placement=PLACEMENT[fmt, g.feeds_coder], vectors=f"{name}.safetensors"
            )
            t0 = time.perf_counter()
            try:
                _write(fmt, program, g, examples[name][0], staged)
            except UnavailableError:
                raise
            except Exception as e:  # a converter gap: recorded with its reason, the other formats go on
                artifact.status, artifact.detail = "error", _reason(e)
                artifact.seconds = time.perf_counter() - t0
                result.artifacts.append(artifact)
                log.warning("%s to %s failed: %s", name, fmt, artifact.detail)
                continue
            artifact.seconds = time.perf_counter() - t0
            try:
                call = artifact_call(fmt, staged, g.inputs)
                if call is None:
                    artifact.status, artifact.detail = "not run", NOT_RUN
                else:
                    artifact.verdicts = _judge(g, call, examples[name], expected[name])
                    artifact.status = "ok" if all(v.passed for v in artifact.verdicts.values()) else "FAILED"
            except Exception as e:  # the runtime refused to load or run it: its reason, nothing left behind
                artifact.status, artifact.detail = "error", _reason(e)
                remove(staged)
                result.artifacts.append(artifact)
                continue
            target = final if artifact.status != "FAILED" else failed
            remove(target)
            replace_path(staged, target)
            artifact.path = str(target)
            if call is not None:
                calls[(name, fmt)] = artifact_call(fmt, target, g.inputs)
            result.artifacts.append(artifact)
    if calibrating is not None:
        fed, fed_expected, fed_source = upstream_fed(spec, examples, expected)
        judging: dict[str, Judged] = {}
        # self-check holds each int8 artifact to the inputs it was judged on
        for name, g in spec.graphs.items():
            file = f"{name}.safetensors" if fed[name] is examples[name] else f"{name}.fed.safetensors"
            if fed[name] is not examples[name]:
                write_cases(output.with_name(output.name + VECTORS) / file, g, fed[name], fed_expected[name])
            judging[name] = Judged(fed[name], fed_expected[name], fed_source[name], file)
        for fmt in (f for f in formats if f in INT8_PLACEMENT):
            for name, g in spec.graphs.items():
                fp32 = next(a for a in result.artifacts if a.graph == name and a.format == fmt)
                artifact = _int8(fmt, name, g, fp32, programs[name], output, calibrating[name], judging[name])
                result.artifacts.append(artifact)
                if artifact.status == "ok":
                    calls[(name, artifact.label)] = artifact_call(fmt, Path(artifact.path), g.inputs)
                elif artifact.status == "refused" and (name, fmt) in calls:  # ships in fp32 beside the rest
                    calls[(name, artifact.label)] = calls[(name, fmt)]
    if "executorch" in formats and len(spec.graphs) > 1:
        result.bundles.append(_pte_bundle(spec, programs, output, examples, expected))
    if "coreml" in formats and len(spec.graphs) > 1:
        result.bundles.append(_mlpackage_bundle(spec, result.artifacts, output))
    labels = [*formats] + ([f"{f} int8" for f in formats if f in INT8_PLACEMENT] if quantize else [])
    vectors = output.with_name(output.name + VECTORS)
    for pipe_name, pipe in spec.pipelines.items():
        eager = trace(pipe, spec)
        if eager.save(vectors / f"pipeline.{pipe_name}.safetensors"):
            result.traces[pipe_name] = f"pipeline.{pipe_name}.safetensors"
        for label in labels:
            if all((g, label) in calls for g in pipe.graphs):
                result.pipelines.append(_pipeline(pipe_name, pipe, eager, label, calls))
    write_json(result.manifest, manifest(result, formats))
    return result


@dataclass
class Calibration:
    """One graph's calibration inputs and, for the report, where they came from."""

    inputs: list[Tensors]
    source: str


def calibration_sets(spec: ModelSpec, folder: Path | None) -> dict[str, Calibration]:
    """Per graph, the inputs that set its int8 ranges.

    ``folder`` holds samples (``read_samples``): safetensors files keyed by input name, or pictures. Graphs are
    taken in the spec's order and each sample is run through every graph whose inputs it holds, in eager
    PyTorch; the outputs join the sample under their names, so a downstream graph is calibrated on what its
    upstream graph gives (InvISP's reverse on the forward's sRGB). A graph no sample reaches is calibrated on
    the spec's own example inputs (uniform over each valid range), and its source says so.
    """
    samples = read_samples(spec, folder) if folder is not None else []
    made_by: dict[str, str] = {}  # tensor name -> the graph whose output it is
    sets: dict[str, Calibration] = {}
    for name, g in spec.graphs.items():
        names = [t.name for t in g.inputs]
        usable = [s for s in samples if all(n in s for n in names)]
        if not usable:
            inputs = [g.example_inputs(100 + k) for k in range(CALIBRATION_EXAMPLES)]
            sets[name] = Calibration(inputs, f"{len(inputs)} of the spec's example inputs")
            continue
        inputs = []
        for sample in usable:
            batch = tuple(sample[n] for n in names)
            try:
                for t, value in zip(g.inputs, batch, strict=True):
                    t.check_exported(value)
            except DataError as e:
                raise DataError(f"calibration for graph {name!r}: {e}") from e
            inputs.append(batch)
            with torch.no_grad():
                outputs = _as_tuple(g.module.eval()(*batch))
            for t, value in zip(g.outputs, outputs, strict=True):
                if t.name not in sample:
                    sample[t.name] = value
                    made_by.setdefault(t.name, name)
        upstream = sorted({f"{n} from graph {made_by[n]}" for n in names if n in made_by})
        sets[name] = Calibration(
            inputs, f"{len(inputs)} samples from {folder}" + (f" ({'; '.join(upstream)})" if upstream else "")
        )
    return sets


def read_samples(spec: ModelSpec, folder: Path) -> list[dict[str, torch.Tensor]]:
    """Calibration samples from ``folder``, each a dict of input name -> tensor (the first ``MAX_SAMPLES``).

    - ``*.safetensors``: one sample each, its tensors keyed by input name;
    - pictures (``.png``/``.jpg``), through the spec's own reading of an image input (its encoding): a plain
      ``PHOTO.png`` feeds every sRGB image input, ``SAMPLE.INPUT.png`` the input named INPUT (so
      ``a.view_0.png``, ``a.view_1.png``... make one sample); each is scaled and centre-cropped to the exported
      size. Inputs that are small tensors (a rate, a noise level) take the spec's example values.
    """
    from pbrforge.model_inputs import IMAGE_FILES, read_input, takes_images

    if not folder.is_dir():
        raise DataError(f"calibration folder {folder} does not exist or is not a folder")
    inputs = {t.name: t for g in spec.graphs.values() for t in g.inputs}
    tensors = sorted(folder.glob("*.safetensors"))
    pictures = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FILES)
    if not tensors and not pictures:
        raise DataError(f"calibration folder {folder} holds no .safetensors files and no .png/.jpg pictures")
    samples: list[dict[str, torch.Tensor]] = []
    for path in tensors[:MAX_SAMPLES]:
        sample = read_tensors(path)
        if not set(inputs) & set(sample):
            raise DataError(f"{path} holds none of the inputs {', '.join(sorted(inputs))}")
        samples.append(sample)
    groups: dict[str, dict[str, Path]] = {}
    for path in pictures:
        stem, _, name = path.stem.rpartition(".")
        named = stem and name in inputs
        if stem and not named and name.isidentifier():
            log.warning(
                "%s: %r names no input of %s (%s), so it is taken as a plain photo",
                path.name,
                name,
                spec.name,
                ", ".join(inputs),
            )
        groups.setdefault(stem if named else path.stem, {})[name if named else ""] = path
    if len(tensors) + len(groups) > MAX_SAMPLES:
        log.warning(
            "%s holds %d samples; the first %d by name calibrate",
            folder,
            len(tensors) + len(groups),
            MAX_SAMPLES,
        )
    photos = [t for t in inputs.values() if takes_images(t) and t.color == "srgb"]
    if any("" in files for files in groups.values()) and not photos:
        raise DataError(
            f"{folder} holds pictures, but no input of {spec.name!r} takes an sRGB image: name them "
            f"SAMPLE.INPUT.png with INPUT one of {', '.join(inputs)}"
        )
    for k, files in enumerate(list(groups.values())[: max(0, MAX_SAMPLES - len(samples))]):
        sample = {t.name: read_input(files[""], t, fit=True) for t in photos if "" in files}
        sample |= {n: read_input(p, inputs[n], fit=True) for n, p in files.items() if n}
        sample |= {
            t.name: t.example(1000 + k)
            for t in inputs.values()
            if t.kind == "tensor" and t.name not in sample
        }
        samples.append(sample)
    return samples


@dataclass
class Judged:
    """The inputs an int8 graph is judged on, PyTorch's outputs for them, and where they came from."""

    inputs: list[Tensors]
    expected: list[Tensors]
    source: str
    vectors: str  # the test-vector file that holds them


def upstream_fed(
    spec: ModelSpec, examples: dict[str, list[Tensors]], expected: dict[str, list[Tensors]]
) -> tuple[dict[str, list[Tensors]], dict[str, list[Tensors]], dict[str, str]]:
    """Per graph, its examples as it meets them behind its upstream graphs: an input an earlier graph gives
    (by name) is that graph's eager output on its own example, so a decoder is judged on codes its encoder
    gives, not on values uniform over a range no encoder reaches (where int8 ranges, set by calibration, clip).
    A graph whose upstream outputs break its own input ranges keeps the spec's examples."""
    made: list[dict[str, torch.Tensor]] = [{} for _ in CHECK_SEEDS]
    fed: dict[str, list[Tensors]] = {}
    fed_expected: dict[str, list[Tensors]] = {}
    source: dict[str, str] = {}
    by: dict[str, str] = {}  # tensor -> the graph that gives it
    for name, g in spec.graphs.items():
        upstream = [t.name for t in g.inputs if t.name in made[0]]
        inputs = [
            tuple(m.get(t.name, v) for t, v in zip(g.inputs, example, strict=True))
            for m, example in zip(made, examples[name], strict=True)
        ]
        try:
            for values in inputs:
                g.check_inputs(values)
        except DataError:
            upstream = []
        if upstream:
            with torch.no_grad():
                outputs = [_as_tuple(g.module.eval()(*values)) for values in inputs]
            fed[name], fed_expected[name] = inputs, outputs
            source[name] = "; ".join(f"{n} from graph {by[n]}" for n in upstream)
        else:
            fed[name], fed_expected[name], outputs = examples[name], expected[name], expected[name]
            source[name] = "the spec's examples"
        for m, values in zip(made, outputs, strict=True):
            for t, value in zip(g.outputs, values, strict=True):
                if t.name not in m:
                    m[t.name] = value
                    by.setdefault(t.name, name)
    return fed, fed_expected, source


def _int8(
    fmt: str,
    name: str,
    graph: GraphSpec,
    fp32: GraphArtifact,
    program: torch.export.ExportedProgram,
    output: Path,
    calibration: Calibration,
    judged: Judged,
) -> GraphArtifact:
    """The graph as static int8 (ONNX QDQ, or an XNNPACK int8 ``.pte``), judged by its per-output gates on the
    inputs it meets behind its upstream graphs; a graph that feeds an entropy coder stays fp32."""
    artifact = GraphArtifact(
        name, fmt, precision="int8", placement=INT8_PLACEMENT[fmt], vectors=judged.vectors
    )
    if graph.feeds_coder:
        artifact.status = "refused"
        artifact.detail = (
            "its outputs feed an entropy coder, so it stays fp32: one flipped index desynchronises it"
        )
        return artifact
    if fp32.status != "ok":
        artifact.status, artifact.detail = "error", f"no passing fp32 {fmt} to quantize ({fp32.status})"
        return artifact
    ext = EXTENSIONS[fmt]
    staged = output.with_name(f".{output.name}.{name}.staged.int8{ext}")
    t0 = time.perf_counter()
    try:
        if fmt == "onnx":
            _int8_onnx(Path(fp32.path), graph, calibration, staged)
        else:
            _int8_pte(program, calibration, staged)
    except Exception as e:  # a quantizer on a user's graph: its reason, the other graphs go on
        artifact.status, artifact.detail = "error", _reason(e)
        remove(staged)
        return artifact
    artifact.seconds = time.perf_counter() - t0
    try:
        call = artifact_call(fmt, staged, graph.inputs)
        artifact.verdicts = _judge(graph, call, judged.inputs, judged.expected)
    except Exception as e:  # the runtime refused to load or run it: its reason, nothing left behind
        artifact.status, artifact.detail = "error", _reason(e)
        remove(staged)
        return artifact
    artifact.status = "ok" if all(v.passed for v in artifact.verdicts.values()) else "FAILED"
    artifact.detail = f"calibrated on {calibration.source}; judged on {judged.source}"
    suffix = f".int8{ext}" if artifact.status == "ok" else f".failed.int8{ext}"
    target = output.with_name(f"{output.name}.{name}{suffix}")
    remove(target)
    replace_path(staged, target)
    artifact.path = str(target)
    return artifact


def _int8_onnx(fp32: Path, graph: GraphSpec, calibration: Calibration, staged: Path) -> None:
    """ORT's static QDQ: ``quant_pre_process``, per-channel weights, MinMax activations."""
    import tempfile

    from pbrforge.export.onnx_quantize import prepare, quantize_onnx

    with tempfile.TemporaryDirectory(prefix="pbrforge-model-int8-") as work:
        pre = Path(work) / "pre.onnx"
        prepare(fp32, pre)
        quantize_onnx(pre, staged, calibration.inputs, names=[t.name for t in graph.inputs])


def _int8_pte(program: torch.export.ExportedProgram, calibration: Calibration, staged: Path) -> None:
    """PT2E with XNNPACK's symmetric per-channel scheme, calibrated, lowered to XNNPACK whole."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.kernels import quantized  # noqa: F401  (out variants of quantized ops)

    from pbrforge.export.executorch_export import (
        calibrated,
        convert_post_training,
        delegation,
        non_delegated_ops,
        quantized_outside,
        xnnpack_quantizer,
    )

    prepared = calibrated(program.module(), xnnpack_quantizer(), calibration.inputs)
    with torch.no_grad():
        converted = convert_post_training(prepared, fold_quantize=True)
        edge = to_edge_transform_and_lower(
            torch.export.export(converted, calibration.inputs[0], strict=False),
            partitioner=[XnnpackPartitioner()],
        )
    outside = quantized_outside(non_delegated_ops(delegation(edge)))
    if outside:
        raise RuntimeError(f"XNNPACK left quantized ops outside its delegate ({', '.join(outside)})")
    with atomic_path(staged) as tmp:
        tmp.write_bytes(edge.to_executorch().buffer)


def _pte_bundle(
    spec: ModelSpec,
    programs: dict[str, torch.export.ExportedProgram],
    output: Path,
    examples: dict[str, list[Tensors]],
    expected: dict[str, list[Tensors]],
) -> dict[str, Any]:
    """Every graph as a method of one ``OUTPUT.pte``: weights the graphs share (InvISP's two directions) are
    stored once. Each method is judged like its single-graph artifact."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    staged = output.with_name(f".{output.name}.staged.pte")
    edge = to_edge_transform_and_lower(dict(programs), partitioner=[XnnpackPartitioner()])
    with atomic_path(staged) as tmp:
        tmp.write_bytes(edge.to_executorch().buffer)
    verdicts = {
        name: _judge(
            g, artifact_call("executorch", staged, g.inputs, method=name), examples[name], expected[name]
        )
        for name, g in spec.graphs.items()
    }
    passed = all(v.passed for judged in verdicts.values() for v in judged.values())
    target = output.with_name(output.name + (".pte" if passed else ".failed.pte"))
    remove(target)
    replace_path(staged, target)
    return {
        "format": "executorch",
        "path": target.name,
        "methods": list(spec.graphs),
        "status": "ok" if passed else "FAILED",
        "detail": "" if passed else "a method failed its gate",
        "bytes": target.stat().st_size,
        "verdicts": {m: {k: v.to_dict() for k, v in judged.items()} for m, judged in verdicts.items()},
    }


def _mlpackage_bundle(spec: ModelSpec, artifacts: list[GraphArtifact], output: Path) -> dict[str, Any]:
    """Every graph as a function of one multifunction ``OUTPUT.mlpackage`` (iOS 18): coremltools merges the
    single-graph packages and stores weights with equal values once. It cannot run here, so its functions and
    their tensors are read back from the package and compared with the spec instead."""
    import coremltools as ct

    singles = {a.graph: Path(a.path) for a in artifacts if a.format == "coreml" and a.status == "not run"}
    about: dict[str, Any] = {"format": "coreml", "path": "", "methods": list(spec.graphs), "bytes": 0}
    missing = [g for g in spec.graphs if g not in singles]
    if missing:
        return about | {"status": "error", "detail": f"no Core ML package for {', '.join(missing)}"}
    descriptor = ct.utils.MultiFunctionDescriptor()
    for name in spec.graphs:
        descriptor.add_function(str(singles[name]), src_function_name="main", target_function_name=name)
    descriptor.default_function_name = next(iter(spec.graphs))
    target = output.with_name(output.name + ".mlpackage")
    try:
        with atomic_path(target) as tmp:
            ct.utils.save_multifunction(descriptor, str(tmp))
    except Exception as e:  # coremltools' merge: its reason in the manifest, the single packages stand
        return about | {"status": "error", "detail": _reason(e)}
    read = ct.models.MLModel(str(target), skip_model_load=True).get_spec().description
    found = {f.name: ([i.name for i in f.input], [o.name for o in f.output]) for f in read.functions}
    wanted = {n: ([t.name for t in g.inputs], [t.name for t in g.outputs]) for n, g in spec.graphs.items()}
    single_bytes = sum(artifact_bytes(p) for p in singles.values())
    about |= {"path": target.name, "bytes": artifact_bytes(target), "single_packages_bytes": single_bytes}
    if found != wanted:
        return about | {
            "status": "error",
            "detail": f"the package's functions {found} differ from the spec's {wanted}",
        }
    return about | {"status": "not run", "detail": NOT_RUN + "; functions and their tensors read back"}


def artifact_bytes(path: Path) -> int:
    """A file's size, or a package folder's (.mlpackage) summed over its files."""
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def write_vectors(
    folder: Path, spec: ModelSpec, examples: dict[str, list[Tensors]], expected: dict[str, list[Tensors]]
) -> None:
    """Per graph, ``GRAPH.safetensors``: each example's inputs (``K.in.NAME``) and PyTorch's outputs
    (``K.out.NAME``), so a runtime can check itself against the gates with no PyTorch (``run --self-check``)."""
    for name, g in spec.graphs.items():
        write_cases(folder / f"{name}.safetensors", g, examples[name], expected[name])


def write_cases(path: Path, graph: GraphSpec, inputs: Sequence[Tensors], outputs: Sequence[Tensors]) -> None:
    """One graph's cases as ``K.in.NAME`` / ``K.out.NAME`` tensors in one safetensors file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for k, (given, got) in enumerate(zip(inputs, outputs, strict=True)):
        tensors |= {f"{k}.in.{t.name}": v.clone() for t, v in zip(graph.inputs, given, strict=True)}
        tensors |= {f"{k}.out.{t.name}": v.clone() for t, v in zip(graph.outputs, got, strict=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


@dataclass
class Trace:
    """A pipeline run in eager PyTorch, call by call: what the host glue fed each graph and what it gave."""

    steps: list[tuple[str, Tensors, Tensors]]
    result: torch.Tensor

    def save(self, path: Path) -> bool:
        """``K.GRAPH.in.NAME`` / ``K.GRAPH.out.NAME`` per step and ``result``; False (nothing written) past
        ``MAX_TRACE_BYTES``, which a sampler's steps at a large size would pass."""
        from safetensors.torch import save_file

        tensors = {"result": self.result.detach().clone()}  # clones: one step's output is the next's input
        for k, (graph, given, got) in enumerate(self.steps):
            for i, v in enumerate(given):
                tensors[f"{k}.{graph}.in.{i}"] = v.detach().clone()
            for i, v in enumerate(got):
                tensors[f"{k}.{graph}.out.{i}"] = v.detach().clone()
        if sum(t.numel() * t.element_size() for t in tensors.values()) > MAX_TRACE_BYTES:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        return True


def trace(pipe: Pipeline, spec: ModelSpec) -> Trace:
    """Run ``pipe`` in eager PyTorch, each graph's inputs checked against its spec, and keep every call."""
    steps: list[tuple[str, Tensors, Tensors]] = []

    def eager(graph: str, inputs: Tensors) -> Tensors:
        spec.graphs[graph].check_inputs(inputs)
        with torch.no_grad():
            got = _as_tuple(spec.graphs[graph].module(*inputs))
        steps.append((graph, tuple(inputs), got))
        return got

    result, _, _ = _ran(pipe, eager)
    return Trace(steps, result)


def _pipeline(name: str, pipe: Pipeline, eager: Trace, fmt: str, calls: dict[tuple[str, str], Any]) -> dict:
    """``pipe`` through the artifacts of ``fmt``, held to its own target or to its eager run."""

    def artifact(graph: str, inputs: Tensors) -> Tensors:
        return _as_tuple(calls[(graph, fmt)](*inputs))

    got, target, figures = _ran(pipe, artifact)
    against = "its own target"
    if target is None:
        target, against = eager.result, "eager"
    verdict = judge(pipe.gate, target.detach().numpy(), got.detach().numpy(), pipe.span)
    return {
        "pipeline": name,
        "format": fmt,
        "graphs": list(pipe.graphs),
        "against": against,
        "verdict": verdict.to_dict(),
        "figures": figures,
    }


def _ran(pipe: Pipeline, call: Any) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    returned = pipe.run(call)
    if not isinstance(returned, tuple) or len(returned) not in (2, 3):
        raise ConfigError("a pipeline's run must return (result, target) or (result, target, figures)")
    result, target, *rest = returned
    return result, target, dict(rest[0]) if rest else {}


def manifest(result: ModelExport, formats: Sequence[str]) -> dict[str, Any]:
    spec = result.spec
    return {
        "model": spec.name,
        "formats": list(formats),
        "graphs": {
            name: {
                "inputs": [t.to_dict() for t in g.inputs],
                "outputs": [t.to_dict() for t in g.outputs],
                "passes": result.passes.get(name, []),
                # artifact paths by name: the manifest, its artifacts and vectors move together
                "artifacts": [
                    a.to_dict() | {"path": Path(a.path).name if a.path else ""}
                    for a in result.artifacts
                    if a.graph == name
                ],
            }
            for name, g in spec.graphs.items()
        },
        "test_vectors": result.manifest.name.removesuffix(".model.json") + VECTORS,
        "glue": {
            k: v if isinstance(v, str | int | float | bool | list | dict) else repr(v)
            for k, v in spec.glue.items()
        },
        "pipelines": result.pipelines,
        "pipeline_traces": result.traces,
        "bundles": result.bundles,
        "passed": not result.failures,
    }
