"""Static int8 ONNX (QDQ) for ONNX Runtime: calibrated on real held-out views, judged on other ones.

``onnxruntime.quantization`` does the work: ``quant_pre_process`` folds constants and fuses the graph
(symbolic shape inference is skipped: it fails on the exported graph's ``Concat``), then
``quantize_static`` writes QuantizeLinear/DequantizeLinear pairs with per-channel int8 weights (symmetric)
and uint8 activations calibrated by MinMax over the calibration views. ORT then fuses DQ -> op -> Q into
integer kernels (QLinearConv and friends) wherever the op has one; what stays in float, and where the
time goes, ``profile`` measures with ORT's own profiler.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from pbrforge.deploy import INPUT_NAMES
from pbrforge.export.formats import Built, ExportJob, Format, measure, register
from pbrforge.export.onnx_export import onnx_runner
from pbrforge.export.parity import ParityReport
from pbrforge.fileio import atomic_path

_logger = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, batches: list[Inputs]):
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        return {n: x.numpy().astype(np.float32) for n, x in zip(INPUT_NAMES, batch, strict=True)}


def quantize_onnx(fp32: Path, out: Path, calibration: list[Inputs]) -> float:
    """Write the static int8 QDQ model of ``fp32`` to ``out`` atomically; returns seconds taken."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pbrforge-int8-") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        with atomic_path(out) as tmp:
            quantize_static(
                str(pre),
                str(tmp),
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
    return time.perf_counter() - t0


def profile(path: Path, example: Inputs, runs: int = 10, threads: int = 2) -> dict:
    """Where ONNX Runtime spends its time: milliseconds per run by op type, and how much of it is integer."""
    import onnxruntime as ort

    from pbrforge.export.onnx_export import run_onnx

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


def node_census(path: Path) -> dict[str, int]:
    """Op types of the optimised graph ORT actually runs (after its QDQ fusions)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pbrforge-opt-") as work:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(work) / "opt.onnx")
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    counts: dict[str, int] = defaultdict(int)
    for node in graph.node:
        counts[node.op_type] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _build(job: ExportJob, staged: Path) -> Built:
    """Quantize the kept fp32 model, then census and profile both: where the int8 time goes is part of the report."""
    fp32 = job.paths.artifact(".onnx")
    seconds = quantize_onnx(fp32, staged, job.views().calibration)
    fp32_profile, int8_profile = profile(fp32, job.example), profile(staged, job.example)
    _logger.info(
        "where ONNX Runtime spends its time (ms per run, %s px):\n  fp32: %s\n  int8: %s\n  int8 time in integer "
        "kernels and Q/DQ: %.0f%%",
        job.example[0].shape[-1],
        ", ".join(fp32_profile["top"]),
        ", ".join(int8_profile["top"]),
        100 * int8_profile["integer_or_qdq_share"],
    )
    info = {
        "ort_nodes_after_fusion": node_census(staged),
        "profile_fp32": fp32_profile,
        "profile_int8": int8_profile,
    }
    return Built(seconds, info=info | job.calibration_info())


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
