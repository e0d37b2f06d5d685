"""Run an artifact on three photos and, given a reference checkpoint, measure parity and latency against it.

Used by ``runtime/run_inference.py`` and the benchmarks; every backend goes through ``backends.load_runner``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from pbrforge.contract import (
    MAP_NAMES,
    NORMAL_CHANNELS,
    UNIT_CHANNELS,
    pack,
    resize_maps,
    to_preview,
    validate,
    write_material,
)
from pbrforge.deploy import OUTPUT_NAMES, DeployContract
from pbrforge.errors import DataError, ParityError
from pbrforge.export.gates import RenderGate
from pbrforge.export.parity import ParityReport, comparison, tables
from pbrforge.fileio import atomic_path, check_output_dir, exclusive, remove_stale_temps, write_json
from pbrforge.runtime.backends import Runner, Views, load_runner, torch_runner
from pbrforge.runtime.emit import AssetRequest, check_request, default_name, emit
from pbrforge.runtime.validators import check_files

if TYPE_CHECKING:
    from pbrforge.registration import Registration
from pbrforge.views import read_registered_views

_logger = logging.getLogger(__name__)


def preprocess(
    folder: Path, contract: DeployContract, align: str = "none", corners: Path | None = None
) -> tuple[Views, list[Path], Registration | None]:
    """Three (1, 3, S, S) float tensors of whole numbers 0..255 (what an 8-bit image input holds), registered
    by ``align`` first; the files used and the registration record."""
    views01, used, reg = read_registered_views(folder, contract.image_size, align, corners)
    views = tuple((v * 255).round()[None].contiguous() for v in views01)
    return views, used, reg


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
    return torch.cat(
        [out[UNIT_CHANNELS].clamp(0, 1), torch.nn.functional.normalize(out[NORMAL_CHANNELS], dim=0, eps=1e-6)]
    )


def write_outputs(maps: torch.Tensor, views: Views, out_dir: Path) -> None:
    """The material folder at the maps' size, and preview.png: the three views beside the four maps."""
    write_material(out_dir, maps)
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


def latency_table(latency: dict[str, dict[str, float]], image_size: int, output_size: int) -> str:
    """The latency table ``run --reference`` prints (and ``make demo`` prints again at its end)."""
    first = next(iter(latency.values()))
    lines = [
        f"latency ({first['threads']} threads, {image_size}px in, {output_size}px out, "
        f"{first['runs']} runs after {first['warmup']} warm-up)",
        f"{'backend':<12} {'median ms':>10} {'p90 ms':>9} {'speed-up vs eager':>18}",
    ]
    lines += [
        f"{name:<12} {v['median_ms']:10.2f} {v['p90_ms']:9.2f} {v['speedup_vs_eager']:17.2f}x"
        for name, v in latency.items()
    ]
    return "\n".join(lines)


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
    assets: AssetRequest | None = None,
    gate: RenderGate | None = None,
    align: str = "features",
    corners: Path | None = None,
) -> dict:
    """Predict maps for the three photos in ``input_dir`` and write them; with ``reference``, parity and latency.

    The photos are registered by ``align`` first (``registration.json`` and ``registration.png`` record it).
    Every input (artifact, photos, reference) is read and checked before anything is written.
    """
    check_output_dir(output, "--output")
    if assets is not None:
        check_request(assets.formats, assets.normal, assets.validate)
    runner = load_runner(artifact, backend, threads)
    contract = runner.contract
    views, used, reg = preprocess(input_dir, contract, align, corners)
    ref = torch_runner(reference, runner.threads, contract) if reference is not None else None
    outputs = runner.run(views)
    maps = to_maps(outputs)
    final = final_size or contract.final_size
    with exclusive(output):
        remove_stale_temps(output)
        full = upscale(maps, final)
        write_outputs(full, views, output)
        if reg is not None:
            from pbrforge.registration import overlay_png

            write_json(Path(output) / "registration.json", reg.to_json() | {"inputs": [p.name for p in used]})
            overlay_png(reg, Path(output) / "registration.png")
        if assets is not None:
            written = emit(
                full,
                output,
                assets.material or default_name(output),
                assets.formats,
                assets.bits,
                assets.normal,
            )
            if assets.validate:
                check_files([p for paths in written.values() for p in paths])
        _logger.info(
            f"{runner.backend}: {', '.join(p.name for p in used)} -> {', '.join(MAP_NAMES)} at {final}px in {output}"
        )
        summary: dict = {
            "artifact": str(artifact),
            "backend": runner.backend,
            "inputs": [str(p) for p in used],
            "align": align,
            "final_size": final,
        }
        if ref is None:
            return summary
        report = ParityReport(
            runner.backend,
            [comparison(runner.backend, ref.run(views), outputs, render_gate=gate or RenderGate())],
        )
        report.reference = f"PyTorch eager fp32 ({reference})"
        _logger.info(tables(report))
        latency = {"torch eager": measure(ref, views, runs, warmup)}
        if runner.backend != "torch":
            latency[runner.backend] = measure(runner, views, runs, warmup)
        base = latency["torch eager"]["median_ms"]
        for v in latency.values():
            v["speedup_vs_eager"] = base / v["median_ms"]
        _logger.info(latency_table(latency, contract.image_size, contract.output_size))
        write_json(Path(output) / "parity.json", report.to_dict())
        write_json(
            Path(output) / "latency.json",
            {"image_size": contract.image_size, "output_size": contract.output_size, "backends": latency},
        )
        latency_chart(
            latency,
            Path(output) / "latency.png",
            f"{contract.model_name}: {contract.image_size}px -> {contract.output_size}px, {runner.threads} threads",
        )
        summary |= {"parity": report.outputs, "render": report.to_dict()["render"], "latency": latency}
        if report.failure:  # the maps and reports stay: they show what failed
            raise ParityError(report.failure)
        return summary


def self_check(artifact: Path, backend: str = "auto", threads: int = 0) -> dict:
    """Run the artifact on the self-check vectors its contract lists; ParityError naming the worst output."""
    from pbrforge.export.test_vectors import check

    runner = load_runner(artifact, backend, threads)
    contract = runner.contract
    if not contract.test_vectors:
        raise DataError(
            f"the contract of {artifact} lists no self-check vectors (exported before they existed: export again)"
        )
    folder = Path(artifact).parent / contract.test_vectors
    label = f"{runner.backend} self-check"
    report, failure = check(runner.run, folder, Path(artifact).name, contract.image_size, label)
    _logger.info(tables(report))
    if failure:
        raise ParityError(failure)
    _logger.info(f"self-check passed: {Path(artifact).name} against {folder}")
    return report.to_dict()
