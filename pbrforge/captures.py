"""Capture models: where the camera and the lights are for each of a sample's three views.

One sampler serves datagen, the rendering loss and the re-render metric, so data, objective and score
all describe the same capture. A capture is recorded per sample in render_metadata.json.

* ``phone-flash`` (the default): a handheld phone. Each shot has its own camera, 0-30 degrees off
  vertical at a random azimuth (the first within 10 degrees of vertical), far enough that the sample fills
  a 40-70 degree field of view; the flash sits 0.5-2 cm beside the lens and moves with it, with an
  inverse-square and an optional cone falloff; the room light (an environment, turned at random and
  shared by the three shots) adds log-uniform 0.02-1.5x the flash's irradiance. Views are rectified to
  the sample plane, as handheld methods do with a homography.
* ``phone-ambient``: the same cameras, room light only.
* ``tripod``: the old rig: one camera straight down, a point light moved to three azimuths 120 degrees
  apart at 35-60 degrees elevation, no room light.

Units: the sample spans [-1, 1]^2 and is ``SAMPLE_SIDE_CM`` wide, so centimetres convert at
``CM_PER_UNIT``. Exposure follows a phone's auto-exposure: the flash's irradiance at the sample centre,
or the room's when there is no flash, is ``TARGET_IRRADIANCE`` times 0.8-1.2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pbrforge.environments import Environment, rotate_z
from pbrforge.render import DEFAULT_CAMERA, DEFAULT_LIGHT_POWER, render, render_environment, view_lights

CAPTURE_MODELS = ("phone-flash", "phone-ambient", "tripod")
DEFAULT_CAPTURES = {"phone-flash": 1.0}
SAMPLE_SIDE_CM = 16.0
CM_PER_UNIT = SAMPLE_SIDE_CM / 2
TARGET_IRRADIANCE = 1.8  # about what the tripod rig's light gives the centre
NUM_VIEWS = 3
# phone-flash / phone-ambient
FIELD_OF_VIEW_DEG = (40.0, 70.0)
TILT_DEG = (0.0, 30.0)
FIRST_TILT_DEG = (0.0, 10.0)
DISTANCE_JITTER = (0.9, 1.1)  # a hand does not hold one distance
FLASH_OFFSET_CM = (0.5, 2.0)
CONE_EXPONENT = (0.0, 2.0)
ROOM_WEIGHT = (0.02, 1.5)  # room irradiance / flash irradiance, log-uniform
EXPOSURE = (0.8, 1.2)
# tripod
TRIPOD_LIGHT_DISTANCE = 2.2
TRIPOD_ELEVATION_DEG = (35.0, 60.0)


@dataclass
class CaptureBatch:
    """Tensors of B captures of V views; ``environment`` directions are already turned, irradiance scaled.

    Attributes:
        eyes: (B, V, 3) camera positions.
        flash: (B, V, 3) point-light positions.
        flash_power: (B, V) radiant intensity (0: no flash).
        cone_exponent: (B, V).
        env_directions: (B, K, 3), or None without room light.
        env_irradiance: (B, K, 3), or None.
    """

    eyes: torch.Tensor
    flash: torch.Tensor
    flash_power: torch.Tensor
    cone_exponent: torch.Tensor
    env_directions: torch.Tensor | None = None
    env_irradiance: torch.Tensor | None = None


def parse_mix(text: str) -> dict[str, float]:
    """``"phone-flash:0.7,tripod:0.3"`` -> weights summing to 1; an unknown name or a bad weight raises."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in CAPTURE_MODELS:
            raise ValueError(f"unknown capture {name!r}; known: {', '.join(CAPTURE_MODELS)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"capture weight {weight!r} of {name} is not a number") from None
        if not math.isfinite(w) or w <= 0:
            raise ValueError(f"capture weight of {name} must be a finite number > 0, not {weight}")
        if name in out:
            raise ValueError(f"capture {name} is named twice")
        out[name] = w
    if not out:
        raise ValueError("no capture model given; known: " + ", ".join(CAPTURE_MODELS))
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def needs_environment(mix: Mapping[str, float]) -> bool:
    return any(m.startswith("phone") for m in mix)


def _camera_frame(eye: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A unit vector in the image plane of a camera at ``eye`` aimed at the origin, at a random angle."""
    axis = -eye / np.linalg.norm(eye)
    ref = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    right = np.cross(axis, ref)
    right /= np.linalg.norm(right)
    up = np.cross(right, axis)
    a = rng.uniform(0, 2 * math.pi)
    return math.cos(a) * right + math.sin(a) * up


def framing_distance(rng: np.random.Generator) -> float:
    """How far a phone is held for the sample to fill a field of view drawn from ``FIELD_OF_VIEW_DEG``."""
    fov = math.radians(rng.uniform(*FIELD_OF_VIEW_DEG))
    return 1 / math.tan(fov / 2)  # the sample's half-side fills half the frame


def phone_eye(first: bool, base: float, rng: np.random.Generator) -> np.ndarray:
    """One handheld shot's camera (3,): its own tilt (the first near vertical), azimuth and distance."""
    tilt = math.radians(rng.uniform(*(FIRST_TILT_DEG if first else TILT_DEG)))
    az = rng.uniform(0, 2 * math.pi)
    d = base * rng.uniform(*DISTANCE_JITTER)
    return d * np.array([math.sin(tilt) * math.cos(az), math.sin(tilt) * math.sin(az), math.cos(tilt)])


def draw_capture(
    model: str, rng: np.random.Generator, environments: Sequence[str] = (), views: int = NUM_VIEWS
) -> dict[str, Any]:
    """One capture of ``model`` as the JSON record render_metadata.json keeps.

    Args:
        model: one of ``CAPTURE_MODELS``.
        rng: the sample's own generator (the draw is deterministic for a seed).
        environments: names the room light is drawn from (needed by the phone models).
        views: shots in the capture (a data set has three; the rendering loss may take more).
    """
    if model == "tripod":
        az0 = rng.uniform(0, 2 * math.pi)
        elevation = rng.uniform(*TRIPOD_ELEVATION_DEG)
        lights = view_lights(az0, elevation, TRIPOD_LIGHT_DISTANCE, views, torch.float64).tolist()
        exposure = rng.uniform(*EXPOSURE)
        power = DEFAULT_LIGHT_POWER * exposure
        return _record(model, [list(DEFAULT_CAMERA)] * views, lights, [power] * views, 0.0, None, exposure)
    if model not in CAPTURE_MODELS:
        raise ValueError(f"unknown capture {model!r}; known: {', '.join(CAPTURE_MODELS)}")
    if not environments:
        raise ValueError(f"the {model} capture needs at least one environment for its room light")
    base = framing_distance(rng)
    exposure = rng.uniform(*EXPOSURE)
    flash = model == "phone-flash"
    cone = float(rng.uniform(*CONE_EXPONENT)) if flash else 0.0
    eyes, lights, powers = [], [], []
    for v in range(views):
        eye = phone_eye(v == 0, base, rng)
        light = eye + _camera_frame(eye, rng) * rng.uniform(*FLASH_OFFSET_CM) / CM_PER_UNIT
        eyes.append(eye.tolist())
        lights.append(light.tolist())
        # auto-exposure: the flash gives the centre E = P cos / d^2 = TARGET_IRRADIANCE x exposure
        dist = float(np.linalg.norm(light))
        powers.append(TARGET_IRRADIANCE * exposure * dist**3 / light[2])
    env_name = environments[int(rng.integers(len(environments)))]
    rotation = float(rng.uniform(0, 2 * math.pi))
    weight = 1.0
    if flash:
        weight = float(math.exp(rng.uniform(math.log(ROOM_WEIGHT[0]), math.log(ROOM_WEIGHT[1]))))
    else:
        powers = [0.0] * views
    env = {"id": env_name, "rotation": round(rotation, 6), "weight": round(weight, 6)}
    return _record(model, eyes, lights, powers, cone, env, exposure)


def _record(model, eyes, lights, powers, cone, env, exposure) -> dict[str, Any]:
    r6 = lambda v: [round(float(x), 6) for x in v]  # noqa: E731 - JSON stays readable
    return {
        "model": model,
        "eyes": [r6(e) for e in eyes],
        "lights": [r6(li) for li in lights],
        "light_power": r6(powers),
        "cone_exponent": round(float(cone), 6),
        "exposure": round(float(exposure), 6),
        "environment": env,
    }


def tripod_record(lights: Sequence[Sequence[float]], light_power: float, camera: Sequence[float]) -> dict:
    """The capture record of a format-1 sample (one camera, one light power)."""
    exposure = light_power / DEFAULT_LIGHT_POWER
    return _record(
        "tripod", [list(camera)] * len(lights), lights, [light_power] * len(lights), 0.0, None, exposure
    )


def batch_captures(
    records: Sequence[Mapping[str, Any]],
    environments: Mapping[str, Environment],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> CaptureBatch:
    """Stack capture records into tensors, turning and scaling each record's environment."""
    t = lambda x: torch.tensor(np.asarray(x, dtype=np.float64), device=device, dtype=dtype)  # noqa: E731
    eyes = t([r["eyes"] for r in records])
    flash = t([r["lights"] for r in records])
    power = t([r["light_power"] for r in records])
    cone = t([[r["cone_exponent"]] * len(r["eyes"]) for r in records])
    with_env = [r for r in records if r.get("environment")]
    if not with_env:
        return CaptureBatch(eyes, flash, power, cone)
    k = max(len(environments[r["environment"]["id"]].directions) for r in with_env)
    dirs = np.zeros((len(records), k, 3))
    dirs[..., 2] = 1
    rgb = np.zeros((len(records), k, 3))
    for i, r in enumerate(records):
        use = r.get("environment")
        if not use:
            continue
        env = environments[use["id"]]
        n = len(env.directions)
        dirs[i, :n] = rotate_z(env.directions, use["rotation"])
        # the room is ``weight`` times the flash's irradiance, under the same auto-exposure
        rgb[i, :n] = env.irradiance * use["weight"] * TARGET_IRRADIANCE * r["exposure"]
    return CaptureBatch(eyes, flash, power, cone, t(dirs), t(rgb))


def render_capture(maps: torch.Tensor, capture: CaptureBatch) -> torch.Tensor:
    """Linear radiance (B, V, 3, H, W) of contract maps (B, 8, H, W): flash plus room light, each view."""
    out = render(maps, capture.flash, capture.flash_power, capture.eyes, capture.cone_exponent)
    if capture.env_directions is not None and capture.env_irradiance is not None:
        out = out + render_environment(maps, capture.env_directions, capture.env_irradiance, capture.eyes)
    return out


def random_captures(
    batch: int,
    model: str,
    generator: torch.Generator | None,
    environments: Mapping[str, Environment],
    views: int = NUM_VIEWS,
    device: torch.device | None = None,
) -> CaptureBatch:
    """``batch`` captures of ``model`` drawn from a torch generator (the rendering loss's shots)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    names = sorted(environments)
    records = [draw_capture(model, rng, names, views) for _ in range(batch)]
    return batch_captures(records, environments, device)
