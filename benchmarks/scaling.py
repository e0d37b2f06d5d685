"""How the ViT and PLK students scale with input size on the CPU: latency and peak memory.

Each (model, size) runs in a fresh process so its peak RSS is its own. Goal: PLK latency
1024 / 512 <= 4.4 (linear in pixels is 4.0); the ViT's attention is quadratic in tokens and bends.

Examples:
    python benchmarks/scaling.py
    python benchmarks/scaling.py --sizes 256 512 --runs 3
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click

from pbrforge.cli import examples_epilog

MODELS = {"vit": "student_mnv3_vit_512", "plk": "student_mnv3_plk_512"}
GOAL_PLK_RATIO = 4.4


def measure_one(preset: str, size: int, runs: int) -> dict:
    """Run inside a child process: median latency and peak-RSS growth of inference at ``size``."""
    import torch

    from pbrforge.student.model import create_student

    torch.manual_seed(0)
    model = create_student(preset, image_size=size).eval()
    x = torch.randn(1, 3, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times.sort()
    return {
        "preset": preset,
        "size": size,
        "median_ms": 1000 * times[len(times) // 2],
        "peak_mem_mib": (peak - base) / 1024,
        "threads": torch.get_num_threads(),
    }


@click.command(epilog=examples_epilog(__doc__))
@click.option("--sizes", type=int, multiple=True, default=(256, 384, 512, 768, 1024), show_default=True)
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--child", nargs=3, type=str, default=None, hidden=True)
def main(sizes: tuple[int, ...], runs: int, out: Path, child: tuple[str, str, str] | None) -> None:
    """Latency and peak memory of both students over input sizes; table, JSON and a PNG chart."""
    if child:
        print(json.dumps(measure_one(child[0], int(child[1]), int(child[2]))))
        return
    rows = []
    for kind, preset in MODELS.items():
        for size in sizes:
            r = subprocess.run(
                [sys.executable, __file__, "--child", preset, str(size), str(runs)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(r.stdout.strip().splitlines()[-1]) | {"kind": kind}
            rows.append(row)
            print(
                f"{kind} {size:5d}px  {row['median_ms']:9.1f} ms  {row['peak_mem_mib']:8.1f} MiB", flush=True
            )
    by = {(r["kind"], r["size"]): r for r in rows}
    print(f"\n{'size':>6} {'ViT ms':>9} {'PLK ms':>9} {'ViT MiB':>9} {'PLK MiB':>9} {'ViT/PLK':>8}")
    for s in sizes:
        v, p = by[("vit", s)], by[("plk", s)]
        print(
            f"{s:6d} {v['median_ms']:9.1f} {p['median_ms']:9.1f} {v['peak_mem_mib']:9.1f} {p['peak_mem_mib']:9.1f} "
            f"{v['median_ms'] / p['median_ms']:8.2f}"
        )
    ratios = {}
    if 512 in sizes and 1024 in sizes:
        for kind in MODELS:
            ratios[kind] = by[(kind, 1024)]["median_ms"] / by[(kind, 512)]["median_ms"]
        print(
            f"latency 1024/512: PLK {ratios['plk']:.2f} (goal <= {GOAL_PLK_RATIO}: "
            f"{'met' if ratios['plk'] <= GOAL_PLK_RATIO else 'NOT met'}), ViT {ratios['vit']:.2f}"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(
        json.dumps({"rows": rows, "ratio_1024_512": ratios, "goal": GOAL_PLK_RATIO}, indent=2)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for kind in MODELS:
        xs = [s * s / 1e6 for s in sizes]
        axes[0].plot(xs, [by[(kind, s)]["median_ms"] for s in sizes], "o-", label=kind.upper())
        axes[1].plot(xs, [by[(kind, s)]["peak_mem_mib"] for s in sizes], "o-", label=kind.upper())
    axes[0].set(xlabel="input megapixels per view", ylabel="latency, ms (median)", title="CPU latency")
    axes[1].set(xlabel="input megapixels per view", ylabel="peak RSS growth, MiB", title="peak memory")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
