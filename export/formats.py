"""One interface per artifact format: a registry the exporter loops over and the runtime looks up by suffix.

Each ``export/<format>_export.py`` registers its variants with :func:`register`. A :class:`Format` says how
to ``build`` the artifact into a staging name, how to ``check`` it against PyTorch (always by running it, or
its faithful emulation where the platform cannot, through :func:`measure`), and how to ``runner`` it once
kept. :func:`run_step` is the only code that stages, gates, keeps or marks failed, writes the parity report
and records the row: a new format writes a module with one ``register`` call and adds it to
``FORMAT_MODULES``, and every test parametrized over :func:`registered` then covers it.

No torch at import: the CLI's ``--help`` and option checks stay fast.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbrforge.artifacts import FAMILIES, ArtifactPaths, report_path
from pbrforge.errors import ConfigError, DataError, UnavailableError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pbrforge.calibration import HeldOut, Inputs
    from pbrforge.deploy import DeployContract
    from pbrforge.export.gates import RenderGate
    from pbrforge.export.parity import Comparison, ParityReport

_logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "executorch", "coreml", "tensorrt")  # the runtimes a runner can be
# every module that registers formats, in the order the exporter builds them (parents before children)
FORMAT_MODULES = (
    "pbrforge.export.onnx_export",
    "pbrforge.export.ort_mobile",
    "pbrforge.export.onnx_quantize",
    "pbrforge.export.executorch_export",
    "pbrforge.export.coreml_export",
    "pbrforge.export.coreml_w8a8",
    "pbrforge.export.trt_export",
)

Views = tuple["torch.Tensor", ...]  # three (1, 3, H, W) float tensors of whole numbers in 0..255
Outputs = dict[str, "np.ndarray"]


@dataclass
class Runner:
    """A loaded artifact: run three views, get the contract's named maps."""

    backend: str
    contract: DeployContract
    run: Callable[[Views], Outputs]
    threads: int


@dataclass
class ExportOptions:
    """Everything the command line decides about one export, resolved (checked by ``options.check_export``)."""

    families: tuple[str, ...] = FAMILIES
    fp16: bool = True
    nbits: int | None = None
    min_target: str = "iOS17"
    mixed_budget_db: float | None = None  # search per-layer bits for this render PSNR
    recipe: dict | None = None  # or replay the bits of an earlier search
    quantize: str | None = None  # int8 | w8a8
    qat_steps: int = 0  # quantization-aware fine-tuning of the quantized models toward the float one
    progress: bool = True
    ane: bool = True
    fp32_max_abs: float = 1e-4
    gate: RenderGate | None = None  # fp32, FP16 and 8-bit artifacts
    palettized_gate: RenderGate | None = None  # palettized weights; None records without judging

    @property
    def mixed(self) -> bool:
        return self.mixed_budget_db is not None or self.recipe is not None


@dataclass
class ExportJob:
    """One model about to be exported: its modules, example inputs, contract, names and held-out views."""

    checkpoint: Path
    paths: ArtifactPaths
    options: ExportOptions
    wrapper: torch.nn.Module  # as trained: ONNX and XNNPACK fold BatchNorm themselves
    folded: torch.nn.Module  # BatchNorm folded: Core ML stores these weights, so they can be read back
    example: Inputs
    contract: DeployContract
    held_out: HeldOut | None = None  # from --data: calibrates and judges the 8-bit artifacts
    training: list[Inputs] = field(default_factory=list)  # from --data's training split, for --qat-steps

    @property
    def gate(self) -> RenderGate:
        from pbrforge.export.gates import RenderGate

        return self.options.gate or RenderGate()

    def views(self) -> HeldOut:
        """The held-out views a calibrated artifact needs; one sentence when none were given."""
        if self.held_out is None:
            raise ConfigError("a calibrated artifact needs real views: give --data DATA_ROOT")
        return self.held_out

    def calibration_info(self) -> dict[str, Any]:
        """What a calibrated artifact's report says about the views it was calibrated and judged on."""
        if self.held_out is None:
            return {}
        return {
            "calibration_samples": len(self.held_out.calibration),
            "held_out_samples": len(self.held_out.judged),
            "calibrated_on_the_judged_samples": self.held_out.overlapping,
        }


@dataclass
class Built:
    """What ``build`` made in the staging path: time taken, facts for the report, and what ``check`` needs."""

    seconds: float
    info: dict[str, Any] = field(default_factory=dict)  # merged into the parity report
    deployment: dict[str, Any] = field(default_factory=dict)  # merged into OUTPUT.deployment.json
    state: Any = None  # handed to ``check`` (the W8A8 fake-quant model, say)
    on_keep: Callable[[Path], None] | None = (
        None  # writes files beside the kept artifact (recipe, ANE report)
    )
    note: str = ""  # why an unchecked artifact is unverified


class SkipStep(Exception):
    """A step that cannot be judged here for a reason that is not the artifact's fault; recorded as skipped."""


@dataclass(frozen=True)
class Format:
    """One artifact variant.

    Args:
        name: the row name in the summary table (``onnx-int8``).
        family: the ``--format`` it belongs to.
        suffix: appended to OUTPUT (``.int8.onnx``); unique, so the runtime finds the format from a file name.
        backend: the runtime that loads it.
        build: writes the artifact to the staging path it is given.
        check: runs the staged artifact against PyTorch and judges it; None for artifacts this machine cannot
            run at all, which are kept as unverified.
        runner: loads a kept artifact for the runtime.
        needs: formats whose artifacts this one is made from; each must have passed.
        wanted: whether the options ask for this variant once its family is chosen.
        available: raises UnavailableError when its tool is missing, before anything is built.
    """

    name: str
    family: str
    suffix: str
    backend: str
    build: Callable[[ExportJob, Path], Built]
    check: Callable[[ExportJob, Path, Built], ParityReport] | None
    runner: Callable[[Path, int], Runner]
    needs: tuple[str, ...] = ()
    wanted: Callable[[ExportOptions], bool] = lambda options: True
    available: Callable[[], None] = lambda: None


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format; a second format with the same name or suffix is a programming error."""
    if fmt.family not in FAMILIES or fmt.backend not in BACKENDS:
        raise ValueError(f"format {fmt.name}: family {fmt.family!r} or backend {fmt.backend!r} is unknown")
    clash = [f.name for f in _REGISTRY.values() if f.suffix == fmt.suffix and f.name != fmt.name]
    if clash:
        raise ValueError(f"format {fmt.name}: suffix {fmt.suffix} is already {clash[0]}'s")
    _REGISTRY[fmt.name] = fmt
    return fmt


def registered() -> list[Format]:
    """Every format, parents before the formats made from them."""
    for module in FORMAT_MODULES:
        importlib.import_module(module)
    return list(_REGISTRY.values())


def by_name(name: str) -> Format:
    formats = {f.name: f for f in registered()}
    if name not in formats:
        raise ConfigError(f"unknown format {name!r}; known: {', '.join(formats)}")
    return formats[name]


def for_artifact(path: Path) -> Format:
    """The format of an artifact, from the longest registered suffix its name ends with."""
    name = Path(path).name.lower()
    matches = [f for f in registered() if name.endswith(f.suffix)]
    if not matches:
        raise DataError(
            f"cannot tell the format of {path} from its name; known endings: "
            f"{', '.join(sorted({f.suffix for f in registered()}))}"
        )
    return max(matches, key=lambda f: len(f.suffix))


def plan(options: ExportOptions) -> list[Format]:
    """The formats one run builds, in order: every wanted variant of the chosen families."""
    return [f for f in registered() if f.family in options.families and f.wanted(options)]


def primary(fmt: Format) -> bool:
    """True for the artifact a family is asked for (``.onnx``), False for variants made from it (``.int8.onnx``)."""
    return not any(by_name(n).family == fmt.family for n in fmt.needs)


def check_needs(steps: Sequence[Format], paths: ArtifactPaths) -> None:
    """A format made from one outside this run needs that artifact on disk already: said before anything is written."""
    planned = {f.name for f in steps}
    for fmt in steps:
        for need in fmt.needs:
            parent = by_name(need)
            if need not in planned and not paths.artifact(parent.suffix).exists():
                raise ConfigError(
                    f"{fmt.name} is built from {paths.artifact(parent.suffix)}, which does not exist: "
                    f"export {parent.family} first (--format all does)"
                )


# --------------------------------------------------------------------------- the outcome of a run


@dataclass
class ExportRow:
    """One format's outcome: where it went, whether its gate passed, how long it took."""

    format: str
    path: str
    status: str  # ok | FAILED | unverified | skipped
    seconds: float = 0.0
    bytes: int = 0
    detail: str = ""
    parity: ParityReport | None = None
    deployment: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What one export run produced: per format a row for the summary table."""

    rows: list[ExportRow] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [r.detail for r in self.rows if r.status == "FAILED"]

    def row(self, name: str) -> ExportRow | None:
        return next((r for r in self.rows if r.format == name), None)

    def table(self) -> str:
        lines = [f"{'format':<17} {'status':<10} {'size MiB':>9} {'seconds':>8}  path / detail"]
        for r in self.rows:
            lines.append(
                f"{r.format:<17} {r.status:<10} {r.bytes / 2**20:9.2f} {r.seconds:8.1f}  {r.path} {r.detail}".rstrip()
            )
        return "\n".join(lines)


def artifact_bytes(path: Path) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------- the one step


def run_step(job: ExportJob, fmt: Format, result: ExportResult) -> ExportRow:
    """Build ``fmt`` under a staging name, check it, keep it (or keep it as failed) and record its row.

    Only an artifact whose gate passed replaces ``OUTPUT<suffix>``; one that failed goes to the failed name
    with its report, so an artifact from an earlier run stays untouched. An artifact this machine cannot
    run is kept as unverified, never as ok.
    """
    from pbrforge.fileio import remove, replace_path, temp_name, write_json

    final = job.paths.artifact(fmt.suffix)
    blocked = [n for n in fmt.needs if (r := result.row(n)) is not None and r.status != "ok"]
    if blocked:
        return _record(
            result, ExportRow(fmt.name, "", "skipped", detail=f"the {blocked[0]} artifact did not pass")
        )
    staged = temp_name(final, "staged")
    try:
        fmt.available()
        built = fmt.build(job, staged)
        if fmt.check is None:
            replace_path(staged, final)
            row = ExportRow(
                fmt.name, str(final), "unverified", built.seconds, artifact_bytes(final), built.note
            )
        else:
            parity = fmt.check(job, staged, built)
            parity.info = built.info | parity.info
            row = _keep(job, fmt, staged, parity, built.seconds)
        row.deployment = built.deployment
        if built.on_keep is not None:
            built.on_keep(Path(row.path))
    except UnavailableError as e:
        if job.options.families == (fmt.family,) and primary(fmt):
            raise  # the one format asked for cannot be made here: that is the answer, not a skipped row
        row = ExportRow(fmt.name, "", "skipped", detail=str(e))
    except SkipStep as e:
        row = ExportRow(fmt.name, "", "skipped", detail=str(e))
    finally:
        remove(staged)
    if row.parity is not None:
        write_json(report_path(Path(row.path), "parity"), row.parity.to_dict())
    return _record(result, row)


def _record(result: ExportResult, row: ExportRow) -> ExportRow:
    result.rows.append(row)
    return row


def _keep(job: ExportJob, fmt: Format, staged: Path, parity: ParityReport, seconds: float) -> ExportRow:
    """Move a checked artifact to its final name or, failed, to its failed name; the row says which."""
    from pbrforge.export.parity import tables
    from pbrforge.fileio import replace_path

    kept = job.paths.failed(fmt.suffix) if parity.passed is False else job.paths.artifact(fmt.suffix)
    replace_path(staged, kept)
    _logger.info(tables(parity))
    if parity.passed is None:  # nothing could be measured here (Core ML FP32 off macOS): never claim ok
        status, detail = (
            "unverified",
            str(parity.info.get("note", "no parity gate could run on this machine")),
        )
    else:
        status, detail = ("ok", "") if parity.passed else ("FAILED", parity.failure or "")
    return ExportRow(fmt.name, str(kept), status, seconds, artifact_bytes(kept), detail, parity)


# --------------------------------------------------------------------------- shared by the checks


def compare_run(
    job: ExportJob,
    label: str,
    run: Callable[[Views], Outputs],
    samples: Sequence[Views] | None = None,
    *,
    max_abs: float | None = None,
    psnr_db: float | None = None,
    render_gate: RenderGate | None,
) -> Comparison:
    """Run ``run`` and PyTorch fp32 on ``samples`` (default: the parity example), batched as one comparison.

    Gated per value at ``max_abs`` (fp32 runtimes) or per output at ``psnr_db``, and in render space by
    ``render_gate``; a gate left None records its figures without judging them.
    """
    from pbrforge.export.parity import batched_outputs, comparison

    samples = [job.example] if samples is None else list(samples)
    reference, outputs = batched_outputs(job.wrapper, run, samples)
    tensor_gate, limit = ("max_abs", max_abs) if max_abs is not None else ("psnr_db", psnr_db)
    return comparison(
        label, reference, outputs, tensor_gate if limit is not None else None, limit, render_gate
    )


def measure(
    job: ExportJob,
    backend: str,
    label: str,
    run: Callable[[Views], Outputs],
    samples: Sequence[Views] | None = None,
    *,
    max_abs: float | None = None,
    render_gate: RenderGate | None = None,
) -> ParityReport:
    """The report of one :func:`compare_run` judged by ``render_gate`` (default: the job's gate)."""
    from pbrforge.export.parity import ParityReport

    c = compare_run(job, label, run, samples, max_abs=max_abs, render_gate=render_gate or job.gate)
    report = ParityReport(backend, [c])
    report.info["samples"] = 1 if samples is None else len(samples)
    return report


def check_io(
    path: Path,
    contract: DeployContract,
    input_shapes: Sequence[Sequence[Any]],
    output_sides: Sequence[Any],
) -> None:
    """One sentence when a loaded artifact is not a pbrforge model of its contract's size."""
    from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES

    wanted = [1, 3, contract.image_size, contract.image_size]
    if len(input_shapes) != len(INPUT_NAMES) or len(output_sides) != len(OUTPUT_NAMES):
        raise DataError(
            f"{path} is not a pbrforge model: it takes {len(input_shapes)} inputs and returns "
            f"{len(output_sides)} outputs, expected {len(INPUT_NAMES)} and {len(OUTPUT_NAMES)}"
        )
    if any(list(shape) != wanted for shape in input_shapes):
        raise DataError(f"{path} takes inputs of shape {list(input_shapes[0])}, its contract says {wanted}")
    if any(side != contract.output_size for side in output_sides):
        raise DataError(
            f"{path} returns maps of side {list(output_sides)}, its contract says {contract.output_size}"
        )
