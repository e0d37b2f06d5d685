"""A batched, differentiable Cook-Torrance / GGX renderer of a planar patch under point lights.

Datagen renders its views with it and the rendering loss and re-render metric use the same function,
so the data and the objective can never disagree about the BRDF.

Geometry: the patch spans [-1, 1]^2 in the z = 0 plane, +x to the right of the image and +y up
(row 0 is y = +1), matching the OpenGL tangent-space normals of the contract. The camera looks down
from ``camera`` (default (0, 0, 2.5)); lights are isotropic points with inverse-square falloff.
"""

from __future__ import annotations

import math

import torch

from pbrforge.contract import unpack

DEFAULT_CAMERA = (0.0, 0.0, 2.5)
DEFAULT_LIGHT_POWER = 12.0
EPS = 1e-6


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``F.normalize`` written out: torch's vector norm over a middle dimension of a 5-D tensor is ~20x slower
    than the sum of squares it computes (measured on CPU, torch 2.14)."""
    return x / (x * x).sum(dim, keepdim=True).sqrt().clamp_min(EPS)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(EPS) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(EPS) ** (1 / 2.4) - 0.055)


def patch_positions(h: int, w: int, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
    """World positions (3, H, W) of pixel centres on the z = 0 patch."""
    ys = 1 - (torch.arange(h, device=device, dtype=dtype) + 0.5) * 2 / h
    xs = -1 + (torch.arange(w, device=device, dtype=dtype) + 0.5) * 2 / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy, torch.zeros_like(gx)])


def ggx_distribution(n_dot_h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Trowbridge-Reitz / GGX normal distribution D(h)."""
    a2 = alpha * alpha
    denom = n_dot_h * n_dot_h * (a2 - 1) + 1
    return a2 / (math.pi * denom * denom + EPS)


def smith_schlick_ggx(n_dot_v: torch.Tensor, n_dot_l: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Smith geometry term with the Schlick-GGX approximation, k = (r + 1)^2 / 8 for direct lights."""
    k = (roughness + 1) ** 2 / 8
    g1v = n_dot_v / (n_dot_v * (1 - k) + k + EPS)
    g1l = n_dot_l / (n_dot_l * (1 - k) + k + EPS)
    return g1v * g1l


def fresnel_schlick(v_dot_h: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    return f0 + (1 - f0) * (1 - v_dot_h).clamp(0, 1) ** 5


def _shade(
    albedo: torch.Tensor,
    rough: torch.Tensor,
    metal: torch.Tensor,
    n: torch.Tensor,
    l_dir: torch.Tensor,
    v_dir: torch.Tensor,
) -> torch.Tensor:
    """BRDF times n.l for unit light and view directions; every argument broadcasts over (B, V, C, H, W)."""
    h_dir = _unit(l_dir + v_dir, 2)
    n_dot_l = (n * l_dir).sum(2, keepdim=True).clamp_min(0)
    n_dot_v = (n * v_dir).sum(2, keepdim=True).clamp_min(EPS)
    n_dot_h = (n * h_dir).sum(2, keepdim=True).clamp_min(0)
    v_dot_h = (v_dir * h_dir).sum(2, keepdim=True).clamp_min(0)
    alpha = rough * rough
    f0 = 0.04 * (1 - metal) + albedo * metal
    d = ggx_distribution(n_dot_h, alpha)
    g = smith_schlick_ggx(n_dot_v, n_dot_l, rough)
    f = fresnel_schlick(v_dot_h, f0)
    specular = d * g * f / (4 * n_dot_l * n_dot_v + EPS)
    diffuse = (1 - metal) * albedo / math.pi
    return (diffuse + specular) * n_dot_l


def _surface(maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Linear albedo, clamped roughness and metallic, unit normal, each (B, 1, C, H, W), and positions."""
    _, _, h, w = maps.shape
    parts = unpack(maps)
    albedo = srgb_to_linear(parts["albedo"]).unsqueeze(1)  # (B, 1, 3, H, W)
    rough = parts["roughness"].clamp(0.03, 1).unsqueeze(1)  # (B, 1, 1, H, W)
    metal = parts["metallic"].clamp(0, 1).unsqueeze(1)
    n = _unit(parts["normal"], 1).unsqueeze(1)  # (B, 1, 3, H, W)
    pos = patch_positions(h, w, maps.device, maps.dtype)[None, None]  # (1, 1, 3, H, W)
    return albedo, rough, metal, n, pos


def _eyes(camera: tuple[float, float, float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A camera (3,), (B, 3) or per view (B, V, 3) as (B|1, V|1, 3, 1, 1)."""
    cam = torch.as_tensor(camera, device=like.device, dtype=like.dtype)
    if cam.ndim == 1:
        return cam.reshape(1, 1, 3, 1, 1)
    if cam.ndim == 2:
        return cam.reshape(-1, 1, 3, 1, 1)
    return cam[..., None, None]


def render(
    maps: torch.Tensor,
    lights: torch.Tensor,
    light_power: torch.Tensor | float = DEFAULT_LIGHT_POWER,
    camera: tuple[float, float, float] | torch.Tensor = DEFAULT_CAMERA,
    cone_exponent: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Render linear radiance of contract maps under point lights, one image per light.

    Args:
        maps: (B, 8, H, W) in contract ranges (albedo sRGB-encoded).
        lights: (B, L, 3) light positions in world space.
        light_power: scalar or (B, L) radiant intensity (on the light's axis).
        camera: one camera (3,) or (B, 3), or one per image (B, L, 3): a phone moves between shots.
        cone_exponent: scalar or (B, L); a light aimed at the patch centre gives cos(off-axis)^p of its
            intensity (0: isotropic), as a phone flash's beam does.

    Returns:
        (B, L, 3, H, W) linear radiance, non-negative.
    """
    albedo, rough, metal, n, pos = _surface(maps)
    light_pos = lights.to(maps.dtype)[..., None, None]  # (B, L, 3, 1, 1)
    to_light = light_pos - pos  # (B, L, 3, H, W)
    dist2 = (to_light * to_light).sum(2, keepdim=True).clamp_min(EPS)
    l_dir = to_light / dist2.sqrt()
    v_dir = _unit(_eyes(camera, maps) - pos, 2)  # (B|1, L|1, 3, H, W)
    power = torch.as_tensor(light_power, device=maps.device, dtype=maps.dtype)
    if power.ndim == 2:
        power = power[..., None, None, None]
    cone = torch.as_tensor(cone_exponent, device=maps.device, dtype=maps.dtype)
    if cone.ndim == 2:
        cone = cone[..., None, None, None]
    if bool((cone != 0).any()):
        axis = _unit(light_pos, 2)  # the beam points from the light at the origin
        power = power * (axis * l_dir).sum(2, keepdim=True).clamp_min(0) ** cone
    return _shade(albedo, rough, metal, n, l_dir, v_dir) * power / dist2


def render_environment(
    maps: torch.Tensor,
    directions: torch.Tensor,
    irradiance: torch.Tensor,
    camera: tuple[float, float, float] | torch.Tensor,
) -> torch.Tensor:
    """Render linear radiance of contract maps under distant lights (an environment), seen from each eye.

    Args:
        maps: (B, 8, H, W).
        directions: (B, K, 3) unit vectors towards each distant light.
        irradiance: (B, K, 3) RGB irradiance each light gives a surface facing it.
        camera: (B, V, 3) eyes, one image each (or (3,) / (B, 3) for one image).

    Returns:
        (B, V, 3, H, W) linear radiance: the sum over the K lights.
    """
    albedo, rough, metal, n, pos = _surface(maps)
    v_dir = _unit(_eyes(camera, maps) - pos, 2)  # (B|1, V, 3, H, W)
    dirs = directions.to(maps.dtype)
    rgb = irradiance.to(maps.dtype)
    out = torch.zeros((), device=maps.device, dtype=maps.dtype)
    for k in range(dirs.shape[1]):  # a loop keeps memory at one light's worth, K is small
        l_dir = dirs[:, k, :, None, None, None].transpose(1, 2)  # (B, 1, 3, 1, 1)
        out = out + _shade(albedo, rough, metal, n, l_dir, v_dir) * rgb[:, k, :, None, None].unsqueeze(1)
    return out.expand(maps.shape[0], v_dir.shape[1], 3, *maps.shape[-2:])


def to_display(radiance: torch.Tensor, exposure: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Exposure then linear -> sRGB in [0, 1] (clipped like a camera)."""
    return linear_to_srgb(radiance * exposure)


def view_lights(
    azimuth0: float = 0.0,
    elevation_deg: float = 45.0,
    distance: float = 2.2,
    count: int = 3,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The tripod rig's lights: ``count`` positions evenly spaced around the patch at one elevation: (count, 3)."""
    el = math.radians(elevation_deg)
    az = torch.tensor([azimuth0 + k * 2 * math.pi / count for k in range(count)], dtype=dtype)
    return torch.stack(
        [
            distance * math.cos(el) * torch.cos(az),
            distance * math.cos(el) * torch.sin(az),
            torch.full((count,), distance * math.sin(el), dtype=dtype),
        ],
        dim=-1,
    )
