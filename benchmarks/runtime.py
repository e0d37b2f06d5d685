"""Latency of the demo student by backend and input size, as a ratio to PyTorch eager in the same run.

For each input size the student is exported to ONNX (SR head kept) and ONNX Runtime is tried at every
graph-optimisation level and thread count; the best setting is reported beside eager, plus the share of
the machine's peak FLOP/s reached (peak measured with a large matmul in this run). Goal: ORT >= 2.0x at 512.

Examples:
    python benchmarks/runtime.py
    python benchmarks/runtime.py --sizes 64 128 --runs 10
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pbrforge.export.converter import export_artifacts
from pbrforge.export.onnx_export import onnx_session, run_onnx
from pbrforge.export.wrappers import PBRExportWrapper, example_inputs
from pbrforge.models import model_from_checkpoint
from pbrforge.options import examples_epilog
from pbrforge.provenance import write_result

GOAL_AT_512 = 2.0
LEVELS = ("disable", "basic", "extended", "all")


def timed(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def peak_flops(threads: int, n: int = 2048) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b, 5)


@click.command(epilog=examples_epilog(__doc__))
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=Path("demo_out/student/checkpoints/best.pt"),
    show_default=True,
)
@click.option("--sizes", type=int, multiple=True, default=(64, 128, 256, 512), show_default=True)
@click.option("--runs", type=int, default=10, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(checkpoint: Path, sizes: tuple[int, ...], runs: int, out: Path) -> None:
    """Eager vs ONNX Runtime (best of levels x threads) per input size; table, JSON and chart."""
    if not checkpoint.exists():
        raise click.ClickException(f"{checkpoint} is missing: run `make demo` first or pass --checkpoint")
    threads = torch.get_num_threads()
    peak = peak_flops(threads)
    model, _, _ = model_from_checkpoint(checkpoint)
    wrapper = PBRExportWrapper(model, use_sr=True).eval()
    rows = []
    for size in sizes:
        x = example_inputs(size)
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            wrapper(*x)
        flops = fc.get_total_flops()
        torch.set_num_threads(threads)
        with torch.inference_mode():
            eager = timed(lambda x=x: wrapper(*x), runs)
        base = out / "runtime_work" / f"student_{size}"
        export_artifacts(checkpoint, base, ("onnx",), test_resolution=size, use_sr=True)
        tries = {}
        for level in LEVELS:
            for t in sorted({1, threads}):
                sess = onnx_session(base.with_suffix(".onnx"), threads=t, level=level)
                tries[f"{level}/{t}t"] = timed(lambda s=sess, x=x: run_onnx(s, x), runs)
        best = min(tries, key=tries.get)
        rows.append(
            {
                "size": size,
                "gflops": flops / 1e9,
                "eager_ms": eager * 1e3,
                "ort_best_ms": tries[best] * 1e3,
                "ort_best_setting": best,
                "ort_all_ms": {k: v * 1e3 for k, v in tries.items()},
                "speedup": eager / tries[best],
                "eager_peak_fraction": flops / eager / peak,
                "ort_peak_fraction": flops / tries[best] / peak,
            }
        )
    print(
        f"\nruntime benchmark: {checkpoint}; peak {peak / 1e9:.1f} GFLOP/s (2048^2 matmul, {threads} threads)"
    )
    print(
        f"{'size':>5} {'GFLOP':>7} {'eager ms':>9} {'ORT ms':>8} {'ORT setting':>13} {'speed-up':>8} "
        f"{'eager %peak':>11} {'ORT %peak':>9}"
    )
    for r in rows:
        print(
            f"{r['size']:5d} {r['gflops']:7.2f} {r['eager_ms']:9.1f} {r['ort_best_ms']:8.1f} {r['ort_best_setting']:>13} "
            f"{r['speedup']:7.2f}x {100 * r['eager_peak_fraction']:10.1f}% {100 * r['ort_peak_fraction']:8.1f}%"
        )
    at512 = next((r for r in rows if r["size"] == 512), None)
    if at512:
        print(
            f"goal ORT >= {GOAL_AT_512}x eager at 512: {'met' if at512['speedup'] >= GOAL_AT_512 else 'NOT met'} "
            f"({at512['speedup']:.2f}x)"
        )
    write_result(out / "runtime.json", {"peak_gflops": peak / 1e9, "threads": threads, "rows": rows})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    ax.plot([r["size"] for r in rows], [r["eager_ms"] for r in rows], "o-", label="PyTorch eager")
    ax.plot([r["size"] for r in rows], [r["ort_best_ms"] for r in rows], "o-", label="ONNX Runtime (best)")
    ax.set(
        xlabel="input size (px per side)",
        ylabel="latency, ms (median)",
        yscale="log",
        title=f"demo student, {threads} CPU threads",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "runtime.png")
    print(f"wrote {out / 'runtime.json'} and {out / 'runtime.png'}")


if __name__ == "__main__":
    main()
