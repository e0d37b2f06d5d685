"""Static int8 ONNX (QDQ) for ONNX Runtime: calibrated on real held-out views, judged on other ones.

``onnxruntime.quantization`` does the work. ``prepare`` first writes the ops ORT has no integer kernel for
(MobileNetV3's hard-swish and hard-sigmoid gates, the SE blocks' spatial mean, the means over views, BatchNorm no
conv absorbs) in ops it has, then runs ORT's ``quant_pre_process`` (constant folding and fusion; symbolic shape
inference is skipped: it fails on the exported graph's ``Concat``). ``quantize_static`` writes
QuantizeLinear/DequantizeLinear pairs with per-channel int8 weights (symmetric) and uint8 activations
calibrated by MinMax over the calibration views, and ``integer_pads`` moves each Pad onto the 8-bit values.
ORT then fuses DQ -> op -> Q into integer kernels (QLinearConv and friends). Before the rewrites, 89 ops of
the demo student ran in float between a DequantizeLinear and a QuantizeLinear; ``fused_graph_census`` counts what
is left, and ``profile`` measures where the time goes with ORT's own profiler.

Which layers stay float is chosen in render space (``int8_precision.choose``), as for the int8 ``.pte``: a
layer is a module of the student (the innermost name scope the exporter recorded on each node), ranked by
the same first-order render gain (ORT's own quantization debugger, ``qdq_loss_debug``, gives each
activation's rounding; the float PyTorch model gives the render loss's gradient there), and excluded, with
the nodes that read it, through ``quantize_static(nodes_to_exclude=...)``. The search renders
calibration views; ``OUTPUT.int8.onnx.recipe.json`` says which layers stayed float and why.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pbrforge.artifacts import report_path
from pbrforge.export import int8_precision
from pbrforge.export.formats import Built, ExportJob, Format, measure, register
from pbrforge.export.onnx_export import onnx_feed, onnx_runner, onnx_session, run_onnx
from pbrforge.export.parity import ParityReport
from pbrforge.fileio import atomic_path, write_json

if TYPE_CHECKING:
    import onnx

_logger = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of inputs (the views, or ``names`` in order)."""

    def __init__(self, batches: list[Inputs], names: Sequence[str] | None = None):
        self._it = iter(batches)
        self._names = names

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        if self._names is None:
            return onnx_feed(batch)
        return {n: x.numpy() for n, x in zip(self._names, batch, strict=True)}

    def __iter__(self):  # qdq_loss_debug iterates where quantize_static calls get_next
        return iter(self.get_next, None)


def prepare(fp32: Path, pre: Path) -> dict[str, int]:
    """``fp32`` made ready to quantize, written to ``pre``; returns how many ops of each type were rewritten.

    First the ops ORT has no integer kernel for are written in ones it has (``onnx_rewrite.INTEGER_RULES``), so
    they leave no float island; then ORT's own ``quant_pre_process`` folds constants and fuses. It keeps node
    names but drops their metadata, so each node's module (the innermost name scope ``torch.onnx`` recorded,
    which the rewrite carries over to the nodes it makes) is copied back by name.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    from pbrforge.export.onnx_rewrite import INTEGER_RULES, mobile_friendly

    rewritten, done = mobile_friendly(onnx.load(str(fp32)), INTEGER_RULES)
    with tempfile.TemporaryDirectory(prefix="pbrforge-int8-pre-") as work:
        source = Path(work) / "rewritten.onnx"
        onnx.save(rewritten, str(source))
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    meta = {n.name: n.metadata_props for n in rewritten.graph.node}
    for node in model.graph.node:
        if node.name in meta and not node.metadata_props:
            node.metadata_props.extend(meta[node.name])
    onnx.save(model, str(pre))
    return done


def quantize_onnx(
    pre: Path,
    out: Path,
    calibration: list[Inputs],
    exclude: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> float:
    """Write the static int8 QDQ model of ``pre`` (from ``prepare``) to ``out`` atomically, the nodes ``exclude``
    left float; ``names`` are the graph's inputs in calibration order (None: the three views). Returns seconds
    taken."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.perf_counter()
    with atomic_path(out) as tmp:
        quantize_static(
            str(pre),
            str(tmp),
            _Reader(calibration, names),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        model = onnx.load(str(tmp))
        if integer_pads(model):
            onnx.save(model, str(tmp))
    return time.perf_counter() - t0


def integer_pads(model: onnx.ModelProto) -> int:
    """Pad the 8-bit values themselves where a Pad sits between a DequantizeLinear and a QuantizeLinear of the
    same scale and zero point; returns how many.

    The quantizer gives a Pad's output its input's parameters, but ORT's CPU provider does not fuse the pair
    (its QDQ rules drop Q/DQ around Reshape, Transpose and friends, not Pad), so each Pad ran in float between
    two conversions. Edge and reflect padding copy values already there, and constant padding with 0 writes
    the zero point, so the integer Pad is exact.
    """
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            readers[i].append(n)
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    def same(a: str, b: str) -> bool:
        return a in consts and b in consts and np.array_equal(consts[a], consts[b])

    dropped: set[int] = set()
    done = 0
    for pad in graph.node:
        if pad.op_type != "Pad" or len(readers[pad.output[0]]) != 1:
            continue
        dq, q = producer.get(pad.input[0]), readers[pad.output[0]][0]
        if dq is None or dq.op_type != "DequantizeLinear" or q.op_type != "QuantizeLinear":
            continue
        if (
            len(dq.input) < 3
            or len(q.input) < 3
            or not (same(dq.input[1], q.input[1]) and same(dq.input[2], q.input[2]))
        ):
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if mode == b"constant":
            value = pad.input[2] if len(pad.input) > 2 else ""
            if value and (value not in consts or float(consts[value]) != 0.0):
                continue
            pad.input[2:] = [dq.input[2]] + list(pad.input[3:])  # 0 in the integer domain is the zero point
        pad.input[0], pad.output[0] = dq.input[0], q.output[0]
        dropped.add(id(q))
        if len(readers[dq.output[0]]) == 1:
            dropped.add(id(dq))
        done += 1
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return done


def layers(pre: Path) -> tuple[dict[str, int8_precision.Point], dict[str, list[str]]]:
    """The nodes of ``pre`` (from ``prepare``) grouped by the student module each was exported from (the innermost
    name scope ``torch.onnx`` recorded; a node made later is a layer of its own), and each node's consumers."""
    import onnx

    nodes = onnx.load(str(pre)).graph.node
    points: dict[str, int8_precision.Point] = {}
    readers: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        meta = {p.key: p.value for p in node.metadata_props}
        names = json.loads(meta.get("pkg.torch.onnx.name_scopes", "[]").replace("'", '"'))
        module = names[-2] if len(names) > 1 else ""
        key = module or node.name
        points.setdefault(key, int8_precision.Point(key, module)).nodes.append(node.name)
        for tensor in node.input:
            readers[tensor].append(node.name)
    consumers = {node.name: [r for t in node.output for r in readers[t]] for node in nodes}
    return points, consumers


def ranked_by_render_gain(
    reference: torch.nn.Module,
    pre: Path,
    int8: Path,
    samples: list[Inputs],
    points: dict[str, int8_precision.Point],
) -> list[str]:
    """The layers, most to gain from float first, by the int8 ``.pte``'s first-order estimate across two runtimes
    (``pre``: the pre-processed float graph ``int8`` was quantized from).

    ORT's quantization debugger (``qdq_loss_debug``) gives each activation's rounding in the int8 graph,
    ``post_qdq - pre_qdq``. The float PyTorch model, run on the same views, gives the gradient at the same tensor
    (the output of the layer's module, matched by value) of the render loss to the int8 graph's outputs. Their
    product, summed, is the render loss that keeping the layer float would win, to first order. A layer whose
    output is not one tensor of the ONNX graph (none matched) is ranked last.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    int8_model = _as_model(int8)
    layer_of = {node: p.key for p in points.values() for node in p.nodes}
    pre_graph = onnx.load(str(pre)).graph
    produced_by = {out: node.name for node in pre_graph.node for out in node.output}
    modules = dict(reference.named_modules())
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="pbrforge-qdq-debug-") as work:
        float_aug, int8_aug = (Path(work) / n for n in ("float.onnx", "int8.onnx"))
        debug.modify_model_output_intermediate_tensors(str(pre), str(float_aug))
        debug.modify_model_output_intermediate_tensors(str(int8), str(int8_aug))
        boundary = _layer_outputs(pre_graph, layer_of)
        for augmented in (float_aug, int8_aug):
            _save_only(augmented, boundary)
        for views in samples:  # one view's activations at a time, to bound memory at 512 px
            matching = debug.create_activation_matching(
                debug.collect_activations(str(int8_aug), _Reader([views])),
                debug.collect_activations(str(float_aug), _Reader([views])),
            )
            # layer -> its int8 activations: (name, float value, rounding); the rest is dropped before PyTorch runs
            tensors: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
            for tensor in list(matching):
                pair = matching.pop(tensor)
                key = layer_of.get(produced_by.get(tensor, ""))
                if key is not None and key in modules and "float" in pair:
                    rounding = np.asarray(pair["post_qdq"][0]) - np.asarray(pair["pre_qdq"][0])
                    tensors[key].append((tensor, pair["float"][0], rounding))
            del matching
            seen.clear()
            hooks = [
                modules[k].register_forward_hook(
                    lambda _m, _in, out, k=k: seen[k].append(out) if isinstance(out, torch.Tensor) else None
                )
                for k in tensors
            ]
            try:  # grad through the views: the exported model's weights may not ask for it
                with torch.enable_grad():
                    outputs = reference(*(v.clone().requires_grad_(True) for v in views))
                    kept = {k: v[0] for k, v in seen.items() if len(v) == 1 and v[0].requires_grad}
                    for value in kept.values():
                        value.retain_grad()
                    int8_precision.backward_render_loss(outputs, int8_model(*views))
            finally:
                for hook in hooks:
                    hook.remove()
            for key, value in kept.items():
                candidates = {name: (float_value, rounding) for name, float_value, rounding in tensors[key]}
                tensor = _same_tensor(value.detach(), [(name, f) for name, (f, _) in candidates.items()])
                if tensor is None or value.grad is None:
                    continue
                rounding_at = torch.from_numpy(candidates[tensor][1])
                points[key].gain -= float((value.grad * rounding_at.reshape(value.shape)).sum())
            del tensors, kept, outputs
            seen.clear()
    reference.zero_grad(set_to_none=True)
    return sorted(points, key=lambda k: -points[k].gain)


def _layer_outputs(graph: onnx.GraphProto, layer_of: dict[str, str]) -> set[str]:
    """The tensors a layer hands to another layer (or returns): the only ones the ranking compares."""
    readers: dict[str, set[str]] = defaultdict(set)
    for node in graph.node:
        for tensor in node.input:
            readers[tensor].add(layer_of.get(node.name, node.name))
    returned = {o.name for o in graph.output}
    return {
        out
        for node in graph.node
        for out in node.output
        if out in returned or readers[out] - {layer_of.get(node.name, node.name)}
    }


def _save_only(augmented: Path, tensors: set[str]) -> None:
    """Keep as outputs of a ``qdq_loss_debug``-augmented model only ``tensors`` (before and after their Q/DQ pair)
    and the model's own. With every intermediate tensor saved, ranking the demo student at 512 px peaked at 22.4 GB
    (one view at a time); with these only, at 19.2 GB."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

    model = onnx.load(str(augmented))

    def wanted(name: str) -> bool:
        if not name.endswith(debug._TENSOR_SAVE_POSTFIX):  # one of the model's own outputs
            return True
        base = name.removesuffix(debug._TENSOR_SAVE_POSTFIX)
        for suffix in (debug._POST_QDQ_POSTFIX1, DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX):
            base = base.removesuffix(suffix)
        return base in tensors

    kept = [o for o in model.graph.output if wanted(o.name)]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(augmented))


def _same_tensor(value: torch.Tensor, candidates: list[tuple[str, np.ndarray]]) -> str | None:
    """The ONNX tensor whose float value is ``value`` (a module's output in PyTorch), or None."""
    for name, other in candidates:
        if other.size == value.numel():
            other_t = torch.from_numpy(np.asarray(other, dtype=np.float32)).reshape(value.shape)
            if torch.allclose(other_t, value, rtol=1e-3, atol=1e-4 * (1 + float(value.abs().max()))):
                return name
    return None


def _as_model(path: Path) -> int8_precision.Model:
    """An ONNX file as a callable from views to the contract's maps, as tensors."""
    session = onnx_session(path)
    return lambda *views: tuple(torch.from_numpy(o) for o in run_onnx(session, views).values())


def search_precision(job: ExportJob, pre: Path, int8: Path) -> int8_precision.Search:
    """Which layers stay float for the job's gate, rendered on calibration views; ``int8`` (quantized from ``pre``,
    the prepared float graph) is rewritten to it."""
    calibration = job.views().calibration
    samples = list(calibration[: int8_precision.SEARCH_SAMPLES])
    figures_of = int8_precision.render_figures_of(job.wrapper, samples)
    points, consumers = layers(pre)

    def float_nodes(keys: set[str]) -> list[str]:
        """A layer's own nodes and their readers: ORT quantizes a tensor when any node touching it is quantized,
        so a layer's outputs stay float only when their readers are excluded too."""
        own = [n for key in sorted(keys) for n in points[key].nodes]
        return list(dict.fromkeys(own + [r for n in own for r in consumers[n]]))

    def measure(keys: set[str]) -> int8_precision.Figures:
        if not keys:
            return figures_of(_as_model(int8))
        with tempfile.TemporaryDirectory(prefix="pbrforge-int8-try-") as work:
            candidate = Path(work) / "try.onnx"
            quantize_onnx(pre, candidate, calibration, float_nodes(keys))
            return figures_of(_as_model(candidate))

    found = int8_precision.choose(
        points,
        lambda: ranked_by_render_gain(job.wrapper, pre, int8, samples, points),
        measure,
        job.gate,
        "first-order render gain (ORT's rounding times PyTorch's render gradient)",
        job.options.progress,
    )
    if found.kept_float:
        quantize_onnx(pre, int8, calibration, float_nodes({p.key for p in found.kept_float}))
    return found


def profile(path: Path, example: Inputs, runs: int = 10, threads: int = 2) -> dict:
    """Where ONNX Runtime spends its time: milliseconds per run by op type, and how much of it is integer."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pbrforge-profile-") as work:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(work) / "ort")
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 2):
            run_onnx(session, example)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1000.0 / (runs + 2)
    total = sum(by_op.values()) or 1.0
    integer = sum(
        v
        for k, v in by_op.items()
        if k.startswith(("QLinear", "MatMulInteger", "ConvInteger", "QGemm"))
        or k in ("QuantizeLinear", "DequantizeLinear")
    )
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {
        "ms_per_run_by_op": dict(ranked),
        "total_kernel_ms": total,
        "integer_or_qdq_share": integer / total,
        "top": [f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in ranked[:8]],
    }


def fused_graph_census(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Of the graph ORT's CPU provider actually runs (after its QDQ fusions): the op types, and the float
    islands, the ops that still run in float between 8-bit ones (each reads a DequantizeLinear), by type."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pbrforge-opt-") as work:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(work) / "opt.onnx")
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    ops: dict[str, int] = defaultdict(int)
    islands: dict[str, int] = defaultdict(int)
    producer = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        ops[node.op_type] += 1
        integer = node.op_type.startswith("Q") or node.op_type == "DequantizeLinear"
        if not integer and any(producer.get(i) == "DequantizeLinear" for i in node.input):
            islands[node.op_type] += 1
    return _by_count(ops), _by_count(islands)


def _by_count(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _build(job: ExportJob, staged: Path) -> Built:
    """Quantize the kept fp32 model, then census and profile both: where the int8 time goes is part of the report."""
    fp32 = job.paths.artifact(".onnx")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pbrforge-int8-") as work:
        pre = Path(work) / "pre.onnx"
        rewrites = prepare(fp32, pre)
        quantize_onnx(pre, staged, job.views().calibration)
        recipe = {
            "artifact": job.paths.artifact(".int8.onnx").name,
            "rewritten_for_integer_kernels": rewrites,
            **search_precision(job, pre, staged).recipe(),
        }
    seconds = time.perf_counter() - t0
    fp32_profile, int8_profile = profile(fp32, job.example), profile(staged, job.example)
    _logger.info(
        "where ONNX Runtime spends its time (ms per run, %s px):\n  fp32: %s\n  int8: %s\n  int8 time in integer "
        "kernels and Q/DQ: %.0f%%",
        job.example[0].shape[-1],
        ", ".join(fp32_profile["top"]),
        ", ".join(int8_profile["top"]),
        100 * int8_profile["integer_or_qdq_share"],
    )
    census, islands = fused_graph_census(staged)
    info = {
        "precision": recipe,
        "ort_nodes_after_fusion": census,
        "float_islands": islands,
        "profile_fp32": fp32_profile,
        "profile_int8": int8_profile,
    }
    built = Built(seconds, info=info | job.calibration_info())
    built.on_keep = lambda kept: write_json(report_path(kept, "recipe"), recipe)
    return built


def _check(job: ExportJob, staged: Path, built: Built) -> ParityReport:
    """On held-out views it was not calibrated on, in render space (per-value error is not its promise)."""
    runner = onnx_runner(staged, 0, job.contract)
    return measure(job, "onnxruntime int8 (QDQ)", "ONNX int8", runner.run, job.views().judged)


register(
    Format(
        "onnx-int8",
        "onnx",
        ".int8.onnx",
        "onnx",
        _build,
        _check,
        onnx_runner,
        needs=("onnx",),
        wanted=lambda options: options.quantize == "int8",
    )
)
