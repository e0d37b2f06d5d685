"""Self-check vectors: inputs and PyTorch's outputs beside the artifacts, so any runtime can check itself.

``OUTPUT.testvectors/`` holds ``sample_<i>/view_<j>.png`` (8-bit RGB at the model's input size: exactly the
0..255 values the model saw), ``expected.safetensors`` (PyTorch fp32 outputs, one (N, C, S, S) float32 tensor per
output name) and ``tolerances.json`` (per artifact file name, the gate it passed at export, in tensor and render
units). The runtime check (``run ARTIFACT --self-check``) and the Swift sample's ``selfCheck()`` read these files
and need neither a checkpoint nor photos.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbrforge.deploy import INPUT_NAMES, OUTPUT_NAMES
from pbrforge.errors import DataError
from pbrforge.fileio import read_json, remove, replace_path, temp_name, write_json

if TYPE_CHECKING:
    import torch

    from pbrforge.export.parity import Comparison, ParityReport

    Inputs = tuple[torch.Tensor, ...]

EXPECTED = "expected.safetensors"
TOLERANCES = "tolerances.json"
SAMPLES = 2
VERSION = 1
# an unjudged figure is held to what was measured at export, less this margin (other samples, other rounding)
UNJUDGED_MARGIN_DB = 3.0


def view_file(sample: int, view: int) -> str:
    return f"sample_{sample}/view_{view}.png"


def tolerance(report: ParityReport) -> dict[str, Any]:
    """The gate the artifact passed, from the comparison that judged it, in tensor and render units.

    An artifact judged in render units only (int8, palettized) also gets a tensor floor: its worst per-output
    PSNR at export less a margin, so that a device without the renderer (the Swift ``selfCheck()``) can judge it.
    """
    c: Comparison = report.comparisons[-1]
    render = c.render or {}
    if c.render_gate is not None:
        gate = {"psnr_db_min": c.render_gate.psnr_db_min, "normal_deg_p99": c.render_gate.normal_deg_p99}
    elif render:  # recorded, not gated: the figures it reached, less a margin
        gate = {
            "psnr_db_min": math.floor(render["psnr_db_min"] - UNJUDGED_MARGIN_DB),
            "normal_deg_p99": round(render["normal_deg_p99"] * 1.5 + 0.5, 2),
        }
    else:
        gate = {"psnr_db_min": None, "normal_deg_p99": None}
    tensor: dict[str, Any] | None
    if c.gate:
        tensor = {"figure": c.gate, "limit": c.limit}
    else:
        worst = min(o["psnr_db"] for o in c.outputs.values())
        tensor = (
            {"figure": "psnr_db", "limit": math.floor(worst - UNJUDGED_MARGIN_DB)}
            if math.isfinite(worst)
            else None
        )
    return {
        "tensor": tensor,
        "render": gate,
        "judged_by": c.label,
    }


def write_vectors(
    folder: Path,
    samples: list[Inputs],
    expected: dict[str, np.ndarray],
    tolerances: dict[str, dict[str, Any]],
    image_size: int,
    model_hash: str,
) -> None:
    """Write the folder whole under a staging name and rename it into place.

    Tolerances of artifacts from an earlier export of the same model stay (their expected outputs are the
    same function of the inputs); those of another model are dropped.
    """
    from PIL import Image
    from safetensors.numpy import save_file

    folder = Path(folder)
    earlier = _earlier(folder, image_size, model_hash)
    staged = temp_name(folder, "staged")
    remove(staged)
    try:
        for i, views in enumerate(samples):
            (staged / f"sample_{i}").mkdir(parents=True)
            for j, v in enumerate(views):
                pixels = v[0].permute(1, 2, 0).numpy()
                Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), "RGB").save(
                    staged / view_file(i, j), format="PNG"
                )
        save_file({n: np.ascontiguousarray(expected[n], np.float32) for n in OUTPUT_NAMES}, staged / EXPECTED)
        write_json(
            staged / TOLERANCES,
            {
                "version": VERSION,
                "samples": len(samples),
                "image_size": image_size,
                "model_hash": model_hash,
                "inputs": [[view_file(i, j) for j in range(len(INPUT_NAMES))] for i in range(len(samples))],
                "input_names": list(INPUT_NAMES),
                "output_names": list(OUTPUT_NAMES),
                "expected": EXPECTED,
                "reference": "PyTorch eager fp32",
                "artifacts": earlier | tolerances,
            },
        )
        replace_path(staged, folder)
    finally:
        remove(staged)


def _earlier(folder: Path, image_size: int, model_hash: str) -> dict[str, Any]:
    """The tolerances an earlier export of this very model wrote, or none."""
    try:
        meta = read_json(folder / TOLERANCES)
    except DataError:
        return {}
    if not isinstance(meta, dict):
        return {}
    same = (
        isinstance(meta, dict)
        and meta.get("version") == VERSION
        and meta.get("image_size") == image_size
        and model_hash
        and meta.get("model_hash") == model_hash
        and isinstance(meta.get("artifacts"), dict)
    )
    return dict(meta["artifacts"]) if same else {}


def load_vectors(
    folder: Path, artifact_name: str, image_size: int
) -> tuple[list[Inputs], dict[str, np.ndarray], dict]:
    """The inputs, the expected outputs and this artifact's tolerance; any defect is one DataError sentence."""
    import torch
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from pbrforge.views import image_to_float

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"missing self-check vectors {folder} (the exporter writes them beside the artifact)")
    meta = read_json(folder / TOLERANCES)
    if (
        not isinstance(meta, dict)
        or meta.get("version") != VERSION
        or not isinstance(meta.get("artifacts"), dict)
    ):
        raise DataError(f"{folder / TOLERANCES} is not a pbrforge self-check file (version {VERSION})")
    if artifact_name not in meta["artifacts"]:
        raise DataError(
            f"{folder} has no tolerance for {artifact_name} (it has {', '.join(sorted(meta['artifacts'])) or 'none'})"
        )
    try:
        expected = load_file(str(folder / EXPECTED))
    except (OSError, SafetensorError) as e:
        raise DataError(f"{folder / EXPECTED} is not a readable safetensors file ({e})") from e
    tol = meta["artifacts"][artifact_name]
    judges = isinstance(tol, dict) and (
        (tol.get("tensor") or {}).get("limit") is not None
        or any(v is not None for v in (tol.get("render") or {}).values())
    )
    if not judges:
        raise DataError(f"{folder / TOLERANCES} gives {artifact_name} a tolerance that judges nothing")
    samples = []
    if meta.get("image_size") != image_size:
        raise DataError(
            f"{folder} holds {meta.get('image_size')}px inputs, the artifact takes {image_size}px"
        )
    size = image_size
    for names in meta.get("inputs", []):
        views = []
        for name in names:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise DataError(f"{folder / TOLERANCES} names an input outside its folder: {name!r}")
            x = image_to_float(folder / name)  # one DataError sentence for a missing or broken PNG
            if tuple(x.shape[-2:]) != (size, size):
                raise DataError(f"{folder / name} is {x.shape[-1]}x{x.shape[-2]}, the vectors say {size}px")
            views.append((x * 255).round()[None].to(torch.float32).contiguous())
        samples.append(tuple(views))
    count = len(samples)
    bad = [n for n in OUTPUT_NAMES if n not in expected or expected[n].shape[0] != count]
    if not samples or bad:
        raise DataError(f"{folder} does not hold {count or 'any'} expected outputs for {bad or 'its inputs'}")
    return samples, expected, tol


def check(
    run: Any, folder: Path, artifact_name: str, image_size: int, label: str
) -> tuple[ParityReport, str | None]:
    """Run every input through ``run`` (a backend runner's function), judge it by the artifact's tolerance.

    Returns the report and, when out of tolerance, one sentence naming the worst output.
    """
    from pbrforge.export.gates import RenderGate
    from pbrforge.export.parity import ParityReport, comparison

    samples, expected, tol = load_vectors(folder, artifact_name, image_size)
    outs = [run(views) for views in samples]
    outputs = {n: np.concatenate([np.asarray(o[n], np.float32) for o in outs]) for n in OUTPUT_NAMES}
    tensor = tol.get("tensor") or {}
    render = tol.get("render") or {}
    result = comparison(
        label,
        expected,
        outputs,
        tensor.get("figure"),
        tensor.get("limit"),
        RenderGate(render.get("psnr_db_min"), render.get("normal_deg_p99")),
    )
    report = ParityReport(label, [result], reference=f"{folder.name}/{EXPECTED} (PyTorch eager fp32)")
    report.info["tolerance"] = tol
    broken = [n for n in OUTPUT_NAMES if not np.isfinite(outputs[n]).all()]
    if broken:  # whatever the tolerance, NaN or inf is never within it
        return report, f"self-check failed for {artifact_name}: output {broken[0]} holds NaN or inf values"
    if result.failure is None:
        return report, None
    worst = min(OUTPUT_NAMES, key=lambda n: _score(result.outputs[n]))
    figures = result.outputs[worst]
    return report, (
        f"self-check failed for {artifact_name}: {result.failure}; worst output {worst} "
        f"(max abs {figures['max_abs']:.3g}, PSNR {figures['psnr_db']:.1f} dB)"
    )


def _score(figures: dict[str, float]) -> float:
    """Lower is worse; a NaN output is the worst of all."""
    value = figures["psnr_db"]
    return -math.inf if not math.isfinite(value) else value
