"""Every file name an export writes, derived from OUTPUT in one place.

OUTPUT is a path without extension whose name may hold dots (``artifacts/student.v2``): each artifact is
``OUTPUT`` + its suffix, never ``OUTPUT.with_suffix(...)``, which would turn ``student.v2`` into ``student``
and let runs named ``.v1`` and ``.v2`` overwrite each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FAILED = ".failed"
FAMILIES = ("coreml", "onnx", "executorch", "tensorrt")  # what `export --format` chooses; each holds variants


def sidecar_path(artifact: Path, kind: str) -> Path:
    """``model.mlpackage`` + ``ane`` -> ``model.ane.json``: a file named by the artifact's stem."""
    artifact = Path(artifact)
    return artifact.with_name(f"{artifact.stem}.{kind}.json")


def contract_path(artifact: Path) -> Path:
    """``model.onnx`` / ``model.int8.onnx`` / ``model.mlpackage`` -> ``model.contract.json`` /
    ``model.int8.contract.json``: where a runtime finds an artifact's contract."""
    return sidecar_path(artifact, "contract")


def report_path(artifact: Path, kind: str) -> Path:
    """``model.int8.onnx`` + ``parity`` -> ``model.int8.onnx.parity.json``: a report kept beside its artifact."""
    artifact = Path(artifact)
    return artifact.with_name(f"{artifact.name}.{kind}.json")


@dataclass(frozen=True)
class ArtifactPaths:
    """The names of one export run's files: artifacts, their failed twins and the reports shared by all."""

    output: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", Path(self.output))

    def _named(self, tail: str) -> Path:
        return self.output.with_name(self.output.name + tail)

    def artifact(self, suffix: str) -> Path:
        """``.int8.onnx`` -> ``OUTPUT.int8.onnx``."""
        return self._named(suffix)

    def failed(self, suffix: str) -> Path:
        """``.int8.onnx`` -> ``OUTPUT.int8.failed.onnx``: an artifact that failed its gate, kept for study."""
        variant, _, ext = suffix.rpartition(".")
        return self._named(f"{variant}{FAILED}.{ext}")

    @property
    def contract(self) -> Path:
        """``OUTPUT.contract.json``, the deployment contract every artifact of the run shares."""
        return self._named(".contract.json")

    @property
    def vectors(self) -> Path:
        """``OUTPUT.testvectors/``: self-check inputs and outputs for every artifact of the run."""
        return self._named(".testvectors")

    @property
    def deployment(self) -> Path:
        return self._named(".deployment.json")

    @property
    def recipe(self) -> Path:
        return self._named(".recipe.json")

    @property
    def pareto(self) -> Path:
        return self._named(".pareto.png")
