"""Mixed-bit palettization: bits chosen per layer to meet a render-PSNR budget at the smallest size.

After ml-stable-diffusion's mixed-bit recipes, judged in render space:

1. **Sensitivity.** The FP16 program is palettized once per bit width (8, 6, 4; k-means per tensor, so
   a layer's palette does not depend on the others). For each layer and width, only that layer's
   read-back weights go into the BN-folded PyTorch model, and the render PSNR (worst of 11 lights) of
   the result against fp32 is measured: each layer palettized alone, from three conversions.
2. **Choice.** Errors are taken to add as noise power, 10^(-PSNR/10) per layer. Starting from FP16 (no
   palette) everywhere, the step that saves the most bytes per unit of added noise is taken while the
   predicted total stays within the budget.
3. **Check.** The chosen combination is measured with the read-back weights of those conversions (per-tensor
   k-means gives each weight the same palette alone or with the others). A try that misses the budget
   raises the target by the miss plus a margin that doubles with each miss (errors that do not add as
   noise power can leave the measured PSNR nearly flat while the target climbs); once a try has met it,
   the targets between the highest miss and the lowest meet are bisected for a smaller recipe.
4. **Pick.** Every try is remembered. The result is the smallest try whose measured render figures met
   the budget, whatever target it was aimed at; only when none did does every weight stay FP16. The
   converter then palettizes the recipe for real, giving coremltools back the palettes and indices step 1
   found (no second k-means), and its read-back parity is the final judge.

The recipe (``OUTPUT.recipe.json``) maps each weight's MIL name to its bits (16 = not palettized) and is
reused with ``--recipe``; its ``tries`` list every target aimed at with the size and the measured figures,
and ``chosen_try`` points at the one kept (null: none met, FP16). ``OUTPUT.pareto.png`` plots predicted
size against render PSNR.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pbrforge.deploy import OUTPUT_NAMES
from pbrforge.errors import ConfigError, ToolFailure
from pbrforge.export.gates import RenderGate

WIDTHS = (8, 6, 4)
FP16 = 16
RECIPE_FORMAT = "pbrforge-palettization-recipe-1"
CHECKS = 8  # choose-and-measure tries; each is one forward pass over the judged views (the sensitivity took ~3 per layer)
MARGIN_DB = 0.5  # added to the miss on the first miss; doubled on every further miss
RESOLUTION_DB = 0.25  # bisection stops once the highest missed and lowest met targets are this close
_logger = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]


def _palettize(
    mlmodel,
    layers: dict[str, int] | None = None,
    nbits: int | None = None,
    known: dict[int, dict[str, np.ndarray]] | None = None,
):
    """k-means per tensor: every weight at ``nbits``, or each named weight at its own bits. ``known`` (bits ->
    weight name -> its palettized values, from an earlier run at that width) spares a weight its k-means."""
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    def kmeans(bits: int) -> OpPalettizerConfig:
        return OpPalettizerConfig(mode="kmeans", nbits=bits, granularity="per_tensor")

    def op(name: str, bits: int) -> OpPalettizerConfig:
        dense = (known or {}).get(bits, {}).get(name)
        if dense is None:
            return kmeans(bits)
        return OpPalettizerConfig(
            mode="custom", lut_function=_known_palette(dense, bits), granularity="per_tensor"
        )

    if layers is not None:
        config = OptimizationConfig(
            op_name_configs={n: op(n, b) if b != FP16 else None for n, b in layers.items()}
        )
    else:
        config = OptimizationConfig(global_config=kmeans(int(nbits or 8)))
    try:
        return palettize_weights(mlmodel, config)
    except Exception as e:  # coremltools raises many types
        raise ToolFailure(
            f"mixed-bit palettization failed ({type(e).__name__}: {e}); no model was written"
        ) from e


def _known_palette(dense: np.ndarray, bits: int):
    """coremltools' custom LUT function giving back the palette and indices k-means already found for a weight
    (read back as ``dense``, the LUT entries in the weight's order), so the chosen mix costs no k-means again.

    The palette is padded to 2^bits entries (k-means may find fewer distinct ones), so the bits stay as chosen.
    Should the weight reach the function in another order than it was read back (coremltools moves a channel
    axis other than 0 first), each value goes to its nearest entry instead, as k-means assigns it.
    """

    def lut_function(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        palette = np.unique(dense)
        lut = np.concatenate([palette, np.repeat(palette[-1:], 2**bits - palette.size)])
        values = weight.reshape(-1).astype(np.float32)
        nearest = np.searchsorted((palette[1:] + palette[:-1]) / 2, values)
        indices = np.searchsorted(palette, dense.reshape(-1)) if dense.size == values.size else nearest
        if np.abs(palette[indices] - values).sum() > 1.01 * np.abs(palette[nearest] - values).sum() + 1e-6:
            indices = nearest  # not the order it was read back in
        return lut.astype(weight.dtype), indices.astype(np.uint8)

    return lut_function


def _const_name(lut_op_name: str) -> str:
    return lut_op_name.removesuffix("_palettized")


def layer_bytes(numel: int, bits: int) -> int:
    """Bytes a weight takes: FP16, or indices plus a 2^bits FP16 palette."""
    return numel * 2 if bits == FP16 else math.ceil(numel * bits / 8) + (2**bits) * 2


class Sensitivity:
    """Render PSNR of the model with one layer palettized, for every layer and width."""

    def __init__(self, folded: nn.Module, mlmodel, judged: list[Inputs], reference: dict[str, np.ndarray]):
        from pbrforge.export.coreml_export import match_weights, program_lut_weights

        self.folded, self.judged, self.reference = folded.float().eval(), judged, reference
        self.dense: dict[int, dict[str, np.ndarray]] = {}
        self.uniform: dict[int, dict[str, float]] = {}
        mapping: dict[str, str] = {}
        for bits in WIDTHS:
            program = _palettize(mlmodel, nbits=bits)._mil_program
            self.dense[bits] = {_const_name(n): w for n, w in program_lut_weights(program)}
            if not mapping:
                mapping = {
                    _const_name(k): v
                    for k, v in match_weights(self.folded, list(self.dense[bits].items())).items()
                }
        self.param_of = mapping  # MIL weight name -> PyTorch parameter name
        if not mapping:
            raise ToolFailure(
                "no palettized weight could be matched to the PyTorch model; no model was written"
            )
        params = dict(self.folded.named_parameters())
        self.numel = {n: params[p].numel() for n, p in mapping.items()}
        self.psnr: dict[str, dict[int, float]] = {}
        for name in mapping:
            self.psnr[name] = {b: self.measure({name: b})["psnr_db_min"] for b in WIDTHS}
        for bits in WIDTHS:
            self.uniform[bits] = self.measure(dict.fromkeys(mapping, bits))

    def measure(self, layers: dict[str, int]) -> dict[str, float]:
        """Render figures with the given layers' read-back weights in place (restored afterwards)."""
        from pbrforge.export.render_parity import render_figures

        params = dict(self.folded.named_parameters())
        saved = {}
        with torch.no_grad():
            for name, bits in layers.items():
                if bits == FP16 or name not in self.param_of:
                    continue
                p = params[self.param_of[name]]
                saved[name] = p.detach().clone()
                p.copy_(torch.from_numpy(self.dense[bits][name]).reshape(p.shape))
            outs: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
            for batch in self.judged:
                for n, o in zip(OUTPUT_NAMES, self.folded(*batch), strict=True):
                    outs[n].append(o.numpy())
            for name, value in saved.items():
                params[self.param_of[name]].copy_(value)
        return render_figures(self.reference, {n: np.concatenate(v) for n, v in outs.items()})

    def choose(self, budget_db: float) -> tuple[dict[str, int], float]:
        """Greedy bytes-per-noise choice under ``budget_db``; returns the recipe and its predicted PSNR."""
        noise = {
            n: {b: 10 ** (-p / 10) for b, p in by_bits.items()} | {FP16: 0.0}
            for n, by_bits in self.psnr.items()
        }
        allowed = 10 ** (-budget_db / 10)
        bits = dict.fromkeys(self.psnr, FP16)
        total = 0.0
        while True:
            best, best_score = None, 0.0
            for name, b in bits.items():
                lower = [w for w in WIDTHS if w < b]
                if not lower:
                    continue
                nxt = max(lower)
                added = noise[name][nxt] - noise[name][b]
                saved = layer_bytes(self.numel[name], b) - layer_bytes(self.numel[name], nxt)
                if total + added > allowed:
                    continue
                score = saved / max(added, 1e-30)
                if score > best_score:
                    best, best_score = (name, nxt, added), score
            if best is None:
                break
            bits[best[0]] = best[1]
            total += best[2]
        predicted = math.inf if total == 0 else -10 * math.log10(total)
        return bits, predicted

    def size(self, layers: dict[str, int]) -> int:
        return sum(layer_bytes(self.numel[n], b) for n, b in layers.items())


def _bits_used(layers: dict[str, int]) -> dict[str, int]:
    return {str(b): sum(1 for v in layers.values() if v == b) for b in (FP16, *WIDTHS)}


def search(
    folded: nn.Module,
    mlmodel,
    judged: list[Inputs],
    reference: dict[str, np.ndarray],
    budget_db: float,
    *,
    normal_p99_max: float | None = None,
) -> tuple[dict, Sensitivity]:
    """The smallest tried recipe whose measured render figures met ``budget_db``; FP16 when none did.

    Args:
        budget_db: worst re-render PSNR over the parity lights a try must reach, in dB.
        normal_p99_max: when given, the 99th-percentile normal error a try must also stay within, in degrees.
    """
    sens = Sensitivity(folded, mlmodel, judged, reference)
    gate = RenderGate(budget_db, normal_p99_max)
    fp16_bytes = sens.size(dict.fromkeys(sens.psnr, FP16))
    tries: list[dict] = []
    recipes: list[dict[str, int]] = []
    measured_of: dict[tuple, dict[str, float]] = {}  # the same recipe from two targets is measured once
    target, margin = budget_db, MARGIN_DB
    missed_at, met_at = -math.inf, math.inf
    for _ in range(CHECKS):
        layers, predicted = sens.choose(target)
        key = tuple(sorted(layers.items()))
        if key not in measured_of:
            measured_of[key] = sens.measure(layers)
        measured = measured_of[key]
        met = gate.judge(measured, "mixed bits") is None  # a NaN never meets
        recipes.append(layers)
        tries.append(
            {
                "target_db": target,
                "predicted_db": predicted,
                "predicted_bytes": sens.size(layers),
                "bits_used": _bits_used(layers),
                "measured_render": measured,
                "met": met,
            }
        )
        _logger.info(
            f"mixed bits for {budget_db:g} dB (aiming at {target:.1f}): predicted {predicted:.1f} dB, "
            f"measured {measured['psnr_db_min']:.1f} dB, {sens.size(layers) / 2**20:.2f} MiB"
            f"{'' if met else ', missed'}"
        )
        if met:
            met_at = min(met_at, target)
        else:
            missed_at = max(missed_at, target)
        if math.isinf(met_at):  # nothing met yet: ask for more margin, more each time
            psnr = measured["psnr_db_min"]
            target += max(budget_db - psnr, 0.0) if math.isfinite(psnr) else 0.0
            target += margin
            margin *= 2
        elif met_at - missed_at > RESOLUTION_DB:  # a smaller recipe may meet between a miss and a meet
            target = (missed_at + met_at) / 2
        else:
            break
    met_tries = [i for i, t in enumerate(tries) if t["met"] and t["predicted_bytes"] < fp16_bytes]
    chosen: int | None = None
    if met_tries:
        best = min(
            met_tries,
            key=lambda i: (tries[i]["predicted_bytes"], -tries[i]["measured_render"]["psnr_db_min"]),
        )
        chosen, layers, measured = best, recipes[best], tries[best]["measured_render"]
    else:
        _logger.warning(
            f"no mix of 8, 6 and 4 bits met {budget_db:g} dB in {len(tries)} tries: every weight stays FP16"
        )
        layers = dict.fromkeys(sens.psnr, FP16)
        measured = sens.measure(layers)
    recipe = {
        "format": RECIPE_FORMAT,
        "budget_db": budget_db,
        "normal_p99_max": normal_p99_max,
        "layers": layers,
        "bits_used": _bits_used(layers),
        "predicted_bytes": sens.size(layers),
        "fp16_bytes": fp16_bytes,
        "measured_render": measured,
        "chosen_try": chosen,
        "tries": tries,
        "uniform_render": {str(b): f for b, f in sens.uniform.items()},
        "sensitivity_psnr_db": {n: {str(b): p for b, p in v.items()} for n, v in sens.psnr.items()},
    }
    return recipe, sens


def apply_recipe(mlmodel, recipe: dict, sens: Sensitivity | None = None):
    """Palettize ``mlmodel`` as the recipe says, reusing the palettes ``sens`` (the search that chose it) found;
    refuse a recipe made for another model."""
    from pbrforge.export.coreml_export import count_lut_ops

    ops = {op.name for op in mlmodel._mil_program.functions["main"].operations if op.op_type == "const"}
    unknown = sorted(set(recipe["layers"]) - ops)
    if unknown:
        raise ConfigError(
            f"the recipe names weights this model does not have (e.g. {unknown[0]}): it was made for another model"
        )
    out = _palettize(mlmodel, layers=recipe["layers"], known=sens.dense if sens is not None else None)
    if any(b != FP16 for b in recipe["layers"].values()) and count_lut_ops(out) == 0:
        raise ToolFailure("the recipe changed no weight; no model was written")
    return out


def load_recipe(path: Path) -> dict:
    from pbrforge.fileio import read_json
    from pbrforge.schemas import PaletteRecipe, check

    data = read_json(path)
    check(PaletteRecipe, data, str(path))
    assert isinstance(data, dict)
    return data


def pareto_chart(sens: Sensitivity, recipe: dict, path: Path) -> None:
    """Predicted size against render PSNR over budgets, with the measured uniform widths, the tries and the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pbrforge.fileio import atomic_path

    fp16 = recipe["fp16_bytes"] / 2**20
    budgets = np.arange(20.0, 80.0, 1.0)
    points = []
    for budget in budgets:
        layers, predicted = sens.choose(float(budget))
        points.append((sens.size(layers) / 2**20, min(predicted, 100.0)))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(
        [p[0] for p in points], [p[1] for p in points], "-", color="#2a7ab9", label="mixed bits (predicted)"
    )
    for b, f in sens.uniform.items():
        size = sens.size(dict.fromkeys(sens.psnr, b)) / 2**20
        ax.plot(size, f["psnr_db_min"], "s", color="#777777")
        ax.annotate(
            f"{b}-bit", (size, f["psnr_db_min"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    tried = [t for t in recipe.get("tries", []) if math.isfinite(t["measured_render"]["psnr_db_min"])]
    ax.plot(
        [t["predicted_bytes"] / 2**20 for t in tried],
        [min(t["measured_render"]["psnr_db_min"], 100.0) for t in tried],
        "o",
        mfc="none",
        color="#2a7ab9",
        label="tries (measured)",
    )
    ax.plot(
        recipe["predicted_bytes"] / 2**20,
        recipe["measured_render"]["psnr_db_min"],
        "*",
        color="#d9822b",
        markersize=12,
        label=f"chosen for {recipe['budget_db']:g} dB (measured)",
    )
    ax.axvline(fp16, color="#bbbbbb", linestyle=":", label=f"FP16 {fp16:.2f} MiB")
    ax.set_xlabel("palettized weights, MiB")
    ax.set_ylabel("render PSNR, dB (worst of 11 lights)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
