"""The deployment contract: what an exported artifact takes and returns, shared by exporter, runtime and app.

Written beside every artifact as ``<output>.contract.json`` and as ``mobile_app/contract.json``; the
Python runtime and the iOS sample read the same file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ConfigDict

from pbrforge.contract import INPUT_MEAN, INPUT_STD, MAP_NAMES, MAPS, NUM_VIEWS, contract_dict
from pbrforge.errors import DataError
from pbrforge.fileio import write_json

INPUT_NAMES: tuple[str, ...] = tuple(f"view_{i}" for i in range(NUM_VIEWS))
OUTPUT_NAMES: tuple[str, ...] = MAP_NAMES
DEFAULT_FINAL_SIZE = 2048
CONTRACT_VERSION = 1
# Largest convolution kernel the Apple Neural Engine runs natively; larger ones fall back to the GPU or CPU.
ANE_MAX_KERNEL = 13

if TYPE_CHECKING:
    from pbrforge.config import TrainConfig


@dataclass
class DeployContract:
    __pydantic_config__ = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False
    )  # how files are checked

    image_size: int  # side of each input view
    output_size: int  # side of each output map
    sr_scale: int  # output_size / image_size as built (1 when the SR head is bypassed)
    family: str
    model_name: str
    final_size: int = DEFAULT_FINAL_SIZE  # what apps upscale to (Lanczos; normals renormalised)
    input_names: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    input_format: str = "RGB, 0-255, (1, 3, H, W); normalisation is inside the model"
    # the three views must show one rectified surface, pixel for pixel: handheld photos are registered first
    input_registration: str = (
        "views registered onto view_0 by a homography of the planar sample and cropped to one square "
        "(pbrforge.registration; on iOS VNHomographicImageRegistrationRequest, PBRRegistration.swift)"
    )
    mean: list[float] = field(default_factory=lambda: list(INPUT_MEAN))
    std: list[float] = field(default_factory=lambda: list(INPUT_STD))
    output_names: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    output_channels: dict[str, int] = field(default_factory=lambda: {n: MAPS[n].channels for n in MAP_NAMES})
    output_ranges: dict[str, list[float]] = field(
        default_factory=lambda: {n: contract_dict()["maps"][n]["range"] for n in MAP_NAMES}
    )
    normal_convention: str = "tangent space, OpenGL (+X right, +Y up, +Z out); PNG stores (n + 1) / 2"
    version: int = CONTRACT_VERSION
    # sha256 (16 hex) of the model config it was exported from: a --reference must have the same ("" = unknown)
    model_hash: str = ""
    # the self-check vectors' folder beside the artifact, written by the exporter; "" = none written
    test_vectors: str = ""

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> DeployContract:
        """Read and check a contract file: its schema, then the facts it must share with this contract."""
        from pbrforge.fileio import read_json
        from pbrforge.schemas import MAX_SIDE, check

        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"missing deployment contract {path} (the exporter writes it beside the artifact)"
            )
        c = check(cls, read_json(path), f"{path} (a deployment contract)")
        fixed = cls(
            image_size=c.image_size, output_size=c.output_size, sr_scale=c.sr_scale, family="", model_name=""
        )
        for name in ("input_names", "output_names", "output_channels", "version"):
            if getattr(c, name) != getattr(fixed, name):
                raise DataError(
                    f"{path}: {name} is {getattr(c, name)!r}, this pbrforge needs {getattr(fixed, name)!r}"
                )
        if not (
            32 <= c.image_size <= MAX_SIDE
            and 1 <= c.output_size <= MAX_SIDE
            and 1 <= c.final_size <= MAX_SIDE
        ):
            raise DataError(
                f"{path}: sizes {c.image_size}/{c.output_size}/{c.final_size} are outside 32..{MAX_SIDE}"
            )
        if c.test_vectors and (Path(c.test_vectors).name != c.test_vectors or c.test_vectors in (".", "..")):
            raise DataError(
                f"{path}: test_vectors must be a folder name beside the artifact, not {c.test_vectors!r}"
            )
        return c


def build_contract(cfg: TrainConfig, image_size: int | None = None, use_sr: bool = True) -> DeployContract:
    """The contract of a model built from ``cfg``, run at ``image_size`` (default: its own), with or without
    its super-resolution head: the only place a contract is made from a config."""
    from pbrforge.models import model_config

    m = model_config(cfg)
    size = image_size or m.image_size
    scale = getattr(m, "sr_scale", 1) if use_sr else 1
    native = m.output_size // m.image_size if use_sr else 1  # output side per input side
    return DeployContract(
        image_size=size,
        output_size=size * native,
        sr_scale=scale,
        family=cfg.family,
        model_name=cfg.name,
        model_hash=model_hash(cfg),
    )


def model_hash(cfg: TrainConfig) -> str:
    """A short fingerprint of the architecture: equal for every checkpoint of one model config."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(cfg.model, sort_keys=True).encode()).hexdigest()[:16]
