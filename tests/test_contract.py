import numpy as np
import pytest
import torch

from pbrforge import contract
from pbrforge.errors import DataError


def random_maps(h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(8, h, w, generator=g)
    return contract.activate(raw)


def test_channel_order_is_fixed():
    assert contract.CHANNEL_NAMES == (
        "albedo_r",
        "albedo_g",
        "albedo_b",
        "roughness",
        "metallic",
        "normal_x",
        "normal_y",
        "normal_z",
    )
    assert [contract.MAPS[n].slice for n in contract.MAP_NAMES] == [
        slice(0, 3),
        slice(3, 4),
        slice(4, 5),
        slice(5, 8),
    ]


def test_pack_unpack_round_trip():
    x = random_maps()
    parts = contract.unpack(x)
    assert {k: v.shape[0] for k, v in parts.items()} == {
        "albedo": 3,
        "roughness": 1,
        "metallic": 1,
        "normal": 3,
    }
    torch.testing.assert_close(contract.pack(parts), x)


def test_pack_rejects_wrong_channels():
    parts = contract.unpack(random_maps())
    parts["roughness"] = parts["albedo"]
    with pytest.raises(ValueError, match="roughness"):
        contract.pack(parts)


def test_activate_ranges():
    x = contract.activate(torch.randn(2, 8, 8, 8) * 10)
    contract.validate(x)
    torch.testing.assert_close(x[:, 5:].norm(dim=1), torch.ones(2, 8, 8))


@pytest.mark.parametrize("normal_bits, tol", [(8, 1.5 / 255 * 2 + 1e-3), (16, 1e-4)])
def test_material_png_round_trip(tmp_path, normal_bits, tol):
    x = random_maps(24, 20)
    contract.write_material(tmp_path / "m", x, normal_bits=normal_bits)
    y = contract.read_material(tmp_path / "m")
    assert y.shape == (8, 24, 20)
    assert (y[:5] - x[:5]).abs().max() <= 0.5 / 255 + 1e-6
    assert (y[5:] - x[5:]).abs().max() <= tol
    torch.testing.assert_close(y[5:].norm(dim=0), torch.ones(24, 20), atol=1e-5, rtol=0)


def test_normal_png_encoding_is_half_plus_half(tmp_path):
    x = torch.zeros(8, 4, 4)
    x[7] = 1.0  # flat normal (0, 0, 1)
    contract.write_material(tmp_path / "m", x)
    from PIL import Image

    rgb = np.asarray(Image.open(tmp_path / "m" / "normal.png"))
    assert rgb[0, 0].tolist() == [128, 128, 255]


def test_validate_catches_nan_and_ranges():
    x = random_maps()
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        contract.validate(bad)
    bad = x.clone()
    bad[3] = 1.5
    with pytest.raises(DataError, match="roughness"):
        contract.validate(bad)
    bad = x.clone()
    bad[5:] *= 2
    with pytest.raises(DataError, match="unit"):
        contract.validate(bad)
    with pytest.raises(DataError, match="shape"):
        contract.validate(x[:7])


def test_resize_maps_keeps_contract():
    x = random_maps(32, 32)
    y = contract.resize_maps(x, 16)
    assert y.shape == (8, 16, 16)
    contract.validate(y)


def test_read_material_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="missing material folder"):
        contract.read_material(tmp_path / "nope")
    contract.write_material(tmp_path / "m", random_maps())
    (tmp_path / "m" / "albedo.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match="corrupt"):
        contract.read_material(tmp_path / "m")
