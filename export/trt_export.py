"""TensorRT: an FP16 engine built from the exported ONNX with the TensorRT Python API.

Unverified here: this machine has no GPU and cannot install TensorRT. Written against the documented
TensorRT 10 API (Builder, OnnxParser, optimization profile, timing cache).
"""

from __future__ import annotations

import time
from pathlib import Path

from pbrforge.artifacts import contract_path
from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract
from pbrforge.errors import ToolFailure, UnavailableError
from pbrforge.export.formats import Built, ExportJob, Format, Runner, register
from pbrforge.fileio import atomic_path

WORKSPACE_BYTES = 2 << 30


def tensorrt_module():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UnavailableError(
            "TensorRT is not installed on this machine (it needs NVIDIA's own package index "
            "and a CUDA GPU), so no engine can be built here"
        ) from e
    return trt


def build_engine(
    onnx_path: Path, plan_path: Path, image_size: int, fp16: bool = True, timing_cache: Path | None = None
) -> float:
    """Parse the ONNX, build a (FP16) engine for a fixed 1x3xSxS per view, save it as a .plan; returns seconds."""
    trt = tensorrt_module()
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ToolFailure(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (1, 3, image_size, image_size)
    for name in INPUT_NAMES:
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else Path(plan_path).with_suffix(".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ToolFailure("TensorRT failed to build an engine (see its log above)")
    with atomic_path(Path(plan_path)) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return time.perf_counter() - t0


def run_engine(plan_path: Path, inputs: dict, outputs: list[str]) -> dict:
    """Execute a .plan on the GPU with torch-allocated buffers (execute_async_v3 with tensor addresses)."""
    trt = tensorrt_module()
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError("running a TensorRT engine needs a CUDA GPU, and this machine has none")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    feeds = {n: torch.as_tensor(x).float().cuda().contiguous() for n, x in inputs.items()}
    results = {}
    for n, t in feeds.items():
        context.set_input_shape(n, tuple(t.shape))
        context.set_tensor_address(n, t.data_ptr())
    for n in outputs:
        shape = tuple(context.get_tensor_shape(n))
        results[n] = torch.empty(shape, dtype=torch.float32, device="cuda")
        context.set_tensor_address(n, results[n].data_ptr())
    context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {n: t.cpu().numpy() for n, t in results.items()}


def tensorrt_runner(path: Path, threads: int, contract: DeployContract | None = None) -> Runner:
    """A CUDA GPU with TensorRT: neither exists here, so this says so in one sentence."""
    import torch

    tensorrt_module()
    if not torch.cuda.is_available():
        raise UnavailableError("a TensorRT engine runs only on a CUDA GPU, and this machine has none")

    def run(views: tuple) -> dict:
        return run_engine(path, dict(zip(INPUT_NAMES, views, strict=True)), list(OUTPUT_NAMES))

    return Runner("tensorrt", contract or DeployContract.load(contract_path(path)), run, threads)


def _build(job: ExportJob, staged: Path) -> Built:
    paths = job.paths
    seconds = build_engine(
        paths.artifact(".onnx"),
        staged,
        job.contract.image_size,
        job.options.fp16,
        paths.artifact(".timing.cache"),
    )
    return Built(seconds, note="(unverified: no GPU parity here)")


register(
    Format(
        "tensorrt", "tensorrt", ".plan", "tensorrt", _build, None, tensorrt_runner,
        needs=("onnx",), available=tensorrt_module,
    )
)  # fmt: skip
