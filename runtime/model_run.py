"""``pbrforge run OUTPUT.model.json --input DIR --output DIR``: one graph of a ``--model`` export on your files.

The manifest says what each input is, so the files are read as the spec says, with no PyTorch model:

- an image input (``kind="image"``, 1 or 3 channels) from ``NAME.png``/``.jpg``/``.jpeg`` (8- or 16-bit), its
  0..1 pixel values mapped onto the input's encoding (``-1..1`` for a diffusion model's image);
- any input from ``NAME.safetensors`` (the tensor under ``NAME``, or the file's only tensor);
- a small tensor (a rate, a noise level) from ``NAME.json``: a number, filled into the input's shape, or
  nested lists of exactly its shape.

Every input is read and checked (file, shape, dtype, the value range exported graphs no longer assert, and the
fixed size the graph was exported at) before the artifact loads or anything is written. The outputs go to
``outputs.safetensors``; image and map outputs (a PBR model's albedo, its normal as (n + 1) / 2) of 1 or 3
channels also as 16-bit ``NAME.png`` (the encoding's range mapped to 0..1,
what lies outside clipped and counted), and ``run.json`` records what ran and for how long.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbrforge.errors import ConfigError, DataError
from pbrforge.fileio import atomic_path, write_json
from pbrforge.model_inputs import IMAGE_FILES, read_input
from pbrforge.modelspec import TensorSpec, tensor_spec
from pbrforge.runtime.model_check import read_manifest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PICTURED = ("image", "map")  # output kinds a person looks at: written as PNG too
RUNS_HERE = ("onnx", "executorch")  # the artifact formats this machine can run, in the order tried


@dataclass(frozen=True)
class GraphChoice:
    """The graph and artifact a run uses, read from the manifest."""

    graph: str
    format: str
    artifact: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def choose(manifest: Path, graph: str | None, fmt: str | None) -> GraphChoice:
    """The graph (the only one, or ``graph``) and its artifact (a passing one in ``fmt``, else the first that
    runs here); one sentence naming the choices when there is none."""
    data = read_manifest(manifest)
    graphs: dict[str, Any] = data["graphs"]
    if graph is None:
        if len(graphs) > 1:
            raise ConfigError(f"{manifest.name} holds graphs {', '.join(graphs)}: choose one with --graph")
        graph = next(iter(graphs))
    if graph not in graphs:
        raise ConfigError(f"{manifest.name} has no graph {graph!r}; it holds {', '.join(graphs)}")
    about = graphs[graph]
    wanted = (fmt,) if fmt else RUNS_HERE
    for name in wanted:
        for artifact in about.get("artifacts", []):
            if artifact.get("format") != name or artifact.get("status") != "ok" or not artifact.get("path"):
                continue
            path = manifest.parent / Path(artifact["path"]).name  # names only: the manifest's own folder
            if not path.exists():
                raise DataError(f"{path} is missing: keep the export's files together")
            return GraphChoice(
                graph,
                name,
                path,
                tuple(tensor_spec(t) for t in about["inputs"]),
                tuple(tensor_spec(t) for t in about["outputs"]),
            )
    have = ", ".join(f"{a.get('format')} ({a.get('status')})" for a in about.get("artifacts", [])) or "none"
    raise DataError(
        f"graph {graph!r} has no passing {' or '.join(wanted)} artifact to run here (it has: {have})"
    )


def read_inputs(folder: Path, specs: tuple[TensorSpec, ...]) -> tuple[torch.Tensor, ...]:
    """Each input from ``folder`` as its spec says, checked against the spec and the exported shape."""
    if not folder.is_dir():
        raise DataError(f"input folder {folder} does not exist or is not a folder")
    values = []
    for spec in specs:
        found = [p for p in folder.iterdir() if p.stem == spec.name and p.is_file()]
        usable = [p for p in found if p.suffix.lower() in (*IMAGE_FILES, ".safetensors", ".json")]
        if len(usable) != 1:
            what = "no" if not usable else "more than one"
            kinds = "NAME.png/.jpg, " if spec.kind == "image" else ""
            raise DataError(
                f"{folder} has {what} file for input {spec.name!r}: give one {kinds}NAME.safetensors or "
                f"NAME.json with NAME = {spec.name}"
            )
        value = read_input(usable[0], spec)
        try:
            spec.check_exported(value)
        except DataError as e:
            raise DataError(f"{usable[0]}: {e}") from e
        values.append(value)
    return tuple(values)


def write_outputs(
    folder: Path, outputs: tuple[TensorSpec, ...], values: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    """``outputs.safetensors`` and a 16-bit PNG per image or map output, each atomically; per output, what was
    written."""
    from safetensors.torch import save_file

    from pbrforge.contract import Png16

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "outputs.safetensors") as tmp:
        save_file({t.name: v.contiguous() for t, v in zip(outputs, values, strict=True)}, str(tmp))
    written: dict[str, Any] = {}
    for spec, value in zip(outputs, values, strict=True):
        about: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        if value.numel():
            about |= {"min": float(value.min()), "max": float(value.max())}
        if (
            spec.kind in PICTURED
            and value.dim() == 4
            and value.shape[1] in (1, 3)
            and value.is_floating_point()
        ):
            low, high = spec.encoding
            unit = (value[0].double().numpy() - low) / (high - low)  # (C, H, W), encoding -> 0..1
            about["clipped_share"] = float(((unit < 0) | (unit > 1)).mean())
            png = Png16(np.round(np.clip(unit, 0.0, 1.0) * 65535).astype(np.uint16))
            with atomic_path(folder / f"{spec.name}.png") as tmp:
                png.save(tmp)
            about["png"] = f"{spec.name}.png"
        written[spec.name] = about
    return written


def run_model(
    manifest: Path, input_dir: Path, output: Path, graph: str | None, fmt: str | None, threads: int
) -> dict[str, Any]:
    """Run one graph of a ``--model`` export on the files in ``input_dir``; the report ``run.json`` holds."""
    from pbrforge.export.model_export import artifact_call

    chosen = choose(manifest, graph, fmt)
    values = read_inputs(input_dir, chosen.inputs)  # everything is read and checked before anything runs
    call = artifact_call(chosen.format, chosen.artifact, chosen.inputs, threads)
    t0 = time.perf_counter()
    got = tuple(call(*values))
    seconds = time.perf_counter() - t0
    if len(got) != len(chosen.outputs):
        raise DataError(
            f"{chosen.artifact} returned {len(got)} tensors; its manifest lists {len(chosen.outputs)}"
        )
    report = {
        "manifest": str(manifest),
        "graph": chosen.graph,
        "format": chosen.format,
        "artifact": str(chosen.artifact),
        "seconds": round(seconds, 4),
        "threads": threads,
        "outputs": write_outputs(output, chosen.outputs, got),
    }
    write_json(output / "run.json", report)
    return report
