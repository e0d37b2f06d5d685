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
        --quantize int8 --data data/demo --render-psnr-min 30
    python export/converter.py best.pt --output artifacts/student --format coreml --quantize w8a8 --data data/demo
    python export/converter.py best.pt --output artifacts/student --format coreml --quantize w8a8 --data data/demo \\
        --qat-steps 40
    python export/converter.py best.pt --output artifacts/student --format executorch --quantize int8 --data data/demo
    python export/converter.py best.pt --output artifacts/student --format executorch --quantize int8 --data data/demo \\
        --qat-steps 200
    python export/converter.py --model examples/invisp/model.py:spec --output artifacts/invisp --format onnx
    python export/converter.py --model my_model.py:spec --output artifacts/mine --format onnx --quantize int8 --data samples/
    python export/converter.py --model neuropbr --weights best_student.pth --output artifacts/neuropbr --format onnx
    python export/converter.py --model pbr --weights best.pt --output artifacts/student_spec --format executorch
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pbrforge.errors import ConfigError, ParityError, fail, user_errors
from pbrforge.export.formats import FAMILIES, ExportJob, ExportOptions, ExportResult, plan, run_step
from pbrforge.export.gates import FP32_MAX_ABS, render_gate_options
from pbrforge.options import (
    COREML_TARGETS,
    MAX_SIDE,
    OUTPUT_FILE,
    Command,
    FiniteFloatRange,
    check_export,
    examples_epilog,
    old_spellings,
)

if TYPE_CHECKING:
    from pbrforge.artifacts import ArtifactPaths
    from pbrforge.calibration import HeldOut

_logger = logging.getLogger(__name__)

FOLDING_MIN_PSNR = 70.0  # dB: folding is exact algebra, so only float rounding may differ


def prepare(
    checkpoint: Path,
    paths: ArtifactPaths,
    options: ExportOptions,
    test_resolution: int | None = None,
    use_sr: bool = False,
    data: Path | None = None,
) -> ExportJob:
    """The job: the export wrapper, its BN-folded copy (checked against the wrapper), example inputs, the
    contract and, with ``data``, its held-out views split into calibration and judged ones.

    ONNX and XNNPACK take the wrapper as trained (their runtimes fold BatchNorm themselves); Core ML exports
    the folded copy, whose conv weights are then the ones stored in the package, so palettized weights can be
    read back.
    """
    import torch

    from pbrforge.calibration import held_out_views, training_views
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
    held_out: HeldOut | None = held_out_views(data, cfg, contract.image_size) if data is not None else None
    training = (
        training_views(data, cfg, contract.image_size) if data is not None and options.qat_steps else []
    )
    contract.test_vectors = paths.vectors.name  # before Core ML embeds the contract in its metadata
    return ExportJob(checkpoint, paths, options, wrapper, folded, example, contract, held_out, training)


def export_artifacts(
    checkpoint: Path,
    output: Path,
    formats: tuple[str, ...] = FAMILIES,
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
    data: Path | None = None,
    budget_db: float | None = None,
    recipe: Path | None = None,
    fp32_max_abs: float = FP32_MAX_ABS,
    qat_steps: int = 0,
    progress: bool = True,
) -> ExportResult:
    """Build every artifact the options ask for, in plan order, each through :func:`formats.run_step`.

    Unavailable formats are recorded as skipped, parity failures as failed; then the test vectors, the
    deployment report and the contracts of the kept artifacts.
    """
    from pbrforge.artifacts import ArtifactPaths
    from pbrforge.export.formats import check_needs, primary
    from pbrforge.export.gates import RenderGate, render_gate
    from pbrforge.fileio import check_output_path, exclusive, remove_stale_temps

    check_export(
        formats,
        nbits=nbits,
        mixed=budget_db is not None or recipe is not None,
        quantize=quantize,
        data=data is not None,
        min_target=min_target,
        qat_steps=qat_steps,
    )
    output = Path(output)
    paths = ArtifactPaths(output)
    check_output_path(paths.artifact(".onnx"), "--output")
    if contract_out is not None:
        check_output_path(contract_out, "--contract-out")
    recipe_data = None
    if recipe is not None:
        from pbrforge.export.mixed_bits import load_recipe

        recipe_data = load_recipe(recipe)
    gate = render_gate(render_psnr_min, normal_p99_max)
    # 6- and 4-bit palettization is judged by its render figures only where a gate is given
    asked = render_psnr_min is not None or normal_p99_max is not None
    palettized_gate = gate if nbits == 8 or asked else None
    if budget_db is not None or recipe_data is not None:  # a mixed recipe is chosen for its budget: its gate
        target = budget_db if budget_db is not None else float((recipe_data or {})["budget_db"])
        palettized_gate = RenderGate(target if render_psnr_min is None else render_psnr_min, normal_p99_max)
    options = ExportOptions(
        families=tuple(formats),
        fp16=fp16,
        nbits=nbits,
        min_target=min_target,
        mixed_budget_db=budget_db,
        recipe=recipe_data,
        quantize=quantize,
        ane=ane,
        fp32_max_abs=fp32_max_abs,
        gate=gate,
        palettized_gate=palettized_gate,
        qat_steps=qat_steps,
        progress=progress,
    )
    steps = plan(options)
    check_needs(steps, paths)
    if len(options.families) == 1:  # the one format asked for needs its tool: say so before the model loads
        for fmt in steps:
            if primary(fmt):
                fmt.available()
    job = prepare(checkpoint, paths, options, test_resolution, use_sr, data)
    with exclusive(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(output.parent)
        result = ExportResult()
        for fmt in steps:
            run_step(job, fmt, result)
        if any(r.status in ("ok", "unverified") for r in result.rows):
            _finish(job, result, contract_out)
        return result


def _finish(job: ExportJob, result: ExportResult, contract_out: Path | None) -> None:
    """What every kept artifact shares: test vectors, the deployment report and the contract beside each."""
    from pbrforge.artifacts import contract_path
    from pbrforge.fileio import write_json

    _vectors(job, result)
    deployment: dict[str, object] = {}
    contracts = {job.paths.contract} | ({Path(contract_out)} if contract_out else set())
    for r in result.rows:
        if r.status in ("ok", "unverified"):
            deployment |= r.deployment
            contracts.add(contract_path(Path(r.path)))  # OUTPUT.int8.onnx: OUTPUT.int8.contract.json
    if deployment:
        write_json(job.paths.deployment, deployment)
    for path in sorted(contracts):
        job.contract.save(path)


def _vectors(job: ExportJob, result: ExportResult) -> None:
    """OUTPUT.testvectors/: two input triplets (held-out views when given, else the parity example and a
    second seed), PyTorch's outputs for them, and the tolerance of every artifact that passed or is unverified."""
    import numpy as np
    import torch

    from pbrforge.deploy import OUTPUT_NAMES
    from pbrforge.export.test_vectors import SAMPLES, tolerance, write_vectors
    from pbrforge.export.wrappers import example_inputs

    samples = list(job.held_out.judged[:SAMPLES]) if job.held_out else [job.example]
    seed = 1
    while len(samples) < SAMPLES:
        samples.append(example_inputs(job.contract.image_size, seed=seed))
        seed += 1
    # the PNGs hold whole numbers: the expected outputs are for exactly those
    samples = [tuple(v.round().clamp(0, 255) for v in views) for views in samples]
    with torch.no_grad():
        outs = [job.wrapper(*views) for views in samples]
    expected = {n: np.concatenate([o[i].numpy() for o in outs]) for i, n in enumerate(OUTPUT_NAMES)}
    tolerances = {
        Path(r.path).name: tolerance(r.parity)
        for r in result.rows
        # an unverified artifact with nothing measured (Core ML FP32 off macOS) has no tolerance to give
        if r.parity is not None and r.parity.comparisons and r.status in ("ok", "unverified") and r.path
    }
    folder = job.paths.vectors
    write_vectors(folder, samples, expected, tolerances, job.contract.image_size, job.contract.model_hash)
    _logger.info(f"self-check vectors: {folder} ({len(samples)} samples; {', '.join(tolerances)})")


@click.command("export", cls=Command, epilog=examples_epilog(__doc__))
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option(
    "--model",
    "model_ref",
    default=None,
    help="Any model instead of a checkpoint: FILE.py:factory, package.module:factory or a registered name "
    "(entry-point group pbrforge.models); the factory returns a pbrforge.modelspec.ModelSpec.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --model: the weights file its factory loads (for example --model neuropbr --weights best_student.pth).",
)
@click.option(
    "--output",
    type=OUTPUT_FILE,
    required=True,
    help="Artifact path without extension: writes OUTPUT.mlpackage / .onnx / .plan and reports beside them.",
)
@click.option("--format", "fmt", type=click.Choice(FAMILIES + ("all",)), default="all", show_default=True)
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
@click.option("--min-target", type=click.Choice(COREML_TARGETS), default="iOS17", show_default=True)
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
    help="Also write an 8-bit-activation model calibrated on --data: int8 = ONNX static QDQ "
    "(OUTPUT.int8.onnx) and XNNPACK int8 (OUTPUT.int8.pte), w8a8 = Core ML int8 weights and activations (OUTPUT.w8a8.mlpackage, iOS17).",
)
@old_spellings("--data", "--calibration")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Data set whose held-out views calibrate --quantize and --nbits mixed (others judge them); with "
    "--model, a folder of .safetensors samples keyed by input name, or of pictures (PHOTO.png feeds every sRGB "
    "image input, SAMPLE.INPUT.png one input; scaled and centre-cropped to the exported size).",
)
@click.option(
    "--qat-steps",
    type=click.IntRange(0, 100_000),
    default=0,
    show_default=True,
    help="Quantization-aware fine-tuning of the --quantize model toward the float one, on --data's training views.",
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
    checkpoint: Path | None,
    model_ref: str | None,
    weights: Path | None,
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
    data: Path | None,
    budget_db: float,
    recipe: Path | None,
    fp32_max_abs: float,
    qat_steps: int,
) -> None:
    """Convert a checkpoint (or any model a spec describes) to deployable artifacts; exit 2 if any gate fails."""
    if (checkpoint is None) == (model_ref is None):
        raise ConfigError("give either a CHECKPOINT or --model, not both or neither")
    if model_ref is not None:
        _export_spec(model_ref, output, fmt, quantize, data, weights)
        return
    if weights is not None:
        raise ConfigError("--weights goes with --model; a CHECKPOINT carries its own weights")
    assert checkpoint is not None
    formats = FAMILIES if fmt == "all" else (fmt,)
    mixed = palettization and nbits == "mixed"
    source = click.get_current_context().get_parameter_source
    explicit = click.core.ParameterSource.COMMANDLINE
    check_export(
        formats,
        nbits=int(nbits) if palettization and not mixed else None,
        mixed=mixed or recipe is not None,
        quantize=quantize,
        data=data is not None,
        min_target=min_target,
        palettization=palettization,
        nbits_given=source("nbits") == explicit,
        budget_given=source("budget_db") == explicit,
        recipe_with_nbits=nbits if recipe is not None and palettization and not mixed else None,
        qat_steps=qat_steps,
    )
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
        data=data,
        budget_db=budget_db if mixed and recipe is None else None,
        recipe=recipe,
        fp32_max_abs=fp32_max_abs,
        qat_steps=qat_steps,
    )
    click.echo(result.table())
    if result.failures:
        fail(result.failures[0])


def _export_spec(
    model_ref: str, output: Path, fmt: str, quantize: str | None, data: Path | None, weights: Path | None
) -> None:
    """``--model``: the spec's graphs through the generic gated path; PBR-only options are refused first.
    ``--quantize int8`` adds int8 ONNX, calibrated on ``--data`` (safetensors samples or pictures) if given."""
    from pbrforge.export.model_export import FORMATS, export_model
    from pbrforge.modelspec import load_spec

    ctx = click.get_current_context()
    pbr_only = sorted(
        f"--{name.replace('_', '-')}"
        for name, value in ctx.params.items()
        if name not in ("model_ref", "output", "fmt", "checkpoint", "quantize", "data", "weights")
        and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    )
    if pbr_only:
        raise ConfigError(f"{', '.join(pbr_only)}: only for pbrforge checkpoints, not for --model")
    formats = FORMATS if fmt == "all" else (fmt,)
    if fmt not in (*FORMATS, "all"):
        raise ConfigError(f"--model exports to {', '.join(FORMATS)} (or all), not {fmt}")
    if data is not None and quantize is None:
        raise ConfigError("--data calibrates --quantize: give --quantize int8 too")
    result = export_model(load_spec(model_ref, weights), output, formats, quantize=quantize, calibration=data)
    click.echo(result.table())
    click.echo(f"wrote {result.manifest}")
    if result.failures:
        fail(result.failures[0])


if __name__ == "__main__":
    main()
