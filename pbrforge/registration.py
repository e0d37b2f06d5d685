"""Registering three handheld photos of a planar sample so their pixels line up on the surface.

The model reads three views whose pixels sample the same points of the sample plane. Phone photos do not:
each is taken from its own place. This module finds one homography per view and resamples every view into
one common square, view 1 (index 0) being the reference. Methods:

* ``features`` (the default): SIFT matches, a robust homography of each view onto view 1, optionally
  refined by ECC, then the largest axis-aligned square inside all three footprints, at view 1's resolution.
* ``corners``: the four sample corners of each view (top-left, top-right, bottom-right, bottom-left) are
  given; each quadrilateral is rectified to an S x S square, S the mean side of view 1's quadrilateral.
* ``markers``: the board drawn by ``marker_sheet``: four ArUco markers (``DICT_4X4_50``), ids 0, 1, 2, 3 at
  the top-left, top-right, bottom-right and bottom-left of the sample window, printed upright. Each marker
  touches the window at one of its own corners, the one nearest the window's centre, and that corner is the
  sample's corner (id 0's bottom-right, id 1's bottom-left, id 2's top-left, id 3's top-right). The corners
  found are then used as in ``corners``. Whatever the photo's rotation, a marker's corners come back in the
  marker's own order, so the convention holds for a turned sheet too.
* ``none``: the views are rectified already; each is centre-cropped to a square (and resized to view 1's).

Conventions: pixel coordinates are OpenCV's, ``(x, y)`` with pixel centres at integers. Every homography
maps a view's ORIGINAL pixel coordinates to output-square pixel coordinates. Corners are geometric points,
so a sample's corners land on the square's outer edges, ``(-0.5, -0.5)`` to ``(S - 0.5, S - 0.5)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pbrforge.errors import DataError
from pbrforge.fileio import atomic_path, read_json
from pbrforge.options import ALIGN_METHODS

CORNER_NAMES = ("top-left", "top-right", "bottom-right", "bottom-left")

MAX_SIDE = 4096  # output square side cap: the model reads far less, and 4096^2 x 3 float32 is already 200 MB
MIN_SIDE = 32  # a sample fewer pixels across than this holds nothing a model can read
ANALYSIS_SIDE = 1600  # SIFT and ECC run on copies no larger: 12 MP SIFT takes seconds, ECC recovers precision
MAX_FEATURES = 4000  # strongest SIFT keypoints kept: plenty for 8 unknowns, and matching stays under a second
LOWE_RATIO = 0.75  # Lowe's ratio test: a match must beat the second-best by this factor to count
RANSAC_PX = 3.0  # inlier threshold in reference pixels: sub-pixel keypoints plus a little lens distortion
MIN_INLIERS = 25  # below this a homography (8 unknowns) is not pinned down; unrelated photos score ~0-10
MAX_CONDITION = 3.0  # local stretch anisotropy: 3:1 is ~70 degrees of relative tilt, the view is smeared
MAX_CORNER_SHIFT = 0.35  # of the side: handheld re-framing moves view 1's corners less; more is another scene
MIN_COMMON = 0.40  # common square / view 1's side: less means the views share too little of the sample
ECC_MAX_SHIFT = 0.02  # of the side: ECC moving a 25+-inlier fit further has locked onto lighting, not texture
ECC_ITERATIONS = 100  # ECC stops earlier once the correlation gains less than ECC_EPS per step
ECC_EPS = 1e-6
ECC_BLUR = 5  # ECC's Gaussian pre-filter (its own default): smooths the cost for sub-pixel convergence
MARKER_FRACTION = 0.12  # marker side / sheet side on the printable board
MARKER_REFINE_WINDOW = 0.8  # corner window / marker bit; OpenCV's 0.3 erred 0.9 px at 5 px bits
MARKER_IDS = (0, 1, 2, 3)  # top-left, top-right, bottom-right, bottom-left of the sample window
OVERLAY_SIDE = 1024  # tile side cap in overlay_png: misalignment of a few pixels still shows as fringes

_logger = logging.getLogger(__name__)
_ARUCO_DICT = cv2.aruco.DICT_4X4_50


@dataclass
class Registration:
    """Registered views and how they were made (the record goes beside the model's output)."""

    views: list[np.ndarray]  # each (S, S, 3) float32 in [0, 1]
    homographies: list[list[list[float]]]  # 3x3 per view: original view pixel (x, y) -> output pixel
    method: str
    inliers: list[int | None]  # RANSAC inliers per view (None for view 1 and the other methods)
    reprojection_px: list[float | None]  # median inlier reprojection error per view, reference pixels

    @property
    def size(self) -> int:
        return int(self.views[0].shape[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "size": self.size,
            "homography_maps": "original view pixel (x, y) -> output square pixel, pixel centres at integers",
            "homographies": self.homographies,
            "inliers": self.inliers,
            "reprojection_px": self.reprojection_px,
        }


def register_views(
    images: Sequence[np.ndarray],
    method: str = "features",
    *,
    corners: Sequence[Sequence[Sequence[float]]] | None = None,
    names: Sequence[str] | None = None,
    ecc: bool = True,
) -> Registration:
    """Register ``images`` (each (H, W, 3) float in [0, 1], sizes may differ) onto the first one.

    Args:
        method: one of ``ALIGN_METHODS`` (see the module docstring).
        corners: per view, the sample's four corners ``[[x, y] x 4]`` (only with ``method="corners"``).
        names: how error messages name the views; ``"view 1"``, ``"view 2"``, ... by default.
        ecc: refine each feature homography by ECC (``features`` only).

    Raises DataError (one sentence naming the view) when a view cannot be registered; nothing is returned.
    """
    if method not in ALIGN_METHODS:
        raise DataError(f"unknown alignment method {method!r}; choose one of {', '.join(ALIGN_METHODS)}")
    if len(images) == 0:
        raise DataError("no views were given to register")
    names = [f"view {i + 1}" for i in range(len(images))] if names is None else list(names)
    if len(names) != len(images):
        raise DataError(f"{len(images)} views and {len(names)} names were given; give one name per view")
    imgs = [_check_image(img, name) for img, name in zip(images, names, strict=True)]
    if method != "corners" and corners is not None:
        raise DataError(f"corners are only used by the 'corners' method, not {method!r}")
    if method == "features":
        return _register_features(imgs, names, ecc)
    if method == "corners":
        if corners is None:
            raise DataError("the 'corners' method needs the four sample corners of each view")
        quads = _check_corners(corners, len(imgs), "the corners given")
        return _register_quads(imgs, names, [np.array(q, np.float64) for q in quads], method)
    if method == "markers":
        return _register_quads(
            imgs, names, [_find_markers(i, n) for i, n in zip(imgs, names, strict=True)], method
        )
    return _register_none(imgs)


def read_corners(path: Path, count: int) -> list[list[list[float]]]:
    """Sample corners from JSON: ``{"views": [[[x, y] x 4], ...]}`` or the bare list, one entry per view."""
    data = read_json(path)
    if isinstance(data, dict):
        if "views" not in data:
            raise DataError(f"{path} has no 'views' key; write {{\"views\": [[[x, y] x 4] per view]}}")
        data = data["views"]
    return _check_corners(data, count, str(path))


def marker_sheet(size_px: int) -> np.ndarray:
    """A printable board, (size_px, size_px, 3) float32: four markers around a blank sample window.

    Print it, lay the sample inside the window (the white square between the markers) and photograph it;
    ``register_views(..., "markers")`` rectifies each photo to the window. ``sheet_corners`` gives the
    window's corners in the sheet's pixels.
    """
    marker, margin, _ = _sheet_layout(size_px)
    dictionary = cv2.aruco.getPredefinedDictionary(_ARUCO_DICT)
    sheet = np.full((size_px, size_px), 255, np.uint8)
    far = size_px - margin - marker
    for mid, (x, y) in zip(
        MARKER_IDS, [(margin, margin), (far, margin), (far, far), (margin, far)], strict=True
    ):
        sheet[y : y + marker, x : x + marker] = cv2.aruco.generateImageMarker(dictionary, mid, marker)
    return np.repeat(sheet[..., None], 3, axis=2).astype(np.float32) / 255.0


def sheet_corners(size_px: int) -> list[list[float]]:
    """The sample window's corners on ``marker_sheet(size_px)``, (x, y) in pixels, top-left first, clockwise."""
    marker, margin, _ = _sheet_layout(size_px)
    lo, hi = margin + marker - 0.5, size_px - margin - marker - 0.5  # markers' inner pixel edges
    return [[lo, lo], [hi, lo], [hi, hi], [lo, hi]]


def overlay_png(reg: Registration, path: Path) -> None:
    """Write view 1 beside a red/cyan anaglyph of view 1 (red) and each other view (cyan).

    Aligned views give grey; a misaligned one shows red and cyan fringes. Each view's grey is normalised
    to its own mean and contrast first, so different lighting does not tint the whole tile. Tiles are at
    most ``OVERLAY_SIDE`` pixels, so the PNG is ``T x (T * views)`` with ``T = min(S, OVERLAY_SIDE)``.
    """
    from PIL import Image

    tile = min(reg.size, OVERLAY_SIDE)
    grey = [_normalised_grey(v, tile) for v in reg.views]
    tiles = [np.repeat(grey[0][..., None], 3, axis=2)]
    tiles += [np.stack([grey[0], g, g], axis=2) for g in grey[1:]]
    sheet = np.round(np.concatenate(tiles, axis=1) * 255).astype(np.uint8)
    for i in range(len(tiles)):
        label = "view 1" if i == 0 else f"1 red / {i + 1} cyan"
        org = (i * tile + 4, 14)
        cv2.putText(sheet, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(sheet, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(sheet, "RGB").save(tmp, format="PNG")


# --- features -------------------------------------------------------------------------------------------


def _register_features(imgs: list[np.ndarray], names: list[str], ecc: bool) -> Registration:
    sift = cv2.SIFT.create(nfeatures=MAX_FEATURES)
    greys = [_grey_u8(img) for img in imgs]
    feats = [_features(sift, g, n) for g, n in zip(greys, names, strict=True)]
    to_ref = [np.eye(3)]  # view i pixels -> view 1 pixels
    inliers: list[int | None] = [None]
    errors: list[float | None] = [None]
    for i in range(1, len(imgs)):
        g, src, dst = _match(feats[i], feats[0], names[i], names[0])
        if ecc:
            g = _refine_ecc(greys[0], greys[i], g, names[i])
        _check_homography(g, imgs[i].shape, imgs[0].shape, names[i], names[0])
        to_ref.append(g)
        inliers.append(len(src))
        errors.append(float(np.median(np.linalg.norm(_apply(g, src) - dst, axis=1))))
        _logger.debug(f"{names[i]}: {inliers[-1]} inliers, {errors[-1]:.2f} px median reprojection error")
    crop, side = _common_square(imgs, to_ref, names)
    return _resample_all(imgs, [crop @ g for g in to_ref], side, "features", inliers, errors)


def _features(sift: Any, grey: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint positions (N, 2) in full-resolution pixels and their descriptors, found on a small copy."""
    small, down = _downscale(grey)
    keypoints, descriptors = sift.detectAndCompute(small, None)
    if descriptors is None or len(keypoints) < MIN_INLIERS:
        raise DataError(
            f"{name} shows too little texture to register ({len(keypoints)} keypoints, "
            f"at least {MIN_INLIERS} needed); use the 'corners' or 'markers' method"
        )
    points = np.array([kp.pt for kp in keypoints], np.float64)
    return _apply(np.linalg.inv(down), points), descriptors


def _match(
    view: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], name: str, ref_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Homography view -> reference from ratio-tested SIFT matches, with the inlier points (src, dst)."""
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(view[1], ref[1], k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < LOWE_RATIO * p[1].distance]
    found, mask, count = None, None, len(good)
    if len(good) >= MIN_INLIERS:
        src = view[0][[m.queryIdx for m in good]]
        dst = ref[0][[m.trainIdx for m in good]]
        method = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)
        found, mask = cv2.findHomography(src, dst, method, RANSAC_PX, maxIters=5000, confidence=0.999)
        count = 0 if mask is None else int(mask.sum())
    if found is None or mask is None or count < MIN_INLIERS:
        raise DataError(
            f"{name} does not match {ref_name}: at most {count} feature matches agree on one homography, "
            f"at least {MIN_INLIERS} are needed (is it a photo of the same sample?)"
        )
    keep = mask.ravel().astype(bool)
    return found / found[2, 2], src[keep], dst[keep]


def _refine_ecc(ref_grey: np.ndarray, grey: np.ndarray, to_ref: np.ndarray, name: str) -> np.ndarray:
    """ECC refinement of a view -> reference homography; the RANSAC one is kept when ECC fails or wanders.

    ECC's warp goes the other way: it maps template (reference) pixels to input (view) pixels.
    """
    ref_small, ref_down = _downscale(ref_grey)
    small, down = _downscale(grey)
    warp = down @ np.linalg.inv(to_ref) @ np.linalg.inv(ref_down)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPS)
    try:
        _, warp = cv2.findTransformECC(
            ref_small.astype(np.float32) / 255,
            small.astype(np.float32) / 255,
            (warp / warp[2, 2]).astype(np.float32),
            cv2.MOTION_HOMOGRAPHY,
            criteria,
            np.full(small.shape, 255, np.uint8),  # every view pixel is valid
            ECC_BLUR,
        )
    except cv2.error as e:
        _logger.debug(f"{name}: ECC did not converge ({str(e).strip().splitlines()[-1]}); keeping RANSAC")
        return to_ref
    refined = np.linalg.inv(np.linalg.inv(down) @ warp.astype(np.float64) @ ref_down)
    refined /= refined[2, 2]
    h, w = ref_grey.shape
    box = _box(w, h)  # view 1's corners, to the view by the RANSAC fit and back by the refined one
    shift = np.abs(_apply(refined, _apply(np.linalg.inv(to_ref), box)) - box).max()
    if not np.isfinite(shift) or shift > ECC_MAX_SHIFT * min(w, h):
        _logger.debug(f"{name}: ECC moved the fit by {shift:.1f} px; keeping RANSAC")
        return to_ref
    return refined


def _check_homography(
    to_ref: np.ndarray, shape: tuple[int, ...], ref_shape: tuple[int, ...], name: str, ref_name: str
) -> None:
    """Refuse a fit that is mirrored, folds over the horizon, is extremely stretched or frames elsewhere."""
    h, w = shape[:2]
    rh, rw = ref_shape[:2]
    _check_local(to_ref, _box(w, h), ((w - 1) / 2, (h - 1) / 2), name)
    # view 1's corners, seen in the view, in units of each image's side about its centre
    seen = _apply(np.linalg.inv(to_ref), _box(rw, rh))
    shift = (seen - [(w - 1) / 2, (h - 1) / 2]) / min(w, h) - (
        _box(rw, rh) - [(rw - 1) / 2, (rh - 1) / 2]
    ) / min(rw, rh)
    worst = float(np.linalg.norm(shift, axis=1).max())
    if not np.isfinite(worst) or worst > MAX_CORNER_SHIFT:
        raise DataError(
            f"{name} frames the sample too differently from {ref_name} (a corner moves {worst:.0%} of the "
            f"side, at most {MAX_CORNER_SHIFT:.0%} is accepted); retake it framed like {ref_name}"
        )


def _common_square(
    imgs: list[np.ndarray], to_ref: list[np.ndarray], names: list[str]
) -> tuple[np.ndarray, int]:
    """The crop (view 1 pixels -> output pixels) of the largest square inside every footprint, and its side."""
    rh, rw = imgs[0].shape[:2]
    quads = [_apply(g, _box(img.shape[1], img.shape[0])) for g, img in zip(to_ref, imgs, strict=True)]
    cx, cy, side = _largest_square(quads)
    if side + 1 < MIN_COMMON * min(rw, rh):
        ref_area = float(rw * rh)
        cover = [
            cv2.intersectConvexConvex(quads[0].astype(np.float32), q.astype(np.float32))[0] for q in quads
        ]
        worst = 1 + int(np.argmin(cover[1:]))
        raise DataError(
            f"{names[worst]} covers only {cover[worst] / ref_area:.0%} of {names[0]}: the views share a square "
            f"{side + 1:.0f} px wide, less than {MIN_COMMON:.0%} of {names[0]}'s side"
        )
    x0, y0 = np.ceil(cx - side / 2), np.ceil(cy - side / 2)  # whole pixels: view 1 is not resampled
    size = int(np.floor(side - max(x0 - (cx - side / 2), y0 - (cy - side / 2)))) + 1
    scale = 1.0
    if size > MAX_SIDE:
        x0, y0, scale, size = cx - side / 2, cy - side / 2, (MAX_SIDE - 1) / side, MAX_SIDE
    crop = np.array([[scale, 0, -scale * x0], [0, scale, -scale * y0], [0, 0, 1]])
    return crop, size


def _largest_square(quads: list[np.ndarray]) -> tuple[float, float, float]:
    """Centre and side of the largest axis-aligned square inside every convex quad, centred where free.

    A linear program in (cx, cy, side): each corner of the square lies on the inner side of each edge.
    Among the largest squares (a rectangle admits a sliding family) the middle one is taken.
    """
    from scipy.optimize import linprog

    rows, bounds = [], []
    for quad in quads:
        for a, b in zip(quad, np.roll(quad, -1, axis=0), strict=True):
            dx, dy = b - a
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                rows.append([dy, -dx, (dy * sx - dx * sy) / 2])
                bounds.append(dy * a[0] - dx * a[1])
    a_ub, b_ub = np.array(rows), np.array(bounds)
    free = [(None, None), (None, None), (0, None)]
    best = linprog([0, 0, -1], A_ub=a_ub, b_ub=b_ub, bounds=free, method="highs")
    if not best.success:
        return 0.0, 0.0, 0.0
    side = float(best.x[2]) * (1 - 1e-9)
    fixed = [(None, None), (None, None), (side, side)]
    centre = []
    for axis in (0, 1):
        cost = np.zeros(3)
        cost[axis] = 1
        lo = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=fixed, method="highs")
        hi = linprog(-cost, A_ub=a_ub, b_ub=b_ub, bounds=fixed, method="highs")
        mid = (lo.x[axis] + hi.x[axis]) / 2 if lo.success and hi.success else best.x[axis]
        centre.append(mid)
        fixed[axis] = (mid, mid)
    return centre[0], centre[1], side


# --- corners, markers, none ------------------------------------------------------------------------------


def _register_quads(
    imgs: list[np.ndarray], names: list[str], quads: list[np.ndarray], method: str
) -> Registration:
    """Rectify each view's sample quadrilateral to one S x S square, S from view 1's quadrilateral."""
    for img, quad, name in zip(imgs, quads, names, strict=True):
        _check_quad(quad, img.shape, name)
    mean_side = float(np.linalg.norm(quads[0] - np.roll(quads[0], -1, axis=0), axis=1).mean())
    size = min(round(mean_side), MAX_SIDE)
    if size < MIN_SIDE:
        raise DataError(
            f"the sample in {names[0]} is only {mean_side:.0f} px across; at least {MIN_SIDE} are needed"
        )
    square = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])
    homs = []
    for quad, name in zip(quads, names, strict=True):
        hom = cv2.getPerspectiveTransform(quad.astype(np.float32), square.astype(np.float32))
        _check_local(hom, quad, tuple(quad.mean(axis=0)), name)
        homs.append(hom / hom[2, 2])
    return _resample_all(imgs, homs, size, method, [None] * len(imgs), [None] * len(imgs))


def _register_none(imgs: list[np.ndarray]) -> Registration:
    rh, rw = imgs[0].shape[:2]
    size = min(rh, rw, MAX_SIDE)
    homs = []
    for img in imgs:
        h, w = img.shape[:2]
        side = min(h, w)
        scale = size / side
        x0, y0 = (w - side) // 2, (h - side) // 2
        # pixel edges map to pixel edges: x_out + 0.5 = scale * (x - x0 + 0.5)
        shift = 0.5 * scale - 0.5
        homs.append(np.array([[scale, 0, shift - scale * x0], [0, scale, shift - scale * y0], [0, 0, 1]]))
    return _resample_all(imgs, homs, size, "none", [None] * len(imgs), [None] * len(imgs))


def _find_markers(img: np.ndarray, name: str) -> np.ndarray:
    """The sample's four corners in ``img``: each marker's corner nearest the window (see the module doc)."""
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    if hasattr(params, "relativeCornerRefinmentWinSize"):  # OpenCV >= 4.9 (its spelling)
        params.relativeCornerRefinmentWinSize = MARKER_REFINE_WINDOW
    detector = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(_ARUCO_DICT), params)
    found, ids, _ = detector.detectMarkers(_grey_u8(img))
    seen = [] if ids is None else [int(i) for i in ids.ravel()]
    quad = []
    for mid, where in zip(MARKER_IDS, CORNER_NAMES, strict=True):
        if seen.count(mid) != 1:
            problem = "is not found" if mid not in seen else f"is seen {seen.count(mid)} times"
            raise DataError(
                f"in {name}, ArUco marker {mid} (the {where} one) {problem}; all four must be visible"
            )
        inner = (mid + 2) % 4  # the marker's own corner nearest the window: id 0's bottom-right, ...
        quad.append(found[seen.index(mid)].reshape(4, 2)[inner])
    return np.array(quad, np.float64)


# --- shared helpers --------------------------------------------------------------------------------------


def _check_image(img: object, name: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", type(img).__name__)
        raise DataError(f"{name} is not an (H, W, 3) image array (got {shape})")
    if not np.issubdtype(img.dtype, np.floating):
        raise DataError(f"{name} is an array of {img.dtype}; give float values in [0, 1]")
    if min(img.shape[:2]) < MIN_SIDE:
        raise DataError(
            f"{name} is {img.shape[1]}x{img.shape[0]} px; at least {MIN_SIDE} px a side is needed"
        )
    arr = np.asarray(img, np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{name} holds NaN or inf values")
    return np.clip(arr, 0, 1)


def _check_corners(data: object, count: int, where: str) -> list[list[list[float]]]:
    """Corner lists of ``count`` views, 4 finite (x, y) points each, or one DataError sentence."""
    data = _as_list(data)
    if not isinstance(data, list | tuple) or len(data) != count:
        n = len(data) if isinstance(data, list | tuple) else type(data).__name__
        raise DataError(f"{where} must list the corners of {count} views, not {n}")
    out = []
    for v, quad in enumerate(data):
        quad = _as_list(quad)
        if not isinstance(quad, list | tuple) or len(quad) != 4:
            n = len(quad) if isinstance(quad, list | tuple) else type(quad).__name__
            raise DataError(f"{where}: view {v + 1} has {n} corners; give 4 ({', '.join(CORNER_NAMES)})")
        points = []
        for c, point in enumerate(quad):
            point = _as_list(point)
            if not (isinstance(point, list | tuple) and len(point) == 2 and all(map(_finite, point))):
                raise DataError(
                    f"{where}: view {v + 1}'s {CORNER_NAMES[c]} corner is not a pair of finite numbers [x, y]"
                )
            points.append([float(point[0]), float(point[1])])
        out.append(points)
    return out


def _as_list(data: object) -> object:
    return data.tolist() if isinstance(data, np.ndarray) else data


def _finite(x: object) -> bool:
    """A real, finite number (not a bool; an integer too large for a float is not finite)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return bool(np.isfinite(float(x)))
    except OverflowError:
        return False


def _check_quad(quad: np.ndarray, shape: tuple[int, ...], name: str) -> None:
    """A sample quadrilateral must be convex, in order (clockwise on screen) and inside its image."""
    h, w = shape[:2]
    edges = np.roll(quad, -1, axis=0) - quad
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not (turns > 0).all():
        kind = "mirrored or out of order" if (turns < 0).all() else "not a convex quadrilateral"
        raise DataError(f"{name}'s sample corners are {kind}; give them as {', '.join(CORNER_NAMES)}")
    outside = (quad[:, 0] < -0.5) | (quad[:, 0] > w - 0.5) | (quad[:, 1] < -0.5) | (quad[:, 1] > h - 0.5)
    if outside.any():
        c = int(np.argmax(outside))
        raise DataError(
            f"{name}'s {CORNER_NAMES[c]} sample corner ({quad[c, 0]:.1f}, {quad[c, 1]:.1f}) "
            f"lies outside its {w}x{h} image"
        )


def _check_local(hom: np.ndarray, area: np.ndarray, at: tuple[float, float], name: str) -> None:
    """Refuse a homography that mirrors, sends part of ``area`` (a convex quad) past the horizon, or
    stretches too much at ``at``."""
    hom = hom * np.sign(hom[2] @ [at[0], at[1], 1.0])  # the same map with w > 0 at the view's centre
    if not np.isfinite(hom).all() or not ((np.c_[area, np.ones(len(area))] @ hom[2]) > 0).all():
        raise DataError(f"{name}'s homography is degenerate (part of the view maps past the horizon)")
    jac = _jacobian(hom, at)
    if np.linalg.det(jac) <= 0:
        raise DataError(f"{name} is mirrored relative to the others (its homography flips orientation)")
    sv = np.linalg.svd(jac, compute_uv=False)
    if sv[0] > MAX_CONDITION * sv[1]:
        raise DataError(
            f"{name} is stretched {sv[0] / sv[1]:.1f}:1 by its homography (at most {MAX_CONDITION:g}:1); "
            "photograph the sample less obliquely"
        )


def _jacobian(hom: np.ndarray, at: tuple[float, float]) -> np.ndarray:
    """d(u, v)/d(x, y) of a homography at one point."""
    p = np.array([at[0], at[1], 1.0])
    w = hom[2] @ p
    u, v = hom[0] @ p / w, hom[1] @ p / w
    return (
        np.array(
            [
                [hom[0, 0] - u * hom[2, 0], hom[0, 1] - u * hom[2, 1]],
                [hom[1, 0] - v * hom[2, 0], hom[1, 1] - v * hom[2, 1]],
            ]
        )
        / w
    )


def _resample_all(
    imgs: list[np.ndarray],
    homs: list[np.ndarray],
    size: int,
    method: str,
    inliers: list[int | None],
    errors: list[float | None],
) -> Registration:
    views = []
    for img, hom in zip(imgs, homs, strict=True):
        scale = np.sqrt(abs(np.linalg.det(_jacobian(hom, ((img.shape[1] - 1) / 2, (img.shape[0] - 1) / 2)))))
        if scale < 0.8:  # shrinking: blur first so fine texture does not alias
            img = cv2.GaussianBlur(img, (0, 0), 0.5 * np.sqrt(1 / scale**2 - 1))
        out = cv2.warpPerspective(
            img, hom, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
        )
        views.append(np.clip(out, 0, 1).astype(np.float32))  # (S, S, 3)
    return Registration(
        views=views,
        homographies=[(h / h[2, 2]).tolist() for h in homs],
        method=method,
        inliers=inliers,
        reprojection_px=errors,
    )


def _sheet_layout(size_px: int) -> tuple[int, int, int]:
    """Marker side, margin (the white quiet zone ArUco needs round a marker) and window side, in pixels."""
    marker = round(size_px * MARKER_FRACTION)
    margin = marker // 2
    window = size_px - 2 * (margin + marker)
    if marker < 12:  # 4x4 bits plus a one-bit border: 6 cells of at least 2 px
        raise DataError(
            f"a marker sheet of {size_px} px is too small; use at least {round(12 / MARKER_FRACTION)}"
        )
    return marker, margin, window


def _grey_u8(img: np.ndarray) -> np.ndarray:
    return np.round(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) * 255).astype(np.uint8)


def _downscale(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A copy no larger than ANALYSIS_SIDE and the matrix taking full-size pixels to its pixels."""
    h, w = grey.shape
    k = min(1.0, ANALYSIS_SIDE / max(h, w))
    if k == 1.0:
        return grey, np.eye(3)
    sw, sh = max(1, round(w * k)), max(1, round(h * k))
    sx, sy = sw / w, sh / h  # pixel edges to pixel edges: x_small + 0.5 = sx * (x + 0.5)
    down = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return cv2.resize(grey, (sw, sh), interpolation=cv2.INTER_AREA), down


def _normalised_grey(view: np.ndarray, tile: int) -> np.ndarray:
    grey = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
    if grey.shape[0] != tile:
        grey = cv2.resize(grey, (tile, tile), interpolation=cv2.INTER_AREA)
    return np.clip(0.5 + 0.18 * (grey - grey.mean()) / max(float(grey.std()), 1e-6), 0, 1)


def _box(w: int, h: int) -> np.ndarray:
    """An image's corner pixel centres, clockwise on screen from the top-left: (4, 2)."""
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def _apply(hom: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 3x3 homography."""
    p = np.c_[points, np.ones(len(points))] @ hom.T
    return p[:, :2] / p[:, 2:]
