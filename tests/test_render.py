import math

import pytest
import torch

from pbrforge import render
from pbrforge.contract import pack

NORMAL_INCIDENCE_RTOL = 1e-4


def flat_maps(albedo=(0.5, 0.5, 0.5), roughness=0.5, metallic=0.0, size=9, batch=1):
    h = w = size
    return pack(
        {
            "albedo": torch.tensor(albedo).view(3, 1, 1).expand(batch, 3, h, w),
            "roughness": torch.full((batch, 1, h, w), roughness),
            "metallic": torch.full((batch, 1, h, w), metallic),
            "normal": torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(batch, 3, h, w),
        }
    )


def test_normal_incidence_matches_closed_form():
    """Light and camera straight above the centre pixel: n.l = n.v = n.h = v.h = 1."""
    size, r, albedo_srgb = 9, 0.5, 0.5
    maps = flat_maps(roughness=r, size=size)
    d = 2.0
    light = torch.tensor([[[0.0, 0.0, d]]])
    out = render.render(maps, light, light_power=1.0, camera=(0.0, 0.0, d))
    c = size // 2
    rho = render.srgb_to_linear(torch.tensor(albedo_srgb)).item()
    alpha = r * r
    dterm = 1 / (math.pi * alpha * alpha)
    k = (r + 1) ** 2 / 8
    g = (1 / (1 - k + k)) ** 2
    f = 0.04
    expected = (rho / math.pi + dterm * g * f / 4) / d**2
    torch.testing.assert_close(
        out[0, 0, :, c, c], torch.full((3,), expected), rtol=NORMAL_INCIDENCE_RTOL, atol=0
    )


def test_no_negative_energy_and_dark_below_horizon():
    g = torch.Generator().manual_seed(0)
    maps = flat_maps(size=8, batch=2)
    maps[:, 5:] = torch.nn.functional.normalize(
        torch.randn(2, 3, 8, 8, generator=g) + torch.tensor([0, 0, 1.5]).view(1, 3, 1, 1), dim=1
    )
    lights = render.random_lights(2, 4, generator=g)
    out = render.render(maps, lights)
    assert (out >= 0).all() and torch.isfinite(out).all()
    below = render.render(flat_maps(size=8), torch.tensor([[[0.0, 0.0, -2.0]]]))
    assert below.abs().max() == 0


def _highlight_width(roughness: float) -> int:
    maps = flat_maps(albedo=(0.0, 0.0, 0.0), roughness=roughness, metallic=1.0, size=64)
    out = render.render(maps, torch.tensor([[[0.0, 0.0, 2.5]]]))[0, 0, 0]
    row = out[32]
    return int((row > row.max() / 2).sum())


def test_highlight_width_grows_with_roughness():
    widths = [_highlight_width(r) for r in (0.15, 0.3, 0.6)]
    assert widths[0] < widths[1] < widths[2], widths


def test_metallic_tints_highlight_by_albedo():
    red = (0.9, 0.1, 0.1)
    light = torch.tensor([[[0.0, 0.0, 2.5]]])
    metal = render.render(flat_maps(albedo=red, roughness=0.3, metallic=1.0), light)[0, 0, :, 4, 4]
    dielectric = render.render(flat_maps(albedo=(0, 0, 0), roughness=0.3, metallic=0.0), light)[0, 0, :, 4, 4]
    assert metal[0] > 5 * metal[1]  # the metal highlight takes the albedo's colour
    torch.testing.assert_close(dielectric[0], dielectric[1])  # a dielectric highlight is white


def test_differentiable():
    maps = flat_maps(size=8).requires_grad_(True)
    out = render.render(maps, render.random_lights(1, 3, generator=torch.Generator().manual_seed(1)))
    out.sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0


@pytest.mark.parametrize("x", [0.0, 0.002, 0.2, 0.7, 1.0])
def test_srgb_round_trip(x):
    t = torch.tensor(x)
    torch.testing.assert_close(render.linear_to_srgb(render.srgb_to_linear(t)), t, atol=1e-5, rtol=0)
