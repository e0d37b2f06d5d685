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
from pbrforge.modelspec import tensor_spec

MANIFEST_SUFFIX = ".model.json"


def self_check(manifest: Path, threads: int = 2) -> list[str]:
    """One line per graph and format; raises ParityError naming the first output that failed its gate."""
    from safetensors.torch import load_file

    from pbrforge.export.model_export import artifact_call

    data = read_json(manifest)
    if not isinstance(data, dict) or not isinstance(data.get("graphs"), dict) or "test_vectors" not in data:
        raise DataError(f"{manifest} is not a pbrforge model manifest (no graphs or test_vectors)")
    folder = manifest.parent
    lines, failures = [], []
    for graph, about in data["graphs"].items():
        inputs = tuple(tensor_spec(t) for t in about["inputs"])
        outputs = tuple(tensor_spec(t) for t in about["outputs"])
        vectors_file = folder / data["test_vectors"] / f"{graph}.safetensors"
        if not vectors_file.is_file():
            raise DataError(f"test vectors {vectors_file} are missing: keep the export's folder together")
        vectors = load_file(str(vectors_file))
        cases = sorted({int(k.split(".", 1)[0]) for k in vectors})
        for artifact in about["artifacts"]:
            fmt, name = artifact["format"], artifact["path"]
            if not name:
                lines.append(f"{graph} {fmt}: not built ({artifact['detail']})")
                continue
            call = artifact_call(fmt, folder / name, inputs, threads)
            if call is None:
                lines.append(f"{graph} {fmt}: not run here ({artifact['detail']})")
                continue
            worst = []
            for k in cases:
                got = call(*(vectors[f"{k}.in.{t.name}"] for t in inputs))
                for t, out in zip(outputs, got, strict=True):
                    v = judge(t.judged_by, vectors[f"{k}.out.{t.name}"].numpy(), out.numpy(), t.span)
                    worst.append(f"{t.name} {v.sentence()}")
                    if not v.passed:
                        failures.append(f"{name} case {k}: {t.name} failed its gate: {v.sentence()}")
            verdict = "ok" if not any(f.startswith(f"{name} ") for f in failures) else "FAILED"
            lines.append(
                f"{graph} {fmt}: {verdict} on {len(cases)} cases ({'; '.join(worst[-len(outputs) :])})"
            )
    if failures:
        raise ParityError(failures[0])
    return lines
