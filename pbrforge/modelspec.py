"""A model spec: what any image-to-image model declares so the gated deploy path can take it (issue #26).

A spec is built by a factory the user names (``--model FILE.py:factory``, ``--model package.module:factory``,
or a name registered under the ``pbrforge.models`` entry-point group). It lists the model's graphs, each a
module with its inputs and outputs described well enough to make example inputs, check what a runner is fed
and choose each output's gate. Exported graphs lose the model's own ``assert`` statements, so each input
states the value range it accepts (a rate of 0-4, a noise level of 0.002-80) and runners check it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbrforge.errors import ConfigError, DataError
from pbrforge.gate_metrics import parse_gate

if TYPE_CHECKING:
    import torch
    from torch import nn

ENTRY_POINT_GROUP = "pbrforge.models"
KINDS = ("image", "tensor", "latent", "symbols", "map")
COLOR_SPACES = ("srgb", "linear", "raw", "none")
DTYPES = ("float32", "float16", "int32", "int64")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph.

    Args:
        shape: an example shape, batch first; the last two axes of an image may be any multiple of ``multiple``.
        encoding: the numeric range the values are stored in (0-255 sRGB, -1-1), for previews and calibration.
        valid: the values the graph is defined on; a runner refuses an input outside it (None: any finite value).
        gate: the metric that judges this output (outputs only): ``NAME`` or ``NAME:LIMIT`` of
            ``pbrforge.gate_metrics``; None: ``max_abs`` for floats, ``exact`` for integers.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "image"
    color: str = "none"
    encoding: tuple[float, float] = (0.0, 1.0)
    valid: tuple[float, float] | None = None
    multiple: int = 1
    gate: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(
                f"tensor name {self.name!r} is not an identifier (letters, digits, underscores)"
            )
        if not self.shape or any(not isinstance(d, int) or d < 1 for d in self.shape):
            raise ConfigError(f"{self.name}: shape {self.shape} must be positive whole numbers, batch first")
        for what, value, allowed in (
            ("dtype", self.dtype, DTYPES),
            ("kind", self.kind, KINDS),
            ("color", self.color, COLOR_SPACES),
        ):
            if value not in allowed:
                raise ConfigError(f"{self.name}: {what} {value!r} is not one of {', '.join(allowed)}")
        for what, bounds in (("encoding", self.encoding), ("valid", self.valid)):
            if bounds is not None and not _interval(bounds):
                raise ConfigError(f"{self.name}: {what} {bounds} must be two finite numbers, low below high")
        if self.gate is not None:
            parse_gate(self.gate)
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ConfigError(f"{self.name}: multiple {self.multiple!r} must be a positive whole number")
        if self.kind == "image" and (
            len(self.shape) != 4 or self.shape[-1] % self.multiple or self.shape[-2] % self.multiple
        ):
            raise ConfigError(
                f"{self.name}: an image is (batch, channels, height, width) with height and width multiples of "
                f"{self.multiple}, not {self.shape}"
            )

    @property
    def judged_by(self) -> str:
        return self.gate or ("exact" if self.dtype.startswith("int") else "max_abs")

    @property
    def span(self) -> float:
        return self.encoding[1] - self.encoding[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gate": self.judged_by}

    def example(self, seed: int = 0) -> torch.Tensor:
        """A tensor of the example shape with values spread over the valid (else the encoded) range."""
        import torch

        low, high = self.valid or self.encoding
        g = torch.Generator().manual_seed(seed)
        values = low + (high - low) * torch.rand(self.shape, generator=g, dtype=torch.float64)
        if self.dtype.startswith("int"):
            return values.round().to(getattr(torch, self.dtype))
        return values.to(getattr(torch, self.dtype))

    def check(self, value: torch.Tensor) -> None:
        """Refuse a tensor the graph is not defined on, in one sentence: wrong rank, size, type or range."""
        import torch

        if not isinstance(value, torch.Tensor):
            raise DataError(f"{self.name}: expected a tensor, got {type(value).__name__}")
        if value.dim() != len(self.shape):
            raise DataError(
                f"{self.name}: expected {len(self.shape)} axes like {self.shape}, got {tuple(value.shape)}"
            )
        fixed = self.shape[:-2] if self.kind == "image" else self.shape
        if tuple(value.shape[1 : len(fixed)]) != fixed[1:]:
            raise DataError(f"{self.name}: expected shape like {self.shape}, got {tuple(value.shape)}")
        if self.kind == "image" and any(d % self.multiple for d in value.shape[-2:]):
            raise DataError(
                f"{self.name}: height and width must be multiples of {self.multiple}, got {tuple(value.shape[-2:])}"
            )
        if str(value.dtype).removeprefix("torch.") != self.dtype:
            raise DataError(
                f"{self.name}: expected {self.dtype}, got {str(value.dtype).removeprefix('torch.')}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataError(f"{self.name}: holds NaN or infinite values")
        if self.valid is not None and value.numel():
            low, high = float(value.min()), float(value.max())
            if low < self.valid[0] or high > self.valid[1]:
                raise DataError(
                    f"{self.name}: values span {low:g}..{high:g}, outside the {self.valid[0]:g}..{self.valid[1]:g} "
                    "the model is defined on"
                )

    def check_exported(self, value: torch.Tensor) -> None:
        """``check``, and the exact example shape: graphs are exported at a fixed size."""
        self.check(value)
        if tuple(value.shape) != self.shape:
            raise DataError(
                f"{self.name} must have shape {self.shape} (the size it was exported at), not {tuple(value.shape)}"
            )


@dataclass
class GraphSpec:
    """One graph to export: a module and the tensors it takes and gives, in call and return order."""

    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def feeds_coder(self) -> bool:
        """Its outputs pick an entropy coder's models: it must compute them bit for bit alike everywhere."""
        return any(t.kind == "symbols" for t in self.outputs)

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return tuple(t.example(seed + i) for i, t in enumerate(self.inputs))

    def check_inputs(self, values: tuple[torch.Tensor, ...]) -> None:
        check_values(self.inputs, values)


def check_values(specs: tuple[TensorSpec, ...], values: tuple[torch.Tensor, ...]) -> None:
    """Refuse, in one sentence, values a graph with inputs ``specs`` is not defined on."""
    if len(values) != len(specs):
        raise DataError(
            f"expected {len(specs)} inputs ({', '.join(t.name for t in specs)}), got {len(values)}"
        )
    for spec, value in zip(specs, values, strict=True):
        spec.check(value)


def tensor_spec(data: dict[str, Any]) -> TensorSpec:
    """A TensorSpec back from its ``to_dict()`` (a manifest's JSON: lists where tuples were)."""
    fields = dict(data)
    for key in ("shape", "encoding", "valid"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    try:
        return TensorSpec(**fields)
    except TypeError as e:
        raise ConfigError(f"a tensor in the manifest is malformed: {e}") from e


Call = Callable[[str, tuple["torch.Tensor", ...]], tuple["torch.Tensor", ...]]


@dataclass
class Pipeline:
    """What the host does across graphs (a round trip, a sampler's steps), judged end to end.

    ``run(call)`` gets ``call(graph, inputs) -> outputs`` (eager or an artifact) and returns (result, target)
    or (result, target, figures). A target (a round trip's own input) is what the result is held to; None
    holds it to the same pipeline run in eager PyTorch. Figures (bits per pixel, a coder's sync) are reported.
    """

    graphs: tuple[str, ...]
    run: Callable[[Call], tuple[Any, ...]]
    gate: str = "psnr"
    span: float = 1.0

    def __post_init__(self) -> None:
        parse_gate(self.gate)
        if not callable(self.run):
            raise ConfigError("a pipeline's run must be callable: run(call) -> (result, target)")
        if not (math.isfinite(self.span) and self.span > 0):
            raise ConfigError(f"a pipeline's span must be a finite number above 0, not {self.span}")


@dataclass
class ModelSpec:
    """A model's graphs by name, what the host does between them (a sampler, an entropy coder), and the
    pipelines that judge them together."""

    name: str
    graphs: dict[str, GraphSpec]
    glue: dict[str, Any] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import torch

        if not self.graphs:
            raise ConfigError(f"model spec {self.name!r} lists no graph")
        for graph_name, graph in self.graphs.items():
            if not graph_name.isidentifier():
                raise ConfigError(f"graph name {graph_name!r} is not an identifier")
            if not isinstance(graph, GraphSpec) or not isinstance(graph.module, torch.nn.Module):
                raise ConfigError(
                    f"graph {graph_name!r} of {self.name!r} is not a GraphSpec holding a torch module"
                )
            if not graph.inputs or not graph.outputs:
                raise ConfigError(
                    f"graph {graph_name!r} of {self.name!r} needs at least one input and one output"
                )
            names = [t.name for t in (*graph.inputs, *graph.outputs)]
            if len(set(names)) != len(names):
                raise ConfigError(f"graph {graph_name!r} of {self.name!r} repeats a tensor name: {names}")
        for pipe_name, pipe in self.pipelines.items():
            if not isinstance(pipe, Pipeline):
                raise ConfigError(f"pipeline {pipe_name!r} of {self.name!r} is not a pbrforge Pipeline")
            unknown = [g for g in pipe.graphs if g not in self.graphs]
            if unknown or not pipe.graphs:
                raise ConfigError(
                    f"pipeline {pipe_name!r} of {self.name!r} names graphs it does not have: {unknown or 'none'}"
                )


def load_spec(reference: str, weights: Path | None = None) -> ModelSpec:
    """The spec a factory builds: ``FILE.py:factory``, ``package.module:factory`` or a registered model name.

    ``weights`` (a state dict, safetensors or checkpoint file the factory reads) is passed as ``weights=``; a
    factory that takes no such argument is refused rather than silently given random weights.
    """
    factory = _factory(reference)
    kwargs: dict[str, str] = {}
    if weights is not None:
        try:
            takes = "weights" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes = False
        if not takes:
            raise ConfigError(
                f"the model factory {reference} takes no weights argument, so --weights cannot be used"
            )
        if not weights.is_file():
            raise DataError(f"weights file {weights} does not exist or is not a file")
        kwargs["weights"] = str(weights)
    try:
        spec = factory(**kwargs)
    except (ConfigError, DataError):  # already one sentence of ours
        raise
    except Exception as e:  # the user's code: whatever it raises is their model's error, said in one sentence
        raise ConfigError(f"the model factory {reference} failed: {type(e).__name__}: {e}") from e
    if not isinstance(spec, ModelSpec):
        raise ConfigError(
            f"the model factory {reference} returned {type(spec).__name__}, not a pbrforge ModelSpec"
        )
    return spec


def registered() -> dict[str, str]:
    """Model names registered under the ``pbrforge.models`` entry-point group, with their targets."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _factory(reference: str) -> Callable[[], Any]:
    if ":" not in reference:
        known = registered()
        if reference not in known:
            raise ConfigError(
                f"no model named {reference!r}: give FILE.py:factory, package.module:factory or one of "
                f"{', '.join(sorted(known)) or 'the registered models (none installed)'}"
            )
        reference = known[reference]
    where, _, attr = reference.rpartition(":")
    if where.endswith(".py"):
        module = _module_from_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(f"cannot import {where!r} for the model factory: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{where} has no callable {attr!r} to build the model spec")
    return factory


def _module_from_file(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"model file {path} does not exist or is not a file")
    name = f"pbrforge_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"{path} failed to load: {type(e).__name__}: {e}") from e
    return module


def _interval(bounds: Any) -> bool:
    return (
        isinstance(bounds, tuple)
        and len(bounds) == 2
        and all(isinstance(b, int | float) and math.isfinite(b) for b in bounds)
        and bounds[0] < bounds[1]
    )
