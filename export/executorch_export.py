"""ExecuTorch: the model lowered for PyTorch's on-device runtime and checked by running it here.

``OUTPUT.pte`` is delegated to XNNPACK, the CPU path of ExecuTorch on Android and iOS, in fp32; ExecuTorch's
own Python runtime runs it for parity, so this artifact is verified on this machine, not emulated.
``OUTPUT.int8.pte`` is quantized by the XNNPACK quantizer (per-channel int8 weights, int8 activations)
calibrated on the same held-out views as the ONNX int8 model. ``OUTPUT.coreml.pte`` is delegated to Core ML
(the ANE path); like the ``.mlpackage`` it needs Apple's runtime, so it is built and reported unverified.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbrforge.artifacts import contract_path, report_path
from pbrforge.deploy import DeployContract
from pbrforge.errors import DataError, ParityError, UnavailableError
from pbrforge.export.formats import Built, ExportJob, Format, Runner, SkipStep, check_io, measure, register
from pbrforge.export.int8_precision import module_of
from pbrforge.fileio import write_json

if TYPE_CHECKING:
    import torch

    from pbrforge.export.gates import RenderGate
    from pbrforge.export.parity import ParityReport

    Inputs = tuple[torch.Tensor, ...]

_logger = logging.getLogger(__name__)

INSTALL = "ExecuTorch is not installed: pip install 'pbrforge[executorch]' (make install does)"


def executorch_available() -> None:
    """One sentence (UnavailableError) when the extra is missing."""
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError as e:
        raise UnavailableError(INSTALL) from e


MAX_VIEWS = 4  # a max or mean over a dimension this small (the views) is unrolled for XNNPACK


def xnnpack_friendly(exported: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``exported`` with the ops XNNPACK would leave to portable kernels rewritten, exactly, into ops it takes.

    As ``onnx_rewrite`` does for ONNX Runtime's NPU providers: replicate padding (whose default decomposition
    gathers with ``arange``, ``clamp`` and ``index``, each single-threaded outside the delegate) becomes its
    edge slices concatenated; a max or mean over one dimension of at most ``MAX_VIEWS`` (the views, in this
    model) becomes pairwise ``maximum`` or adds. On the demo student this takes the XNNPACK subgraphs from 26
    to 13.
    """
    import torch

    aten = torch.ops.aten
    return exported.run_decompositions(
        {
            aten.pad.default: _replicate_pad,
            aten.amax.default: _unrolled("max"),
            aten.mean.dim: _unrolled("mean"),
        }
    )


def _replicate_pad(
    x: torch.Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None
) -> Any:
    """``aten.pad`` in replicate mode as edge slices and ``cat``; any other pad is left to ``to_edge``."""
    import torch

    if mode != "replicate" or len(pad) > 2 * (x.dim() - 2) or any(p < 0 for p in pad):
        return NotImplemented  # aten.pad stays, and to_edge decomposes it as before
    for i in range(len(pad) // 2):  # pad lists (before, after) from the last dimension backwards
        dim, before, after = x.dim() - 1 - i, pad[2 * i], pad[2 * i + 1]
        if before or after:
            first, last = x.narrow(dim, 0, 1), x.narrow(dim, x.shape[dim] - 1, 1)
            x = torch.cat([first] * before + [x] + [last] * after, dim=dim)
    return x


def _unrolled(kind: str) -> Any:
    """``amax`` or ``mean`` over one small dimension as pairwise ``maximum`` or adds (summed in order, as mean)."""
    import torch

    def reduce(x: torch.Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
        dims = (
            [d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
            if dim is not None
            else []
        )
        if len(dims) != 1 or x.shape[dims[0]] > MAX_VIEWS or dtype is not None:
            return NotImplemented  # a spatial mean stays: XNNPACK pools it
        d = dims[0]
        acc = x.narrow(d, 0, 1)
        for i in range(1, x.shape[d]):
            acc = torch.maximum(acc, x.narrow(d, i, 1)) if kind == "max" else acc + x.narrow(d, i, 1)
        if kind == "mean":
            acc = acc / x.shape[d]
        return acc if keepdim else acc.reshape([n for i, n in enumerate(acc.shape) if i != d])

    return reduce


def _dynamic_weight_modules(captured: torch.fx.GraphModule) -> list[str]:
    """Modules whose convolutions take computed weights (the PLK block's per-sample 3x3).

    XNNPACK takes a quantized convolution only with constant weights; quantized, these would be left to
    portable quantize kernels that ExecuTorch's Python runtime lacks, so they stay fp32.
    """
    found = [
        module_of(n)
        for n in captured.graph.nodes
        if n.op == "call_function" and "conv" in str(n.target) and n.args[1].op != "get_attr"
    ]
    return list(dict.fromkeys(m for m in found if m))


def _view_fusion_modules(exported: torch.export.ExportedProgram) -> list[str]:
    """Modules that fuse the views with a max over them (``view_mean_max``): the bottleneck and skip fusions.

    Quantized, ExecuTorch 1.5.1's XNNPACK executor fails on the demo student at run time ("Propagating input
    shapes failed", xnn_status_invalid_parameter); keeping one module type after another in fp32 found the
    bottleneck's fusion. Only these modules' own ops (the mean and max over views, their concatenation) stay
    fp32, through the quantizer's node filter: their child convolutions are quantized. Kept by module type, as
    before, the bottleneck's blocks and every skip fusion stayed fp32 too: 38% of the demo student's weights,
    against 0.6% by node (``weight_census``).
    """
    found = []
    for n in exported.graph.nodes:
        if n.op == "call_function" and str(n.target) == "aten.amax.default":
            dims, shape = (n.args[1] if len(n.args) > 1 else []), n.args[0].meta["val"].shape
            if dims and all(shape[d] <= MAX_VIEWS for d in dims):
                found.append(module_of(n))
    return list(dict.fromkeys(m for m in found if m))


def keep_shared_conv_outputs(captured: torch.fx.GraphModule) -> int:
    """Give a BatchNorm its own copy of the convolution it reads when another node reads that output too.

    ``prepare_pt2e`` folds every BatchNorm that reads a convolution into that convolution's weights, even when
    another node reads the same output (a pre-norm residual block after a projection: the student's view
    fusion). The other reader then sees normalised values: on the demo student at 128 px that alone, before
    any rounding, renders at 43.9 dB with a 3.5 deg normal p99 against the float model, a floor no calibration
    can lift. With a copy (its own weights), the BatchNorm folds into the copy and the other reader keeps the
    original. A ``clone`` in between instead leaves a float BatchNorm that ExecuTorch 1.5.1's XNNPACK executor
    fails to run. Returns how many copies were made.
    """
    import torch

    graph, made = captured.graph, 0
    for conv in list(graph.nodes):
        if conv.op != "call_function" or "conv" not in str(conv.target) or len(conv.users) < 2:
            continue
        for bn in [u for u in conv.users if "batch_norm" in str(u.target)]:
            params = []
            with graph.inserting_before(bn):
                for source in conv.args[1:3]:
                    if not isinstance(source, torch.fx.Node) or source.op != "get_attr":
                        params.append(source)
                        continue
                    name = f"{source.target}_bn_copy_{made}".replace(".", "_")
                    stored: Any = functools.reduce(getattr, str(source.target).split("."), captured)
                    captured.register_parameter(name, torch.nn.Parameter(stored.detach().clone(), False))
                    attr = graph.get_attr(name)
                    attr.meta = dict(source.meta)
                    params.append(attr)
                twin = graph.call_function(conv.target, (conv.args[0], *params, *conv.args[3:]), conv.kwargs)
            twin.meta = dict(conv.meta)
            bn.replace_input_with(conv, twin)
            made += 1
    if made:
        graph.lint()
        captured.recompile()
    return made


@dataclass
class Int8Plan:
    """How the int8 program is made: calibration, the render budget of the precision search, and QAT."""

    calibration: Sequence[Inputs]
    judged: Sequence[Inputs] = ()
    gate: RenderGate | None = None  # search per-layer precision for this gate; None quantizes every layer
    training: Sequence[Inputs] = ()  # views the QAT fine-tune runs over
    qat_steps: int = 0
    progress: bool = True


def xnnpack_quantizer(keep_modules: frozenset[str] | set[str] = frozenset()) -> Any:
    """XNNPACK's symmetric per-channel scheme; a node stays fp32 when it is one of ``keep_modules``' own ops
    (by node: a module's children are still quantized)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(lambda node: module_of(node) not in keep_modules)
    return quantizer


def calibrated(captured: torch.fx.GraphModule, quantizer: Any, calibration: Sequence[Inputs]) -> Any:
    """``prepare_pt2e`` with ``quantizer``, then every calibration input run through it once."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for views in calibration:
            prepared(*views)
    return prepared


def _quantized(
    module: torch.nn.Module, example: Inputs, plan: Int8Plan
) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """PT2E quantization with XNNPACK's scheme: calibrated, precision searched in render space, QAT-tuned.

    Both the search and QAT work on one graph, ``convert_pt2e``'s with a switch per quantize/dequantize pair
    (``int8_precision``), and the program is lowered from exactly that graph: what was measured is what ships.

    Returns the quantized module, the modules whose own ops stay fp32 whatever the budget (by node: their
    child modules are quantized), and the report: weight census, the precision recipe and the QAT figures.
    """

    import torch
    from executorch.kernels import quantized  # noqa: F401  (out variants of the ops XNNPACK leaves to portable kernels)

    from pbrforge.export import int8_precision

    exported = torch.export.export(module, example)
    captured = xnnpack_friendly(exported).module()
    keep_shared_conv_outputs(captured)
    kept_float = _dynamic_weight_modules(captured)
    kept_float += [name for name in _view_fusion_modules(exported) if name not in kept_float]
    keep = set(kept_float)
    report: dict[str, Any] = {}
    prepared = calibrated(captured, xnnpack_quantizer(keep), plan.calibration)
    graph, points = int8_precision.with_switches(convert_post_training(prepared))
    if plan.gate is not None:
        samples = list(plan.calibration[: int8_precision.SEARCH_SAMPLES])
        report["precision"] = int8_precision.search(
            graph, points, module, samples, plan.gate, plan.progress
        ).recipe()
    judged = int8_precision.render_figures_of(module, plan.judged) if plan.judged else None
    if judged is not None:  # on the views the artifact is judged on
        report["post_training_judged"] = judged(graph)
    if plan.qat_steps:
        from pbrforge.export.qat import fine_tune

        report["qat"] = fine_tune(
            graph,
            module,
            plan.training or plan.calibration,
            plan.qat_steps,
            params=int8_precision.trainable(graph),
            progress=plan.progress,
        )
        if judged is not None:
            report["qat"]["judged"] = judged(graph)
    converted = int8_precision.materialize(graph)
    report["weights"] = weight_census(converted)
    return converted, kept_float, report


def weight_census(graph: torch.fx.GraphModule) -> dict[str, Any]:
    """How many convolution and linear weights the quantized graph holds in int8 and how many in float."""
    import torch

    def numel(node: torch.fx.Node) -> int:
        if node.op == "get_attr":
            stored: Any = functools.reduce(getattr, str(node.target).split("."), graph)
            return int(stored.numel())
        source = node.args[0] if node.args else None
        if "dequantize" in str(node.target) and isinstance(source, torch.fx.Node):
            return numel(source)  # dequantize(int8 weight, ...) -> the stored weight
        val: Any = node.meta.get("val")
        return int(val.numel()) if isinstance(val, torch.Tensor) else 0

    int8, floats = 0, 0
    for n in graph.graph.nodes:
        if n.op != "call_function" or not any(k in str(n.target) for k in ("conv", "linear")):
            continue
        w = n.args[1] if len(n.args) > 1 else None
        if not isinstance(w, torch.fx.Node):
            continue
        quantized = w.op == "call_function" and "dequantize" in str(w.target)
        if quantized:
            int8 += numel(w)
        else:
            floats += numel(w)
    return {"int8_weights": int8, "float_weights": floats, "float_share": floats / max(1, int8 + floats)}


def convert_post_training(
    prepared: torch.fx.GraphModule, fold_quantize: bool = False
) -> torch.fx.GraphModule:
    """``convert_pt2e`` without its quantization-aware-training conv-BN fold, which has nothing to match here;
    by default with the weights left float (``int8_precision`` switches them and ``materialize`` folds them
    to int8), with ``fold_quantize`` stored as int8 at once.

    ``prepare_pt2e`` has already folded each conv-BN pair; the BatchNorms left (after a residual sum, not a
    conv) still make ``convert_pt2e`` trace its QAT patterns, 96 small programs through ``torch.export``, to
    match none of them: about 30 s on 2 cores (pytorch/pytorch#116440 skips the fold only when no BatchNorm
    is left). The test student's and the pretrained student's ``.int8.pte`` are byte-identical without it.
    """
    import contextlib
    from unittest import mock

    from torchao.quantization.pt2e import quantize_pt2e

    fold = "_fold_conv_bn_qat"
    skip = (
        mock.patch.object(quantize_pt2e, fold, lambda m: m)
        if hasattr(quantize_pt2e, fold)
        else contextlib.nullcontext()
    )
    with skip:
        return quantize_pt2e.convert_pt2e(prepared, fold_quantize=fold_quantize)


def export_pte(
    module: torch.nn.Module,
    example: Inputs,
    path: Path,
    delegate: str = "xnnpack",
    int8: Int8Plan | None = None,
) -> tuple[float, dict[str, Any]]:
    """Lower ``module`` to a ``.pte`` at ``path``; returns seconds and the delegation report.

    With ``int8`` the model is int8-quantized first (XNNPACK only).
    """
    import torch
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = XnnpackPartitioner()
    elif delegate == "coreml":
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        partitioner = CoreMLPartitioner()
    else:
        raise ValueError(f"unknown ExecuTorch delegate {delegate!r}")
    source, kept_float, quantization = _quantized(module, example, int8) if int8 else (module, [], {})
    with torch.no_grad():
        exported = torch.export.export(source, example)
        if delegate == "xnnpack" and not int8:  # quantized, it was captured already rewritten
            exported = xnnpack_friendly(exported)
        edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
    info = delegation(edge)
    left = non_delegated_ops(info)
    outside = quantized_outside(left)
    if outside:
        raise ParityError(
            f"the XNNPACK delegate left quantized ops outside it ({', '.join(outside)}): not written"
        )
    program = edge.to_executorch()
    Path(path).write_bytes(program.buffer)
    report = {
        "delegate": delegate,
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": sum(left.values()),
        "non_delegated_ops": dict(sorted(left.items(), key=lambda kv: -kv[1])),
        "kept_float": kept_float,
    } | quantization
    return time.perf_counter() - t0, report


def delegation(edge: Any) -> Any:
    """ExecuTorch's delegation report of a lowered program."""
    from executorch.devtools.backend_debug import get_delegation_info

    return get_delegation_info(edge.exported_program().graph_module)


def non_delegated_ops(info: Any) -> dict[str, int]:
    """The ops a lowering left outside every delegate (``delegation``'s report), by type, with their counts."""
    return {
        b.op_type: b.non_delegated
        for b in info.delegation_by_operator.values()
        if b.non_delegated and b.op_type != "getitem"  # tuple unpacking of a delegate's outputs, not an op
    }


def quantized_outside(left: dict[str, int]) -> list[str]:
    """The quantized ops among ``left``: ExecuTorch's Python runtime has no kernels for them, so running a
    program that holds one would abort the process."""
    return [op for op in left if op.startswith("quantized_decomposed")]


def load_method(path: Path, threads: int = 0, name: str = "forward"):
    """Method ``name`` of a ``.pte`` in ExecuTorch's runtime, on ``threads`` threads (0 = its default)."""
    executorch_available()
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)  # the one knob the Python runtime exposes
    return Runtime.get().load_program(Path(path)).load_method(name)


def run_pte(method, views: Inputs) -> dict[str, np.ndarray]:
    from pbrforge.deploy import OUTPUT_NAMES

    outs = method.execute([v.contiguous() for v in views])
    return {n: o.numpy() for n, o in zip(OUTPUT_NAMES, outs, strict=True)}


def executorch_runner(path: Path, threads: int, contract: DeployContract | None = None) -> Runner:
    """ExecuTorch's own runtime with the delegates built into its Python wheel (XNNPACK; not Core ML)."""
    contract = contract or DeployContract.load(contract_path(path))
    try:
        method = load_method(path, threads)
    except UnavailableError:
        raise
    except Exception as e:  # the runtime raises RuntimeError for any file it cannot load
        if path.name.endswith(".coreml.pte"):
            raise UnavailableError(
                f"{path} is delegated to Core ML, which runs only on Apple devices (not in this runtime)"
            ) from e
        raise DataError(
            f"{path} is not an ExecuTorch program this runtime can load ({type(e).__name__})"
        ) from e
    meta = method.metadata
    shapes = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    sides = [list(meta.output_tensor_meta(i).sizes())[-1] for i in range(meta.num_outputs())]
    check_io(path, contract, shapes, sides)
    return Runner("executorch", contract, lambda v: run_pte(method, v), threads)


def _log_delegation(label: str, delegation: dict[str, Any]) -> None:
    _logger.info(
        "%s delegation: %d XNNPACK subgraphs hold %d nodes; left to portable kernels: %s",
        label,
        delegation["delegated_subgraphs"],
        delegation["delegated_nodes"],
        ", ".join(f"{k} {v}" for k, v in delegation["non_delegated_ops"].items()) or "none",
    )


def _build_xnnpack(job: ExportJob, staged: Path, int8: Int8Plan | None = None) -> Built:
    seconds, delegation = export_pte(job.wrapper, job.example, staged, "xnnpack", int8)
    name = job.paths.artifact(".int8.pte" if int8 else ".pte").name
    _log_delegation("ExecuTorch int8" if int8 else "ExecuTorch", delegation)
    return Built(seconds, info={"delegation": delegation}, deployment={f"executorch {name}": delegation})


def _build_int8(job: ExportJob, staged: Path) -> Built:
    """Calibrated on the held-out views, its precision searched against the job's gate, QAT-tuned if asked."""
    views = job.views()
    plan = Int8Plan(
        views.calibration, views.judged, job.gate, job.training, job.options.qat_steps, job.options.progress
    )
    built = _build_xnnpack(job, staged, plan)
    built.info |= job.calibration_info()
    delegation = built.info["delegation"]
    if "precision" in delegation:
        recipe = {"artifact": job.paths.artifact(".int8.pte").name, **delegation["precision"]}
        recipe |= {k: delegation[k] for k in ("post_training_judged", "qat") if k in delegation}
        built.on_keep = lambda kept: write_json(report_path(kept, "recipe"), recipe)
    return built


def _build_coreml(job: ExportJob, staged: Path) -> Built:
    """Delegated to Core ML: built here, runnable only on Apple devices, so kept unverified."""
    try:
        seconds, delegation = export_pte(job.folded, job.example, staged, "coreml")
    except UnavailableError:
        raise
    except Exception as e:  # the Core ML delegate's converter raises its own types
        raise SkipStep(f"Core ML delegate failed ({type(e).__name__}: {e})") from e
    name = job.paths.artifact(".coreml.pte").name
    return Built(
        seconds,
        deployment={f"executorch {name}": delegation},
        on_keep=lambda kept: write_json(report_path(kept, "delegation"), delegation),
        note=f"(unverified: the Core ML delegate runs only on Apple devices; {delegation['delegated_nodes']} "
        f"nodes delegated, {delegation['non_delegated_nodes']} not)",
    )


def _run_for_check(job: ExportJob, staged: Path) -> Any:
    """The staged program's run; the runtime refusing to load or run it is a skipped step, not a verdict."""
    try:
        run = executorch_runner(staged, 0, job.contract).run
    except DataError as e:
        raise SkipStep(f"ExecuTorch could not run it ({e})") from e

    def guarded(views: Inputs) -> dict[str, np.ndarray]:
        try:
            return run(views)
        except RuntimeError as e:
            raise SkipStep(f"ExecuTorch could not run it ({e})") from e

    return guarded


def _check_fp32(job: ExportJob, staged: Path, built: Built) -> ParityReport:
    """Run in ExecuTorch against PyTorch fp32: per value at ``--fp32-max-abs`` and in render space."""
    run = _run_for_check(job, staged)
    return measure(job, "executorch xnnpack", "ExecuTorch", run, max_abs=job.options.fp32_max_abs)


def _check_int8(job: ExportJob, staged: Path, built: Built) -> ParityReport:
    """On held-out views it was not calibrated on, in render space."""
    run = _run_for_check(job, staged)
    return measure(job, "executorch xnnpack", "ExecuTorch int8", run, job.views().judged)


register(
    Format(
        "executorch", "executorch", ".pte", "executorch", _build_xnnpack, _check_fp32, executorch_runner,
        available=executorch_available,
    )
)  # fmt: skip
register(
    Format(
        "executorch-int8", "executorch", ".int8.pte", "executorch", _build_int8, _check_int8, executorch_runner,
        needs=("executorch",), wanted=lambda options: options.quantize == "int8", available=executorch_available,
    )
)  # fmt: skip
register(
    Format(
        "executorch-coreml", "executorch", ".coreml.pte", "executorch", _build_coreml, None, executorch_runner,
        available=executorch_available,
    )
)  # fmt: skip
