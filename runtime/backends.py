"""One runner per artifact, all taking the same three uint8-valued views and returning the contract's named maps.

Exported artifacts are looked up by suffix in the exporter's format registry (``export/formats.py``), which
owns each format's runner; a checkpoint (``.pt``, ``.pth``, ``.safetensors``) runs in PyTorch eager.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pbrforge.errors import DataError
from pbrforge.export.formats import BACKENDS, Runner, Views

if (
    TYPE_CHECKING
):  # torch, numpy and the contract load with the runner, so `run_inference.py --help` stays fast
    import numpy as np

    from pbrforge.deploy import DeployContract

__all__ = ["BACKENDS", "Runner", "Views", "load_runner", "torch_runner"]

CHECKPOINT_SUFFIXES = (
    ".pt",
    ".pth",
    ".safetensors",
)  # .safetensors: a pretrained model (the shipped default)


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


def load_runner(artifact: Path, backend: str = "auto", threads: int = 0) -> Runner:
    """The runner of ``artifact``: its format's, found by suffix, or the one ``backend`` names."""
    from pbrforge.export.formats import for_artifact, registered

    artifact = Path(artifact)
    if not artifact.exists():
        raise DataError(f"artifact {artifact} does not exist")
    if backend not in ("auto", *BACKENDS):
        raise DataError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    import torch

    threads = threads or torch.get_num_threads()
    is_checkpoint = artifact.suffix.lower() in CHECKPOINT_SUFFIXES
    if backend == "torch" or (backend == "auto" and is_checkpoint):
        return torch_runner(artifact, threads)
    if backend == "auto":
        try:
            fmt = for_artifact(artifact)
        except DataError:
            endings = sorted({f.suffix for f in registered()} | set(CHECKPOINT_SUFFIXES))
            raise DataError(
                f"cannot tell the backend of {artifact} from its name; known endings: {', '.join(endings)} "
                "(or pass --backend)"
            ) from None
        return fmt.runner(artifact, threads)
    return next(f for f in registered() if f.backend == backend).runner(artifact, threads)
