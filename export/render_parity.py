"""Parity of what ships, a material: both sides' maps rendered under many lights and compared as images.

Tensor figures (max abs, PSNR per map) say how far numbers moved; a user sees how the material renders,
how far its normals turned, whether a pixel flipped between metal and dielectric, how far its colour
shifted. Every parity report carries these figures under ``render``:

* ``psnr_db_min``: the worst, over lights and samples, PSNR of the displayed (sRGB) re-render, peak 1;
* ``normal_deg_mean``, ``normal_deg_p99``: angle between the two normals, degrees;
* ``albedo_de2000_mean``: CIEDE2000 between the two albedos (scikit-image's implementation);
* ``metallic_flip_share``: share of pixels on different sides of 0.5;
* ``roughness_mae``.

The lights are the three capture lights of the data set (45 degrees up, 120 degrees apart) and eight
more: four grazing (20 degrees up, azimuths 45 + 90k) and four steep (70 degrees, azimuths 90k), so a
highlight is seen from every side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from pbrforge.contract import pack
from pbrforge.export.gates import RENDER_KEYS
from pbrforge.render import render, to_display, view_lights


def parity_lights() -> torch.Tensor:
    """(11, 3) light positions: the three capture lights and eight more around and above the patch."""
    capture = view_lights(0.0, 45.0)
    distance = float(capture[0].norm())

    def ring(elevation: float, first_azimuth: float) -> torch.Tensor:  # four lights 90 degrees apart
        el, az = math.radians(elevation), torch.tensor([first_azimuth + k * math.pi / 2 for k in range(4)])
        flat = distance * math.cos(el)
        return torch.stack(
            [flat * torch.cos(az), flat * torch.sin(az), torch.full((4,), distance * math.sin(el))], -1
        )

    return torch.cat([capture, ring(20.0, math.pi / 4), ring(70.0, 0.0)])


def _maps(outputs: Mapping[str, np.ndarray]) -> torch.Tensor:
    return pack({k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in outputs.items()}).double()


def render_figures(
    reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """The render-space figures of ``outputs`` against ``reference`` (contract maps by name, batched)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    ref, out = _maps(reference), _maps(outputs)
    if not (torch.isfinite(ref).all() and torch.isfinite(out).all()):
        return dict.fromkeys(RENDER_KEYS, math.nan)
    psnr = []
    with torch.no_grad():  # light by light: at 1024 px all eleven at once would hold gigabytes
        for light in parity_lights():
            lights = light.view(1, 1, 3).expand(ref.shape[0], 1, 3)
            shown_ref = to_display(render(ref.float(), lights))  # (B, 1, 3, H, W) in [0, 1]
            shown_out = to_display(render(out.float(), lights))
            mse = ((shown_ref.double() - shown_out.double()) ** 2).mean(dim=(1, 2, 3, 4))
            psnr.append(10 * torch.log10(1.0 / mse.clamp_min(1e-20)))
    n_ref = torch.nn.functional.normalize(ref[:, 5:8], dim=1, eps=1e-12)
    n_out = torch.nn.functional.normalize(out[:, 5:8], dim=1, eps=1e-12)
    angles = torch.rad2deg(torch.acos((n_ref * n_out).sum(1).clamp(-1, 1))).flatten()
    lab = [rgb2lab(x[:, 0:3].clamp(0, 1).permute(0, 2, 3, 1).numpy()) for x in (ref, out)]
    return {
        "psnr_db_min": float(torch.stack(psnr).min()),
        "normal_deg_mean": float(angles.mean()),
        "normal_deg_p99": float(np.percentile(angles.numpy(), 99)),
        "albedo_de2000_mean": float(deltaE_ciede2000(lab[0], lab[1]).mean()),
        "metallic_flip_share": float(((ref[:, 4] >= 0.5) != (out[:, 4] >= 0.5)).double().mean()),
        "roughness_mae": float((ref[:, 3] - out[:, 3]).abs().mean()),
    }


def render_table(figures: Mapping[str, float], title: str) -> str:
    lines = [title]
    lines += [f"  {k:<20} {figures[k]:10.4g}" for k in RENDER_KEYS]
    return "\n".join(lines)
