"""Export a pbrforge checkpoint (student or teacher) to Core ML, ONNX and TensorRT, each gated by parity.

Every artifact is written atomically and followed by ``<artifact>.parity.json``; Core ML also gets
``<name>.ane.json``, and every run writes ``<output>.contract.json`` (the deployment contract).

Examples:
    python export/converter.py runs/student/checkpoints/best.pt --output artifacts/student --format all
    python export/converter.py best.pt --output artifacts/student --format coreml --palettization --nbits 6
    python export/converter.py best.pt --output artifacts/s4 --format coreml --palettization --nbits 4 --min-target iOS18
    python export/converter.py best.pt --output artifacts/s256 --format onnx --test-resolution 256
    python export/converter.py best.pt --output artifacts/student --contract-out mobile_app/contract.json
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch

from pbrforge.cli import examples_epilog
from pbrforge.deploy import OUTPUT_NAMES, DeployContract, contract_path
from pbrforge.errors import ConfigError, ParityError, UnavailableError, fail, user_errors
from pbrforge.export.parity import compare, gate_psnr, table
from pbrforge.export.wrappers import PBRExportWrapper, example_inputs, fold_batchnorm
from pbrforge.fileio import write_json
from pbrforge.models import model_from_checkpoint

FORMATS = ("coreml", "onnx", "tensorrt")
FOLDING_MIN_PSNR = 70.0  # dB: folding is exact algebra, so only float rounding may differ


@dataclass
class ExportResult:
    """What one export run produced: per format a row for the summary table."""

    rows: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, fmt: str, path: Path | None, status: str, seconds: float = 0.0, detail: str = "") -> None:
        size = _size(path) if path is not None and path.exists() else 0
        self.rows.append(
            {
                "format": fmt,
                "path": str(path) if path else "",
                "status": status,
                "seconds": seconds,
                "bytes": size,
                "detail": detail,
            }
        )

    def table(self) -> str:
        lines = [f"{'format':<10} {'status':<8} {'size MiB':>9} {'seconds':>8}  path / detail"]
        for r in self.rows:
            lines.append(
                f"{r['format']:<10} {r['status']:<8} {r['bytes'] / 2**20:9.2f} {r['seconds']:8.1f}  "
                f"{r['path'] or ''} {r['detail']}".rstrip()
            )
        return "\n".join(lines)


def _size(path: Path) -> int:
    path = Path(path)
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def prepare(checkpoint: Path, test_resolution: int | None, use_sr: bool):
    """Export wrapper, its BN-folded copy, example inputs, fp32 reference outputs and the deployment contract.

    ONNX exports the wrapper as trained (ONNX Runtime folds BatchNorm itself); Core ML exports the folded
    copy, whose conv weights are then the ones stored in the package, so palettized weights can be read back.
    """
    model, cfg, _ = model_from_checkpoint(checkpoint)
    size = test_resolution or cfg.data.image_size
    if size % 32:
        raise ConfigError(f"--test-resolution {size} must be a multiple of 32")
    sr = use_sr or test_resolution is None
    scale = cfg.model.get("sr_scale", 1) if sr else 1
    wrapper = PBRExportWrapper(model, use_sr=sr).eval()
    example = example_inputs(size)
    folded = fold_batchnorm(wrapper, example)
    with torch.no_grad():
        reference = {n: o.numpy() for n, o in zip(OUTPUT_NAMES, wrapper(*example), strict=True)}
        folded_out = folded(*example)
    folding = compare(reference, {n: o.numpy() for n, o in zip(reference, folded_out, strict=True)})
    failure = gate_psnr(folding, FOLDING_MIN_PSNR, "BatchNorm folding")
    if failure:
        raise ParityError(f"{failure}; refusing to export")
    contract = DeployContract(
        image_size=size,
        output_size=int(reference["albedo"].shape[-1]),
        sr_scale=scale,
        family=cfg.family,
        model_name=cfg.name,
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
    echo=click.echo,
) -> ExportResult:
    """Export to each format in order; unavailable formats are recorded as skipped, parity failures as failed."""
    from pbrforge.export import coreml_export

    if "coreml" in formats:
        coreml_export.check_target(min_target, nbits)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    wrapper, folded, example, reference, contract = prepare(checkpoint, test_resolution, use_sr)
    contract.save(contract_path(output.with_suffix(".x")))
    if contract_out:
        contract.save(contract_out)
    result = ExportResult()
    onnx_path = output.with_suffix(".onnx")
    for fmt in formats:
        try:
            if fmt == "onnx":
                from pbrforge.export.onnx_export import export_onnx, onnx_parity

                seconds = export_onnx(wrapper, example, onnx_path)
                parity = onnx_parity(onnx_path, reference, example)
                _finish(result, fmt, onnx_path, parity, seconds, echo)
            elif fmt == "coreml":
                path = output.with_suffix(".mlpackage")
                t0 = time.perf_counter()
                mlmodel = coreml_export.convert_coreml(folded, example, fp16, min_target, contract)
                if nbits:
                    mlmodel = coreml_export.palettize(mlmodel, nbits)
                coreml_export.save_mlpackage(mlmodel, path)
                seconds = time.perf_counter() - t0
                parity = coreml_export.coreml_parity(path, folded, reference, example, fp16, bool(nbits))
                parity |= {"fp16": fp16, "nbits": nbits, "min_target": min_target}
                if ane:
                    from pbrforge.export.ane_report import ane_report, report_table

                    report = ane_report(path)
                    write_json(output.with_suffix(".ane.json"), report)
                    echo(report_table(report))
                _finish(result, fmt, path, parity, seconds, echo)
            elif fmt == "tensorrt":
                from pbrforge.export.trt_export import build_engine

                if not onnx_path.exists():
                    raise ConfigError(
                        "the TensorRT engine is built from the ONNX file: export onnx first "
                        "(--format all does)"
                    )
                plan = output.with_suffix(".plan")
                seconds = build_engine(onnx_path, plan, contract.image_size, fp16)
                result.add(fmt, plan, "built", seconds, "(parity: run runtime/run_inference.py on a GPU)")
            else:
                raise ConfigError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        except UnavailableError as e:
            if len(formats) == 1:
                raise
            result.add(fmt, None, "skipped", detail=str(e))
    return result


def _finish(result: ExportResult, fmt: str, path: Path, parity: dict, seconds: float, echo) -> None:
    parity_path = path.with_name(path.name + ".parity.json")
    write_json(parity_path, parity)
    for key in ("fp16_pytorch", "palettized_readback"):
        if key in parity:
            echo(table(parity[key], f"{fmt} parity ({key}, vs PyTorch fp32)"))
    if "fp16_pytorch" not in parity and "palettized_readback" not in parity and parity.get("outputs"):
        echo(table(parity["outputs"], f"{fmt} parity ({parity['backend']}, vs PyTorch fp32)"))
    result.add(
        fmt,
        path,
        "ok" if parity["passed"] else "FAILED",
        seconds,
        "" if parity["passed"] else parity["failure"],
    )
    if not parity["passed"]:
        result.failures.append(parity["failure"])


@click.command("export", epilog=examples_epilog(__doc__))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Artifact path without extension: writes OUTPUT.mlpackage / .onnx / .plan and reports beside them.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS + ("all",)), default="all", show_default=True)
@click.option("--no-fp16", is_flag=True, help="Core ML in FP32 (default FP16).")
@click.option("--palettization", is_flag=True, help="k-means palettize the Core ML weights.")
@click.option(
    "--nbits",
    type=click.Choice(["8", "6", "4"]),
    default="6",
    show_default=True,
    help="Palettization bits (4 needs --min-target iOS18).",
)
@click.option(
    "--test-resolution",
    type=int,
    default=None,
    help="Convert at another input size; bypasses the SR head unless --use-sr.",
)
@click.option("--use-sr", is_flag=True, help="Keep the SR head at --test-resolution.")
@click.option("--min-target", type=click.Choice(["iOS17", "iOS18"]), default="iOS17", show_default=True)
@click.option(
    "--contract-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the deployment contract here (e.g. mobile_app/contract.json).",
)
@click.option("--no-ane-report", is_flag=True, help="Skip the static ANE-readiness report.")
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
) -> None:
    """Convert a checkpoint to deployable artifacts; exit 2 if any parity gate fails."""
    formats = FORMATS if fmt == "all" else (fmt,)
    result = export_artifacts(
        checkpoint,
        output,
        formats,
        fp16=not no_fp16,
        nbits=int(nbits) if palettization else None,
        test_resolution=test_resolution,
        use_sr=use_sr,
        min_target=min_target,
        contract_out=contract_out,
        ane=not no_ane_report,
    )
    click.echo(result.table())
    if result.failures:
        fail(result.failures[0])


if __name__ == "__main__":
    main()
