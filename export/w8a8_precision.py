"""Which layers of the Core ML W8A8 model stay float, chosen in render space; and its quantization-aware tuning.

coremltools' ``LinearQuantizer`` prepares the BN-folded model with ``torch.fx`` (``prepare_qat_fx``): each
quantized conv or linear holds a weight fake-quant, and activation fake-quants sit between quantized ops. A
layer is a conv or linear of ``job.folded``, made float with ``LinearQuantizerConfig(module_name_configs=
{name: None})``. The search is the ``.pte``'s (``int8_precision.choose``), with

- measure: prepare, calibrate and finalize with those modules excluded, rendered against the float model;
- rank: the ``.pte``'s first-order render gain, read from hooks on the fake-quants of the calibrated all-W8A8
  model: one forward and ``backward_render_loss``; a fake-quant's gain is ``sum(grad * (output - input))``
  (what dropping its rounding changes, to first order), summed per layer.

A weight fake-quant belongs to its layer, an activation one to the layer whose output it observes. That is
fx's rule only roughly: a tensor stays quantized while a quantized op still reads it. On the demo student 49
of 94 layers' exclusions removed exactly the fake-quants assigned to them; the others also removed the
fake-quant of an input only they read (a ``mean`` or ``reshape``), or of the norm after a depthwise conv, or
kept their output's (read by a residual sum or a gate). The rank is an estimate and every candidate is
measured; the recipe lists the fake-quants the chosen exclusions removed. An activation fake-quant that no
layer produces (the input scaling, residual sums, concatenations, norms' outputs) is a point of its own that
no module name can make float: its gain is reported, never ranked.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pbrforge.errors import ToolFailure
from pbrforge.export import int8_precision
from pbrforge.export.int8_precision import Point

if TYPE_CHECKING:
    from pbrforge.export.formats import ExportJob

_logger = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]
WEIGHT_FQ = ".weight_fake_quant"
OUT_OF_REACH = "no module name makes it float alone (a tensor between modules)"
RANKED_BY = "first-order render gain (hooks on the fake-quants)"
NOT_REACHED = "the budget was missed with up to {} layers float: every layer stays int8"


@dataclass
class Calibrated:
    """A model prepared by ``LinearQuantizer`` and calibrated; ``finalized`` is the package's numerics."""

    quantizer: Any
    prepared: torch.fx.GraphModule
    float_layers: frozenset[str]

    def finalized(self) -> nn.Module:
        return self.quantizer.finalize(inplace=False).eval()


def calibrate(
    folded: nn.Module, example: Inputs, calibration: Sequence[Inputs], float_layers: Iterable[str] = ()
) -> Calibrated:
    """W8A8 fake-quant observers calibrated on ``calibration`` without a training step, ``float_layers`` left out."""
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    excluded = frozenset(float_layers)
    # milestones: observers on from step 0, fake quantization only from step 1000 (so calibration observes
    # float activations), observers never frozen by step count, BatchNorm statistics frozen from step 0
    module = ModuleLinearQuantizerConfig(quantization_scheme="symmetric", milestones=[0, 1000, 1000, 0])
    config = LinearQuantizerConfig(
        global_config=module,
        module_type_configs={F.conv2d: None},
        module_name_configs={name: None for name in sorted(excluded)},
        non_traceable_module_names=traced_in_train_mode(folded),
    )
    try:
        quantizer = LinearQuantizer(copy.deepcopy(folded).train(), config)
        prepared = quantizer.prepare(example_inputs=example, inplace=False)
        quantizer.step()
        prepared.eval()  # observers still record in eval mode; batch statistics of one sample would not
        with torch.no_grad():
            for batch in calibration:
                prepared(*batch)
                quantizer.step()
    except Exception as e:  # torch.fx and coremltools raise many types
        raise ToolFailure(f"W8A8 quantization failed ({type(e).__name__}: {e}); no model was written") from e
    return Calibrated(quantizer, prepared, excluded)


def traced_in_train_mode(model: nn.Module) -> list[str]:
    """BatchNorm subclasses outside torch.nn (timm's ``BatchNormAct2d``), which fx traces through rather than calls.

    ``LinearQuantizer.prepare`` traces the model in train mode (it calls ``model.train()`` first), so such a
    layer's ``if self.training`` is baked in as ``F.batch_norm(training=True)``: batch statistics at inference.
    On the demo student that alone, with every fake-quant off, rendered at 17.3 dB against the float model;
    left untraced (called as a module, so ``eval()`` holds) it renders at 120 dB.
    """
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not type(m).__module__.startswith("torch.")
    ]


def _fake_quants(model: nn.Module) -> dict[int, str]:
    """id -> name of each fake-quant module (one shared by several names under its first; a deep copy keeps
    the names)."""
    from torch.ao.quantization import FakeQuantizeBase

    return {id(m): n for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)}


def _folded_name(name: str, names: set[str]) -> str:
    """A prepared module's name cut back to one ``job.folded`` has (a fused ``conv_stem`` holds ``conv_stem.conv``)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in names:
        parts.pop()
    return ".".join(parts)


def _module_path(node: torch.fx.Node, names: set[str]) -> str:
    """The module of ``job.folded`` a prepared node runs in ('' for none): the one it calls, or its scope."""
    if node.op == "call_module":
        return _folded_name(str(node.target), names)
    if node.op in ("call_function", "call_method"):
        return int8_precision.module_of(node)
    return ""


def _source(node: torch.fx.Node, fake_quant_nodes: set[torch.fx.Node]) -> torch.fx.Node | None:
    """The node whose output an activation fake-quant observes (through any fake-quant before it)."""
    source = node.args[0]
    while isinstance(source, torch.fx.Node) and source in fake_quant_nodes:
        source = source.args[0]
    return source if isinstance(source, torch.fx.Node) else None


@dataclass
class Layers:
    """The layers of a prepared model: its points, which may be ranked, and each fake-quant's call sites."""

    points: dict[str, Point]
    rankable: list[str]
    sites: dict[str, list[str]]  # fake-quant name -> the layer of each of its calls, in the order they run


def layers(prepared: torch.fx.GraphModule, folded: nn.Module) -> Layers:
    """Every fake-quant of ``prepared`` assigned to a layer (a conv or linear of ``folded``) or to a point of
    its own that no module name reaches (see the module doc)."""
    names = {n for n, _ in folded.named_modules() if n}
    fq_names = _fake_quants(prepared)
    weight_fqs = {n: m for n, m in prepared.named_modules(remove_duplicate=False) if n.endswith(WEIGHT_FQ)}
    weighted = {_folded_name(n[: -len(WEIGHT_FQ)], names) for n in weight_fqs} - {""}
    fq_nodes = _fake_quant_nodes(prepared)
    points: dict[str, Point] = {}
    sites: dict[str, list[str]] = defaultdict(list)

    def add(key: str, fake_quant: str, site: str) -> None:
        point = points.setdefault(key, Point(key, key if key in weighted else ""))
        point.nodes.append(fake_quant)
        sites[site].append(key)

    for node in prepared.graph.nodes:  # graph order: the order the activation fake-quants run
        source = _source(node, fq_nodes) if node in fq_nodes else None
        if source is not None:
            producer = _module_path(source, names)
            module = prepared.get_submodule(str(node.target))
            add(producer if producer in weighted else source.name, str(node.target), fq_names[id(module)])
    for name, m in weight_fqs.items():
        add(_folded_name(name[: -len(WEIGHT_FQ)], names), name, fq_names[id(m)])
    for key, point in points.items():
        if key not in weighted:
            point.why = OUT_OF_REACH
    return Layers(points, [k for k in points if k in weighted], dict(sites))


def _names_of(model: nn.Module) -> set[str]:
    """Every name a fake-quant module is registered under (a shared one has several)."""
    from torch.ao.quantization import FakeQuantizeBase

    return {n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, FakeQuantizeBase)}


def _fake_quant_nodes(prepared: torch.fx.GraphModule) -> set[torch.fx.Node]:
    names = _names_of(prepared)
    return {n for n in prepared.graph.nodes if n.op == "call_module" and n.target in names}


def fake_quant_sites(prepared: torch.fx.GraphModule) -> set[str]:
    """Where ``prepared`` rounds: each weight fake-quant's name, and ``after <node>`` for each activation one
    (names that do not depend on which layers were excluded, so two preparations can be compared)."""
    fq_nodes = _fake_quant_nodes(prepared)
    weights = {n for n in _names_of(prepared) if n.endswith(WEIGHT_FQ)}
    after = {f"after {s.name}" for n in fq_nodes if (s := _source(n, fq_nodes)) is not None}
    return weights | after


def rank(calibrated: Calibrated, found: Layers, reference: nn.Module, samples: Sequence[Inputs]) -> list[str]:
    """The rankable layers, most to gain from float first, by first-order render gain; every point's gain set.

    Run on a copy of the all-W8A8 calibrated model with fake quantization on and observers off: the numerics
    the search measures (within rounding of ``finalize``'s reference ops).
    """
    from torch.ao.quantization import disable_observer, enable_fake_quant

    live = copy.deepcopy(calibrated.prepared).eval()
    live.apply(enable_fake_quant)
    live.apply(disable_observer)
    calls: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if output.requires_grad:
            output.retain_grad()
        else:  # the views or a constant (the input scaling): nothing upstream to train, so a leaf gets its grad
            output = output.detach().requires_grad_(True)
        calls[id(module)].append((inputs[0].detach(), output))
        return output

    names = _fake_quants(live)
    hooks = [live.get_submodule(n).register_forward_hook(record) for n in names.values()]
    gains: dict[str, float] = defaultdict(float)
    try:
        for views in samples:
            with torch.no_grad():
                expected = reference(*views)
            calls.clear()
            int8_precision.backward_render_loss(live(*views), expected)
            for fq, records in calls.items():
                keys = found.sites.get(names[fq], [])
                for k, (inp, out) in enumerate(records):
                    if keys and out.grad is not None:
                        gains[keys[k % len(keys)]] += float((out.grad * (out.detach() - inp)).sum())
    finally:
        for h in hooks:
            h.remove()
        calls.clear()
    for key, point in found.points.items():
        point.gain = gains.get(key, 0.0)
    return sorted(found.rankable, key=lambda k: -found.points[k].gain)


def search(job: ExportJob) -> tuple[int8_precision.Search, Calibrated, list[str]]:
    """Which layers stay float for the job's gate, rendered on calibration views; the chosen model, calibrated;
    and the fake-quants its exclusions removed (``fake_quant_sites``)."""
    calibration = list(job.views().calibration)
    samples = calibration[: int8_precision.SEARCH_SAMPLES]
    figures_of = int8_precision.render_figures_of(job.wrapper, samples)
    tried: dict[frozenset[str], Calibrated] = {}

    def calibrated(keys: Iterable[str]) -> Calibrated:
        key = frozenset(keys)
        if key not in tried:
            tried[key] = calibrate(job.folded, job.example, calibration, key)
        return tried[key]

    def measure(keys: set[str]) -> int8_precision.Figures:
        return figures_of(calibrated(keys).finalized())

    found = layers(calibrated(()).prepared, job.folded)
    result = int8_precision.choose(
        found.points,
        lambda: rank(calibrated(()), found, job.wrapper, samples),
        measure,
        job.gate,
        RANKED_BY,
        job.options.progress,
    )
    if not result.reached:
        for key in found.rankable:
            found.points[key].why = NOT_REACHED.format(result.tried_float)
    chosen = calibrated(p.key for p in result.kept_float)
    removed = sorted(fake_quant_sites(calibrated(()).prepared) - fake_quant_sites(chosen.prepared))
    _logger.info(
        "W8A8 precision: %d of %d rankable layers kept float (%d fake-quant groups out of reach), budget %s, "
        "%d renders",
        len(result.kept_float),
        len(found.rankable),
        len(found.points) - len(found.rankable),
        "reached" if result.reached else "NOT reached",
        result.evaluations,
    )
    return result, chosen, removed


def precisions(found: int8_precision.Search) -> dict[str, dict[str, str]]:
    """Every point's precision and why: the recipe's per-layer table."""
    return {p.key: {"precision": p.precision, "why": p.why} for p in found.points.values()}


def out_of_reach(found: int8_precision.Search, largest: int = 10) -> dict[str, Any]:
    """The points no module name can make float, and their first-order gain beside the ranked layers' (zero
    when all-W8A8 met the budget and nothing was ranked): how much of the loss the search could not touch."""
    fixed = sorted((p for p in found.points.values() if p.why == OUT_OF_REACH), key=lambda p: -p.gain)
    return {
        "points": len(fixed),
        "gain": sum(p.gain for p in fixed),
        "ranked_layers_gain": sum(p.gain for p in found.points.values() if p.why != OUT_OF_REACH),
        "largest": {p.key: p.gain for p in fixed[:largest]},
    }


def fine_tune(
    calibrated: Calibrated,
    reference: nn.Module,
    views: Sequence[Inputs],
    steps: int,
    progress: bool = True,
) -> dict[str, Any]:
    """LinearQuantizer's QAT: the calibrated model's float parameters tuned through its fake-quants (straight-
    through gradients) toward ``reference``; ``finalize`` afterwards folds the tuned weights to int8.

    Observers are frozen first: the ranges stay the calibrated ones the precision search measured (as the
    ``.pte``'s do), instead of moving-average ranges drifting toward the training views and a weight grid that
    moves under the weights it rounds. Eval mode keeps BatchNorm (identity once folded) out of it.
    """
    from torch.ao.quantization import disable_observer, enable_fake_quant

    from pbrforge.export import qat

    model = calibrated.prepared.eval()
    model.apply(enable_fake_quant)
    model.apply(disable_observer)  # frozen: the calibrated ranges the search measured (see above)
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    return qat.fine_tune(model, reference, views, steps, params, progress=progress)
