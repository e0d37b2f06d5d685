"""One runner per backend, all taking the same three uint8-valued views and returning the contract's named maps."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pbrforge.errors import DataError, UnavailableError

if (
    TYPE_CHECKING
):  # torch, numpy and the contract load with the runner, so `run_inference.py --help` stays fast
    import numpy as np
    import torch

    from pbrforge.deploy import DeployContract

SUFFIX_BACKEND = {
    ".pt": "torch",
    ".pth": "torch",
    ".safetensors": "torch",  # a pretrained model (the shipped default)
    ".onnx": "onnx",
    ".ort": "onnx",  # ONNX Runtime's mobile format: the same runtime loads it
    ".mlpackage": "coreml",
    ".pte": "executorch",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
}
BACKENDS = ("torch", "onnx", "executorch", "coreml", "tensorrt")

Views = tuple["torch.Tensor", ...]  # three (1, 3, H, W) float tensors of whole numbers in 0..255


@dataclass
class Runner:
    backend: str
    contract: DeployContract
    run: Callable[[Views], dict[str, np.ndarray]]
    threads: int


def backend_for(artifact: Path, backend: str) -> str:
    if backend != "auto":
        return backend
    suffix = Path(artifact).suffix.lower()
    if suffix not in SUFFIX_BACKEND:
        raise DataError(
            f"cannot tell the backend of {artifact} from its extension; known: "
            f"{', '.join(sorted(SUFFIX_BACKEND))} (or pass --backend)"
        )
    return SUFFIX_BACKEND[suffix]


def torch_runner(checkpoint: Path, threads: int, contract: DeployContract | None = None) -> Runner:
    """PyTorch eager from a checkpoint, through the same export wrapper (normalisation inside)."""
    import torch

    from pbrforge.deploy import OUTPUT_NAMES, build_contract
    from pbrforge.export.wrappers import PBRExportWrapper
    from pbrforge.models import model_from_checkpoint

    model, cfg, _ = model_from_checkpoint(checkpoint)
    full = build_contract(cfg)
    contract = contract or full
    use_sr = contract.sr_scale == full.sr_scale
    # a reference for an artifact must be the architecture the artifact came from
    if contract is not full:
        mine = build_contract(cfg, contract.image_size, use_sr)
        same_model = not contract.model_hash or contract.model_hash == mine.model_hash
        if not same_model or (cfg.family, mine.output_size) != (contract.family, contract.output_size):
            raise DataError(
                f"--reference {checkpoint} is a {cfg.family} {cfg.name} (model {mine.model_hash}) giving "
                f"{mine.output_size}px maps, but the artifact was exported from a {contract.family} "
                f"{contract.model_name} (model {contract.model_hash or 'unknown'}) giving {contract.output_size}px"
            )
    wrapper = PBRExportWrapper(model, use_sr=use_sr).eval()

    def run(views: Views) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {n: o.numpy() for n, o in zip(OUTPUT_NAMES, wrapper(*views), strict=True)}

    return Runner("torch", contract, run, threads)


def onnx_runner(path: Path, threads: int, level: str = "all") -> Runner:
    """ONNX Runtime on the CPU; a file that is not a pbrforge ONNX model is one sentence."""
    from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract, contract_path
    from pbrforge.export.onnx_export import onnx_session, run_onnx

    contract = DeployContract.load(contract_path(path))
    try:
        session = onnx_session(path, threads=threads, level=level)
    except UnavailableError:
        raise
    except Exception as e:  # onnxruntime raises its own types for a file that is not a model
        raise DataError(f"{path} is not an ONNX model that ONNX Runtime can load ({type(e).__name__})") from e
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    wanted = [1, 3, contract.image_size, contract.image_size]
    if sorted(inputs) != sorted(INPUT_NAMES) or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise DataError(
            f"{path} is not a pbrforge model: it takes {sorted(inputs)} and returns {outputs}, "
            f"expected {list(INPUT_NAMES)} and {list(OUTPUT_NAMES)}"
        )
    if any(list(shape) != wanted for shape in inputs.values()):
        raise DataError(
            f"{path} takes inputs of shape {list(inputs.values())[0]}, its contract says {wanted}"
        )
    sides = {o.name: o.shape[-1] for o in session.get_outputs()}
    if any(side != contract.output_size for side in sides.values()):
        raise DataError(f"{path} returns maps of side {sides}, its contract says {contract.output_size}")
    return Runner("onnx", contract, lambda v: run_onnx(session, v), threads)


def executorch_runner(path: Path, threads: int) -> Runner:
    """ExecuTorch's own runtime with the delegates built into its Python wheel (XNNPACK; not Core ML)."""
    from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract, contract_path
    from pbrforge.export.executorch_export import load_method, run_pte

    contract = DeployContract.load(contract_path(path))
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
    wanted = [1, 3, contract.image_size, contract.image_size]
    shapes = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    sides = [list(meta.output_tensor_meta(i).sizes())[-1] for i in range(meta.num_outputs())]
    if len(shapes) != len(INPUT_NAMES) or len(sides) != len(OUTPUT_NAMES):
        raise DataError(
            f"{path} is not a pbrforge model: it takes {len(shapes)} inputs and returns {len(sides)} outputs, "
            f"expected {len(INPUT_NAMES)} and {len(OUTPUT_NAMES)}"
        )
    if any(shape != wanted for shape in shapes) or any(side != contract.output_size for side in sides):
        raise DataError(
            f"{path} takes {shapes[0]} and returns maps of side {sides[0]}, its contract says {wanted} "
            f"and {contract.output_size}"
        )
    return Runner("executorch", contract, lambda v: run_pte(method, v), threads)


def coreml_runner(path: Path, threads: int) -> Runner:
    if platform.system() != "Darwin":
        raise UnavailableError(
            "Core ML prediction needs macOS; on this machine convert and inspect only "
            "(export/converter.py reports emulated numerics)"
        )
    import coremltools as ct
    import numpy as np
    from PIL import Image

    from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract, contract_path

    mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_AND_NE)

    def run(views: Views) -> dict[str, np.ndarray]:
        feed = {
            n: Image.fromarray(v[0].permute(1, 2, 0).numpy().astype(np.uint8), "RGB")
            for n, v in zip(INPUT_NAMES, views, strict=True)
        }
        out = mlmodel.predict(feed)
        return {n: np.asarray(out[n], dtype=np.float32) for n in OUTPUT_NAMES}

    return Runner("coreml", DeployContract.load(contract_path(path)), run, threads)


def tensorrt_runner(path: Path, threads: int) -> Runner:
    import torch

    from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract, contract_path
    from pbrforge.export.trt_export import run_engine, tensorrt_module

    tensorrt_module()  # one sentence when absent
    if not torch.cuda.is_available():
        raise UnavailableError("a TensorRT engine runs only on a CUDA GPU, and this machine has none")

    def run(views: Views) -> dict[str, np.ndarray]:
        return run_engine(path, dict(zip(INPUT_NAMES, views, strict=True)), list(OUTPUT_NAMES))

    return Runner("tensorrt", DeployContract.load(contract_path(path)), run, threads)


def load_runner(artifact: Path, backend: str = "auto", threads: int = 0) -> Runner:
    artifact = Path(artifact)
    if not artifact.exists():
        raise DataError(f"artifact {artifact} does not exist")
    import torch

    threads = threads or torch.get_num_threads()
    kind = backend_for(artifact, backend)
    factories = {
        "torch": torch_runner,
        "onnx": onnx_runner,
        "executorch": executorch_runner,
        "coreml": coreml_runner,
        "tensorrt": tensorrt_runner,
    }
    if kind not in factories:
        raise DataError(f"unknown backend {kind!r}; known: {', '.join(BACKENDS)}")
    return factories[kind](artifact, threads)
