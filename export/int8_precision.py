"""Which layers of an int8 graph stay float, chosen in render space: the per-layer precision search.

A quantized graph (``convert_pt2e`` with its weights left unfolded) computes each int8 point as a
``quantize`` -> ``dequantize`` pair. Here every pair gets a :class:`Switch` after it, so one analysis graph can
quantize any subset of layers without calibrating again. The search:

1. quantizes every layer and renders: if the budget holds, every layer stays int8 and nothing more is run;
2. else ranks the layers by what keeping each in float would win, to first order: one forward and backward
   pass of a render-space loss through the all-int8 graph gives, per switch, the gradient times the rounding
   error it adds (a Taylor estimate of turning it off), summed per layer;
3. keeps float the fewest top-ranked layers for which the graph meets the budget: 1, 2, 4, ... layers until
   it does, then halving back, so a 200-layer graph is rendered about a dozen times, not 200.

The views are calibration ones, never those the artifact is judged on, so the choice is not fitted to its
gate; the budget adds a margin to the gate for the same reason. A layer is a module (the node's innermost).
:func:`materialize` then bypasses the float layers' pairs in that same graph, so the program lowered is the
graph the search measured (re-annotating with the quantizer's node filter instead quantized differently:
34 dB on the tiny test student where the search had measured 48).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from pbrforge.export.gates import RenderGate

Inputs = tuple[torch.Tensor, ...]
Figures = dict[str, float]

PSNR_MARGIN_DB = 1.0  # the budget asks this much more than the gate of the calibration views...
ANGLE_MARGIN = 0.8  # ...and this share of the gate's normal angle
MAX_FLOAT_SHARE = 0.25  # at most this share of the layers stays float; past it the budget is reported unmet
SEARCH_SAMPLES = 4  # calibration samples the search renders (the judged ones are never used)


class Switch(torch.nn.Module):
    """After a quantize -> dequantize pair: ``original + alpha * (quantized - original)``, alpha 1 (int8) or 0.

    The rounding error is detached, so the gradient reaches ``original`` straight through, and the gradient of
    ``alpha`` is the loss's first-order change per unit of this point's rounding error.
    """

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.alpha = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, original: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return original + self.alpha * (quantized - original).detach()


@dataclass
class Point:
    """One layer's int8 points, what float would win for it, and the precision chosen."""

    key: str  # the layer: its module's name, or the node's name outside every module
    module: str  # the module the layer's nodes were traced in ('' for none)
    nodes: list[str] = field(default_factory=list)  # the nodes whose outputs or weights it quantizes
    gain: float = 0.0  # the render loss float would win, to first order (larger: keep float first)
    precision: str = "int8"
    why: str = "within the render budget"


def module_of(node: torch.fx.Node) -> str:
    """The innermost module a traced node was called in ('' outside every module)."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return str(stack[-1][0]) if stack else ""


def with_switches(converted: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[str, Point]]:
    """``converted`` with a :class:`Switch` after every dequantize of a quantize -> dequantize pair.

    Points are grouped by layer: the module the quantized node was traced in (a weight's by its reader's);
    a node traced outside every module (the input scaling, the output slices) is a layer of its own.
    """
    graph = converted.graph
    points: dict[str, Point] = {}
    switches = 0
    for q in list(graph.nodes):
        if q.op != "call_function" or not str(q.target).startswith("quantized_decomposed.quantize_per"):
            continue
        source = q.args[0]
        if not isinstance(source, torch.fx.Node):
            continue
        for dq in list(q.users):
            if "dequantize" not in str(dq.target):
                continue
            node = next(iter(dq.users), None) if source.op == "get_attr" else source  # a weight: its reader
            if node is None:
                continue
            module = module_of(node)
            key = module or node.name
            point = points.setdefault(key, Point(key, module))
            if node.name not in point.nodes:
                point.nodes.append(node.name)
            name = f"int8_switch_{switches}"
            switches += 1
            converted.add_submodule(name, Switch(key))
            with graph.inserting_after(dq):
                switch = graph.call_module(name, (source, dq))
            dq.replace_all_uses_with(switch, delete_user_cb=lambda user, s=switch: user is not s)
    graph.lint()
    converted.recompile()
    return converted, points


def set_float(graph: torch.fx.GraphModule, keys: set[str]) -> None:
    """The layers in ``keys`` float, every other one int8."""
    for module in graph.modules():
        if isinstance(module, Switch):
            module.alpha.data.fill_(0.0 if module.key in keys else 1.0)


@dataclass
class Search:
    """What the precision search did: the points, the figures with everything int8 and with its choice."""

    points: dict[str, Point]
    budget: dict[str, float | None]
    all_int8: Figures
    chosen: Figures
    evaluations: int
    reached: bool = True  # False: even the cap of float layers missed the budget, so none is kept float
    tried_float: int = 0  # with reached False: the most float layers tried
    tries: dict[int, Figures] = field(default_factory=dict)  # float layers -> figures, every render it made

    @property
    def kept_float(self) -> list[Point]:
        return [p for p in self.points.values() if p.precision == "float"]

    def recipe(self) -> dict[str, Any]:
        """The recipe JSON: which points are int8 and which stay float, and why."""
        return {
            "budget": self.budget,
            "all_int8": self.all_int8,
            "chosen": self.chosen,
            "evaluations": self.evaluations,
            "budget_reached": self.reached,
            "most_float_layers_tried": self.tried_float,
            "tries": {str(n): self.tries[n] for n in sorted(self.tries)},
            "points": len(self.points),
            "float": [vars(p) for p in self.kept_float],
            "int8": [p.key for p in self.points.values() if p.precision == "int8"],
        }


def budget_of(gate: RenderGate) -> dict[str, float | None]:
    """The gate with the search's margin: the views searched on are not those judged."""
    return {
        "psnr_db_min": None if gate.psnr_db_min is None else gate.psnr_db_min + PSNR_MARGIN_DB,
        "normal_deg_p99": None if gate.normal_deg_p99 is None else gate.normal_deg_p99 * ANGLE_MARGIN,
    }


def _meets(figures: Figures, budget: dict[str, float | None]) -> bool:
    psnr, p99 = budget["psnr_db_min"], budget["normal_deg_p99"]
    return (psnr is None or figures["psnr_db_min"] >= psnr) and (
        p99 is None or figures["normal_deg_p99"] <= p99
    )


def backward_render_loss(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> None:
    """Backpropagate the render-space distance from ``outputs`` to ``reference`` (displayed re-renders under the
    parity lights, and normal angles) into whatever ``outputs`` came from.

    The loss is a sum, so its gradient at the outputs is built one light at a time and then sent back through the
    model once: the demo student's 11 lights at 512 px, built as one graph, held 4.8 GB.
    """
    from pbrforge.export.render_parity import parity_lights
    from pbrforge.render import render, to_display

    out = torch.cat([o.detach() for o in outputs], dim=1).requires_grad_(True)
    ref = torch.cat([r.detach() for r in reference], dim=1)
    lights = parity_lights()
    for light in lights:
        at = light.view(1, 1, 3).expand(out.shape[0], 1, 3)
        with torch.no_grad():
            expected = to_display(render(ref, at))
        (((to_display(render(out, at)) - expected) ** 2).mean() / len(lights)).backward()
    (1 - torch.nn.functional.cosine_similarity(out[:, 5:8], ref[:, 5:8], dim=1)).mean().backward()
    assert out.grad is not None
    grads = out.grad.split([o.shape[1] for o in outputs], dim=1)
    wanted = [(o, g) for o, g in zip(outputs, grads, strict=True) if o.requires_grad]
    if wanted:
        torch.autograd.backward([o for o, _ in wanted], [g for _, g in wanted])


def rank(
    graph: torch.fx.GraphModule,
    points: dict[str, Point],
    reference: torch.nn.Module,
    samples: Sequence[Inputs],
) -> list[str]:
    """The layers, most to gain from float first: the render loss's gradient per switch's alpha, all int8."""
    switches = [m for m in graph.modules() if isinstance(m, Switch)]
    set_float(graph, set())
    for m in switches:
        m.alpha.requires_grad_(True)
    try:
        for views in samples:
            with torch.no_grad():
                expected = reference(*views)
            backward_render_loss(graph(*views), expected)
        for m in switches:  # turning a switch off moves alpha from 1 to 0: the loss changes by about -grad
            points[m.key].gain += float(m.alpha.grad) if m.alpha.grad is not None else 0.0
    finally:
        for m in switches:
            m.alpha.requires_grad_(False)
            m.alpha.grad = None
    return sorted(points, key=lambda k: -points[k].gain)


def search(
    graph: torch.fx.GraphModule,
    points: dict[str, Point],
    reference: torch.nn.Module,
    samples: Sequence[Inputs],
    gate: RenderGate,
    progress: bool = True,
) -> Search:
    """The switch graph's search: ranked by first-order render gain, measured by switching layers off.

    The graph is left switched to the choice (every layer int8 when the budget was not reached).
    """
    figures_of = render_figures_of(reference, samples)

    def measure(keys: set[str]) -> Figures:
        set_float(graph, keys)
        return figures_of(graph)

    def ranked() -> list[str]:
        return rank(graph, points, reference, samples)

    found = choose(points, ranked, measure, gate, "first-order render gain", progress)
    set_float(graph, {p.key for p in found.kept_float})
    return found


def choose(
    points: dict[str, Point],
    ranked: Callable[[], list[str]],
    measure: Callable[[set[str]], Figures],
    gate: RenderGate,
    ranked_by: str,
    progress: bool = True,
) -> Search:
    """Keep float the fewest top-ranked layers for which ``measure`` meets the budget; any format's search.

    ``measure(keys)`` renders the model with the layers ``keys`` float and every other one int8; ``ranked()``
    orders the layers, most to gain from float first, and is called only when all-int8 misses the budget.
    Past ``MAX_FLOAT_SHARE`` of the layers the budget is reported unmet and every layer stays int8.
    """
    budget = budget_of(gate)
    tried: dict[int, Figures] = {0: measure(set())}
    if _meets(tried[0], budget):
        return Search(points, budget, tried[0], tried[0], 1, tries=tried)
    order = ranked()
    limit = max(1, int(len(order) * MAX_FLOAT_SHARE))
    with tqdm(desc="int8 precision search", disable=not progress, unit="render") as bar:

        def meets(n: int) -> bool:
            if n not in tried:
                tried[n] = measure(set(order[:n]))
                bar.update()
            return _meets(tried[n], budget)

        high = 1
        while high < limit and not meets(high):
            high *= 2
        high = min(high, limit)
        if not meets(high):  # float beyond the cap would no longer be an int8 model: keep every layer int8
            return Search(points, budget, tried[0], tried[0], len(tried), False, limit, tried)
        low = high // 2  # failed (0, all int8, failed above)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if meets(mid) else (mid, high)
    for i, key in enumerate(order[:high]):
        points[key].precision = "float"
        points[key].why = f"rank {i + 1} of {len(order)} by {ranked_by}"
    return Search(points, budget, tried[0], tried[high], len(tried), tries=tried)


Model = Callable[..., Sequence[torch.Tensor]]  # views in, the contract's maps out (a module or any runner)


def render_figures_of(reference: Model, samples: Sequence[Inputs]) -> Callable[[Model], Figures]:
    """The render figures of a candidate against ``reference`` on ``samples`` (the reference run once)."""
    import numpy as np

    from pbrforge.deploy import OUTPUT_NAMES
    from pbrforge.export.render_parity import render_figures

    def outputs(model: Model) -> dict[str, np.ndarray]:
        with torch.no_grad():
            runs = [model(*views) for views in samples]
        return {n: torch.cat([r[i] for r in runs]).numpy() for i, n in enumerate(OUTPUT_NAMES)}

    expected = outputs(reference)
    return lambda model: render_figures(expected, outputs(model))


def materialize(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The graph with each switch replaced by what it selects: int8 layers keep their pair, float ones bypass it.

    The artifact is then exactly the graph the search measured, not a re-annotation that may quantize
    differently.
    """
    for node in list(graph.graph.nodes):
        switch = graph.get_submodule(str(node.target)) if node.op == "call_module" else None
        if not isinstance(switch, Switch):
            continue
        original, quantized = node.args
        node.replace_all_uses_with(quantized if float(switch.alpha) == 1.0 else original)
        graph.graph.erase_node(node)
        graph.delete_submodule(str(node.target))
    graph.graph.eliminate_dead_code()
    graph.recompile()
    # the weights' quantize ops folded into int8 constants, as convert_pt2e does: XNNPACK takes only those
    from torchao.quantization.pt2e import quantize_pt2e

    quantize_pt2e.constant_fold(graph, quantize_pt2e._quant_node_constraint)
    graph.graph.lint()
    graph.recompile()
    return graph


def trainable(graph: torch.fx.GraphModule) -> list[torch.nn.Parameter]:
    """The float weights and biases the graph quantizes, made parameters that QAT can update.

    The switches pass the gradient straight through their rounding, so the graph trains as fake quantization
    with the calibrated activation ranges fixed; ``materialize`` later folds the tuned weights to int8.
    """
    params = []
    for node in graph.graph.nodes:
        if node.op != "get_attr" or not any("quantize_per" in str(u.target) for u in node.users):
            continue
        owner, _, name = str(node.target).rpartition(".")
        module = graph.get_submodule(owner) if owner else graph
        value = getattr(module, name)
        if not value.is_floating_point():
            continue
        param = torch.nn.Parameter(value.detach().clone(), requires_grad=True)
        delattr(module, name)
        module.register_parameter(name, param)
        params.append(param)
    return params
