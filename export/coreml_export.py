"""Core ML: mlprogram conversion (FP16, iOS17+), metadata, k-means palettization, and honest parity.

On macOS parity runs ``MLModel.predict``. Elsewhere Core ML cannot predict, so the numerics are
measured in PyTorch: the model in float16, and the model with the palettized weights read back from the
saved .mlpackage (LUT and indices expanded to dense) put into the BN-folded PyTorch model.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pbrforge import __version__
from pbrforge.artifacts import ArtifactPaths, contract_path, sidecar_path
from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES, DeployContract
from pbrforge.errors import ToolFailure, UnavailableError
from pbrforge.export.formats import Built, ExportJob, Format, Runner, compare_run, register
from pbrforge.export.parity import COREML_MIN_PSNR, ParityReport
from pbrforge.fileio import atomic_path, write_json

_logger = logging.getLogger(__name__)

GROUP_SIZE_4BIT = 8  # MobileNetV3 widths (24, 40, 120, 168, 184) are multiples of 8, not of 16
READBACK_MATCH_TOLERANCE = 0.35  # relative L2 error accepted when matching a dense LUT weight to a tensor


def _ct():
    try:
        import coremltools as ct
    except ImportError as e:
        raise UnavailableError("Core ML export needs the coreml extra: pip install 'pbrforge[coreml]'") from e
    return ct


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


def _run(model: nn.Module, views: tuple[torch.Tensor, ...], dtype: torch.dtype) -> dict[str, np.ndarray]:
    """The PyTorch model in ``dtype``: Core ML's FP16 numerics where Core ML cannot predict."""
    with torch.no_grad():
        outs = model.to(dtype)(*(x.to(dtype) for x in views))
    model.float()
    return {n: o.float().numpy() for n, o in zip(OUTPUT_NAMES, outs, strict=True)}


def coreml_runner(path: Path, threads: int, contract: DeployContract | None = None) -> Runner:
    """``MLModel.predict`` on the CPU and Neural Engine: macOS only."""
    if platform.system() != "Darwin":
        raise UnavailableError(
            "Core ML prediction needs macOS; on this machine convert and inspect only "
            "(the exporter reports emulated numerics)"
        )
    from PIL import Image

    ct = _ct()
    contract = contract or DeployContract.load(contract_path(path))
    mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_AND_NE)

    def run(views: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        feed = {
            n: Image.fromarray(v[0].permute(1, 2, 0).numpy().astype(np.uint8), "RGB")
            for n, v in zip(INPUT_NAMES, views, strict=True)
        }
        out = mlmodel.predict(feed)
        return {n: np.asarray(out[n], dtype=np.float32) for n in OUTPUT_NAMES}

    return Runner("coreml", contract, run, threads)


def check_package(job: ExportJob, staged: Path, built: Built) -> ParityReport:
    """Predict on macOS; elsewhere measure FP16 and read-back palettized numerics in PyTorch.

    Gates: PSNR >= 35 dB per output (for palettized weights only when the bits are uniform: a mixed-bit recipe
    is judged in render space alone), and the render gate (FP16) or the palettized gate (palettized weights;
    None records the render figures without judging them).
    """
    o = job.options
    palettized = bool(o.nbits) or o.mixed
    if platform.system() == "Darwin":
        run = coreml_runner(staged, 0, job.contract).run
        gate = o.palettized_gate if palettized else job.gate
        c = compare_run(job, "Core ML", run, psnr_db=COREML_MIN_PSNR, render_gate=gate)
        return ParityReport("coreml predict (macOS)", [c])
    report = ParityReport("pytorch emulation (Core ML cannot predict on this OS)", [])
    if o.fp16:
        run = functools.partial(_run, job.folded, dtype=torch.float16)
        report.comparisons.append(
            compare_run(job, "Core ML FP16 (emulated)", run, psnr_db=COREML_MIN_PSNR, render_gate=job.gate)
        )
    if palettized:
        dense = dense_lut_weights(staged)
        model, matched = apply_readback(job.folded, dense)
        run = functools.partial(_run, model, dtype=torch.float32)
        report.comparisons.append(
            compare_run(
                job,
                "Core ML palettized (read back)",
                run,
                psnr_db=None if o.mixed else COREML_MIN_PSNR,
                render_gate=o.palettized_gate,
            )
        )
        report.info["readback"] = {"lut_weights": len(dense), "matched_to_pytorch": matched}
        if matched < len(dense):
            report.problems.append(
                f"only {matched} of {len(dense)} palettized weights could be matched to the "
                "PyTorch model, so its numerics cannot be measured honestly"
            )
    if not (o.fp16 or palettized):
        report.info["note"] = "FP32 mlprogram: nothing to emulate here; predict on macOS to measure it"
    return report


def _mixed(job: ExportJob, mlmodel):
    """Bits per layer: replayed from a recipe, or searched for the budget on the held-out views and the example
    the gate will judge, so the budget holds for both. Returns the package and (recipe, sensitivity) or None."""
    from pbrforge.export.mixed_bits import apply_recipe, search

    o = job.options
    if o.recipe is not None:
        return apply_recipe(mlmodel, o.recipe), None
    judged = [*(job.held_out.judged if job.held_out else []), job.example]
    with torch.no_grad():
        outs = [dict(zip(OUTPUT_NAMES, (x.numpy() for x in job.wrapper(*b)), strict=True)) for b in judged]
    reference = {n: np.concatenate([out[n] for out in outs]) for n in OUTPUT_NAMES}
    p99 = o.palettized_gate.normal_deg_p99 if o.palettized_gate is not None else None
    chosen, sens = search(
        job.folded, mlmodel, judged, reference, float(o.mixed_budget_db or 0), normal_p99_max=p99
    )
    return apply_recipe(mlmodel, chosen, sens), (chosen, sens)


def _write_recipe(chosen: tuple, paths: ArtifactPaths) -> None:
    """OUTPUT.recipe.json (reusable with --recipe) and OUTPUT.pareto.png."""
    from pbrforge.export.mixed_bits import pareto_chart

    recipe, sens = chosen
    write_json(paths.recipe, recipe)
    pareto_chart(sens, recipe, paths.pareto)
    _logger.info(
        f"recipe: {recipe['bits_used']} (bits: layers), {recipe['predicted_bytes'] / 2**20:.2f} of "
        f"{recipe['fp16_bytes'] / 2**20:.2f} MiB FP16, measured render PSNR "
        f"{recipe['measured_render']['psnr_db_min']:.1f} dB; {paths.recipe.name}, {paths.pareto.name}"
    )


def _build(job: ExportJob, staged: Path) -> Built:
    """Convert the BN-folded model, palettize it (uniform or mixed bits) and save it; the ANE report on keep."""
    o = job.options
    t0 = time.perf_counter()
    mlmodel = convert_coreml(job.folded, job.example, o.fp16, o.min_target, job.contract)
    chosen = None
    if o.mixed:
        mlmodel, chosen = _mixed(job, mlmodel)
    elif o.nbits:
        mlmodel = palettize(mlmodel, o.nbits)
    save_mlpackage(mlmodel, staged)
    seconds = time.perf_counter() - t0
    ane = None
    if o.ane:
        from pbrforge.export.ane_report import ane_report, report_table

        ane = ane_report(staged)
        _logger.info(report_table(ane))

    def on_keep(kept: Path) -> None:
        if chosen is not None:
            _write_recipe(chosen, job.paths)
        if ane is not None:
            write_json(sidecar_path(kept, "ane"), ane)

    return Built(
        seconds,
        info={"fp16": o.fp16, "nbits": "mixed" if o.mixed else o.nbits, "min_target": o.min_target},
        deployment={"coreml_ane": ane} if ane is not None else {},
        on_keep=on_keep,
    )


register(
    Format("coreml", "coreml", ".mlpackage", "coreml", _build, check_package, coreml_runner, available=_ct)
)
