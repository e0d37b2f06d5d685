"""Schemas of every file the project reads, checked with pydantic v2 at the boundary.

pydantic because it checks nested JSON and plain Python data in one strict pass (no silent str -> int
casts, no NaN, unknown keys refused), accepts our stdlib dataclasses as they are (``DeployContract``), and
reports where a value is wrong, which becomes the one sentence the user reads. A failed check is always a
``DataError``; nothing else escapes a loader.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pbrforge.errors import DataError
from pbrforge.options import MAX_SIDE

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
SHA256 = r"^[0-9a-f]{64}$"


def check(schema: Any, data: Any, where: str) -> Any:
    """``data`` validated against ``schema`` (a model class or a type), or a DataError naming the first fault.

    Data read from JSON is checked as JSON (``strict`` then takes objects for dataclasses, as it should).
    """
    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(data)
        if isinstance(data, dict | list):
            return TypeAdapter(schema).validate_json(json.dumps(data, allow_nan=False))
        return TypeAdapter(schema).validate_python(data)
    except (ValueError, TypeError) as e:  # ValidationError is a ValueError; json.dumps refuses inf from 1e400
        if not isinstance(e, ValidationError):
            raise DataError(f"{where}: holds a number JSON cannot carry ({e})") from e
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "top level"
        value = repr(err.get("input"))[:60]
        raise DataError(f"{where}: {loc}: {err['msg'].rstrip('.')} (got {value})") from e


# --------------------------------------------------------------------------- render_metadata.json


Vector3 = list[float]


class EnvironmentUse(BaseModel):
    """The room light of one capture: which environment, turned how far about +z, how strong."""

    model_config = STRICT
    id: str
    rotation: float
    weight: float = Field(gt=0)  # phone-flash: room / flash irradiance; phone-ambient: 1


class CaptureMeta(BaseModel):
    """Where camera and lights were for each view (``pbrforge.captures``)."""

    model_config = STRICT
    model: Literal["phone-flash", "phone-ambient", "tripod"]
    eyes: list[Vector3] = Field(min_length=1)
    lights: list[Vector3] = Field(min_length=1)
    light_power: list[float] = Field(min_length=1)
    cone_exponent: float = Field(ge=0, le=64)
    exposure: float = Field(gt=0)
    environment: EnvironmentUse | None


class SampleMeta(BaseModel):
    model_config = STRICT
    material: str
    sources: list[Literal["clean", "dirty"]] = Field(min_length=1, max_length=2)
    capture: CaptureMeta | None = None  # format 2
    lights: list[list[float]] | None = Field(default=None, min_length=1)  # format 1: the tripod's lights
    light_power: float | None = Field(default=None, gt=0)  # format 1


class EnvironmentMeta(BaseModel):
    """An environment map cut into distant lights, rows ``dx, dy, dz, r, g, b`` (``pbrforge.environments``)."""

    model_config = STRICT
    source: str
    lights: list[list[float]] = Field(min_length=1, max_length=1024)


class MaterialOrigin(BaseModel):
    """Where an imported material came from and how its crop was taken (datagen --materials)."""

    model_config = STRICT
    library: Literal["ambientcg", "polyhaven", "matsynth", "gltf", "photo"]
    material_id: str
    root: str
    files: dict[str, str]
    crop: list[int] = Field(min_length=3, max_length=3)  # x0, y0, side in source texels
    scale: float = Field(gt=0)  # source texels per output pixel
    rotation: Literal[0, 90, 180, 270]  # counter-clockwise, after the mirror
    mirror: bool
    normal: str  # the source normal map's convention and how it was known
    notes: list[str] = Field(default_factory=list)
    info: dict[str, str | float] = Field(default_factory=dict)  # e.g. MatSynth's category and physical size


class MaterialMeta(BaseModel):
    model_config = STRICT
    family: str
    seed: int
    group: str | None = None  # split unit: crops of one texture set share it
    origin: MaterialOrigin | None = None


class ImportSummary(BaseModel):
    model_config = STRICT
    found: int = Field(ge=0)
    used: int = Field(ge=0)
    skipped: list[dict[str, str]]


class RenderMetadata(BaseModel):
    model_config = STRICT
    format_version: Literal[1, 2]
    generator: str
    seed: int
    size: int = Field(ge=8, le=MAX_SIDE)
    count: int = Field(ge=1)
    dirty_ratio: float = Field(ge=0, le=1)
    camera: list[float] = Field(min_length=3, max_length=3)
    light_power: float = Field(gt=0)
    light_distance: float = Field(gt=0)
    samples: dict[str, SampleMeta]
    materials: dict[str, MaterialMeta]
    imports: ImportSummary | None = None
    captures: dict[str, float] | None = None  # format 2: the capture mix asked for
    environments: dict[str, EnvironmentMeta] = Field(default_factory=dict)  # format 2


# --------------------------------------------------------------------------- shard manifest.json


class TeacherRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    checkpoint: str
    sha256: str = Field(pattern=SHA256)
    config: dict[str, Any]


class ShardRecord(BaseModel):
    model_config = STRICT
    sha256: str = Field(pattern=SHA256)
    bytes: int = Field(ge=1)
    rows: int = Field(ge=1)
    entries: list[list[str]]
    fingerprints: list[str]


class ManifestEntry(BaseModel):
    model_config = STRICT
    sample_id: str
    source: Literal["clean", "dirty"]
    shard: str = Field(pattern=r"^shard_\d{5}\.safetensors$")
    row: int = Field(ge=0)
    fingerprint: str = Field(pattern=SHA256)


class Manifest(BaseModel):
    model_config = STRICT
    format_version: Literal[2]
    teacher: TeacherRecord
    channels: list[str]
    output_size: int = Field(ge=8, le=MAX_SIDE)
    dtype: Literal["float16"]
    curriculum: int = Field(ge=0, le=2)
    shard_size: int = Field(ge=1)
    data_root: str
    entries: list[ManifestEntry] = Field(min_length=1)
    shards: dict[str, ShardRecord]


# --------------------------------------------------------------------------- checkpoints


class CheckpointHead(BaseModel):
    """The part of a checkpoint every reader relies on; trainer state beside it is checked on resume."""

    model_config = ConfigDict(extra="allow", strict=True, arbitrary_types_allowed=True)
    format: str
    family: str
    config: dict[str, Any]
    model: dict[str, Any] = Field(min_length=1)
    ema: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- palettization recipe


class PaletteRecipe(BaseModel):
    """``OUTPUT.recipe.json`` of a mixed-bit palettization: bits per weight (16 = left in FP16)."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: Literal["pbrforge-palettization-recipe-1"]
    budget_db: float = Field(ge=0, le=200)
    layers: dict[str, Literal[4, 6, 8, 16]] = Field(min_length=1)
