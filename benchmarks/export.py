"""Export benchmark for the demo student: size, render parity and, for ONNX Runtime, latency of every variant.

Variants: ONNX fp32 and static int8; Core ML FP16, uniform 8/6/4-bit palettization, mixed bits at 45, 40
and 35 dB render budgets, and W8A8. Each row shows the size, the render figures (worst re-render PSNR of
11 lights, normal p99 angle, metallic flips) and the smallest per-map tensor PSNR. On Linux the Core ML
figures are the PyTorch numerics the converter measures (FP16 run, palettized weights read back, W8A8
fake-quant). The ONNX rows are then rebuilt at 256 and 512 px and timed against PyTorch eager in the
same run, on the same threads.

The int8 and W8A8 variants come twice more: ``searched`` under the default render gate (40 dB, 2 deg), so
the per-layer precision search runs and its recipe (budget reached, layers kept float, renders tried) is
in the row, and ``QAT``, with ``--qat-steps 40`` on top. A gated row that fails its gate keeps its figures.
``--variants`` reruns only some rows; the others are carried over from the existing JSON, each with the
provenance it was measured under.

Goals, reported met or not:
* mixed bits at render PSNR >= 40 dB in <= 0.35x the FP16 size;
* ONNX int8 >= 1.5x faster than fp32 ONNX at 512 px, with render PSNR >= 35 dB;
* FP16 and uniform 8-bit at render PSNR >= 45 dB;
* W8A8 (the best of its rows) at render PSNR >= 40 dB with a normal p99 <= 2 deg.

Examples:
    python benchmarks/export.py
    python benchmarks/export.py runs/student/checkpoints/best.pt --data data/demo
    python benchmarks/export.py --variants "et int8 searched" --variants "et int8 QAT"
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pbrforge.artifacts import report_path
from pbrforge.export.converter import export_artifacts
from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result

MEASURE = {"render_psnr_min": 0.0, "normal_p99_max": 180.0}  # record every figure, gate none
GATED = {"render_psnr_min": None, "normal_p99_max": None}  # the default gate: the precision search aims at it
QAT_STEPS = 40
VARIANTS = [  # (label, format, kwargs): MEASURE unless the kwargs give the gate
    ("onnx fp32", "onnx", {}),
    ("onnx int8", "onnx", {"quantize": "int8"}),
    ("coreml fp16", "coreml", {}),
    ("coreml 8-bit", "coreml", {"nbits": 8}),
    ("coreml 6-bit", "coreml", {"nbits": 6}),
    ("coreml 4-bit", "coreml", {"nbits": 4, "min_target": "iOS18"}),
    ("mixed 45 dB", "coreml", {"budget_db": 45.0}),
    ("mixed 40 dB", "coreml", {"budget_db": 40.0}),
    ("mixed 35 dB", "coreml", {"budget_db": 35.0}),
    ("coreml w8a8", "coreml", {"quantize": "w8a8"}),
    ("onnx int8 searched", "onnx", {"quantize": "int8", **GATED}),
    ("et int8", "executorch", {"quantize": "int8"}),
    ("et int8 searched", "executorch", {"quantize": "int8", **GATED}),
    ("et int8 QAT", "executorch", {"quantize": "int8", "qat_steps": QAT_STEPS, **GATED}),
    ("w8a8 searched", "coreml", {"quantize": "w8a8", **GATED}),
    ("w8a8 QAT", "coreml", {"quantize": "w8a8", "qat_steps": QAT_STEPS, **GATED}),
]
QUANTIZED = (
    "onnx-int8",
    "executorch-int8",
    "coreml-w8a8",
)  # the format whose row a quantized variant reports
LATENCY_SIZES = (256, 512)
LATENCY_FP32_MAX_ABS = 2e-4  # fp32 rounding through the normal's normalize reached 1.26e-4 at 512 px


def variant_row(label: str, result, fp16_bytes: int | None) -> dict:
    """The variant's artifact (the quantized one when there is one, kept or failed) and its figures."""
    quantized = [r for r in result.rows if r.format in QUANTIZED and r.path]
    r = quantized[-1] if quantized else result.rows[-1]  # else the artifact comes after its fp32 source
    if r.parity is None:
        raise click.ClickException(f"{label}: {r.status} {r.detail}")
    render = r.parity.to_dict()["render"]
    psnrs = {k: v["psnr_db"] for k, v in r.parity.outputs.items()}
    recipe_path = report_path(Path(r.path), "recipe")
    recipe = json.loads(recipe_path.read_text()) if quantized and recipe_path.is_file() else None
    return {
        "variant": label,
        "bytes": r.bytes,
        "size_vs_fp16": None if fp16_bytes is None else r.bytes / fp16_bytes,
        "seconds": r.seconds,
        "status": r.status,
        "render": render,
        "min_tensor_psnr_db": min(psnrs.values()),
        "psnr_db": psnrs,
        "precision": None if recipe is None else _precision(recipe),
    }


def _precision(recipe: dict) -> dict:
    """What the precision search and QAT did, from the artifact's recipe JSON."""
    return {
        "budget": recipe["budget"],
        "budget_reached": recipe["budget_reached"],
        "layers": recipe["points"],
        "float_layers": [p["key"] for p in recipe["float"]],
        "renders": recipe["evaluations"],
        "all_int8_search_views": recipe["all_int8"],
        "chosen_search_views": recipe["chosen"],
        "post_training_judged": recipe.get("post_training_judged"),
        "qat": recipe.get("qat"),
    }


def latency_rows(checkpoint: Path, data: Path, out: Path, runs: int) -> list[dict]:
    """ONNX fp32 and int8 at each size against eager, through the runtime's own runners."""
    from pbrforge.export.wrappers import example_inputs
    from pbrforge.runtime.backends import load_runner, torch_runner
    from pbrforge.runtime.inference import measure

    rows = []
    for size in LATENCY_SIZES:
        base = out / "export_work" / f"onnx_{size}"
        result = export_artifacts(
            checkpoint,
            base,
            ("onnx",),
            test_resolution=size,
            quantize="int8",
            data=data,
            fp32_max_abs=LATENCY_FP32_MAX_ABS,
            **MEASURE,
        )
        fp32 = result.rows[0]
        if fp32.status != "ok":
            raise click.ClickException(f"onnx fp32 {size}: {fp32.status} {fp32.detail}")
        int8 = variant_row(f"onnx int8 {size}", result, None)
        fp32_runner = load_runner(base.with_suffix(".onnx"), "onnx", 2)
        int8_runner = load_runner(base.with_name(base.name + ".int8.onnx"), "onnx", 2)
        eager = torch_runner(checkpoint, 2, fp32_runner.contract)
        views = example_inputs(size)
        timing = {name: measure(runner, views, runs, 2)["median_ms"] for name, runner in
                  (("eager", eager), ("onnx fp32", fp32_runner), ("onnx int8", int8_runner))}  # fmt: skip
        profile = json.loads(base.with_name(base.name + ".int8.onnx.parity.json").read_text())
        rows.append(
            {
                "size": size,
                "fp32_gate_max_abs": LATENCY_FP32_MAX_ABS,
                "fp32_max_abs": max(o["max_abs"] for o in fp32.parity.outputs.values()),
                "median_ms": timing,
                "int8_vs_fp32": timing["onnx fp32"] / timing["onnx int8"],
                "int8_vs_eager": timing["eager"] / timing["onnx int8"],
                "fp32_vs_eager": timing["eager"] / timing["onnx fp32"],
                "int8_render": int8["render"],
                "int8_profile_top": profile["profile_int8"]["top"],
                "fp32_profile_top": profile["profile_fp32"]["top"],
                "int8_share_in_integer_kernels": profile["profile_int8"]["integer_or_qdq_share"],
                "int8_float_islands": profile["float_islands"],
                "int8_rewritten_for_integer_kernels": profile["precision"]["rewritten_for_integer_kernels"],
            }
        )
    return rows


@click.command(epilog=examples_epilog(__doc__))
@old_spellings("checkpoint", "--checkpoint")
@click.argument(
    "checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("demo_out/student/checkpoints/best.pt"),
    required=False,
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo_out/data"),
    show_default=True,
    help="The data root whose held-out views calibrate and judge the 8-bit variants.",
)
@click.option(
    "--runs", type=click.IntRange(3, 1000), default=10, show_default=True, help="Timed runs per latency."
)
@old_spellings("--output", "--out")
@click.option(
    "--output", "out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True
)
@click.option(
    "--variants",
    multiple=True,
    type=click.Choice([v[0] for v in VARIANTS]),
    help="Rerun only these rows (repeatable); the others are kept from the existing export.json.",
)
def main(checkpoint: Path, data: Path, runs: int, out: Path, variants: tuple[str, ...]) -> None:
    """Export the student CHECKPOINT every way, tabulate size and render parity, time ONNX fp32/int8
    against eager (CHECKPOINT: demo_out/student/checkpoints/best.pt, which make demo writes, if not given)."""
    if not checkpoint.exists():
        raise click.ClickException(f"{checkpoint} is missing: run `make demo` first or give a checkpoint")
    earlier = _earlier(out / "export.json") if variants else {}
    unmeasured = [
        label
        for label, _, _ in VARIANTS
        if variants and label not in variants and label not in earlier["rows"]
    ]
    if unmeasured:  # before any export: an hour of them must not end here
        raise click.ClickException(
            f"no earlier row to keep for {', '.join(unmeasured)}: add them to --variants"
        )
    rows: list[dict] = []
    fp16_bytes = None
    for label, fmt, kw in VARIANTS:
        if variants and label not in variants:
            rows.append(earlier["rows"][label])
        else:
            base = out / "export_work" / label.replace(" ", "_")
            needs_data = "quantize" in kw or "budget_db" in kw
            result = export_artifacts(
                checkpoint, base, (fmt,), data=data if needs_data else None, **(MEASURE | kw)
            )
            rows.append(variant_row(label, result, fp16_bytes))
        if label == "coreml fp16":
            fp16_bytes = rows[-1]["bytes"]
    for row in rows:  # the rows before FP16 (ONNX) are not compared by size
        row["size_vs_fp16"] = (
            row["bytes"] / fp16_bytes
            if fp16_bytes and row["variant"].startswith(("coreml", "mixed"))
            else None
        )
    latency = (
        latency_rows(checkpoint, data, out, runs)
        if not variants or "onnx int8" in variants
        else earlier["latency"]
    )
    by = {r["variant"]: r for r in rows}
    at512 = next(r for r in latency if r["size"] == 512)
    mixed40 = by["mixed 40 dB"]
    goals = {
        "mixed bits >= 40 dB render PSNR in <= 0.35x FP16": mixed40["render"]["psnr_db_min"] >= 40
        and mixed40["size_vs_fp16"] <= 0.35,
        "ONNX int8 >= 1.5x fp32 ONNX at 512 px with render PSNR >= 35 dB": at512["int8_vs_fp32"] >= 1.5
        and at512["int8_render"]["psnr_db_min"] >= 35,
        "FP16 and uniform 8-bit render PSNR >= 45 dB": by["coreml fp16"]["render"]["psnr_db_min"] >= 45
        and by["coreml 8-bit"]["render"]["psnr_db_min"] >= 45,
        "W8A8 >= 40 dB render PSNR with a normal p99 <= 2 deg": any(
            r["render"]["psnr_db_min"] >= 40 and r["render"]["normal_deg_p99"] <= 2
            for r in rows
            if "w8a8" in r["variant"]
        ),
    }
    print(f"\nexport benchmark: {checkpoint}")
    print(
        f"{'variant':<19} {'MiB':>6} {'x FP16':>6} {'render dB':>9} {'normal p99':>10} {'metal flips':>11} {'tensor dB':>9}  status"
    )
    for r in rows:
        ratio = "" if r["size_vs_fp16"] is None else f"{r['size_vs_fp16']:.2f}"
        f = r["render"]
        print(
            f"{r['variant']:<19} {r['bytes'] / 2**20:6.2f} {ratio:>6} {f['psnr_db_min']:9.1f} {f['normal_deg_p99']:9.2f}° "
            f"{f['metallic_flip_share']:11.4f} {r['min_tensor_psnr_db']:9.1f}  {r['status']}"
        )
    print("\nper-layer precision and QAT (search views: calibration; judged: held out)")
    print(f"{'variant':<19} {'layers':>6} {'float':>5} {'renders':>7} {'reached':>7} {'all-int8 dB':>11} {'chosen dB':>9} "
          f"{'judged dB':>9} {'p99':>6}  QAT judged dB / p99")  # fmt: skip
    for r in rows:
        p = r.get("precision")
        if p is None:
            continue
        qat = p["qat"] or {}
        tuned = qat.get("judged")
        print(
            f"{r['variant']:<19} {p['layers']:>6} {len(p['float_layers']):>5} {p['renders']:>7} {str(p['budget_reached']):>7} "
            f"{p['all_int8_search_views']['psnr_db_min']:11.1f} {p['chosen_search_views']['psnr_db_min']:9.1f} "
            f"{r['render']['psnr_db_min']:9.1f} {r['render']['normal_deg_p99']:5.2f}°  "
            + (
                f"{tuned['psnr_db_min']:.1f} / {tuned['normal_deg_p99']:.2f}° ({qat['steps']} steps)"
                if tuned
                else ""
            )
        )
    print(f"\nONNX Runtime latency, 2 threads, median of {runs} (ms)")
    print(
        f"{'size':>5} {'eager':>8} {'fp32':>8} {'int8':>8} {'int8/fp32':>9} {'int8/eager':>10} {'int8 render dB':>14}"
    )
    for r in latency:
        t = r["median_ms"]
        print(
            f"{r['size']:>5} {t['eager']:8.1f} {t['onnx fp32']:8.1f} {t['onnx int8']:8.1f} {r['int8_vs_fp32']:8.2f}x "
            f"{r['int8_vs_eager']:9.2f}x {r['int8_render']['psnr_db_min']:14.1f}"
        )
        print(f"      int8 time: {', '.join(r['int8_profile_top'][:5])}")
        islands = r.get("int8_float_islands")
        if islands is not None:
            print(
                f"      float between int8 ops: {', '.join(f'{k} {v}' for k, v in islands.items()) or 'none'}"
            )
    for goal, met in goals.items():
        print(f"goal: {goal}: {'met' if met else 'NOT met'}")
    write_result(
        out / "export.json", {"checkpoint": str(checkpoint), "rows": rows, "latency": latency, "goals": goals}
    )
    print(f"wrote {out / 'export.json'}")


def _earlier(path: Path) -> dict:
    """The rows and latency of an earlier run, each row stamped with the provenance it was measured under."""
    if not path.is_file():
        raise click.ClickException(
            f"--variants keeps the other rows from {path}, which is missing: run every variant"
        )
    data = json.loads(path.read_text())
    measured = data.get("provenance")
    rows = {r["variant"]: {"measured_under": measured} | r for r in data["rows"]}
    latency = [{"measured_under": measured} | r for r in data["latency"]]
    return {"rows": rows, "latency": latency}


if __name__ == "__main__":
    main()
