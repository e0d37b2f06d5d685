"""``pbrforge run OUTPUT.model.json --self-check``: every artifact of a ``--model`` export, on its test vectors.

The export wrote, per graph, example inputs and PyTorch's outputs (``OUTPUT.testvectors/GRAPH.safetensors``)
and each output's gate in the manifest. This runs each artifact that runs here on them, with no PyTorch
model, and holds each output to its gate: what an app or a CI job on the target does to trust its runtime.
"""

from __future__ import annotations

from pathlib import Path

from pbrforge.errors import DataError, ParityError
from pbrforge.fileio import read_json
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
        inputs, outputs, vectors = _graph(data, folder, graph)
        for artifact in about["artifacts"]:
            fmt, name = artifact["format"], artifact["path"]
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
            inputs, outputs, vectors = _graph(data, folder, graph)
            call = artifact_call(bundle["format"], folder / bundle["path"], inputs, threads, method=graph)
            bad = _check_cases(call, inputs, outputs, vectors, f"{bundle['path']} method {graph}")
            failures += bad
            lines.append(
                f"{bundle['path']} method {graph}: {'FAILED' if bad else 'ok'} on {len(_cases(vectors))} cases"
            )
    if failures:
        raise ParityError(failures[0])
    return lines


def _graph(
    data: dict, folder: Path, graph: str
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict]:
    from safetensors.torch import load_file

    about = data["graphs"][graph]
    vectors = folder / data["test_vectors"] / f"{graph}.safetensors"
    if not vectors.is_file():
        raise DataError(f"test vectors {vectors} are missing: keep the export's folder together")
    return (
        tuple(tensor_spec(t) for t in about["inputs"]),
        tuple(tensor_spec(t) for t in about["outputs"]),
        load_file(str(vectors)),
    )


def _cases(vectors: dict) -> list[int]:
    return sorted({int(key.split(".", 1)[0]) for key in vectors})


def _check_cases(call, inputs, outputs, vectors, label: str) -> list[str]:
    """The failures of ``call`` on every case of ``vectors``, one sentence each."""
    failures = []
    for k in _cases(vectors):
        got = call(*(vectors[f"{k}.in.{t.name}"] for t in inputs))
        for t, out in zip(outputs, got, strict=True):
            v = judge(t.judged_by, vectors[f"{k}.out.{t.name}"].numpy(), out.numpy(), t.span)
            if not v.passed:
                failures.append(f"{label} case {k}: {t.name} failed its gate: {v.sentence()}")
    return failures
