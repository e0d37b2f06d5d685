"""Registration of three photos of a planar sample: known homographies are recovered, bad views refused.

Directions, as in the module: ``T[k]`` maps reference (view 1) pixels to view k's pixels, so a test view is
``cv2.warpPerspective(reference_content, T[k])``; a returned homography ``H[k]`` maps view k's pixels to the
output square. A point ``q`` of the square is therefore ``H[0]^-1 q`` in view 1 and ``T[k] H[0]^-1 q`` in
view k, and ``H[k]`` must bring that back to ``q``.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from pbrforge.errors import DataError
from pbrforge.registration import (
    MIN_INLIERS,
    Registration,
    marker_sheet,
    overlay_png,
    read_corners,
    register_views,
    sheet_corners,
)

SIZE = 256  # view side
PAD = 32  # the textured "world" is larger than a view, so warped views have no empty borders
RECOVERY_PX = 0.5  # features: grid points of the square land this close to where the true warps put them
CORNERS_PX = 1e-3  # corners: an exact 4-point fit, float32 inside OpenCV
MARKER_PX = 1.0  # markers: ArUco's sub-pixel corners on a linearly interpolated, warped print
VIEW_DIFF = 0.03  # mean |difference| of registered views of the same texture (interpolation blur only)


def _similar(
    angle_deg: float, scale: float, tx: float, ty: float, px: float = 0.0, py: float = 0.0
) -> np.ndarray:
    """A homography about the view's centre: rotation, scale, translation and a little perspective."""
    c = (SIZE - 1) / 2
    centre = np.array([[1, 0, c], [0, 1, c], [0, 0, 1.0]])
    a = np.deg2rad(angle_deg)
    core = np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty], [px, py, 1]]
    )
    return centre @ core @ np.linalg.inv(centre)


TRUE = [np.eye(3), _similar(4, 1.06, 9, -7, 2e-4, -1e-4), _similar(-3, 0.93, -10, 6, -1.5e-4, 2e-4)]


def _apply(hom: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.c_[points, np.ones(len(points))] @ np.asarray(hom).T
    return p[:, :2] / p[:, 2:]


def _texture(pad: int = PAD) -> np.ndarray:
    """Gravel (rich, non-periodic, not mirror-symmetric) tinted to RGB, (SIZE + 2 pad)^2 float32."""
    grey = cv2.resize(
        skimage.data.gravel().astype(np.float32) / 255, (SIZE + 2 * pad,) * 2, interpolation=cv2.INTER_AREA
    )
    return np.stack([grey, 0.8 * grey + 0.1, 0.6 * grey + 0.2], axis=2).astype(np.float32)


def _capture(warps: list[np.ndarray], pad: int = PAD) -> list[np.ndarray]:
    """Views of the textured world: view k = reference content warped by ``warps[k]`` (reference -> view)."""
    world = _texture(pad)
    to_ref = np.array([[1, 0, -pad], [0, 1, -pad], [0, 0, 1.0]])
    return [
        cv2.warpPerspective(
            world, t @ to_ref, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        for t in warps
    ]


def _grid(size: int, n: int = 9) -> np.ndarray:
    u = np.linspace(0, size - 1, n)
    return np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)


def _recovery_error(reg: Registration, warps: list[np.ndarray]) -> float:
    """Worst distance, in output pixels, between a square point and where H[k] T[k] H[0]^-1 puts it."""
    homs = [np.array(h) for h in reg.homographies]
    q = _grid(reg.size)
    in_ref = _apply(np.linalg.inv(homs[0]), q)
    return max(
        float(np.linalg.norm(_apply(h @ t, in_ref) - q, axis=1).max())
        for h, t in zip(homs, warps, strict=True)
    )


def _refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        register_views(*args, **kwargs)
    msg = str(info.value)
    assert match in msg and "\n" not in msg, msg
    return msg


# --- features ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ecc", [True, False])
def test_features_recover_known_homographies(ecc):
    views = _capture(TRUE)
    reg = register_views(views, "features", ecc=ecc)
    error = _recovery_error(reg, TRUE)
    print(f"features (ecc={ecc}): worst grid-point recovery error {error:.3f} px, inliers {reg.inliers}")
    assert error < RECOVERY_PX
    h0 = np.array(reg.homographies[0])
    np.testing.assert_array_equal(h0[:2, :2], np.eye(2))  # view 1 is only cropped, by whole pixels
    assert h0[:2, 2] == pytest.approx(np.round(h0[:2, 2]))
    assert reg.size >= 0.8 * SIZE and reg.method == "features"
    assert reg.inliers[0] is None and all(n >= MIN_INLIERS for n in reg.inliers[1:])
    for view in reg.views:
        assert view.shape == (reg.size, reg.size, 3) and view.dtype == np.float32
        assert np.abs(view - reg.views[0]).mean() < VIEW_DIFF
    record = json.loads(json.dumps(reg.to_json()))
    assert record["size"] == reg.size and len(record["homographies"]) == 3


@pytest.mark.parametrize("bad", [0, 2])
def test_blank_view_is_refused(bad):
    views = _capture(TRUE)
    views[bad] = np.full_like(views[bad], 0.5)
    names = ["a.jpg", "b.jpg", "c.jpg"]
    _refused(names[bad], views, names=names)


def test_unrelated_photo_is_refused():
    views = _capture(TRUE)
    views[1] = cv2.resize(
        skimage.data.astronaut().astype(np.float32) / 255, (SIZE, SIZE), interpolation=cv2.INTER_AREA
    )
    assert "does not match" in _refused("view 2", views)


def test_mirrored_view_is_refused():
    views = _capture(TRUE)
    views[2] = np.ascontiguousarray(np.fliplr(views[0]))
    _refused("view 3", views)


def test_turned_view_is_refused():
    """SIFT matches a view turned 45 degrees, but its corners move too far to be the same framing."""
    views = _capture([np.eye(3), _similar(45, 1.0, 0, 0), TRUE[2]], pad=80)
    assert "frames the sample too differently" in _refused("view 2", views)


def test_too_little_common_area_is_refused():
    """Views shifted a third of the side either way: each frames the sample acceptably, together too little."""
    shift = SIZE / 3
    views = _capture([np.eye(3), _similar(0, 1.0, shift, 0), _similar(0, 1.0, -shift, 0)], pad=100)
    _refused("covers only", views)


# --- corners ----------------------------------------------------------------------------------------------


def _sample_photos(warps: list[np.ndarray], side: int = 200) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A ``side``-px sample (texture) photographed by ``warps`` (sample -> photo); photos and true corners."""
    sample = cv2.resize(_texture(), (side, side), interpolation=cv2.INTER_AREA)
    edge = np.array([[-0.5, -0.5], [side - 0.5, -0.5], [side - 0.5, side - 0.5], [-0.5, side - 0.5]])
    photos = [
        cv2.warpPerspective(sample, t, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=(0.2, 0.2, 0.2))
        for t in warps
    ]
    return photos, [_apply(t, edge) for t in warps]


SAMPLE_WARPS = [
    _similar(2, 1.0, 20, 25, 1e-4, 0),
    _similar(-6, 0.95, 30, 20, 0, 3e-4),
    _similar(5, 1.05, 25, 30, -2e-4, 1e-4),
]


def test_corners_recover_known_quadrilateral():
    side = 200
    photos, quads = _sample_photos(SAMPLE_WARPS, side)
    reg = register_views(photos, "corners", corners=[q.tolist() for q in quads])
    s = reg.size
    points = _grid(side)
    expected = (points + 0.5) * s / side - 0.5  # sample pixel edges onto square pixel edges
    for h, t in zip(reg.homographies, SAMPLE_WARPS, strict=True):
        np.testing.assert_allclose(_apply(np.array(h) @ t, points), expected, atol=CORNERS_PX * s)
    for view in reg.views:
        assert np.abs(view - reg.views[0])[4:-4, 4:-4].mean() < VIEW_DIFF


def test_corners_mirrored_or_outside_are_refused():
    photos, quads = _sample_photos(SAMPLE_WARPS)
    mirrored = [q.tolist() for q in quads]
    mirrored[1] = [mirrored[1][i] for i in (1, 0, 3, 2)]
    assert "mirrored" in _refused("view 2", photos, "corners", corners=mirrored)
    outside = [q.tolist() for q in quads]
    outside[2][2] = [SIZE + 40.0, SIZE + 40.0]
    assert "outside" in _refused("view 3", photos, "corners", corners=outside)


def test_read_corners_accepts_both_forms(tmp_path):
    quads = [[[0, 0], [10, 0], [10, 10], [0, 10.5]]] * 3
    for data in (quads, {"views": quads}):
        path = tmp_path / "corners.json"
        path.write_text(json.dumps(data))
        assert read_corners(path, 3) == [[[float(x) for x in p] for p in q] for q in quads]


GOOD = [[0, 0], [10, 0], [10, 10], [0, 10]]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps([[[0, 0], [10, 0], [10, 10], [0, float("nan")]]] * 3),  # NaN token
        "[" + ",".join([json.dumps([[0, 0], [10, 0], [10, 10], [0, 1]]).replace("1]]", "1e999]]")] * 3) + "]",
        json.dumps([GOOD[:3]] * 3),  # 3 corners
        json.dumps([GOOD] * 2),  # wrong view count
        json.dumps({"views": [GOOD, GOOD, [[0, 0], [1, 0], [1, 1], ["0", 1]]]}),
        json.dumps([GOOD, GOOD, [[0, 0], [1, 0], [1, 1], [True, 1]]]),
        json.dumps([GOOD, GOOD, [[0, 0], [1, 0], [1, 1], [0, 1, 2]]]),
        json.dumps({"corners": [GOOD] * 3}),
        json.dumps("GOOD"),
        "[" + "1" * 400 + "]",
        "",
    ],
)
def test_read_corners_refuses_malformed(tmp_path, text):
    path = tmp_path / "corners.json"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_corners(path, 3)
    assert "\n" not in str(info.value)


# --- markers ----------------------------------------------------------------------------------------------

SHEET = 256
CANVAS = 300
MARKER_WARPS = [
    _similar(3, 1.0, 22, 20, 1e-4, 0),
    _similar(-8, 0.92, 18, 26, 0, 2e-4),
    _similar(10, 1.05, 24, 18, -2e-4, 0),
]


def _sheet_photos(warps: list[np.ndarray], blank: int | None = None) -> list[np.ndarray]:
    """A printed sheet with a textured sample in its window, photographed by ``warps`` (sheet -> photo)."""
    sheet = marker_sheet(SHEET)
    (lo, _), _, (hi, _), _ = sheet_corners(SHEET)
    a, b = int(lo + 0.5) + 6, int(hi + 0.5) - 6  # the sample lies a little inside the window
    sheet[a:b, a:b] = cv2.resize(_texture(), (b - a, b - a), interpolation=cv2.INTER_AREA)
    if blank is not None:  # paint over one marker: ids 0-3 sit beyond the window's corners, clockwise
        before, after = slice(0, int(lo + 0.5)), slice(int(hi + 0.5), SHEET)
        rows, cols = [(before, before), (before, after), (after, after), (after, before)][blank]
        sheet[rows, cols] = 1.0
    return [
        cv2.warpPerspective(sheet, t, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderValue=(1, 1, 1))
        for t in warps
    ]


def test_markers_rectify_the_window():
    reg = register_views(_sheet_photos(MARKER_WARPS), "markers")
    s = reg.size
    square = np.array([[-0.5, -0.5], [s - 0.5, -0.5], [s - 0.5, s - 0.5], [-0.5, s - 0.5]])
    window = np.array(sheet_corners(SHEET))
    for h, t in zip(reg.homographies, MARKER_WARPS, strict=True):
        error = np.linalg.norm(_apply(np.array(h) @ t, window) - square, axis=1).max()
        assert error < MARKER_PX, error
    assert abs(s - (window[1, 0] - window[0, 0])) <= 2  # S follows view 1's quadrilateral
    for view in reg.views:
        assert np.abs(view - reg.views[0])[4:-4, 4:-4].mean() < VIEW_DIFF


def test_missing_marker_is_refused():
    photos = _sheet_photos(MARKER_WARPS)
    photos[2] = _sheet_photos(MARKER_WARPS, blank=2)[2]
    assert "marker 2" in _refused("view 3", photos, "markers")


# --- none, overlay ----------------------------------------------------------------------------------------


def test_none_centre_crops_to_view_1():
    views = [
        np.random.default_rng(i).random((h, w, 3), dtype=np.float32)
        for i, (h, w) in enumerate([(64, 96), (80, 64), (128, 128)])
    ]
    reg = register_views(views, "none")
    assert reg.size == 64 and all(v.shape == (64, 64, 3) for v in reg.views)
    np.testing.assert_allclose(reg.views[0], views[0][:, 16:80], atol=1e-5)
    np.testing.assert_allclose(reg.views[1], views[1][8:72], atol=1e-5)
    # view 3 is halved: its pixel edges (-0.5, 127.5) land on the square's (-0.5, 63.5)
    assert _apply(np.array(reg.homographies[2]), np.array([[-0.5, -0.5], [127.5, 127.5]])) == pytest.approx(
        np.array([[-0.5, -0.5], [63.5, 63.5]])
    )


def test_overlay_png(tmp_path):
    reg = register_views(_capture(TRUE), "features")
    path = tmp_path / "overlay.png"
    overlay_png(reg, path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (3 * reg.size, reg.size)
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]  # no temporary left behind


# ----------------------------------------------------------------- registration before the model (pbrforge run)


def _write_views(folder, views) -> None:
    folder.mkdir()
    for i, v in enumerate(views):
        Image.fromarray(np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")


@pytest.mark.slow
def test_run_registers_handheld_photos_and_records_it(tiny_student_ckpt, tmp_path):
    from click.testing import CliRunner

    from pbrforge.cli import main as cli

    photos = tmp_path / "photos"
    _write_views(photos, _capture(TRUE))
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        ["run", str(tiny_student_ckpt), "--input", str(photos), "--output", str(out), "--final-size", "32"],
    )
    assert r.exit_code == 0, r.output
    record = json.loads((out / "registration.json").read_text())
    assert record["method"] == "features" and record["inputs"] == ["00.png", "01.png", "02.png"]
    assert all(n is None or n >= MIN_INLIERS for n in record["inliers"])
    assert Image.open(out / "registration.png").size[0] == 3 * Image.open(out / "registration.png").size[1]
    # a view that cannot be registered: one sentence naming it, exit 2, nothing written
    blank = tmp_path / "blank"
    views = _capture(TRUE)
    views[2] = np.full_like(views[2], 0.5)
    _write_views(blank, views)
    r = CliRunner().invoke(
        cli, ["run", str(tiny_student_ckpt), "--input", str(blank), "--output", str(tmp_path / "o2")]
    )
    assert r.exit_code == 2 and "02.png" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o2").exists()
    r = CliRunner().invoke(
        cli,
        [
            "run",
            str(tiny_student_ckpt),
            "--input",
            str(photos),
            "--output",
            str(tmp_path / "o3"),
            "--align",
            "corners",
        ],
    )
    assert r.exit_code == 2 and "--corners" in r.output, r.output
