"""How the ViT and PLK students scale with input size on the CPU: latency and peak memory.

Each (model, size, setting) runs in a fresh process so its peak RSS and allocator state are its own.
Settings: ``default`` (PyTorch eager as installed), ``retained`` (the heap kept between calls,
``pbrforge.allocator``: ``run_inference.py --retain-heap``) and ``retained+cl`` (also channels_last).
Goal: PLK latency 1024 / 512 <= 4.4 (linear in pixels is 4.0); the ViT's attention is quadratic in tokens.

Examples:
    python benchmarks/scaling.py
    python benchmarks/scaling.py --sizes 256 --sizes 512 --runs 3 --settings default --settings retained
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click

from pbrforge.options import examples_epilog, old_spellings
from pbrforge.provenance import write_result

MODELS = {"vit": "student_mnv3_vit_512", "plk": "student_mnv3_plk_512"}
SETTINGS = ("default", "retained", "retained+cl")
GOAL_PLK_RATIO = 4.4


def measure_one(preset: str, size: int, runs: int, setting: str) -> dict:
    """Run inside a child process: median latency and peak-RSS growth of inference at ``size``."""
    import torch

    from pbrforge.allocator import retain_freed_memory
    from pbrforge.student.model import create_student

    retained = retain_freed_memory() if setting.startswith("retained") else False
    torch.manual_seed(0)
    model = create_student(preset, image_size=size).eval()
    x = torch.randn(1, 3, 3, size, size)
    if setting.endswith("+cl"):  # the 4-D views stacked along the batch, as the exporters see them
        model = model.to(memory_format=torch.channels_last)
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (1, 3))
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
        "setting": setting,
        "retained": retained,
        "median_ms": 1000 * times[len(times) // 2],
        "peak_mem_mib": (peak - base) / 1024,
        "threads": torch.get_num_threads(),
    }


@click.command(epilog=examples_epilog(__doc__))
@click.option("--sizes", type=int, multiple=True, default=(256, 384, 512, 768, 1024), show_default=True)
@click.option("--runs", type=int, default=5, show_default=True)
@click.option(
    "--settings",
    type=click.Choice(SETTINGS),
    multiple=True,
    default=SETTINGS,
    show_default=True,
    help="Allocator / memory-format settings to measure.",
)
@old_spellings("--output", "--out")
@click.option(
    "--output", "out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True
)
@click.option("--child", nargs=4, type=str, default=None, hidden=True)
def main(
    sizes: tuple[int, ...],
    runs: int,
    settings: tuple[str, ...],
    out: Path,
    child: tuple[str, str, str, str] | None,
) -> None:
    """Latency and peak memory of both students over input sizes; table, JSON and a PNG chart."""
    if child:
        print(json.dumps(measure_one(child[0], int(child[1]), int(child[2]), child[3])))
        return
    rows = []
    for setting in settings:
        for kind, preset in MODELS.items():
            for size in sizes:
                r = subprocess.run(
                    [sys.executable, __file__, "--child", preset, str(size), str(runs), setting],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(r.stdout.strip().splitlines()[-1]) | {"kind": kind}
                rows.append(row)
                print(
                    f"{setting:<12} {kind} {size:5d}px  {row['median_ms']:9.1f} ms  "
                    f"{row['peak_mem_mib']:8.1f} MiB",
                    flush=True,
                )
    by = {(r["setting"], r["kind"], r["size"]): r for r in rows}
    for setting in settings:
        print(f"\n{setting}: median latency (ms) and peak RSS growth (MiB), 1 sample of 3 views, CPU")
        print(f"{'size':>6} {'ViT ms':>9} {'PLK ms':>9} {'ViT MiB':>9} {'PLK MiB':>9} {'ViT/PLK':>8}")
        for s in sizes:
            v, p = by[(setting, "vit", s)], by[(setting, "plk", s)]
            print(
                f"{s:6d} {v['median_ms']:9.1f} {p['median_ms']:9.1f} {v['peak_mem_mib']:9.1f} "
                f"{p['peak_mem_mib']:9.1f} {v['median_ms'] / p['median_ms']:8.2f}"
            )
    ratios: dict[str, dict[str, float]] = {}
    if 512 in sizes and 1024 in sizes:
        print(f"\nlatency 1024/512 (linear in pixels = 4.00; goal for PLK <= {GOAL_PLK_RATIO})")
        print(f"{'setting':<12} {'PLK':>6} {'ViT':>6}  PLK goal  PLK speed-up vs default at 1024")
        for setting in settings:
            ratios[setting] = {
                k: by[(setting, k, 1024)]["median_ms"] / by[(setting, k, 512)]["median_ms"] for k in MODELS
            }
            speedup = (
                f"{by[('default', 'plk', 1024)]['median_ms'] / by[(setting, 'plk', 1024)]['median_ms']:.2f}x"
                if "default" in settings
                else "-"
            )
            met = "met" if ratios[setting]["plk"] <= GOAL_PLK_RATIO else "NOT met"
            print(
                f"{setting:<12} {ratios[setting]['plk']:6.2f} {ratios[setting]['vit']:6.2f}  {met:<8}  {speedup}"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_result(out / "scaling.json", {"rows": rows, "ratio_1024_512": ratios, "goal": GOAL_PLK_RATIO})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    xs = [s * s / 1e6 for s in sizes]
    for setting, style in zip(settings, ("o-", "s--", "^:"), strict=False):
        for kind in MODELS:
            label = f"{kind.upper()} {setting}"
            axes[0].plot(xs, [by[(setting, kind, s)]["median_ms"] for s in sizes], style, label=label)
            axes[1].plot(xs, [by[(setting, kind, s)]["peak_mem_mib"] for s in sizes], style, label=label)
    axes[0].set(xlabel="input megapixels per view", ylabel="latency, ms (median)", title="CPU latency")
    axes[1].set(xlabel="input megapixels per view", ylabel="peak RSS growth, MiB", title="peak memory")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
