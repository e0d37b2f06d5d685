"""ONNX export with the dynamo exporter, a full checker pass, and an ONNX Runtime parity gate."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES
from pbrforge.errors import UnavailableError
from pbrforge.export.gates import FP32_MAX_ABS, RenderGate
from pbrforge.export.parity import ParityReport, comparison
from pbrforge.fileio import atomic_path

MIN_OPSET = 18
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


def export_onnx(
    wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int = MIN_OPSET
) -> float:
    """Export ``wrapper`` to ``path`` atomically and check it; returns seconds taken."""
    try:
        import onnx
    except ImportError as e:
        raise UnavailableError("ONNX export needs the onnx extra: pip install 'pbrforge[onnx]'") from e
    t0 = time.perf_counter()
    n_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    external = n_bytes > EXTERNAL_DATA_BYTES
    path = Path(path)
    with atomic_path(path) as tmp:
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            opset_version=max(opset, MIN_OPSET),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            external_data=external,
            verbose=False,
        )
        program.save(str(tmp), external_data=external)
        onnx.checker.check_model(str(tmp), full_check=True)
        if external:  # the weights file is named after the temporary graph file; keep them together
            data = tmp.with_name(tmp.name + ".data")
            if data.exists():
                data.rename(path.with_name(path.name + ".data"))
    return time.perf_counter() - t0


def onnx_session(path: Path, threads: int | None = None, level: str = "all"):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UnavailableError("ONNX Runtime is not installed: pip install 'pbrforge[onnx]'") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    feed = {name: x.numpy().astype(np.float32) for name, x in zip(INPUT_NAMES, inputs, strict=True)}
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feed), strict=True))


def onnx_parity(
    path: Path,
    reference: dict[str, np.ndarray],
    example: tuple[torch.Tensor, ...],
    render_gate: RenderGate | None = None,
    max_abs: float = FP32_MAX_ABS,
) -> ParityReport:
    """ONNX Runtime vs PyTorch fp32, gated at ``max_abs`` per output and by the render gate."""
    outputs = run_onnx(onnx_session(path), example)
    return ParityReport(
        "onnxruntime",
        [comparison("ONNX", reference, outputs, "max_abs", max_abs, render_gate or RenderGate())],
    )
