"""Core ML W8A8 (int8 weights and activations, iOS17): what recent Neural Engines run fastest.

Core ML's own ``linear_quantize_activations`` calibrates by running the model, which needs macOS, so this
takes the PyTorch side: ``coremltools.optimize.torch.quantization.LinearQuantizer`` inserts fake-quant
observers, calibration views pass through with no training step (``w8a8_precision.calibrate``),
``finalize`` fixes the scales, and the traced result converts to MIL ``quantize``/``dequantize`` pairs and
int8 weights. The finalized fake-quant model is the package's numerics on Linux, so parity is measured with it.

The PLK bottleneck's two functional convolutions (a kernel shared across blocks, and per-sample dynamic
3x3 weights) are left in float: their weights are not parameters an observer can own.

Which other layers stay float is chosen in render space against the job's gate (``w8a8_precision``, the
``.pte``'s search), and ``--qat-steps`` fine-tunes the chosen model through its fake-quants before
``finalize``; ``OUTPUT.w8a8.mlpackage.recipe.json`` says which layers stayed float and why, with the QAT report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbrforge.artifacts import report_path
from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract
from pbrforge.errors import ToolFailure
from pbrforge.export import w8a8_precision
from pbrforge.export.coreml_export import _ct, coreml_runner, save_mlpackage, set_metadata
from pbrforge.export.formats import Built, ExportJob, Format, measure, register
from pbrforge.export.int8_precision import render_figures_of
from pbrforge.export.parity import ParityReport
from pbrforge.fileio import write_json

_logger = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]
QDQ = ("quantize", "dequantize")
NOT_COMPUTE = (
    "const",
    "constexpr_affine_dequantize",
    "constexpr_blockwise_shift_scale",
    *QDQ,
)  # constants first


def convert_w8a8(final: nn.Module, example: Inputs, min_target: str, contract: DeployContract):
    """Trace the fake-quant model and convert it to an mlprogram with int8 weights and activations."""
    ct = _ct()
    with torch.no_grad():
        traced = torch.jit.trace(final, example)
    mlmodel = ct.convert(
        traced,
        inputs=[
            ct.ImageType(name=n, shape=tuple(x.shape), color_layout=ct.colorlayout.RGB, scale=1.0)
            for n, x in zip(INPUT_NAMES, example, strict=True)
        ],
        outputs=[ct.TensorType(name=n) for n in OUTPUT_NAMES],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=getattr(ct.target, min_target),
        compute_units=ct.ComputeUnit.CPU_AND_NE,
    )
    set_metadata(mlmodel, contract, fp16=True)
    mlmodel.short_description += " W8A8: int8 weights and activations."
    return mlmodel


def op_census(mlmodel) -> dict:
    """Which compute ops of the converted program sit between dequantize and quantize, and which stay float.

    An op counts as int8 when every non-constant input comes from ``dequantize`` and its output feeds a
    ``quantize``: the Neural Engine can then run it on int8 tensors.
    """
    ops = list(mlmodel._mil_program.functions["main"].operations)
    int8: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    for op in ops:
        if op.op_type in NOT_COMPUTE:
            continue
        sources = [v.op for v in _vars(op.inputs.values())]
        sources = [
            s for s in sources if s is not None and s.op_type not in NOT_COMPUTE[:3]
        ]  # weights, not data
        fed_q = all(s.op_type == "dequantize" for s in sources) and sources
        to_q = any(child.op_type == "quantize" for out in op.outputs for child in out.child_ops)
        (int8 if fed_q and to_q else floats)[op.op_type] += 1
    counts = Counter(op.op_type for op in ops)
    return {
        "quantize": counts["quantize"],
        "dequantize": counts["dequantize"],
        "int8_weights": counts["constexpr_affine_dequantize"] + counts["constexpr_blockwise_shift_scale"],
        "int8_ops": dict(int8.most_common()),
        "float_ops": dict(floats.most_common()),
    }


def _vars(values) -> list:
    """An op's input variables, with the lists some ops take (concat's values) flattened."""
    out: list = []
    for v in values:
        out.extend(v if isinstance(v, list | tuple) else [v])
    return [v for v in out if hasattr(v, "op")]


def quantized(job: ExportJob) -> tuple[nn.Module, dict[str, Any]]:
    """The finalized fake-quant model: its float layers searched for the job's gate, QAT-tuned if asked; and
    the recipe (the search, the judged figures before QAT and the QAT report)."""
    views = job.views()
    found, chosen, removed = w8a8_precision.search(job)
    recipe: dict[str, Any] = {
        "artifact": job.paths.artifact(".w8a8.mlpackage").name,
        **found.recipe(),
        "layers": w8a8_precision.precisions(found),
        "fake_quants_removed": removed,
        "out_of_reach": w8a8_precision.out_of_reach(found),
    }
    judged = render_figures_of(job.wrapper, views.judged)  # the views the gate judges, never searched on
    final = chosen.finalized()
    recipe["post_training_judged"] = judged(final)
    if job.options.qat_steps:
        recipe["qat"] = w8a8_precision.fine_tune(
            chosen,
            job.wrapper,
            job.training or list(views.calibration),
            job.options.qat_steps,
            job.options.progress,
        )
        final = chosen.finalized()
        recipe["qat"]["judged"] = judged(final)
    return final, recipe


def _build(job: ExportJob, staged: Path) -> Built:
    """Quantize the BN-folded model, convert and save it; the fake-quant model goes to ``check``."""
    t0 = time.perf_counter()
    final, recipe = quantized(job)
    mlmodel = convert_w8a8(final, job.example, job.options.min_target, job.contract)
    census = op_census(mlmodel)
    if census["quantize"] == 0:
        raise ToolFailure("the converted W8A8 program holds no quantize op; no model was written")
    save_mlpackage(mlmodel, staged)
    _logger.info(
        "W8A8 program: %d quantize, %d dequantize, %d int8 weights; ops between dequantize and quantize: %s; "
        "ops left in float: %s",
        census["quantize"],
        census["dequantize"],
        census["int8_weights"],
        ", ".join(f"{k} {v}" for k, v in census["int8_ops"].items()) or "none",
        ", ".join(f"{k} {v}" for k, v in census["float_ops"].items()) or "none",
    )
    info = {"precision": recipe, "mil": census, "min_target": job.options.min_target} | job.calibration_info()
    built = Built(time.perf_counter() - t0, info=info, state=final)
    built.on_keep = lambda kept: write_json(report_path(kept, "recipe"), recipe)
    return built


def _check(job: ExportJob, staged: Path, built: Built) -> ParityReport:
    """The fake-quant model (the package's numerics; Core ML cannot predict here) on held-out views."""
    model = built.state

    def run(views: Inputs) -> dict:
        with torch.no_grad():
            return {n: o.numpy() for n, o in zip(OUTPUT_NAMES, model(*views), strict=True)}

    return measure(
        job,
        "pytorch fake-quant (the W8A8 package's numerics; Core ML cannot predict on this OS)",
        "Core ML W8A8 (fake-quant)",
        run,
        job.views().judged,
    )


register(
    Format(
        "coreml-w8a8", "coreml", ".w8a8.mlpackage", "coreml", _build, _check, coreml_runner,
        needs=("coreml",), wanted=lambda options: options.quantize == "w8a8", available=_ct,
    )
)  # fmt: skip
