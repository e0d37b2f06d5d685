"""ONNX (``.onnx``): the dynamo exporter, a full checker pass, ONNX Runtime as its runner and fp32 gate."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pbrforge.artifacts import contract_path
from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract
from pbrforge.errors import DataError, UnavailableError
from pbrforge.export.formats import Built, ExportJob, Format, Runner, check_io, measure, register
from pbrforge.export.parity import ParityReport
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
        if program is None:  # only the legacy exporter returns nothing; dynamo=True always returns a program
            raise RuntimeError("torch.onnx.export returned no program")
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


def onnx_feed(inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """The views as ONNX Runtime's input dict."""
    return {name: x.numpy().astype(np.float32) for name, x in zip(INPUT_NAMES, inputs, strict=True)}


def run_onnx(session, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), onnx_feed(inputs)), strict=True))


def onnx_runner(
    path: Path, threads: int, contract: DeployContract | None = None, level: str = "all"
) -> Runner:
    """ONNX Runtime on the CPU for ``.onnx``, ``.ort`` and ``.int8.onnx``; a file that is not a pbrforge ONNX
    model is one sentence."""
    contract = contract or DeployContract.load(contract_path(path))
    try:
        session = onnx_session(path, threads=threads, level=level)
    except UnavailableError:
        raise
    except Exception as e:  # onnxruntime raises its own types for a file that is not a model
        raise DataError(f"{path} is not an ONNX model that ONNX Runtime can load ({type(e).__name__})") from e
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(INPUT_NAMES) or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise DataError(
            f"{path} is not a pbrforge model: it takes {sorted(inputs)} and returns {outputs}, "
            f"expected {list(INPUT_NAMES)} and {list(OUTPUT_NAMES)}"
        )
    check_io(path, contract, list(inputs.values()), [o.shape[-1] for o in session.get_outputs()])
    return Runner("onnx", contract, lambda v: run_onnx(session, v), threads)


def check_fp32(job: ExportJob, staged: Path, built: Built) -> ParityReport:
    """ONNX Runtime vs PyTorch fp32 on the parity example: per value at ``--fp32-max-abs`` and in render space."""
    runner = onnx_runner(staged, 0, job.contract)
    return measure(job, "onnxruntime", "ONNX", runner.run, max_abs=job.options.fp32_max_abs)


def _build(job: ExportJob, staged: Path) -> Built:
    return Built(export_onnx(job.wrapper, job.example, staged))


register(Format("onnx", "onnx", ".onnx", "onnx", _build, check_fp32, onnx_runner))
