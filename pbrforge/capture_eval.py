"""Scoring predicted maps against a real capture: flash photos of a flat sample, re-rendered at each flash.

The layout is the one MaterialGAN (Guo et al. 2020) published its real captures in, so those captures and
ours (``datagen --export-capture``) are read alike:

* ``NN.png``: N >= 4 rectified, square photos of the planar sample, numbered from 00 without gaps; row 0
  is the sample's +y edge, as in the renderer.
* ``camera_pos.txt``: one ``x,y,z`` (commas or spaces) per photo, in cm, origin at the sample's centre,
  z along its normal; the flash sits at the camera (a phone's flash is about 1 cm from its lens).
* ``image_size.txt``: the side of the sample in cm (world units = cm * 2 / side: the sample spans [-1, 1]^2).

Protocol. A model sees three input photos; every other photo is held out and scored. Each method's maps
(the model's, a flat material made of the inputs' mean colour, and the refined maps) are rendered with the
shared renderer at every photo's flash with power 1; the photos' exposure and the flash's power are unknown,
so ONE gain per method scales its renders. The gain is fitted by least squares in linear RGB on the INPUT
photos only (their unclipped pixels), never on the photos it is scored on. Scores are RMSE and SSIM of the
tone-mapped render against the photo in sRGB [0, 1].

Resolution: renders are made at the photos' side (capped at ``MAX_SCORE_SIDE``; larger photos are scaled
down to it, antialiased). The maps are resized to that side (bilinear, normals renormalised), so a model is
judged at the detail the photos hold, whatever its output size.

Refinement (``refine``) optimises the maps against the input photos only, with leave-one-input-out early
stopping; it returns its starting maps when no step improved the left-out input.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from pbrforge.captures import batch_captures, render_capture
from pbrforge.contract import NUM_VIEWS, pack, resize_maps, unpack, validate, write_material
from pbrforge.errors import DataError
from pbrforge.fileio import atomic_path, check_output_dir, exclusive, write_json
from pbrforge.losses import LOG_EPS
from pbrforge.render import linear_to_srgb, srgb_to_linear, to_display
from pbrforge.views import image_to_float, resize_view

_logger = logging.getLogger(__name__)

PHOTO_NAME = re.compile(r"^(\d{1,4})\.png$", re.IGNORECASE)
CAMERAS_FILE = "camera_pos.txt"
SIDE_FILE = "image_size.txt"
MIN_PHOTOS = NUM_VIEWS + 1  # three inputs and at least one photo to score
MAX_PHOTOS = 64
MIN_PHOTO_SIDE = 16  # SSIM's 11-pixel window needs room
MAX_SCORE_SIDE = 512  # renders and refinement at most this side: 9 views at 512 px render in about a second
MAX_TEXT_BYTES = 1 << 16  # camera_pos.txt of 64 cameras is a few kB
MAX_CAMERA_CM = 1000.0  # a flash 10 m away lights nothing; a larger number is a unit mistake
MAX_SIDE_CM = 1000.0
CLIPPED = 250 / 255  # a photo pixel this bright in any channel may be clipped: left out of every fit
FLAT_ROUGHNESS = 0.5
PANELS = ("photo", "model", "flat", "refined")

Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Predictor:
    """A model as the evaluation sees it: the side it takes, and maps for three photos.

    ``run`` takes (3, 3, s, s) sRGB photos in [0, 1] at ``input_size`` and returns (8, S, S) contract maps.
    """

    name: str
    input_size: int
    run: Predict


def fixed_maps(maps: torch.Tensor, name: str = "given maps") -> Predictor:
    """A predictor that ignores the photos and returns ``maps``: scoring known maps, or a baseline."""
    return Predictor(name, maps.shape[-1], lambda views: maps)


@dataclass
class Capture:
    """A capture folder read and checked: photos at the scoring side, cameras in cm and in world units."""

    folder: Path
    paths: list[Path]
    photos: torch.Tensor  # (N, 3, S, S) sRGB in [0, 1] at the scoring side
    cameras_cm: np.ndarray  # (N, 3)
    side_cm: float
    photo_side: int  # the files' own side in pixels

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self.paths]

    @property
    def eyes(self) -> torch.Tensor:
        """(N, 3) camera (and flash) positions in world units: the sample spans [-1, 1]^2."""
        return torch.from_numpy(self.cameras_cm * 2 / self.side_cm).float()

    def records(self) -> list[dict[str, Any]]:
        """One capture record per photo (``captures.batch_captures``): the flash at the camera, power 1."""
        return [flash_record(eye) for eye in self.eyes.tolist()]

    def index(self, number: int) -> int:
        """The position of photo ``number`` (``03.png`` is 3), or one sentence naming the photos there are."""
        if not 0 <= number < len(self.paths):  # photos are numbered from 0 without gaps (find_photos)
            raise DataError(
                f"--inputs names photo {number:02d}, but {self.folder} holds photos "
                f"{self.names[0]}..{self.names[-1]}"
            )
        return number


def flash_record(eye: Sequence[float]) -> dict[str, Any]:
    """A one-view capture record of a co-located flash: eye = light, power 1, no cone, no room light."""
    xyz = [float(v) for v in eye]
    return {
        "model": "phone-flash",
        "eyes": [xyz],
        "lights": [xyz],
        "light_power": [1.0],
        "cone_exponent": 0.0,
        "exposure": 1.0,
        "environment": None,
    }


# --------------------------------------------------------------------------- reading the layout


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"missing {path}" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()[: MAX_TEXT_BYTES + 1]
    if len(data) > MAX_TEXT_BYTES:
        raise DataError(f"{path} is larger than {MAX_TEXT_BYTES // 1024} kB; it should hold a few numbers")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 text file") from None


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {text[:40]!r} is not a finite number")
    return value


def read_side_cm(folder: Path) -> float:
    """The sample's side in cm from ``image_size.txt``: one finite number, 0 < side <= ``MAX_SIDE_CM``."""
    path = Path(folder) / SIDE_FILE
    words = _read_text(path).split()
    if len(words) != 1:
        raise DataError(f"{path} must hold one number, the sample's side in cm, not {len(words)} values")
    side = _number(words[0], str(path))
    if not 0 < side <= MAX_SIDE_CM:
        raise DataError(
            f"{path} gives a side of {side:g} cm; it must be more than 0 and at most {MAX_SIDE_CM:g}"
        )
    return side


def read_cameras_cm(folder: Path) -> np.ndarray:
    """(N, 3) camera positions in cm from ``camera_pos.txt``: commas or spaces; blank lines, # comments skipped."""
    path = Path(folder) / CAMERAS_FILE
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = [w for w in re.split(r"[,\s]+", line) if w]
        if len(words) != 3:
            raise DataError(f"line {n} of {path} has {len(words)} values; each camera is x,y,z in cm")
        xyz = [_number(w, f"line {n} of {path}") for w in words]
        if xyz[2] <= 0:
            raise DataError(
                f"line {n} of {path} puts the camera at z = {xyz[2]:g} cm; it must be above the sample (z > 0)"
            )
        if max(abs(v) for v in xyz) > MAX_CAMERA_CM:
            raise DataError(
                f"line {n} of {path} puts the camera {max(abs(v) for v in xyz):g} cm away; "
                f"more than {MAX_CAMERA_CM:g} cm is not a close-up capture (are the units cm?)"
            )
        rows.append(xyz)
    if not rows:
        raise DataError(f"{path} lists no camera")
    return np.asarray(rows, dtype=np.float64)


def find_photos(folder: Path) -> list[Path]:
    """The photos ``NN.png`` in number order, numbered 0..N-1 without gaps or repeats."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"capture folder {folder} does not exist")
    numbered: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = PHOTO_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        k = int(m[1])
        if k in numbered:
            raise DataError(f"{folder} holds both {numbered[k].name} and {p.name}: two photos numbered {k}")
        numbered[k] = p
    if len(numbered) < MIN_PHOTOS:
        raise DataError(
            f"{folder} holds {len(numbered)} photo(s) named like 00.png; a capture needs at least {MIN_PHOTOS} "
            f"({NUM_VIEWS} inputs and one to score)"
        )
    if len(numbered) > MAX_PHOTOS:
        raise DataError(f"{folder} holds {len(numbered)} photos; at most {MAX_PHOTOS} are scored")
    missing = next((k for k in range(len(numbered)) if k not in numbered), None)
    if missing is not None:
        raise DataError(
            f"{folder}: photo {missing:02d}.png is missing; photos are numbered from 00 without gaps"
        )
    return [numbered[k] for k in range(len(numbered))]


def read_capture(folder: Path, max_side: int = MAX_SCORE_SIDE) -> Capture:
    """Read and check a capture folder (each refusal one DataError sentence); photos kept at <= ``max_side``."""
    folder = Path(folder)
    paths = find_photos(folder)
    cameras = read_cameras_cm(folder)
    if len(cameras) != len(paths):
        raise DataError(
            f"{folder / CAMERAS_FILE} lists {len(cameras)} camera(s) for {len(paths)} photos; give one per photo"
        )
    side_cm = read_side_cm(folder)
    photos, native = [], 0
    for p in paths:
        x = image_to_float(p)  # (3, H, W) in [0, 1]; any mode, one sentence for a corrupt file
        h, w = x.shape[-2:]
        if h != w:
            raise DataError(f"{p} is {w}x{h}; photos of a capture are rectified to the square sample")
        if h < MIN_PHOTO_SIDE:
            raise DataError(f"{p} is {w}x{h}; photos must be at least {MIN_PHOTO_SIDE} px a side")
        native = native or h
        if h != native:
            raise DataError(
                f"{p} is {w}x{h} but {paths[0].name} is {native}x{native}; photos must share one size"
            )
        photos.append(resize_view(x, min(native, max_side)))
    return Capture(folder, paths, torch.stack(photos), cameras, side_cm, native)


def parse_inputs(text: str) -> tuple[int, ...]:
    """``"00,03,04"`` -> (0, 3, 4): three distinct photo numbers."""
    words = [w.strip() for w in str(text).split(",") if w.strip()]
    if not all(w.isdigit() and len(w) <= 4 for w in words):
        raise DataError(f"--inputs {text!r} is not a list of photo numbers such as 00,03,04")
    numbers = tuple(int(w) for w in words)
    if len(numbers) != NUM_VIEWS or len(set(numbers)) != NUM_VIEWS:
        raise DataError(
            f"--inputs needs {NUM_VIEWS} different photo numbers (the model takes three views), got {text!r}"
        )
    return numbers


# --------------------------------------------------------------------------- rendering and scoring


def render_photos(maps: torch.Tensor, eyes: torch.Tensor) -> torch.Tensor:
    """Linear radiance (V, 3, S, S) of (8, S, S) maps under a flash of power 1 at each eye (V, 3), eye = light."""
    capture = batch_captures([flash_record(e) for e in eyes.tolist()], {}, maps.device, maps.dtype)
    return render_capture(maps[None], capture)[:, 0]  # (V, 1, 3, S, S): maps broadcast over the V rows


def unclipped(photos: torch.Tensor) -> torch.Tensor:
    """(V, 1, S, S) mask of pixels below ``CLIPPED`` in every channel: those whose value a fit may trust."""
    return (photos.amax(dim=-3, keepdim=True) < CLIPPED).to(photos.dtype)


def fit_gain(radiance: torch.Tensor, photos: torch.Tensor) -> float:
    """The one scale g minimising sum (g r - p)^2 in linear RGB over the photos' unclipped pixels."""
    mask = unclipped(photos)
    if float(mask.sum()) == 0:
        raise DataError(
            "every pixel of the input photos is clipped (white), so their exposure cannot be fitted"
        )
    target = srgb_to_linear(photos)
    num = float((mask * radiance * target).sum())
    den = float((mask * radiance * radiance).sum())
    return num / den if den > 0 else 0.0


@dataclass
class MethodScore:
    """One method's gain and its scores on each held-out photo (keyed by photo name)."""

    gain: float
    rmse: dict[str, float]
    ssim: dict[str, float]
    renders: dict[str, torch.Tensor] = field(repr=False)  # (3, S, S) sRGB, for the comparison PNGs

    @property
    def mean_rmse(self) -> float:
        return float(np.mean(list(self.rmse.values())))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(list(self.ssim.values())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "gain": self.gain,
            "per_photo": {k: {"rmse": self.rmse[k], "ssim": self.ssim[k]} for k in self.rmse},
            "mean": {"rmse": self.mean_rmse, "ssim": self.mean_ssim},
        }


@torch.no_grad()
def score_maps(capture: Capture, maps: torch.Tensor, inputs: Sequence[int]) -> MethodScore:
    """Render ``maps`` at every photo's flash, fit one gain on the ``inputs`` (positions), score the rest."""
    side = capture.photos.shape[-1]
    maps = resize_maps(maps.float(), side)
    eyes = capture.eyes
    gain = fit_gain(render_photos(maps, eyes[list(inputs)]), capture.photos[list(inputs)])
    out = MethodScore(gain, {}, {}, {})
    for i, name in enumerate(capture.names):
        if i in inputs:
            continue
        shown = to_display(
            render_photos(maps, eyes[i : i + 1]) * gain
        )  # one view at a time: memory stays small
        photo = capture.photos[i : i + 1]
        out.rmse[name] = float((shown - photo).pow(2).mean().sqrt())
        out.ssim[name] = float(cast(torch.Tensor, ssim(shown, photo, data_range=1.0)))
        out.renders[name] = shown[0]
    return out


def flat_material(photos: torch.Tensor, side: int) -> torch.Tensor:
    """The floor a model must beat: the photos' mean colour, roughness 0.5, not metal, flat: (8, S, S)."""
    mean = linear_to_srgb(srgb_to_linear(photos).mean(dim=(0, 2, 3)))  # (3,) averaged in linear light
    ones = torch.ones(1, side, side)
    return pack(
        {
            "albedo": mean[:, None, None] * ones,
            "roughness": FLAT_ROUGHNESS * ones,
            "metallic": 0 * ones,
            "normal": torch.cat([0 * ones, 0 * ones, ones]),
        }
    )


# --------------------------------------------------------------------------- test-time refinement


@dataclass(frozen=True)
class RefineSettings:
    """Adam on unconstrained maps against two input photos; the third input stops it early.

    Attributes:
        steps: most optimiser steps.
        lr: Adam's step on the logits and the normal's slopes.
        prior_weight: weight of the mean squared distance to the starting maps (contract units).
        patience: stop after this many steps without a better score on the left-out input.
        validate_on: which of the three inputs (0, 1, 2) is left out for early stopping.
    """

    steps: int
    lr: float = 0.02
    prior_weight: float = 0.1
    patience: int = 50
    validate_on: int = NUM_VIEWS - 1


@dataclass
class Refinement:
    """The refined maps and how the left-out input scored (sRGB RMSE) at the start and at the kept step."""

    maps: torch.Tensor
    validate_on: int  # position among the inputs
    start_rmse: float
    best_rmse: float
    best_step: int  # 0: no step improved, the starting maps are returned unchanged
    steps_run: int

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "validated_on": names[self.validate_on],
            "validation_rmse_start": self.start_rmse,
            "validation_rmse_best": self.best_rmse,
            "best_step": self.best_step,
            "steps_run": self.steps_run,
        }


LOGIT_EPS = 0.01  # a map at exactly 0 or 1 starts at logit -/+4.6, where Adam can still move it
MIN_NORMAL_Z = 0.1  # normals are parametrised by their slopes x/z, y/z: z > 0 always


def _to_params(maps: torch.Tensor) -> list[torch.Tensor]:
    parts = unpack(maps)
    logit = lambda x: torch.logit(x.clamp(LOGIT_EPS, 1 - LOGIT_EPS))  # noqa: E731
    n = parts["normal"]
    slopes = n[:2] / n[2:].clamp_min(MIN_NORMAL_Z)
    return [
        t.clone().requires_grad_(True)
        for t in (logit(parts["albedo"]), logit(parts["roughness"]), logit(parts["metallic"]), slopes)
    ]


def _from_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    albedo, rough, metal, slopes = params
    normal = F.normalize(torch.cat([slopes, torch.ones_like(slopes[:1])]), dim=0)
    return pack(
        {
            "albedo": albedo.sigmoid(),
            "roughness": rough.sigmoid(),
            "metallic": metal.sigmoid(),
            "normal": normal,
        }
    )


def _log_l1(radiance: torch.Tensor, target_linear: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    d = (torch.log(radiance + LOG_EPS) - torch.log(target_linear + LOG_EPS)).abs()
    return (d * mask).sum() / (mask.sum() * 3).clamp_min(1)


def refine(
    maps: torch.Tensor, photos: torch.Tensor, eyes: torch.Tensor, settings: RefineSettings
) -> Refinement:
    """Fit (8, S, S) maps to three input photos (3, 3, S, S) taken at ``eyes`` (3, 3), keeping the best step.

    Two photos drive the fit (log-space L1 of the gained render, like the rendering loss, plus a pull toward
    the starting maps); the third, never fitted, scores every step in sRGB RMSE with the gain fitted on the
    two. The maps of the best-scoring step are returned, or the starting maps themselves when none beat them.
    """
    if photos.shape[0] != NUM_VIEWS or not 0 <= settings.validate_on < NUM_VIEWS:
        raise ValueError(f"refine takes {NUM_VIEWS} input photos and a validate_on in 0..{NUM_VIEWS - 1}")
    side = photos.shape[-1]
    start = resize_maps(maps.detach().float(), side)
    fit = [i for i in range(NUM_VIEWS) if i != settings.validate_on]
    fit_eyes, fit_photos = eyes[fit], photos[fit]
    val_eye, val_photo = eyes[settings.validate_on : settings.validate_on + 1], photos[[settings.validate_on]]
    target, mask = srgb_to_linear(fit_photos), unclipped(fit_photos)

    @torch.no_grad()
    def validation_rmse(m: torch.Tensor) -> float:
        gain = fit_gain(render_photos(m, fit_eyes), fit_photos)
        shown = to_display(render_photos(m, val_eye) * gain)
        return float((shown - val_photo).pow(2).mean().sqrt())

    start_rmse = validation_rmse(start)
    best_rmse, best_maps, best_step = start_rmse, start, 0
    params = _to_params(start)
    optim = torch.optim.Adam(params, lr=settings.lr)
    step = 0
    for step in range(1, settings.steps + 1):
        current = _from_params(params)
        radiance = render_photos(current, fit_eyes)  # (2, 3, S, S)
        gain = fit_gain(radiance.detach(), fit_photos)  # the exposure, refitted each step in closed form
        loss = (
            _log_l1(radiance * gain, target, mask) + settings.prior_weight * (current - start).pow(2).mean()
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        with torch.no_grad():
            stepped = _from_params(params)
        score = validation_rmse(stepped)
        if score < best_rmse:
            best_rmse, best_maps, best_step = score, stepped, step
        elif step - best_step >= settings.patience:
            break
    _logger.debug(f"refinement: left-out input RMSE {start_rmse:.4f} -> {best_rmse:.4f} at step {best_step}")
    return Refinement(best_maps, settings.validate_on, start_rmse, best_rmse, best_step, step)


# --------------------------------------------------------------------------- the whole evaluation


@dataclass
class CaptureEvaluation:
    """Everything one evaluation found: per method scores, the inputs, the refinement if asked for."""

    capture: Capture
    inputs: tuple[int, ...]  # positions of the input photos
    model_name: str
    methods: dict[str, MethodScore]  # "model", "flat", and "refined" when refined
    refinement: Refinement | None = None

    @property
    def held_out(self) -> list[str]:
        return [n for i, n in enumerate(self.capture.names) if i not in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        names = self.capture.names
        return {
            "capture": str(self.capture.folder),
            "model": self.model_name,
            "photos": len(names),
            "photo_side_px": self.capture.photo_side,
            "score_side_px": int(self.capture.photos.shape[-1]),
            "sample_side_cm": self.capture.side_cm,
            "inputs": [names[i] for i in self.inputs],
            "held_out": self.held_out,
            "gain_fit": "one scale per method: least squares in linear RGB, input photos' unclipped pixels",
            "metrics": "RMSE and SSIM of the tone-mapped render against the photo, sRGB in [0, 1]",
            "methods": {k: v.to_dict() for k, v in self.methods.items()},
            "refinement": None
            if self.refinement is None
            else self.refinement.to_dict([names[i] for i in self.inputs]),
            "comparison_panels": [p for p in PANELS if p == "photo" or p in self.methods],
        }

    def table(self) -> str:
        """RMSE and SSIM per held-out photo and their mean, one column pair per method."""
        cols = list(self.methods)
        head = f"{'held-out':<10}" + "".join(f" {c + ' RMSE':>14} {c + ' SSIM':>14}" for c in cols)
        rows = [head]
        for name in self.held_out:
            rows.append(
                f"{name:<10}"
                + "".join(
                    f" {self.methods[c].rmse[name]:14.4f} {self.methods[c].ssim[name]:14.4f}" for c in cols
                )
            )
        rows.append(
            f"{'mean':<10}"
            + "".join(f" {self.methods[c].mean_rmse:14.4f} {self.methods[c].mean_ssim:14.4f}" for c in cols)
        )
        names = self.capture.names
        rows.append(
            f"inputs {', '.join(names[i] for i in self.inputs)}; gains (fitted on the inputs): "
            + ", ".join(f"{c} {self.methods[c].gain:.4g}" for c in cols)
        )
        if self.refinement is not None:
            r = self.refinement
            rows.append(
                f"refinement, left-out input {names[self.inputs[r.validate_on]]}: RMSE {r.start_rmse:.4f} -> "
                f"{r.best_rmse:.4f} (kept step {r.best_step} of {r.steps_run} run)"
            )
        return "\n".join(rows)


def evaluate_capture(
    capture: Capture | Path,
    inputs: Sequence[int],
    predictor: Predictor,
    output: Path,
    refine_steps: int = 0,
    settings: RefineSettings | None = None,
) -> CaptureEvaluation:
    """Predict maps from three photos of a capture, score every other photo, write the report and comparisons.

    Args:
        capture: a capture folder in MaterialGAN's layout (module docstring), or one already read.
        inputs: the three input photos by number (as in ``03.png``), in the order the model takes them.
        predictor: the model (``Predictor``); its maps are checked against the contract.
        output: folder for ``evaluation.json``, ``compare_NN.png`` per held-out photo (photo, model, flat,
            refined), and the maps (``maps/``, ``refined/``).
        refine_steps: 0 for none; else the most steps of ``refine`` (``settings`` for the rest).
    """
    check_output_dir(output, "--output")
    if not isinstance(capture, Capture):
        capture = read_capture(capture)
    positions = tuple(capture.index(n) for n in inputs)
    if len(positions) != NUM_VIEWS or len(set(positions)) != NUM_VIEWS:
        raise DataError(f"--inputs needs {NUM_VIEWS} different photos, got {list(inputs)}")
    views = torch.stack(
        [resize_view(image_to_float(capture.paths[i]), predictor.input_size) for i in positions]
    )
    maps = predictor.run(views).detach().float()
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    validate(maps, f"the maps {predictor.name} predicted")
    side = capture.photos.shape[-1]
    input_photos = capture.photos[list(positions)]
    methods = {
        "model": score_maps(capture, maps, positions),
        "flat": score_maps(capture, flat_material(input_photos, side), positions),
    }
    refinement = None
    if refine_steps > 0:
        chosen = replace(settings or RefineSettings(refine_steps), steps=refine_steps)
        refinement = refine(maps, input_photos, capture.eyes[list(positions)], chosen)
        methods["refined"] = score_maps(capture, refinement.maps, positions)
    result = CaptureEvaluation(capture, positions, predictor.name, methods, refinement)
    with exclusive(output):
        write_material(Path(output) / "maps", maps)
        if refinement is not None:
            write_material(Path(output) / "refined", refinement.maps)
        for i, name in enumerate(capture.names):
            if i not in positions:
                _write_comparison(Path(output) / f"compare_{name}.png", capture.photos[i], methods, name)
        write_json(Path(output) / "evaluation.json", result.to_dict())
    _logger.info(f"{predictor.name} on {capture.folder}: wrote {output / 'evaluation.json'}")
    return result


def _write_comparison(path: Path, photo: torch.Tensor, methods: dict[str, MethodScore], name: str) -> None:
    """The photo beside each method's render of it, left to right in ``PANELS`` order."""
    tiles = [photo] + [methods[m].renders[name] for m in PANELS[1:] if m in methods]
    row = torch.cat(tiles, dim=-1).clamp(0, 1).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(row * 255).astype(np.uint8), "RGB").save(tmp, format="PNG")
