"""Core ML: mlprogram conversion (FP16, iOS17+), metadata, k-means palettization, and honest parity.

On macOS parity runs ``MLModel.predict``. Elsewhere Core ML cannot predict, so the numerics are
measured in PyTorch: the model in float16, and the model with the palettized weights read back from the
saved .mlpackage (LUT and indices expanded to dense) put into the BN-folded PyTorch model.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pbrforge import __version__
from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract
from pbrforge.errors import ConfigError, ToolFailure, UnavailableError
from pbrforge.export.gates import RenderGate
from pbrforge.export.parity import COREML_MIN_PSNR, ParityReport, comparison
from pbrforge.fileio import atomic_path

TARGETS = ("iOS17", "iOS18")
NBITS = (8, 6, 4)
GROUP_SIZE_4BIT = 8  # MobileNetV3 widths (24, 40, 120, 168, 184) are multiples of 8, not of 16
READBACK_MATCH_TOLERANCE = 0.35  # relative L2 error accepted when matching a dense LUT weight to a tensor


def _ct():
    try:
        import coremltools as ct
    except ImportError as e:
        raise UnavailableError("Core ML export needs the coreml extra: pip install 'pbrforge[coreml]'") from e
    return ct


def check_target(min_target: str, nbits: int | None) -> None:
    if min_target not in TARGETS:
        raise ConfigError(f"--min-target {min_target} is not one of {', '.join(TARGETS)}")
    if nbits is not None and nbits not in NBITS:
        raise ConfigError(f"--nbits {nbits} is not one of {NBITS}")
    if nbits == 4 and min_target == "iOS17":
        raise ConfigError(
            "4-bit palettization uses per-grouped-channel LUTs, which need iOS18: "
            "pass --min-target iOS18 or choose --nbits 8 or 6"
        )


def convert_coreml(
    wrapper: nn.Module,
    example: tuple[torch.Tensor, ...],
    fp16: bool,
    min_target: str,
    contract: DeployContract,
):
    """torch.export -> ct.convert to an mlprogram with image inputs and contract metadata (not yet saved)."""
    ct = _ct()
    program = torch.export.export(wrapper, example).run_decompositions({})
    inputs = [
        ct.ImageType(name=n, shape=tuple(x.shape), color_layout=ct.colorlayout.RGB, scale=1.0)
        for n, x in zip(INPUT_NAMES, example, strict=True)
    ]
    mlmodel = ct.convert(
        program,
        inputs=inputs,
        outputs=[ct.TensorType(name=n) for n in OUTPUT_NAMES],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        minimum_deployment_target=getattr(ct.target, min_target),
        compute_units=ct.ComputeUnit.CPU_AND_NE,
    )
    set_metadata(mlmodel, contract, fp16)
    return mlmodel


def set_metadata(mlmodel, contract: DeployContract, fp16: bool) -> None:
    mlmodel.author = "pbrforge"
    mlmodel.version = __version__
    mlmodel.short_description = (
        f"PBR maps from three photos of a surface: {contract.model_name} "
        f"({contract.image_size}px in, {contract.output_size}px out, "
        f"{'FP16' if fp16 else 'FP32'})."
    )
    for n in INPUT_NAMES:
        mlmodel.input_description[n] = (
            f"A photo of the surface, RGB 0-255, {contract.image_size}x{contract.image_size}, "
            "camera fixed, light moved between views; view order does not matter."
        )
    text = {
        "albedo": "sRGB base colour in [0, 1], (1, 3, S, S)",
        "roughness": "perceptual roughness in [0, 1], (1, 1, S, S)",
        "metallic": "metalness in [0, 1], (1, 1, S, S)",
        "normal": "unit tangent-space normal (OpenGL +Y) in [-1, 1], (1, 3, S, S); PNG stores (n + 1) / 2",
    }
    for n in OUTPUT_NAMES:
        mlmodel.output_description[n] = text[n]
    from dataclasses import asdict

    mlmodel.user_defined_metadata["pbrforge.contract"] = json.dumps(asdict(contract))


def palettize(mlmodel, nbits: int):
    """k-means palettization; 4 bits per grouped channel (iOS18), 8 and 6 per tensor. Never falls back."""
    _ct()
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    if nbits == 4:
        op = OpPalettizerConfig(
            mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=GROUP_SIZE_4BIT
        )
    else:
        op = OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor")
    try:
        out = palettize_weights(mlmodel, OptimizationConfig(global_config=op))
    except Exception as e:
        raise ToolFailure(
            f"{nbits}-bit palettization failed ({type(e).__name__}: {e}); no model was written"
        ) from e
    if count_lut_ops(out) == 0:
        raise ToolFailure(f"{nbits}-bit palettization changed no weight; no model was written")
    return out


def save_mlpackage(mlmodel, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        mlmodel.save(str(tmp))


def load_program(path: Path):
    """The MIL program of a saved .mlpackage (works without macOS)."""
    ct = _ct()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    return milproto_load(
        model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir
    ), spec


def count_lut_ops(mlmodel) -> int:
    prog = mlmodel._mil_program
    return sum(
        1 for op in prog.functions["main"].operations if op.op_type.startswith("constexpr_lut_to_dense")
    )


def dense_lut_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """Every palettized weight of a saved package, expanded from its LUT and indices."""
    program, _ = load_program(path)
    return program_lut_weights(program)


def program_lut_weights(program) -> list[tuple[str, np.ndarray]]:
    """Every palettized weight of a MIL program (saved or in memory), expanded from its LUT and indices."""
    out = []
    for op in program.functions["main"].operations:
        if op.op_type.startswith("constexpr_lut_to_dense"):
            out.append((op.name, np.asarray(op.materialized_val_inference(), dtype=np.float32)))
    return out


def match_weights(folded: nn.Module, dense: list[tuple[str, np.ndarray]]) -> dict[str, str]:
    """Each dense weight's PyTorch parameter: the unused same-sized one it is closest to (within tolerance)."""
    params = {n: p.detach().float() for n, p in folded.named_parameters() if p.ndim >= 2}
    used: dict[str, str] = {}
    for mil_name, w in dense:
        best, best_err = None, float("inf")
        cand = torch.from_numpy(w)
        for name, p in params.items():
            if name in used.values() or p.numel() != cand.numel():
                continue
            err = float((cand.reshape(p.shape) - p).norm() / (p.norm() + 1e-12))
            if err < best_err:
                best, best_err = name, err
        if best is not None and best_err <= READBACK_MATCH_TOLERANCE:
            used[mil_name] = best
    return used


def apply_readback(folded: nn.Module, dense: list[tuple[str, np.ndarray]]) -> tuple[nn.Module, int]:
    """Put each dense weight into the same-shaped parameter it is closest to; returns (model, matched)."""
    import copy

    model = copy.deepcopy(folded).float()
    params = dict(model.named_parameters())
    matched = match_weights(model, dense)
    with torch.no_grad():
        for mil_name, w in dense:
            if mil_name in matched:
                target = params[matched[mil_name]]
                target.copy_(torch.from_numpy(w).reshape(target.shape))
    return model, len(matched)


def _run(model: nn.Module, example: tuple[torch.Tensor, ...], dtype: torch.dtype) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = model.to(dtype)(*(x.to(dtype) for x in example))
    model.float()
    return {n: o.float().numpy() for n, o in zip(OUTPUT_NAMES, outs, strict=True)}


def coreml_parity(
    path: Path,
    folded: nn.Module,
    reference: dict[str, np.ndarray],
    example: tuple[torch.Tensor, ...],
    fp16: bool,
    palettized: bool,
    render_gate: RenderGate | None = None,
    palettized_gate: RenderGate | None = None,
    palettized_tensor_gate: bool = True,
) -> ParityReport:
    """Predict on macOS; elsewhere measure FP16 and read-back palettized numerics in PyTorch.

    Gates: PSNR >= 35 dB per output (for palettized weights only if ``palettized_tensor_gate``: a mixed-bit
    recipe is judged in render space alone), and ``render_gate`` (FP16) or ``palettized_gate`` (palettized
    weights; None records the render figures without judging them).
    """
    if platform.system() == "Darwin":
        ct = _ct()
        from PIL import Image

        mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_AND_NE)
        feed = {
            n: Image.fromarray(x[0].permute(1, 2, 0).numpy().astype(np.uint8), "RGB")
            for n, x in zip(INPUT_NAMES, example, strict=True)
        }
        gate = palettized_gate if palettized else render_gate
        return ParityReport(
            "coreml predict (macOS)",
            [comparison("Core ML", reference, mlmodel.predict(feed), "psnr_db", COREML_MIN_PSNR, gate)],
        )
    report = ParityReport("pytorch emulation (Core ML cannot predict on this OS)", [])
    if fp16:
        outputs = _run(folded, example, torch.float16)
        report.comparisons.append(
            comparison("Core ML FP16 (emulated)", reference, outputs, "psnr_db", COREML_MIN_PSNR, render_gate)
        )
    if palettized:
        dense = dense_lut_weights(path)
        model, matched = apply_readback(folded, dense)
        outputs = _run(model, example, torch.float32)
        report.comparisons.append(
            comparison(
                "Core ML palettized (read back)",
                reference,
                outputs,
                "psnr_db" if palettized_tensor_gate else None,
                COREML_MIN_PSNR,
                palettized_gate,
            )
        )
        report.info["readback"] = {"lut_weights": len(dense), "matched_to_pytorch": matched}
        if matched < len(dense):
            report.problems.append(
                f"only {matched} of {len(dense)} palettized weights could be matched to the "
                "PyTorch model, so its numerics cannot be measured honestly"
            )
    if not (fp16 or palettized):
        report.info["note"] = "FP32 mlprogram: nothing to emulate here; predict on macOS to measure it"
    return report
