"""Run any pbrforge artifact on three photos; with --reference, check parity and latency against PyTorch.

Input folder rules: png/jpg, the first three by sorted name (more is a warning, fewer an error); any
mode is converted to RGB (alpha dropped, gray replicated, 16-bit scaled); any size is resized to the
model's input (a warning when not square). Outputs are upscaled to --final-size with Lanczos, normals
renormalised, and written as albedo/roughness/metallic/normal.png plus preview.png.

Examples:
    python runtime/run_inference.py artifacts/student.onnx --input photos/ --output out/
    python runtime/run_inference.py artifacts/student.onnx --input photos/ --output out/ \\
        --reference runs/student/checkpoints/best.pt --runs 20 --warmup 3
    python runtime/run_inference.py runs/student/checkpoints/best.pt --input photos/ --output out/ --final-size 1024
    python runtime/run_inference.py runs/student/checkpoints/best.pt --input photos/ --output out/ --retain-heap
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from pbrforge.allocator import retain_freed_memory
from pbrforge.cli import examples_epilog
from pbrforge.contract import MAP_NAMES, pack, resize_maps, to_preview, validate, write_material
from pbrforge.deploy import OUTPUT_NAMES, DeployContract
from pbrforge.errors import DataError, user_errors
from pbrforge.export.parity import compare, table
from pbrforge.fileio import atomic_path, write_json
from pbrforge.runtime.backends import BACKENDS, Runner, Views, load_runner, torch_runner
from pbrforge.views import ViewWarning, read_view_folder


def preprocess(folder: Path, contract: DeployContract) -> tuple[Views, list[Path]]:
    """Three (1, 3, S, S) float tensors of whole numbers 0..255, exactly what an 8-bit image input holds."""
    views01, used = read_view_folder(folder, contract.image_size)
    views = tuple((v * 255).round()[None].contiguous() for v in views01)
    return views, used


def to_maps(outputs: dict[str, np.ndarray]) -> torch.Tensor:
    """Named outputs (1, c, S, S) -> one (8, S, S) contract tensor, checked."""
    maps = pack({n: torch.from_numpy(np.asarray(outputs[n], np.float32))[0] for n in OUTPUT_NAMES})
    validate(maps, "model outputs")
    return maps


def upscale(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Lanczos per channel (PIL, float), clamped to range; normals renormalised. Downscaling uses antialiasing."""
    if maps.shape[-1] >= size:
        return resize_maps(maps, size)
    chans = [
        np.asarray(Image.fromarray(c.numpy(), mode="F").resize((size, size), Image.Resampling.LANCZOS))
        for c in maps
    ]
    out = torch.from_numpy(np.stack(chans))
    return torch.cat([out[:5].clamp(0, 1), torch.nn.functional.normalize(out[5:], dim=0, eps=1e-6)])


def write_outputs(maps: torch.Tensor, views: Views, out_dir: Path, final_size: int) -> None:
    write_material(out_dir, upscale(maps, final_size))
    tile = 256
    small = resize_maps(maps, tile)
    tiles = [
        torch.nn.functional.interpolate(v / 255, size=(tile, tile), mode="bilinear", antialias=True)[0]
        .permute(1, 2, 0)
        .clamp(0, 1)
        .numpy()
        for v in views
    ]
    row = np.concatenate(tiles + to_preview(small), axis=1)
    with atomic_path(Path(out_dir) / "preview.png") as tmp:
        Image.fromarray((row * 255).round().astype(np.uint8)).save(tmp, format="PNG")


def measure(runner: Runner, views: Views, runs: int, warmup: int) -> dict[str, float]:
    """Median and p90 wall-clock milliseconds of ``runner`` over ``runs`` after ``warmup``."""
    torch.set_num_threads(runner.threads)
    for _ in range(warmup):
        runner.run(views)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(views)
        times.append((time.perf_counter() - t0) * 1000)
    arr = np.asarray(times)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()),
        "runs": runs,
        "warmup": warmup,
        "threads": runner.threads,
    }


def latency_chart(latency: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(latency)
    med = [latency[n]["median_ms"] for n in names]
    p90 = [latency[n]["p90_ms"] - latency[n]["median_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.bar(
        names,
        med,
        yerr=[np.zeros(len(names)), p90],
        color=["#777777", "#2a7ab9", "#d9822b", "#3a9a4a"][: len(names)],
        capsize=6,
    )
    for i, m in enumerate(med):
        ax.text(i, m + p90[i], f"{m:.1f} ms", ha="center", va="bottom")
    ax.set_ylabel("latency, ms (median, bar to p90)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run_inference(
    artifact: Path,
    input_dir: Path,
    output: Path,
    backend: str = "auto",
    reference: Path | None = None,
    runs: int = 20,
    warmup: int = 3,
    final_size: int | None = None,
    threads: int = 0,
    echo=click.echo,
) -> dict:
    runner = load_runner(artifact, backend, threads)
    contract = runner.contract
    views, used = preprocess(input_dir, contract)
    outputs = runner.run(views)
    maps = to_maps(outputs)
    final = final_size or contract.final_size
    write_outputs(maps, views, output, final)
    echo(
        f"{runner.backend}: {', '.join(p.name for p in used)} -> {', '.join(MAP_NAMES)} at {final}px in {output}"
    )
    summary: dict = {
        "artifact": str(artifact),
        "backend": runner.backend,
        "inputs": [str(p) for p in used],
        "final_size": final,
    }
    if reference is None:
        return summary
    ref = torch_runner(reference, runner.threads, contract)
    report = compare(ref.run(views), outputs)
    echo(table(report, f"parity: {runner.backend} vs PyTorch eager fp32"))
    latency = {"torch eager": measure(ref, views, runs, warmup)}
    if runner.backend != "torch":
        latency[runner.backend] = measure(runner, views, runs, warmup)
    base = latency["torch eager"]["median_ms"]
    for v in latency.values():
        v["speedup_vs_eager"] = base / v["median_ms"]
    echo(
        f"latency ({runner.threads} threads, {contract.image_size}px in, {contract.output_size}px out, "
        f"{runs} runs after {warmup} warm-up)"
    )
    echo(f"{'backend':<12} {'median ms':>10} {'p90 ms':>9} {'speed-up vs eager':>18}")
    for name, v in latency.items():
        echo(f"{name:<12} {v['median_ms']:10.2f} {v['p90_ms']:9.2f} {v['speedup_vs_eager']:17.2f}x")
    write_json(
        Path(output) / "parity.json",
        {"reference": str(reference), "backend": runner.backend, "outputs": report},
    )
    write_json(
        Path(output) / "latency.json",
        {"image_size": contract.image_size, "output_size": contract.output_size, "backends": latency},
    )
    latency_chart(
        latency,
        Path(output) / "latency.png",
        f"{contract.model_name}: {contract.image_size}px -> {contract.output_size}px, {runner.threads} threads",
    )
    summary |= {"parity": report, "latency": latency}
    return summary


@click.command("run", epilog=examples_epilog(__doc__))
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--input", "input_dir", type=click.Path(path_type=Path), required=True, help="Folder with 3 photos."
)
@click.option(
    "--output", type=click.Path(path_type=Path), required=True, help="Folder for maps, preview and reports."
)
@click.option("--backend", type=click.Choice(("auto",) + BACKENDS), default="auto", show_default=True)
@click.option(
    "--reference", type=click.Path(path_type=Path), default=None, help="Checkpoint for parity and latency."
)
@click.option("--runs", type=int, default=20, show_default=True)
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option(
    "--final-size", type=int, default=None, help="Upscale maps to this side [default: the contract's, 2048]."
)
@click.option("--threads", type=int, default=0, help="CPU threads for every backend [default: torch's].")
@click.option(
    "--retain-heap",
    is_flag=True,
    help="Keep freed memory in the process (glibc) so large activations are not page-faulted on every "
    "call: faster at high resolution, more resident memory (benchmarks/scaling.py measures both).",
)
@user_errors
def main(
    artifact: Path,
    input_dir: Path,
    output: Path,
    backend: str,
    reference: Path | None,
    runs: int,
    warmup: int,
    final_size: int | None,
    threads: int,
    retain_heap: bool,
) -> None:
    """Predict PBR maps with an artifact; optionally compare it with PyTorch."""
    if runs < 1 or warmup < 0:
        raise DataError("--runs must be at least 1 and --warmup at least 0")
    if retain_heap and not retain_freed_memory():
        click.echo("warning: --retain-heap does nothing here: the C library is not glibc", err=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_inference(artifact, input_dir, output, backend, reference, runs, warmup, final_size, threads)
    for w in caught:
        if issubclass(w.category, ViewWarning):
            click.echo(f"warning: {w.message}", err=True)


if __name__ == "__main__":
    main()
