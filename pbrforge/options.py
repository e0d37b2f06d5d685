"""Command-line pieces every stage script shares: the examples epilog, the training options and how they
override a config. Imports click only, so a command's ``--help`` never waits for torch."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pbrforge.config import TrainConfig

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_CHOICE = click.Choice(DEVICES)
# Largest view or map side any option or file may ask for: 8192 px maps of one sample are 2 GiB as float32,
# so a larger request is refused before anything is allocated.
MAX_SIDE = 8192
# Largest side of an image file read (photos are resized to the model's input): a 200 MP photo fits.
MAX_IMAGE_SIDE = 16384


class OutputPath(click.Path):
    """A path the command will write: refused at parse time when it, or a folder on the way, is a file."""

    def __init__(self, folder: bool) -> None:
        super().__init__(path_type=Path, file_okay=not folder, dir_okay=folder)
        self.folder = folder

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from pbrforge.errors import DataError
        from pbrforge.fileio import check_output_dir, check_output_path

        if not str(value).strip():  # "" would mean the current folder: never a deliberate output
            self.fail("an empty path is not an output; name a file or folder", param, ctx)
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        try:
            if self.folder:
                check_output_dir(path, "the folder")
            else:
                check_output_path(path, "the file")
        except DataError as e:
            self.fail(str(e), param, ctx)
        return path


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets NaN through (every comparison with NaN is false); this one does not."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if out != out:
            self.fail(f"{value!r} is not a number", param, ctx)
        return out


class CaptureMix(click.ParamType):
    """``NAME[:WEIGHT],...`` of capture models (``pbrforge.captures``) -> weights that sum to 1."""

    name = "NAME[:W],..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            return value
        from pbrforge.captures import parse_mix  # torch loads only when the command runs, never for --help

        try:
            return parse_mix(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


OUTPUT_DIR = OutputPath(folder=True)
OUTPUT_FILE = OutputPath(folder=False)
CAPTURE_MIX = CaptureMix()


def examples_epilog(doc: str | None) -> str:
    """The "Examples:" block of a module docstring as a click epilog, kept verbatim (``\\b``)."""
    doc = doc or ""
    marker = "Examples:" if "Examples:" in doc else "Example:"
    if marker not in doc:
        return ""
    lines = [ln.strip() for ln in doc.split(marker, 1)[1].strip().splitlines()]
    joined: list[str] = []
    for ln in lines:  # undo backslash continuations so each example is one line
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + ln
        elif ln:
            joined.append(ln)
    return "\b\nExamples:\n" + "\n".join(f"  {ln}" for ln in joined)


# how three handheld photos are registered onto the first (pbrforge.registration); here so --help needs no cv2
ALIGN_METHODS = ("features", "corners", "markers", "none")


def align_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--align`` and ``--corners`` for every command that reads photos (checked together by
    ``pbrforge.views.read_registered_views``, before anything is written)."""
    for option in reversed(
        [
            click.option(
                "--align",
                type=click.Choice(ALIGN_METHODS),
                default="features",
                show_default=True,
                help="How the three photos are registered onto the first before the model sees them.",
            ),
            click.option(
                "--corners",
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                default=None,
                help='With --align corners: JSON {"views": [[[x, y] x4] per photo]}, top-left first, clockwise.',
            ),
        ]
    ):
        fn = option(fn)
    return fn


def train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options teacher and student training share."""
    options = [
        old_spellings("--output", "--output-dir"),
        click.option(
            "--output",
            "output_dir",
            type=OUTPUT_DIR,
            required=True,
            help="Logs, metrics.jsonl, grids (and checkpoints unless --checkpoint-dir).",
        ),
        click.option(
            "--checkpoint-dir",
            type=OUTPUT_DIR,
            default=None,
            help="Where latest.pt / best.pt go [default: OUTPUT/checkpoints].",
        ),
        click.option(
            "--resume",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Continue from a checkpoint.",
        ),
        click.option("--device", type=DEVICE_CHOICE, default="auto", show_default=True),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=None),
        click.option("--epochs", type=click.IntRange(1, 1_000_000), default=None),
        click.option(
            "--max-steps-per-epoch",
            type=click.IntRange(0, None),
            default=None,
            help="Cap steps per epoch (quick runs); 0 means the whole epoch.",
        ),
        click.option(
            "--set",
            "extra",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any config field, e.g. --set model.vit_depth=1 --set optim.lr=1e-3 (values are JSON).",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def apply_train_options(
    cfg: TrainConfig,
    batch_size: int | None,
    epochs: int | None,
    curriculum: int | None,
    max_steps: int | None,
    extra: tuple[str, ...] = (),
) -> TrainConfig:
    """Command-line flags win over the preset; ``--set section.key=value`` reaches any other field."""
    from pbrforge.config import parse_overrides

    overrides: dict[str, Any] = {}
    if batch_size is not None:
        overrides["training.batch_size"] = batch_size
    if epochs is not None:
        overrides["training.epochs"] = epochs
    if curriculum is not None:
        overrides["data.curriculum"] = curriculum
    if max_steps is not None:
        overrides["training.max_steps_per_epoch"] = max_steps
    return cfg.override(overrides | parse_overrides(extra))


class OneLineUsageErrors:
    """Usage errors (a bad option value, a missing argument) print as one line and exit 2, not a usage block."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except click.UsageError as e:
            e.ctx = None  # without a context click prints "Error: <message>" alone
            raise


class Command(OneLineUsageErrors, click.Command):
    """Every pbrforge command: ``@click.command(name, cls=Command)``."""


_OLD_SPELLINGS = "pbrforge.old_spellings"  # ctx.meta key: parameter name -> the old spelling used


class _Unlisted(click.Argument):
    """A positional argument that is accepted but left out of the usage line (an old spelling)."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def _shown(param: click.Parameter) -> str:
    """How a parameter is written on the command line: ``--output``, or ``CHECKPOINT as an argument``."""
    return param.opts[0] if isinstance(param, click.Option) else f"{param.human_readable_name} as an argument"


def old_spellings(new: str, *old: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Keep the old spellings of a parameter working for one release, hidden from ``--help``.

    Write it just above the parameter it names by today's spelling: ``@old_spellings("--output", "--out")``
    over ``@click.option("--output", ...)``, or ``@old_spellings("checkpoint", "--checkpoint")`` over
    ``@click.argument("checkpoint", ...)``. An old spelling with dashes is a hidden option; one without is a
    positional argument left out of the usage line. Its value reaches the parameter as the context's default,
    so the parameter's own type, range and required check apply unchanged. Using it prints one deprecation
    line on stderr; giving both spellings is a usage error.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params: list[click.Parameter] = getattr(fn, "__click_params__", [])
        target = next((p for p in params if new in p.opts), None)
        if target is None or target.name is None:
            raise TypeError(f"old_spellings({new!r}) must sit just above the parameter it renames")
        name = target.name

        def take_old(ctx: click.Context, param: click.Parameter, value: Any) -> None:
            if value is None:
                return
            from pbrforge.logs import ensure_logging

            was = _shown(param)
            ensure_logging().warning(
                f"{was} is deprecated, use {_shown(target)} (the old spelling goes in the next release)"
            )
            ctx.meta.setdefault(_OLD_SPELLINGS, {})[name] = was
            ctx.default_map = {**(ctx.default_map or {}), name: value}

        def not_both(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
            was = ctx.meta.get(_OLD_SPELLINGS, {}).get(name)
            if was and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"give {_shown(target)} or its old spelling {was}, not both")
            return own(ctx, param, value) if own else value

        own, target.callback = target.callback, not_both
        for i, spelling in enumerate(old):
            dest = f"old_{name}_{i}"
            common: dict[str, Any] = {"expose_value": False, "is_eager": True, "callback": take_old}
            if spelling.startswith("-"):
                params.append(click.Option([spelling, dest], hidden=True, **common))
            else:
                params.append(_Unlisted([dest], required=False, metavar=spelling, **common))
        return fn

    return decorate


COREML_TARGETS = ("iOS17", "iOS18")
PALETTE_BITS = (8, 6, 4)


def check_export(
    families: tuple[str, ...],
    *,
    nbits: int | None,
    mixed: bool,
    quantize: str | None,
    data: bool,
    min_target: str,
    palettization: bool = True,
    nbits_given: bool = False,
    budget_given: bool = False,
    recipe_with_nbits: str | None = None,
    qat_steps: int = 0,
) -> None:
    """Every combination of export options that cannot work, as one sentence, before torch loads.

    Args:
        families: the formats asked for (``--format``, ``all`` expanded).
        nbits: uniform palettization bits, or None.
        mixed: per-layer bits, searched (``--nbits mixed``) or replayed (``--recipe``).
        data: whether ``--data`` was given.
        qat_steps: quantization-aware fine-tuning steps of the 8-bit-activation models.
        palettization, nbits_given, budget_given, recipe_with_nbits: how the command line spelled them.
    """
    from pbrforge.artifacts import FAMILIES
    from pbrforge.errors import ConfigError

    unknown = [f for f in families if f not in FAMILIES] if families else [""]
    if unknown:
        raise ConfigError(f"unknown format {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    if (nbits_given or budget_given) and not palettization:
        raise ConfigError("--nbits and --budget-db choose a palettization: give --palettization too")
    if recipe_with_nbits is not None:
        raise ConfigError(
            f"--recipe sets the bits of every weight: it cannot go with --nbits {recipe_with_nbits}"
        )
    if budget_given and not mixed:
        raise ConfigError("--budget-db is the render budget of --nbits mixed")
    if min_target not in COREML_TARGETS:
        raise ConfigError(f"--min-target {min_target} is not one of {', '.join(COREML_TARGETS)}")
    if nbits is not None and nbits not in PALETTE_BITS:
        raise ConfigError(f"--nbits {nbits} is not one of {PALETTE_BITS}")
    if nbits == 4 and min_target == "iOS17" and "coreml" in families:
        raise ConfigError(
            "4-bit palettization uses per-grouped-channel LUTs, which need iOS18: "
            "pass --min-target iOS18 or choose --nbits 8 or 6"
        )
    if mixed and "coreml" not in families:
        raise ConfigError("mixed-bit palettization is for Core ML: use --format coreml or all")
    if quantize is not None and not data:
        raise ConfigError(f"--quantize {quantize} calibrates on real views: give --data DATA_ROOT")
    if quantize == "int8" and not {"onnx", "executorch"} & set(families):
        raise ConfigError(
            "--quantize int8 quantizes the ONNX and ExecuTorch models: use --format onnx, executorch or all"
        )
    if quantize == "w8a8" and "coreml" not in families:
        raise ConfigError("--quantize w8a8 writes a Core ML package: use --format coreml or all")
    if qat_steps and not (quantize == "w8a8" or (quantize == "int8" and "executorch" in families)):
        raise ConfigError(
            "--qat-steps fine-tunes the int8 ExecuTorch and the W8A8 Core ML models only: give --quantize int8 "
            "with --format executorch or all, or --quantize w8a8"
        )
    if data and not (quantize or mixed):
        raise ConfigError("--data is for --quantize and --nbits mixed; neither was asked for")


def data_option(*old: str, required: bool = True, help: str = "A data set written by datagen.") -> Callable:
    """``--data``, the data set a command reads, with the command's old spellings of it (``old_spellings``).

    One word per concept: ``--data`` is a data set read, ``--output`` whatever a command writes (the data set
    datagen creates included), and a checkpoint is the command's first argument.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--data", type=click.Path(path_type=Path, file_okay=False), required=required, help=help
        )(fn)
        return old_spellings("--data", *old)(fn)

    return decorate


# what --self-check replaces: its vectors are the inputs and the reference
SELF_CHECK_NEEDS_NO: tuple[str, ...] = (
    "--input",
    "--output",
    "--reference",
    "--emit",
    "--runs",
    "--warmup",
    "--final-size",
    "--render-psnr-min",
    "--normal-p99-max",
    "--align",
    "--corners",
)


def check_run(
    self_check: bool, given: dict[str, bool], input_dir: Path | None, output: Path | None
) -> tuple[Path, Path] | None:
    """Every combination of ``pbrforge run`` options that cannot work, as one usage error, before torch loads.

    Args:
        given: each option's flag -> whether it was on the command line.

    Returns:
        ``(input_dir, output)`` for a prediction run, None for ``--self-check``.
    """
    if self_check:
        extra = [flag for flag in SELF_CHECK_NEEDS_NO if given.get(flag)]
        if extra:
            raise click.UsageError(
                f"--self-check needs no {extra[0]}: the vectors are the inputs and the reference"
            )
        return None
    if input_dir is None or output is None:
        raise click.UsageError(
            f"Missing option '{'--input' if input_dir is None else '--output'}' (or give --self-check)."
        )
    if not given.get("--emit"):
        about_emit = [flag for flag in ("--validate", "--name", "--bits", "--normal") if given.get(flag)]
        if about_emit:
            raise click.UsageError(f"{about_emit[0]} is about the files --emit writes: give --emit too")
    return input_dir, output
