"""``pbrforge run OUTPUT.model.json --self-check``: every artifact of a ``--model`` export, on its test vectors.

The export wrote, per graph, example inputs and PyTorch's outputs (``OUTPUT.testvectors/GRAPH.safetensors``)
and each output's gate in the manifest. This runs each artifact that runs here on them, with no PyTorch
model, and holds each output to its gate: what an app or a CI job on the target does to trust its runtime.
An int8 artifact judged on the inputs its upstream graphs give is checked on those (``GRAPH.fed.safetensors``),
and each pipeline's eager trace (``pipeline.NAME.safetensors``: every call the host glue made) is replayed
call by call through the fp32 artifacts.
"""

from __future__ import annotations

from pathlib import Path

from pbrforge.errors import DataError, ParityError
from pbrforge.fileio import read_json, read_tensors
from pbrforge.gate_metrics import judge
from pbrforge.modelspec import TensorSpec, tensor_spec

MANIFEST_SUFFIX = ".model.json"


def read_manifest(manifest: Path) -> dict:
    """A ``--model`` export's manifest, or one DataError sentence when the file is not one."""
    data = read_json(manifest)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("graphs"), dict)
        or not data["graphs"]
        or "test_vectors" not in data
    ):
        raise DataError(f"{manifest} is not a pbrforge model manifest (no graphs or test_vectors)")
    return data


def self_check(manifest: Path, threads: int = 2) -> list[str]:
    """One line per artifact (and per method of a multi-method ``.pte``); raises ParityError naming the first
    output that failed its gate."""
    from pbrforge.export.model_export import artifact_call

    data = read_manifest(manifest)
    folder = manifest.parent
    lines, failures = [], []
    for graph, about in data["graphs"].items():
        for artifact in about["artifacts"]:
            fmt, name = artifact["format"], artifact["path"]
            inputs, outputs, vectors = _graph(
                data, folder, graph, artifact.get("vectors") or f"{graph}.safetensors"
            )
            label = f"{graph} {fmt}" + (
                "" if artifact.get("precision", "fp32") == "fp32" else f" {artifact['precision']}"
            )
            call = artifact_call(fmt, folder / name, inputs, threads) if name else None
            if call is None:  # Core ML here, or an artifact the export did not write (refused, error)
                status = "not run" if name else artifact["status"]
                lines.append(f"{label}: {status} ({artifact['detail']})")
                continue
            bad = _check_cases(call, inputs, outputs, vectors, name)
            failures += bad
            lines.append(f"{label}: {'FAILED' if bad else 'ok'} on {len(_cases(vectors))} cases")
    for bundle in data.get("bundles", []):  # one artifact for all graphs: each method on its graph's vectors
        if bundle["status"] in ("not run", "error"):  # a multifunction .mlpackage runs only on macOS
            lines.append(
                f"{bundle['path'] or bundle['format']} (all graphs): {bundle['status']} ({bundle['detail']})"
            )
            continue
        for graph in bundle["methods"]:
            inputs, outputs, vectors = _graph(data, folder, graph, f"{graph}.safetensors")
            call = artifact_call(bundle["format"], folder / bundle["path"], inputs, threads, method=graph)
            bad = _check_cases(call, inputs, outputs, vectors, f"{bundle['path']} method {graph}")
            failures += bad
            lines.append(
                f"{bundle['path']} method {graph}: {'FAILED' if bad else 'ok'} on {len(_cases(vectors))} cases"
            )
    for pipeline, file in data.get("pipeline_traces", {}).items():
        for fmt, bad, steps in _replay(data, folder, pipeline, file, threads):
            failures += bad
            lines.append(f"pipeline {pipeline} {fmt}: {'FAILED' if bad else 'ok'} on its {steps} eager steps")
    if failures:
        raise ParityError(failures[0])
    return lines


def _replay(
    data: dict, folder: Path, pipeline: str, file: str, threads: int
) -> list[tuple[str, list[str], int]]:
    """A pipeline's eager trace, step by step, through each fp32 format whose graphs all run here: each call
    gets the inputs the host glue gave it in PyTorch and each output is held to its gate. An app's own glue
    (a sampler, a coder) can be checked against the same file, call for call."""
    from pbrforge.export.model_export import artifact_call

    tensors = _vectors(data, folder, file)
    steps = sorted({(int(k.split(".")[0]), k.split(".")[1]) for k in tensors if k != "result"})
    graphs = data["graphs"]
    runs = []
    for fmt in ("onnx", "executorch"):
        paths = {
            g: next(
                (
                    a["path"]
                    for a in graphs[g]["artifacts"]
                    if a["format"] == fmt and a.get("precision", "fp32") == "fp32" and a["status"] == "ok"
                ),
                "",
            )
            for g in {g for _, g in steps}
        }
        if not all(paths.values()):
            continue
        specs = {g: _tensors(graphs[g]) for g in paths}
        calls = {g: artifact_call(fmt, folder / p, specs[g][0], threads) for g, p in paths.items()}
        bad: list[str] = []
        for k, g in steps:
            inputs, outputs = specs[g]
            got = calls[g](*(tensors[f"{k}.{g}.in.{i}"] for i in range(len(inputs))))
            expected = [tensors[f"{k}.{g}.out.{i}"] for i in range(len(outputs))]
            bad += _held(outputs, expected, got, f"pipeline {pipeline} ({fmt}) step {k}, graph {g}")
        runs.append((fmt, bad, len(steps)))
    return runs


def _graph(
    data: dict, folder: Path, graph: str, file: str
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict]:
    return (*_tensors(data["graphs"][graph]), _vectors(data, folder, file))


def _tensors(about: dict) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """A graph's inputs and outputs as the manifest describes them."""
    return tuple(tensor_spec(t) for t in about["inputs"]), tuple(tensor_spec(t) for t in about["outputs"])


def _vectors(data: dict, folder: Path, file: str) -> dict:
    """One file of the export's test vectors."""
    path = folder / data["test_vectors"] / file
    if not path.is_file():
        raise DataError(f"test vectors {path} are missing: keep the export's folder together")
    return read_tensors(path)


def _cases(vectors: dict) -> list[int]:
    return sorted({int(key.split(".", 1)[0]) for key in vectors})


def _check_cases(call, inputs, outputs, vectors, label: str) -> list[str]:
    """The failures of ``call`` on every case of ``vectors``, one sentence each."""
    failures = []
    for k in _cases(vectors):
        got = call(*(vectors[f"{k}.in.{t.name}"] for t in inputs))
        expected = [vectors[f"{k}.out.{t.name}"] for t in outputs]
        failures += _held(outputs, expected, got, f"{label} case {k}")
    return failures


def _held(outputs: tuple[TensorSpec, ...], expected: list, got: tuple, label: str) -> list[str]:
    """One sentence per output of ``got`` that fails its gate against ``expected``."""
    failures = []
    for t, ref, out in zip(outputs, expected, got, strict=True):
        v = judge(t.judged_by, ref.numpy(), out.numpy(), t.span)
        if not v.passed:
            failures.append(f"{label}: {t.name} failed its gate: {v.sentence()}")
    return failures
