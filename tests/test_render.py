import math

import pytest
import torch

from pbrforge import render
from pbrforge.contract import pack

NORMAL_INCIDENCE_RTOL = 1e-4
CLOSED_FORM_RTOL = 5e-4  # the renderer's EPS guards (1e-6 in D's and the specular's denominators) show here


def hemisphere_lights(batch, count, generator, distance=2.2):
    """Lights drawn on the upper hemisphere (elevation 20..90 degrees): (B, K, 3)."""
    u = torch.rand(batch, count, 2, generator=generator)
    az = u[..., 0] * 2 * math.pi
    el = torch.deg2rad(20 + 70 * u[..., 1])
    return distance * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1
    )


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
    lights = hemisphere_lights(2, 4, generator=g)
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
    out = render.render(maps, hemisphere_lights(1, 3, generator=torch.Generator().manual_seed(1)))
    out.sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0


@pytest.mark.parametrize("x", [0.0, 0.002, 0.2, 0.7, 1.0])
def test_srgb_round_trip(x):
    t = torch.tensor(x)
    torch.testing.assert_close(render.linear_to_srgb(render.srgb_to_linear(t)), t, atol=1e-5, rtol=0)


# ----------------------------------------------------------------- phone captures: per-view eyes, flash, room


def _bumpy_maps(size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pack(
        {
            "albedo": torch.rand(1, 3, size, size, generator=g),
            "roughness": 0.2 + 0.7 * torch.rand(1, 1, size, size, generator=g),
            "metallic": torch.rand(1, 1, size, size, generator=g),
            "normal": torch.nn.functional.normalize(
                0.3 * torch.randn(1, 3, size, size, generator=g) + torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1),
                dim=1,
            ),
        }
    )


def test_colocated_flash_over_flat_patch_matches_closed_form():
    """A flash at an off-centre eye: at every pixel l = v = h, so the BRDF has a closed form per pixel."""
    size, r, albedo = 16, 0.4, 0.6
    maps = flat_maps(albedo=(albedo,) * 3, roughness=r, size=size)
    eye = torch.tensor([0.7, -0.4, 1.9])
    out = render.render(maps, eye.view(1, 1, 3), light_power=3.0, camera=eye.view(1, 1, 3))[0, 0, 0]
    pos = render.patch_positions(size, size).double()
    to_eye = eye.double().view(3, 1, 1) - pos
    dist2 = (to_eye**2).sum(0)
    cos = to_eye[2] / dist2.sqrt()
    rho = render.srgb_to_linear(torch.tensor(albedo)).double()
    a2 = (r * r) ** 2
    d = a2 / (math.pi * (cos**2 * (a2 - 1) + 1) ** 2)
    k = (r + 1) ** 2 / 8
    g = (cos / (cos * (1 - k) + k)) ** 2
    spec = d * g * 0.04 / (4 * cos * cos)  # v.h = 1: Fresnel is F0
    expected = (rho / math.pi + spec) * 3.0 * cos / dist2
    torch.testing.assert_close(out.double(), expected, rtol=CLOSED_FORM_RTOL, atol=0)


def test_swapping_eye_and_light_is_reciprocal():
    """f(l, v) = f(v, l): radiance divided by the light's cos/r^2 is the same with eye and light swapped."""
    maps = flat_maps(size=10, roughness=0.35, albedo=(0.3, 0.6, 0.9), metallic=0.4)
    a, b = torch.tensor([0.8, 0.3, 1.7]), torch.tensor([-0.5, -0.9, 2.3])
    pos = render.patch_positions(10, 10)

    def brdf(light: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
        out = render.render(maps, light.view(1, 1, 3), 1.0, eye.view(1, 1, 3))[0, 0]
        to_l = light.view(3, 1, 1) - pos
        d2 = (to_l**2).sum(0)
        return out * d2 / (to_l[2] / d2.sqrt())

    torch.testing.assert_close(brdf(a, b), brdf(b, a), rtol=1e-4, atol=1e-7)


def test_distant_light_is_the_limit_of_a_far_point_light():
    maps = _bumpy_maps()
    direction = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0)
    far = 1e4
    eye = torch.tensor([[[0.2, 0.1, 2.0], [-0.6, 0.4, 1.8]]])
    point = render.render(maps, (far * direction).view(1, 1, 3).expand(1, 2, 3), far**2, eye)
    env = render.render_environment(
        maps, direction.view(1, 1, 3), torch.ones(1, 1, 3), eye
    )  # (1, 2, 3, H, W): one image per eye
    torch.testing.assert_close(env, point, rtol=2e-3, atol=1e-6)


def test_each_view_sees_from_its_own_eye():
    """Per-view cameras: the two images of two eyes equal two separate single-camera renders."""
    maps = _bumpy_maps(seed=1)
    lights = torch.tensor([[[0.5, 0.5, 2.0], [-0.7, 0.2, 1.5]]])
    eyes = torch.tensor([[[0.0, 0.0, 2.0], [0.9, -0.3, 1.6]]])
    both = render.render(maps, lights, 2.0, eyes)
    for v in range(2):
        alone = render.render(maps, lights[:, v : v + 1], 2.0, eyes[0, v])
        torch.testing.assert_close(both[:, v : v + 1], alone)


def test_cone_falloff_is_cos_power_of_the_off_axis_angle():
    maps = flat_maps(size=9)
    light = torch.tensor([[[0.0, 0.0, 1.5]]])
    plain = render.render(maps, light, 1.0)[0, 0, 0]
    coned = render.render(maps, light, 1.0, cone_exponent=3.0)[0, 0, 0]
    pos = render.patch_positions(9, 9)
    to_l = light.view(3, 1, 1) - pos
    cos_off_axis = to_l[2] / to_l.norm(dim=0)  # the beam aims straight down at the centre
    torch.testing.assert_close(coned, plain * cos_off_axis**3, rtol=1e-5, atol=0)
