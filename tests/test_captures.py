"""Capture models and room light: ranges, determinism, the environment decoder on a real map."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from pbrforge import captures, environments
from pbrforge.datagen.writer import DEFAULT_ENVIRONMENTS, generate_dataset
from pbrforge.dataset import PBRDataset, load_metadata
from pbrforge.errors import DataError
from pbrforge.render import render_environment

UNIFORM_SKY_RTOL = 1e-3  # median cut keeps cosine-weighted irradiance exactly; the texel grid's sums remain
DRAWS = 300


def test_median_cut_of_a_uniform_sky_gives_pi_l():
    """A sky of constant radiance L gives an upward surface irradiance pi L (closed form)."""
    sky = np.full((64, 128, 3), 0.7, np.float32)
    dirs, rgb = environments.median_cut(sky, 16)
    assert dirs.shape == (16, 3) and np.allclose(np.linalg.norm(dirs, axis=1), 1)
    assert (dirs[:, 2] > 0).all()  # only the upper hemisphere lights an upward-facing patch
    assert rgb.sum(0).max() < 2 * math.pi * 0.7  # less than the hemisphere's raw energy (2 pi sr x L)
    up = environments.upward_irradiance(dirs, rgb) / 0.7
    assert up == pytest.approx(math.pi, rel=UNIFORM_SKY_RTOL)


def test_median_cut_finds_a_sun():
    sky = np.full((64, 128, 3), 0.01, np.float32)
    sky[10, 32] = 5000.0  # row 10: 29.5 degrees from the zenith; column 32: azimuth 90.7 degrees
    dirs, rgb = environments.median_cut(sky, 8)
    sun = dirs[np.argmax(rgb[:, 0])]
    theta, phi = (10.5) * math.pi / 64, (32.5) * 2 * math.pi / 128
    want = np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])
    assert np.degrees(np.arccos(np.clip(sun @ want, -1, 1))) < 1.0


def test_dark_map_is_refused():
    with pytest.raises(DataError, match="no light"):
        environments.median_cut(np.zeros((8, 16, 3), np.float32))


@pytest.mark.skipif(not DEFAULT_ENVIRONMENTS.is_dir(), reason="make install sets up npm @pmndrs/assets")
def test_real_environment_map_decodes():
    path = DEFAULT_ENVIRONMENTS / "studio.exr.js"
    img = environments.read_environment_map(path)
    assert img.shape == (256, 512, 3) and img.dtype == np.float32
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() > 1  # HDR, negatives of DWAB clamped
    env = environments.load_environment(path)
    assert env.name == "studio" and env.directions.shape == (16, 3)
    assert environments.upward_irradiance(env.directions, env.irradiance) == pytest.approx(1.0)
    assert len(environments.load_environments(DEFAULT_ENVIRONMENTS)) == 18


def test_environment_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no environment map"):
        environments.find_environment_files(tmp_path)
    (tmp_path / "broken.exr").write_bytes(b"not an exr")
    with pytest.raises(DataError, match="broken.exr"):
        environments.load_environments(tmp_path)


def _tilt_deg(eye) -> float:
    eye = np.asarray(eye)
    return math.degrees(math.acos(eye[2] / np.linalg.norm(eye)))


def test_phone_flash_captures_stay_in_their_documented_ranges():
    rng = np.random.default_rng(0)
    c = captures
    near = 1 / math.tan(math.radians(c.FIELD_OF_VIEW_DEG[1]) / 2) * c.DISTANCE_JITTER[0]
    far = 1 / math.tan(math.radians(c.FIELD_OF_VIEW_DEG[0]) / 2) * c.DISTANCE_JITTER[1]
    weights = []
    for _ in range(DRAWS):
        r = c.draw_capture("phone-flash", rng, ["a", "b"])
        assert r["model"] == "phone-flash" and r["environment"]["id"] in ("a", "b")
        assert _tilt_deg(r["eyes"][0]) <= c.FIRST_TILT_DEG[1] + 1e-6
        for eye, light, power in zip(r["eyes"], r["lights"], r["light_power"], strict=True):
            assert _tilt_deg(eye) <= c.TILT_DEG[1] + 1e-6
            assert near - 1e-6 <= np.linalg.norm(eye) <= far + 1e-6
            offset_cm = np.linalg.norm(np.subtract(light, eye)) * c.CM_PER_UNIT
            assert c.FLASH_OFFSET_CM[0] - 1e-4 <= offset_cm <= c.FLASH_OFFSET_CM[1] + 1e-4
            # auto-exposure: the flash's irradiance at the centre is the target times the exposure
            d = np.linalg.norm(light)
            centre = power * (light[2] / d) / d**2
            assert centre == pytest.approx(c.TARGET_IRRADIANCE * r["exposure"], rel=1e-4)
        assert c.CONE_EXPONENT[0] <= r["cone_exponent"] <= c.CONE_EXPONENT[1]
        assert c.EXPOSURE[0] <= r["exposure"] <= c.EXPOSURE[1]
        weights.append(r["environment"]["weight"])
    assert c.ROOM_WEIGHT[0] <= min(weights) and max(weights) <= c.ROOM_WEIGHT[1]
    # log-uniform: the median sits near the geometric mean of the range
    assert np.median(weights) == pytest.approx(math.sqrt(c.ROOM_WEIGHT[0] * c.ROOM_WEIGHT[1]), rel=0.35)


def test_phone_ambient_and_tripod_captures():
    rng = np.random.default_rng(1)
    for _ in range(50):
        amb = captures.draw_capture("phone-ambient", rng, ["a"])
        assert amb["light_power"] == [0.0] * 3 and amb["environment"]["weight"] == 1.0
        rig = captures.draw_capture("tripod", rng)
        assert rig["environment"] is None and rig["eyes"] == [[0.0, 0.0, 2.5]] * 3
        elevations = [math.degrees(math.asin(li[2] / np.linalg.norm(li))) for li in rig["lights"]]
        assert all(
            captures.TRIPOD_ELEVATION_DEG[0] - 1e-4 <= e <= captures.TRIPOD_ELEVATION_DEG[1] + 1e-4
            for e in elevations
        )
    with pytest.raises(ValueError, match="environment"):
        captures.draw_capture("phone-flash", rng, [])


def test_room_light_scales_with_weight_and_turns_with_rotation():
    dome = environments.uniform_dome()
    sun = environments.Environment("sun", "test", np.array([[0.6, 0.0, 0.8]]), np.array([[1.25, 1.25, 1.25]]))
    rec = captures.draw_capture("phone-flash", np.random.default_rng(2), ["sun"])
    rec["environment"].update(rotation=math.pi / 2, weight=0.5)
    batch = captures.batch_captures([rec], {"sun": sun, "uniform-dome": dome})
    np.testing.assert_allclose(batch.env_directions[0, 0].numpy(), [0.0, 0.6, 0.8], atol=1e-6)
    want = 1.25 * 0.5 * captures.TARGET_IRRADIANCE * rec["exposure"]
    np.testing.assert_allclose(batch.env_irradiance[0, 0].numpy(), [want] * 3, rtol=1e-5)
    maps = torch.zeros(1, 8, 4, 4)
    maps[:, :3], maps[:, 3], maps[:, 7] = 0.5, 0.5, 1.0
    assert render_environment(maps, batch.env_directions, batch.env_irradiance, batch.eyes).min() > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [("selfie", "unknown capture"), ("tripod:0", "> 0"), ("tripod:x", "not a number"), ("tripod:nan", "> 0"),
     ("tripod,tripod", "twice"), ("", "no capture")],
)  # fmt: skip
def test_capture_mix_errors(text, message):
    with pytest.raises(ValueError, match=message):
        captures.parse_mix(text)


def test_capture_mix_normalises():
    assert captures.parse_mix("phone-flash:3, tripod:1") == {"phone-flash": 0.75, "tripod": 0.25}


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_datagen_is_deterministic_and_records_each_capture(tmp_path):
    mix = {"phone-flash": 0.5, "phone-ambient": 0.25, "tripod": 0.25}
    a = generate_dataset(tmp_path / "a", 6, 32, seed=5, progress=False, captures=mix)
    generate_dataset(tmp_path / "b", 6, 32, seed=5, progress=False, captures=mix)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert a["format_version"] == 2 and a["captures"] == mix
    models = {s["capture"]["model"] for s in a["samples"].values()}
    assert models <= set(mix) and len(models) >= 2
    meta = load_metadata(tmp_path / "a")
    for s in meta["samples"].values():
        env = s["capture"]["environment"]
        assert env is None or env["id"] in meta["environments"]
    assert PBRDataset(tmp_path / "a", "all", 32, 32).environments


def test_format_1_data_set_still_loads_as_a_tripod(tiny_data, tmp_path):
    import shutil

    old = tmp_path / "v1"
    shutil.copytree(tiny_data, old)
    path = old / "input" / "render_metadata.json"
    meta = json.loads(path.read_text())
    meta["format_version"] = 1
    for key in ("captures", "environments"):
        meta.pop(key)
    for s in meta["samples"].values():
        s.pop("capture")
        s["lights"] = [[1.0, 0.0, 1.5], [-0.5, 0.8, 1.5], [-0.5, -0.8, 1.5]]
        s["light_power"] = 12.0
    path.write_text(json.dumps(meta))
    loaded = load_metadata(old)
    cap = next(iter(loaded["samples"].values()))["capture"]
    assert (
        cap["model"] == "tripod" and cap["eyes"] == [meta["camera"]] * 3 and cap["light_power"] == [12.0] * 3
    )
    assert PBRDataset(old, "all", 32, 32).environments == {}


def test_phone_data_without_environments_is_one_sentence(tmp_path, monkeypatch):
    from pbrforge.datagen import writer

    monkeypatch.setattr(writer, "DEFAULT_ENVIRONMENTS", tmp_path / "nowhere")
    with pytest.raises(DataError, match="--environments"):
        generate_dataset(tmp_path / "out", 2, 32, progress=False)
    assert not (tmp_path / "out").exists()
    generate_dataset(tmp_path / "rig", 2, 32, progress=False, captures={"tripod": 1.0})  # needs no room


def test_coarsened_room_keeps_its_diffuse_light():
    """The loss's 4-light room gives an upward surface (and any surface its lights all face) the same light."""
    dome = environments.uniform_dome(16)
    coarse = dome.coarsened(4)
    assert coarse.directions.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(coarse.directions, axis=1), 1, rtol=1e-9)
    for normal in ([0, 0, 1.0], [0.2, -0.1, 0.97]):
        n = np.asarray(normal) / np.linalg.norm(normal)
        fine = (dome.irradiance * np.clip(dome.directions @ n, 0, None)[:, None]).sum(0)
        got = (coarse.irradiance * np.clip(coarse.directions @ n, 0, None)[:, None]).sum(0)
        np.testing.assert_allclose(got, fine, rtol=0.03)  # exact where no light falls below n's horizon
    assert dome.coarsened(5) is dome  # not a divisor: left alone
