"""Export a pbrforge checkpoint (student or teacher) to Core ML, ONNX, ExecuTorch and TensorRT, each gated by parity.

Each artifact is written under a staging name and checked against PyTorch there: only an artifact whose
gate passed replaces ``OUTPUT.<ext>``; one that failed is kept beside it as ``OUTPUT.failed.<ext>`` with its
report, and the artifact from an earlier run stays untouched. Every kept artifact gets
``<artifact>.parity.json``; Core ML also gets ``<name>.ane.json``, and ``<output>.contract.json`` (the
deployment contract) is written once an artifact passed. ``OUTPUT.testvectors/`` then holds two input
triplets, PyTorch's outputs for them and each artifact's tolerance, so that
``run_inference.py ARTIFACT --self-check`` (or the app's ``selfCheck()``) can check a runtime on its own.
ExecuTorch (``OUTPUT.pte``, XNNPACK) runs here in ExecuTorch's runtime; its Core ML-delegated
``OUTPUT.coreml.pte`` is built but, like the ``.mlpackage``, cannot be run here.

Examples:
    python export/converter.py runs/student/checkpoints/best.pt --output artifacts/student --format all
    python export/converter.py best.pt --output artifacts/student --format coreml --palettization --nbits 6
    python export/converter.py best.pt --output artifacts/s4 --format coreml --palettization --nbits 4 --min-target iOS18
    python export/converter.py best.pt --output artifacts/sm --format coreml --palettization --nbits mixed --budget-db 40
    python export/converter.py best.pt --output artifacts/sm2 --format coreml --recipe artifacts/sm.recipe.json
    python export/converter.py best.pt --output artifacts/s256 --format onnx --test-resolution 256
    python export/converter.py best.pt --output artifacts/student --contract-out mobile_app/contract.json
    python export/converter.py best.pt --output artifacts/s256 --format onnx --test-resolution 256 \\
        --quantize int8 --calibration data/demo --render-psnr-min 30
    python export/converter.py best.pt --output artifacts/student --format coreml --quantize w8a8 --calibration data/demo
    python export/converter.py best.pt --output artifacts/student --format executorch --quantize int8 --calibration data/demo
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pbrforge.errors import ConfigError, ParityError, UnavailableError, fail, user_errors
from pbrforge.export.gates import FP32_MAX_ABS, render_gate_options
from pbrforge.options import MAX_SIDE, OUTPUT_FILE, Command, FiniteFloatRange, examples_epilog

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pbrforge.deploy import DeployContract
    from pbrforge.export.gates import RenderGate
    from pbrforge.export.parity import ParityReport

_logger = logging.getLogger(__name__)

FORMATS = ("coreml", "onnx", "executorch", "tensorrt")
SUFFIXES = {"coreml": ".mlpackage", "onnx": ".onnx", "executorch": ".pte", "tensorrt": ".plan"}
NEEDS_ONNX = "the TensorRT engine is built from the ONNX file: export onnx first (--format all does)"
FOLDING_MIN_PSNR = 70.0  # dB: folding is exact algebra, so only float rounding may differ


@dataclass
class ExportRow:
    """One format's outcome: where it went, whether its gate passed, how long it took."""

    format: str
    path: str
    status: str  # ok | FAILED | unverified | built | skipped
    seconds: float = 0.0
    bytes: int = 0
    detail: str = ""
    parity: ParityReport | None = None


@dataclass
class ExportResult:
    """What one export run produced: per format a row for the summary table."""

    rows: list[ExportRow] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [r.detail for r in self.rows if r.status == "FAILED"]

    def table(self) -> str:
        lines = [f"{'format':<10} {'status':<8} {'size MiB':>9} {'seconds':>8}  path / detail"]
        for r in self.rows:
            lines.append(
                f"{r.format:<10} {r.status:<8} {r.bytes / 2**20:9.2f} {r.seconds:8.1f}  {r.path} {r.detail}".rstrip()
            )
        return "\n".join(lines)


def artifact_bytes(path: Path) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def failed_path(path: Path) -> Path:
    """``student.onnx`` -> ``student.failed.onnx``: where an artifact that failed its gate is kept."""
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def prepare(
    checkpoint: Path, test_resolution: int | None, use_sr: bool
) -> tuple[torch.nn.Module, torch.nn.Module, tuple[torch.Tensor, ...], dict[str, np.ndarray], DeployContract]:
    """Export wrapper, its BN-folded copy, example inputs, fp32 reference outputs and the deployment contract.

    ONNX exports the wrapper as trained (ONNX Runtime folds BatchNorm itself); Core ML exports the folded
    copy, whose conv weights are then the ones stored in the package, so palettized weights can be read back.
    """
    import torch

    from pbrforge.deploy import OUTPUT_NAMES, build_contract
    from pbrforge.export.parity import Comparison, compare
    from pbrforge.export.wrappers import PBRExportWrapper, example_inputs, fold_batchnorm
    from pbrforge.models import model_from_checkpoint

    model, cfg, _ = model_from_checkpoint(checkpoint)
    sr = use_sr or test_resolution is None
    contract = build_contract(cfg, test_resolution, sr)
    if contract.image_size % 32:
        raise ConfigError(f"--test-resolution {contract.image_size} must be a multiple of 32")
    wrapper = PBRExportWrapper(model, use_sr=sr).eval()
    example = example_inputs(contract.image_size)
    folded = fold_batchnorm(wrapper, example)
    with torch.no_grad():
        reference = {n: o.numpy() for n, o in zip(OUTPUT_NAMES, wrapper(*example), strict=True)}
        folded_out = folded(*example)
    side = int(reference["albedo"].shape[-1])
    if side != contract.output_size:
        raise ConfigError(f"the model returns {side}px maps, but its config says {contract.output_size}px")
    folded_np = {n: o.numpy() for n, o in zip(reference, folded_out, strict=True)}
    folding = Comparison("BatchNorm folding", compare(reference, folded_np), "psnr_db", FOLDING_MIN_PSNR)
    if folding.failure:
        raise ParityError(
            f"{folding.failure}; refusing to export (the checkpoint's weights may hold NaN or inf)"
        )
    return wrapper, folded, example, reference, contract


def export_artifacts(
    checkpoint: Path,
    output: Path,
    formats: tuple[str, ...],
    fp16: bool = True,
    nbits: int | None = None,
    test_resolution: int | None = None,
    use_sr: bool = False,
    min_target: str = "iOS17",
    contract_out: Path | None = None,
    ane: bool = True,
    render_psnr_min: float | None = None,
    normal_p99_max: float | None = None,
    quantize: str | None = None,
    calibration: Path | None = None,
    budget_db: float | None = None,
    recipe: Path | None = None,
    fp32_max_abs: float = FP32_MAX_ABS,
) -> ExportResult:
    """Export to each format in order; unavailable formats are recorded as skipped, parity failures as failed."""
    from pbrforge.deploy import contract_path
    from pbrforge.export import coreml_export
    from pbrforge.fileio import check_output_path, exclusive, remove, remove_stale_temps, temp_name

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown format {unknown[0]!r}; known: {', '.join(FORMATS)}")
    if "coreml" in formats:
        coreml_export.check_target(min_target, nbits)
    output = Path(output)
    check_output_path(output.with_suffix(".onnx"), "--output")
    if contract_out is not None:
        check_output_path(contract_out, "--contract-out")
    # alone, TensorRT needs the package and an ONNX file already there: say so before anything is written
    if formats == ("tensorrt",):
        from pbrforge.export.trt_export import tensorrt_module

        tensorrt_module()
        if not output.with_suffix(".onnx").is_file():
            raise ConfigError(NEEDS_ONNX)
    from pbrforge.export.gates import RenderGate, render_gate

    gate = render_gate(render_psnr_min, normal_p99_max)
    # 6- and 4-bit palettization is judged by its render figures only where a gate is given
    asked = render_psnr_min is not None or normal_p99_max is not None
    palettized_gate = gate if nbits == 8 or asked else None
    mixed = budget_db is not None or recipe is not None
    if mixed and "coreml" not in formats:
        raise ConfigError("mixed-bit palettization is for Core ML: use --format coreml or all")
    recipe_data = None
    if recipe is not None:
        from pbrforge.export.mixed_bits import load_recipe

        recipe_data = load_recipe(recipe)
    if mixed:  # a mixed recipe is chosen for its render budget: that is its gate
        target = budget_db if budget_db is not None else float((recipe_data or {})["budget_db"])
        palettized_gate = RenderGate(target if render_psnr_min is None else render_psnr_min, normal_p99_max)
    if quantize is not None and calibration is None:
        raise ConfigError(f"--quantize {quantize} calibrates on real views: give --calibration DATA_ROOT")
    if quantize == "int8" and not {"onnx", "executorch"} & set(formats):
        raise ConfigError(
            "--quantize int8 quantizes the ONNX and ExecuTorch models: use --format onnx, executorch or all"
        )
    if quantize == "w8a8" and "coreml" not in formats:
        raise ConfigError("--quantize w8a8 writes a Core ML package: use --format coreml or all")
    if calibration is not None and not (quantize or mixed):
        raise ConfigError("--calibration is for --quantize and --nbits mixed; neither was asked for")
    wrapper, folded, example, reference, contract = prepare(checkpoint, test_resolution, use_sr)
    held_out = []
    if calibration is not None:
        from pbrforge.export.onnx_quantize import CALIBRATION_VIEWS, PARITY_VIEWS, held_out_views

        held_out = held_out_views(
            calibration, checkpoint, contract.image_size, CALIBRATION_VIEWS + PARITY_VIEWS
        )
    from pbrforge.export.test_vectors import vectors_dir

    contract.test_vectors = vectors_dir(output).name  # before Core ML embeds the contract in its metadata
    with exclusive(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(output.parent)
        result = ExportResult()
        onnx_path = output.with_suffix(".onnx")
        for fmt in formats:
            final = output.with_suffix(SUFFIXES[fmt])
            staged = temp_name(final, "staged")
            try:
                if fmt == "onnx":
                    from pbrforge.export.onnx_export import export_onnx, onnx_parity

                    seconds = export_onnx(wrapper, example, staged)
                    parity = onnx_parity(staged, reference, example, gate, fp32_max_abs)
                    kept = _keep(result, fmt, staged, final, parity, seconds)
                    if kept == final:
                        _ort(result, final, reference, example, gate, fp32_max_abs)
                    if quantize == "int8" and kept == final:
                        _int8(result, final, wrapper, held_out, example, gate)
                elif fmt == "executorch":
                    _executorch(result, staged, final, wrapper, example, gate, fp32_max_abs)
                    if quantize == "int8" and result.rows[-1].status == "ok":
                        _executorch(result, staged, final, wrapper, example, gate, None, held_out)
                    _executorch_coreml(result, final, folded, example)
                elif fmt == "coreml":
                    t0 = time.perf_counter()
                    mlmodel = coreml_export.convert_coreml(folded, example, fp16, min_target, contract)
                    chosen = None
                    if mixed:
                        mlmodel, chosen = _mixed(
                            mlmodel, folded, wrapper, example, held_out, budget_db, recipe_data
                        )
                    elif nbits:
                        mlmodel = coreml_export.palettize(mlmodel, nbits)
                    coreml_export.save_mlpackage(mlmodel, staged)
                    seconds = time.perf_counter() - t0
                    parity = coreml_export.coreml_parity(
                        staged,
                        folded,
                        reference,
                        example,
                        fp16,
                        bool(nbits) or mixed,
                        gate,
                        palettized_gate,
                        palettized_tensor_gate=not mixed,
                    )
                    parity.info |= {
                        "fp16": fp16,
                        "nbits": "mixed" if mixed else nbits,
                        "min_target": min_target,
                    }
                    kept = _keep(result, fmt, staged, final, parity, seconds)
                    if chosen is not None:
                        _write_recipe(chosen, final)
                    if quantize == "w8a8" and kept == final:
                        _w8a8(result, final, folded, wrapper, held_out, example, min_target, contract, gate)
                    if ane:
                        from pbrforge.export.ane_report import ane_report, report_table
                        from pbrforge.fileio import write_json

                        report = ane_report(kept)
                        write_json(kept.with_suffix(".ane.json"), report)
                        _logger.info(report_table(report))
                elif fmt == "tensorrt":
                    from pbrforge.export.trt_export import build_engine

                    onnx_rows = [r for r in result.rows if r.format == "onnx"]
                    # never build an engine from an ONNX file that failed its gate
                    if onnx_rows and onnx_rows[0].status != "ok":
                        result.rows.append(
                            ExportRow(fmt, "", "skipped", detail="the ONNX export did not pass its gate")
                        )
                        continue
                    if not onnx_path.exists():
                        raise ConfigError(NEEDS_ONNX)
                    seconds = build_engine(onnx_path, final, contract.image_size, fp16)
                    result.rows.append(
                        ExportRow(
                            fmt,
                            str(final),
                            "built",
                            seconds,
                            artifact_bytes(final),
                            "(unverified: no GPU parity here)",
                        )
                    )
            except UnavailableError as e:
                if len(formats) == 1:
                    raise
                result.rows.append(ExportRow(fmt, "", "skipped", detail=str(e)))
            finally:
                remove(staged)
        if any(r.status in ("ok", "built", "unverified") for r in result.rows):
            _vectors(result, output, wrapper, example, held_out, contract)
            _deployment_report(result, output)
            contract.save(contract_path(output.with_suffix(".x")))
            for (
                r
            ) in result.rows:  # OUTPUT.int8.onnx, OUTPUT.w8a8.mlpackage, OUTPUT.coreml.pte: the same contract
                beside = contract_path(Path(r.path)) if r.path else None
                if (
                    r.status in ("ok", "unverified")
                    and beside is not None
                    and beside != contract_path(output.with_suffix(".x"))
                ):
                    contract.save(beside)
            if contract_out:
                contract.save(contract_out)
        return result


def _mixed(mlmodel, folded, wrapper, example, held_out: list, budget_db: float | None, recipe: dict | None):
    """Palettize with bits per layer: searched for ``budget_db`` on held-out views (or the example), or from a recipe."""
    import numpy as np
    import torch

    from pbrforge.deploy import OUTPUT_NAMES
    from pbrforge.export.mixed_bits import apply_recipe, search

    if recipe is not None:
        return apply_recipe(mlmodel, recipe), None
    # held-out views, and the example the parity gate will judge, so the budget holds for both
    judged = [*(_split(held_out)[1] if held_out else []), example]
    with torch.no_grad():
        outs = [dict(zip(OUTPUT_NAMES, (o.numpy() for o in wrapper(*b)), strict=True)) for b in judged]
    reference = {n: np.concatenate([o[n] for o in outs]) for n in OUTPUT_NAMES}
    chosen, sens = search(folded, mlmodel, judged, reference, float(budget_db or 0))
    return apply_recipe(mlmodel, chosen), (chosen, sens)


def _write_recipe(chosen: tuple, final: Path) -> None:
    """OUTPUT.recipe.json (reusable with --recipe) and OUTPUT.pareto.png beside the package."""
    from pbrforge.export.mixed_bits import pareto_chart
    from pbrforge.fileio import write_json

    recipe, sens = chosen
    stem = final.with_suffix("")
    write_json(stem.with_name(stem.name + ".recipe.json"), recipe)
    pareto_chart(sens, recipe, stem.with_name(stem.name + ".pareto.png"))
    _logger.info(
        f"recipe: {recipe['bits_used']} (bits: layers), {recipe['predicted_bytes'] / 2**20:.2f} of "
        f"{recipe['fp16_bytes'] / 2**20:.2f} MiB FP16, measured render PSNR "
        f"{recipe['measured_render']['psnr_db_min']:.1f} dB; {stem.name}.recipe.json, {stem.name}.pareto.png"
    )


def _vectors(
    result: ExportResult,
    output: Path,
    wrapper: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    held_out: list,
    contract: DeployContract,
) -> None:
    """OUTPUT.testvectors/: two input triplets (held-out views when given, else the parity example and a
    second seed), PyTorch's outputs for them, and the tolerance of every artifact that passed or is unverified."""
    import numpy as np
    import torch

    from pbrforge.deploy import OUTPUT_NAMES
    from pbrforge.export.test_vectors import SAMPLES, tolerance, vectors_dir, write_vectors
    from pbrforge.export.wrappers import example_inputs

    samples = list(_split(held_out)[1][:SAMPLES]) if held_out else [example]
    seed = 1
    while len(samples) < SAMPLES:
        samples.append(example_inputs(contract.image_size, seed=seed))
        seed += 1
    # the PNGs hold whole numbers: the expected outputs are for exactly those
    samples = [tuple(v.round().clamp(0, 255) for v in views) for views in samples]
    with torch.no_grad():
        outs = [wrapper(*views) for views in samples]
    expected = {n: np.concatenate([o[i].numpy() for o in outs]) for i, n in enumerate(OUTPUT_NAMES)}
    tolerances = {
        Path(r.path).name: tolerance(r.parity)
        for r in result.rows
        # an unverified artifact with nothing measured (Core ML FP32 off macOS) has no tolerance to give
        if r.parity is not None and r.parity.comparisons and r.status in ("ok", "unverified") and r.path
    }
    write_vectors(
        vectors_dir(output), samples, expected, tolerances, contract.image_size, contract.model_hash
    )
    _logger.info(
        f"self-check vectors: {vectors_dir(output)} ({len(samples)} samples; {', '.join(tolerances)})"
    )


def _ort(
    result: ExportResult,
    onnx_final: Path,
    reference: dict[str, np.ndarray],
    example: tuple[torch.Tensor, ...],
    gate: RenderGate,
    max_abs: float,
) -> None:
    """OUTPUT.ort for ONNX Runtime's mobile builds (the NPU rewrite), gated like the .onnx, with its usability."""
    from pbrforge.export.onnx_export import onnx_parity
    from pbrforge.export.ort_mobile import usability_table, write_ort
    from pbrforge.fileio import remove, temp_name

    final = onnx_final.with_suffix(".ort")
    staged = temp_name(final, "staged")
    try:
        seconds, rewrites, usability = write_ort(onnx_final, staged)
        parity = onnx_parity(staged, reference, example, gate, max_abs)
        parity.info["mobile_rewrites"] = rewrites
        parity.info["mobile_usability"] = usability
        _logger.info(usability_table(parity.info["mobile_usability"]))
        _keep(result, "onnx-ort", staged, final, parity, seconds)
    finally:
        remove(staged)


def _deployment_report(result: ExportResult, output: Path) -> None:
    """OUTPUT.deployment.json: what each on-device runtime would run where, from every artifact kept.

    Core ML's ANE heuristics (from OUTPUT.ane.json), ONNX Runtime mobile's NNAPI / Core ML partitions, and
    ExecuTorch's delegated and non-delegated ops, side by side.
    """
    from pbrforge.fileio import read_json, write_json

    report: dict[str, object] = {}
    for r in result.rows:
        if not r.path or r.status not in ("ok", "unverified"):
            continue
        path = Path(r.path)
        info = r.parity.info if r.parity is not None else {}
        if r.format == "coreml" and path.with_suffix(".ane.json").is_file():
            report["coreml_ane"] = read_json(path.with_suffix(".ane.json"))
        if "mobile_usability" in info:
            report["onnxruntime_mobile"] = info["mobile_usability"]
        if "delegation" in info:
            report[f"executorch {path.name}"] = info["delegation"]
        if r.format == "executorch-coreml":
            report[f"executorch {path.name}"] = read_json(path.with_name(path.name + ".delegation.json"))
    if report:
        write_json(output.with_name(output.name + ".deployment.json"), report)


def _executorch(
    result: ExportResult,
    staged: Path,
    fp32: Path,
    wrapper: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    gate: RenderGate,
    max_abs: float | None,
    held_out: list | None = None,
) -> None:
    """OUTPUT.pte (XNNPACK fp32, gated like ONNX) or, with ``held_out``, OUTPUT.int8.pte calibrated on them and
    judged on the others by the render gate; each run in ExecuTorch's runtime and kept only if it passed."""
    from pbrforge.export.executorch_export import executorch_available, export_pte, pte_parity
    from pbrforge.fileio import remove, temp_name

    executorch_available()
    if held_out is None:
        final, samples, calibration, label = fp32, [example], [], "ExecuTorch"
    else:
        final = fp32.with_name(fp32.stem + ".int8.pte")
        staged = temp_name(final, "staged")
        calibration, samples = _split(held_out)
        label = "ExecuTorch int8"
    try:
        seconds, delegation = export_pte(wrapper, example, staged, "xnnpack", calibration)
        try:
            parity = pte_parity(staged, wrapper, samples, label, max_abs, gate)
        except RuntimeError as e:  # the runtime refused to run the program it was given: nothing to judge
            result.rows.append(
                ExportRow(_pte_format(held_out), "", "skipped", detail=f"ExecuTorch could not run it ({e})")
            )
            return
        parity.info["delegation"] = delegation
        if held_out is not None:
            parity.info["calibration_samples"] = len(calibration)
            parity.info["calibrated_on_the_judged_samples"] = calibration is held_out
        _logger.info(
            "%s delegation: %d XNNPACK subgraphs hold %d nodes; left to portable kernels: %s",
            label,
            delegation["delegated_subgraphs"],
            delegation["delegated_nodes"],
            ", ".join(f"{k} {v}" for k, v in delegation["non_delegated_ops"].items()) or "none",
        )
        _keep(result, _pte_format(held_out), staged, final, parity, seconds)
    finally:
        remove(staged)


def _pte_format(held_out: list | None) -> str:
    return "executorch" if held_out is None else "executorch-int8"


def _executorch_coreml(
    result: ExportResult, fp32: Path, folded: torch.nn.Module, example: tuple[torch.Tensor, ...]
) -> None:
    """OUTPUT.coreml.pte, delegated to Core ML: built here, runnable only on Apple devices, so unverified."""
    from pbrforge.export.executorch_export import export_pte
    from pbrforge.fileio import remove, replace_path, temp_name, write_json

    final = fp32.with_name(fp32.stem + ".coreml.pte")
    staged = temp_name(final, "staged")
    try:
        seconds, delegation = export_pte(folded, example, staged, "coreml")
        replace_path(staged, final)
    except UnavailableError:
        raise
    except Exception as e:  # the Core ML delegate's converter raises its own types
        result.rows.append(
            ExportRow(
                "executorch-coreml",
                "",
                "skipped",
                detail=f"Core ML delegate failed ({type(e).__name__}: {e})",
            )
        )
        return
    finally:
        remove(staged)
    write_json(final.with_name(final.name + ".delegation.json"), delegation)
    result.rows.append(
        ExportRow(
            "executorch-coreml",
            str(final),
            "unverified",
            seconds,
            artifact_bytes(final),
            f"(unverified: the Core ML delegate runs only on Apple devices; {delegation['delegated_nodes']} "
            f"nodes delegated, {delegation['non_delegated_nodes']} not)",
        )
    )


def _split(held_out: list) -> tuple[list, list]:
    """Held-out samples into (calibration, judged); both the same when there are too few to split."""
    from pbrforge.export.onnx_quantize import PARITY_VIEWS

    judged = held_out[-PARITY_VIEWS:] if len(held_out) > PARITY_VIEWS else held_out
    return held_out[: len(held_out) - len(judged)] or held_out, judged


def _w8a8(
    result: ExportResult,
    fp16: Path,
    folded: torch.nn.Module,
    wrapper: torch.nn.Module,
    held_out: list,
    example: tuple[torch.Tensor, ...],
    min_target: str,
    contract: DeployContract,
    gate: RenderGate,
) -> None:
    """The W8A8 package beside the FP16 one, judged by its fake-quant numerics; which ops stay float, logged."""
    from pbrforge.export.coreml_w8a8 import export_w8a8
    from pbrforge.fileio import remove, temp_name

    final = fp16.with_name(fp16.stem + ".w8a8.mlpackage")
    staged = temp_name(final, "staged")
    calibration, judged = _split(held_out)
    try:
        parity, seconds = export_w8a8(
            folded, wrapper, example, calibration, judged, staged, min_target, contract, gate
        )
        parity.info["calibrated_on_the_judged_samples"] = calibration is held_out
        mil = parity.info["mil"]
        _logger.info(
            "W8A8 program: %d quantize, %d dequantize, %d int8 weights; ops between dequantize and quantize: %s; "
            "ops left in float: %s",
            mil["quantize"],
            mil["dequantize"],
            mil["int8_weights"],
            ", ".join(f"{k} {v}" for k, v in mil["int8_ops"].items()) or "none",
            ", ".join(f"{k} {v}" for k, v in mil["float_ops"].items()) or "none",
        )
        _keep(result, "coreml-w8a8", staged, final, parity, seconds)
    finally:
        remove(staged)


def _int8(
    result: ExportResult,
    fp32: Path,
    wrapper: torch.nn.Module,
    held_out: list,
    example: tuple[torch.Tensor, ...],
    gate: RenderGate,
) -> None:
    """Quantize the passing fp32 ONNX model to static int8 QDQ beside it, judge it, profile both."""
    from pbrforge.export.onnx_quantize import int8_parity, node_census, profile, quantize_onnx
    from pbrforge.fileio import remove, temp_name

    final = fp32.with_name(fp32.stem + ".int8.onnx")
    staged = temp_name(final, "staged")
    calibration, judged = _split(held_out)
    try:
        seconds = quantize_onnx(fp32, staged, calibration)
        parity = int8_parity(staged, wrapper, judged, gate)
        fp32_profile, int8_profile = profile(fp32, example), profile(staged, example)
        parity.info |= {
            "calibration_samples": len(calibration),
            "calibrated_on_the_judged_samples": calibration is held_out,
            "ort_nodes_after_fusion": node_census(staged),
            "profile_fp32": fp32_profile,
            "profile_int8": int8_profile,
        }
        _logger.info(
            "where ONNX Runtime spends its time (ms per run, %s px):\n  fp32: %s\n  int8: %s\n  int8 time in integer "
            "kernels and Q/DQ: %.0f%%",
            example[0].shape[-1],
            ", ".join(fp32_profile["top"]),
            ", ".join(int8_profile["top"]),
            100 * int8_profile["integer_or_qdq_share"],
        )
        _keep(result, "onnx-int8", staged, final, parity, seconds)
    finally:
        remove(staged)


def _keep(
    result: ExportResult, fmt: str, staged: Path, final: Path, parity: ParityReport, seconds: float
) -> Path:
    """Move a checked artifact to its final name (or, failed, to its .failed name) with its parity report."""
    from pbrforge.export.parity import tables
    from pbrforge.fileio import replace_path, write_json

    kept = failed_path(final) if parity.passed is False else final
    replace_path(staged, kept)
    write_json(kept.with_name(kept.name + ".parity.json"), parity.to_dict())
    _logger.info(tables(parity))
    # nothing could be measured here (Core ML FP32 off macOS): say so, never claim ok
    if parity.passed is None:
        status, detail = (
            "unverified",
            str(parity.info.get("note", "no parity gate could run on this machine")),
        )
    else:
        status, detail = ("ok", "") if parity.passed else ("FAILED", parity.failure or "")
    result.rows.append(ExportRow(fmt, str(kept), status, seconds, artifact_bytes(kept), detail, parity))
    return kept


@click.command("export", cls=Command, epilog=examples_epilog(__doc__))
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--output",
    type=OUTPUT_FILE,
    required=True,
    help="Artifact path without extension: writes OUTPUT.mlpackage / .onnx / .plan and reports beside them.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS + ("all",)), default="all", show_default=True)
@click.option("--no-fp16", is_flag=True, help="Core ML in FP32 (default FP16).")
@click.option("--palettization", is_flag=True, help="k-means palettize the Core ML weights.")
@click.option(
    "--nbits",
    type=click.Choice(["8", "6", "4", "mixed"]),
    default="6",
    show_default=True,
    help="Palettization bits (4 needs --min-target iOS18); mixed chooses bits per layer for --budget-db.",
)
@click.option(
    "--budget-db",
    type=FiniteFloatRange(10.0, 150.0),
    default=40.0,
    show_default=True,
    help="With --nbits mixed: the render PSNR (worst of 11 lights) the chosen bits must keep.",
)
@click.option(
    "--recipe",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Palettize with the bits of an OUTPUT.recipe.json written by --nbits mixed.",
)
@click.option(
    "--test-resolution",
    type=click.IntRange(32, MAX_SIDE),
    default=None,
    help="Convert at another input size, a multiple of 32; bypasses the SR head unless --use-sr.",
)
@click.option("--use-sr", is_flag=True, help="Keep the SR head at --test-resolution.")
@click.option("--min-target", type=click.Choice(["iOS17", "iOS18"]), default="iOS17", show_default=True)
@click.option(
    "--contract-out",
    type=OUTPUT_FILE,
    default=None,
    help="Also write the deployment contract here (e.g. mobile_app/contract.json).",
)
@click.option("--no-ane-report", is_flag=True, help="Skip the static ANE-readiness report.")
@click.option(
    "--quantize",
    type=click.Choice(["int8", "w8a8"]),
    default=None,
    help="Also write an 8-bit-activation model calibrated on --calibration: int8 = ONNX static QDQ "
    "(OUTPUT.int8.onnx) and XNNPACK int8 (OUTPUT.int8.pte), w8a8 = Core ML int8 weights and activations (OUTPUT.w8a8.mlpackage, iOS17).",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Data root whose held-out views calibrate --quantize (others judge it).",
)
@click.option(
    "--fp32-max-abs",
    type=FiniteFloatRange(1e-7, 1e-2),
    default=FP32_MAX_ABS,
    show_default=True,
    help="fp32 gate of ONNX Runtime and ExecuTorch: largest per-value difference from PyTorch. Float rounding through the normal "
    "map's normalize grows with the pixel count (1.3e-4 seen at 512 px).",
)
@render_gate_options
@user_errors
def main(
    checkpoint: Path,
    output: Path,
    fmt: str,
    no_fp16: bool,
    palettization: bool,
    nbits: str,
    test_resolution: int | None,
    use_sr: bool,
    min_target: str,
    contract_out: Path | None,
    no_ane_report: bool,
    render_psnr_min: float | None,
    normal_p99_max: float | None,
    quantize: str | None,
    calibration: Path | None,
    budget_db: float,
    recipe: Path | None,
    fp32_max_abs: float,
) -> None:
    """Convert a checkpoint to deployable artifacts; exit 2 if any parity gate fails."""
    formats = FORMATS if fmt == "all" else (fmt,)
    mixed = palettization and nbits == "mixed"
    source = click.get_current_context().get_parameter_source
    explicit = click.core.ParameterSource.COMMANDLINE
    if not palettization and explicit in (source("nbits"), source("budget_db")):
        raise click.UsageError("--nbits and --budget-db choose a palettization: give --palettization too")
    if recipe is not None and palettization and nbits != "mixed":
        raise click.UsageError(f"--recipe sets the bits of every weight: it cannot go with --nbits {nbits}")
    if source("budget_db") == explicit and not mixed:
        raise click.UsageError("--budget-db is the render budget of --nbits mixed")
    result = export_artifacts(
        checkpoint,
        output,
        formats,
        fp16=not no_fp16,
        nbits=int(nbits) if palettization and not mixed else None,
        test_resolution=test_resolution,
        use_sr=use_sr,
        min_target=min_target,
        contract_out=contract_out,
        ane=not no_ane_report,
        render_psnr_min=render_psnr_min,
        normal_p99_max=normal_p99_max,
        quantize=quantize,
        calibration=calibration,
        budget_db=budget_db if mixed and recipe is None else None,
        recipe=recipe,
        fp32_max_abs=fp32_max_abs,
    )
    click.echo(result.table())
    if result.failures:
        fail(result.failures[0])


if __name__ == "__main__":
    main()
