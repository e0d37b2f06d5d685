"""The worked examples of ``--model`` (issue #26): each exported, gated and timed against PyTorch eager.

For each example spec (``examples/*/model.py:spec``), the PBR spec of the shipped default student
(``--model pbr``) and a seeded NeuroPBR student at NeuroPBR's shipping config (``--model neuropbr``), every graph goes to ONNX, ExecuTorch (XNNPACK) and Core
ML through the same gated path as ``pbrforge export --model``. Then, per graph, PyTorch eager, ONNX Runtime
and ExecuTorch run the spec's first example input on the same threads: median latency and its ratio to eager.
Beside each: the output's gate and figure, the artifact's size, and each pipeline (a round trip, a sampler)
judged end to end through the artifacts, and the one-file bundles (multi-method .pte, multifunction
.mlpackage) beside the single files they replace. Core ML converts here but runs only on macOS, so it has a
size and no latency.

Examples:
    python benchmarks/models.py
    python benchmarks/models.py --examples invisp --runs 20
    python benchmarks/models.py --examples neuropbr
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from pbrforge.options import examples_epilog
from pbrforge.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("invisp", "hyperprior_codec", "edm_denoiser")
PBR = ("pbr", "neuropbr")  # the shipped default student, and NeuroPBR's student at its shipping config
NEUROPBR_SEED = 0


def _spec(name: str):
    """An example's spec, the PBR spec of the shipped default model, or a seeded NeuroPBR student (configs/
    mobilenetv3_512.py: 512 px, ViT width 256, 4 heads, depth 2, SR head) behind the same interface."""
    import torch

    from pbrforge.modelspec import load_spec

    if name == "pbr":
        return load_spec("pbr")
    if name == "neuropbr":
        from pbrforge.export.neuropbr import NeuroPBRConfig, NeuroPBRStudent
        from pbrforge.export.pbr_spec import NeuroPBRContract, pbr_model_spec

        torch.manual_seed(NEUROPBR_SEED)
        cfg = NeuroPBRConfig()
        model = NeuroPBRContract(NeuroPBRStudent(cfg).eval(), cfg.mean, cfg.std)
        return pbr_model_spec(
            "neuropbr", model, cfg.image_size, f"seeded (torch.manual_seed({NEUROPBR_SEED}))"
        )
    return load_spec(f"{ROOT / 'examples' / name / 'model.py'}:spec")


def _median_ms(call, inputs, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call(*inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call(*inputs)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def bench(example: str, out: Path, runs: int, threads: int) -> dict:
    """One example exported and gated, then each graph timed in eager and in every runtime that runs here."""
    import torch

    from pbrforge.export.model_export import artifact_bytes, artifact_call, export_model

    torch.set_num_threads(threads)
    spec = _spec(example)
    result = export_model(spec, out / "models_work" / example)
    rows = []
    for name, graph in spec.graphs.items():
        inputs = graph.example_inputs(0)
        module = graph.module.eval()

        def eager(*x, module=module):
            with torch.no_grad():
                return module(*x)

        eager_ms = _median_ms(eager, inputs, runs)
        rows.append({"graph": name, "format": "eager", "median_ms": eager_ms, "speedup_vs_eager": 1.0})
        for a in (a for a in result.artifacts if a.graph == name):
            row = {"graph": name, "format": a.format, "status": a.status, "bytes": None, "median_ms": None}
            row["verdicts"] = {k: v.to_dict() for k, v in a.verdicts.items()}
            if a.path:
                row["bytes"] = artifact_bytes(Path(a.path))
                call = artifact_call(a.format, Path(a.path), graph.inputs, threads)
                if call is not None:
                    row["median_ms"] = _median_ms(call, inputs, runs)
                    row["speedup_vs_eager"] = eager_ms / row["median_ms"]
            rows.append(row)
    bundles = [  # one file for every graph: its size beside the single-graph files it replaces
        b | {"single_files_bytes": sum(r["bytes"] or 0 for r in rows if r["format"] == b["format"])}
        for b in result.bundles
    ]
    return {
        "model": spec.name,
        "rows": rows,
        "bundles": bundles,
        "pipelines": result.pipelines,
        "passed": not result.failures,
    }


def table(models: list[dict]) -> str:
    lines = [
        f"{'model':<16} {'graph':<14} {'format':<11} {'gate: figure / limit':<34} {'MiB':>6} {'median ms':>10} "
        f"{'x eager':>8}"
    ]
    for m in models:
        for r in m["rows"]:
            gate = "; ".join(
                f"{v['metric']} {v['figure']:.3g} / {v['limit']:g}{'' if v['passed'] else ' FAILED'}"
                for v in r.get("verdicts", {}).values()
            )
            if r["format"] == "coreml":
                gate = "converted; runs on macOS only"
            mib = f"{r['bytes'] / 2**20:.2f}" if r.get("bytes") else ""
            ms = f"{r['median_ms']:.2f}" if r.get("median_ms") else ""
            ratio = f"{r['speedup_vs_eager']:.2f}x" if r.get("median_ms") else ""
            lines.append(
                f"{m['model']:<16} {r['graph']:<14} {r['format']:<11} {gate:<34} {mib:>6} {ms:>10} {ratio:>8}"
            )
        for b in m.get("bundles", []):
            lines.append(
                f"{m['model']:<16} {'(all)':<14} {b['format']:<11} {b['path'] + ': ' + b['status']:<34} "
                f"{b['bytes'] / 2**20:>6.2f}   vs {b['single_files_bytes'] / 2**20:.2f} MiB as single files"
            )
        for p in m["pipelines"]:
            v = p["verdict"]
            figures = "".join(
                f", {k} {x:.3g}" if isinstance(x, float) else f", {k} {x}" for k, x in p["figures"].items()
            )
            lines.append(
                f"{m['model']:<16} {p['pipeline']:<14} {p['format']:<11} "
                f"{v['metric']} {v['figure']:.1f} / {v['limit']:g} vs {p['against']}"
                f"{'' if v['passed'] else ' FAILED'}{figures}"
            )
    return "\n".join(lines)


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--examples",
    "names",
    type=click.Choice(EXAMPLES + PBR),
    multiple=True,
    default=EXAMPLES + PBR,
    show_default=True,
)
@click.option("--runs", type=click.IntRange(3, 1000), default=20, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option(
    "--output", "out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True
)
def main(names: tuple[str, ...], runs: int, threads: int, out: Path) -> None:
    """Export, gate and time each worked example of --model against PyTorch eager: table and JSON."""
    models = [bench(name, out, runs, threads) for name in names]
    print(f"\nmodels benchmark: {threads} threads, median of {runs} runs, eager in the same process")
    print(table(models))
    write_result(out / "models.json", {"threads": threads, "runs": runs, "models": models})
    print(f"wrote {out / 'models.json'}")
    if not all(m["passed"] for m in models):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
