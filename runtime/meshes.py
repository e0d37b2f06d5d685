"""The two shapes a material is shown on (a flat swatch and a UV sphere), with tangents for normal maps.

UVs follow glTF: (0, 0) is the image's top-left corner. Tangents point along +u and their w is chosen so
that cross(normal, tangent) * w points up the image (-v): OpenGL-convention normal maps, as the contract
stores them, then light correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mesh:
    positions: np.ndarray  # (N, 3) float32, metres
    normals: np.ndarray  # (N, 3) float32, unit
    uvs: np.ndarray  # (N, 2) float32, glTF convention (v down)
    tangents: np.ndarray  # (N, 4) float32: xyz unit, w = +-1
    triangles: np.ndarray  # (M, 3) uint32, counter-clockwise seen from outside


def quad(side: float = 1.0) -> Mesh:
    """A square of ``side`` metres in the z = 0 plane facing +z; the image's top at +y."""
    h = side / 2
    xy = np.array([[-h, h], [h, h], [h, -h], [-h, -h]], np.float32)
    n = len(xy)
    return Mesh(
        positions=np.concatenate([xy, np.zeros((n, 1), np.float32)], axis=1),
        normals=np.tile(np.array([0, 0, 1], np.float32), (n, 1)),
        uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
        tangents=np.tile(np.array([1, 0, 0, 1], np.float32), (n, 1)),
        triangles=np.array([[0, 3, 2], [0, 2, 1]], np.uint32),
    )


def uv_sphere(radius: float = 0.5, segments: int = 64, rings: int = 32) -> Mesh:
    """A UV sphere, u around the equator (u = 0 and 1 share a seam of duplicated vertices), v from pole to pole."""
    theta = np.linspace(0, math.pi, rings + 1, dtype=np.float64)[:, None]  # from +y down
    phi = np.linspace(0, 2 * math.pi, segments + 1, dtype=np.float64)[None, :]
    normals = np.stack(
        np.broadcast_arrays(np.sin(theta) * np.sin(phi), np.cos(theta), np.sin(theta) * np.cos(phi)), axis=-1
    ).reshape(-1, 3)
    # d(position)/du is along (cos phi, 0, -sin phi) at every latitude, poles included
    t = np.stack(np.broadcast_arrays(np.cos(phi), 0 * theta, -np.sin(phi)), axis=-1).reshape(-1, 3)
    u = np.broadcast_to(phi / (2 * math.pi), (rings + 1, segments + 1)).reshape(-1)
    v = np.broadcast_to(theta / math.pi, (rings + 1, segments + 1)).reshape(-1)
    idx = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b = idx[:-1, :-1], idx[:-1, 1:]  # this ring
    c, d = idx[1:, :-1], idx[1:, 1:]  # the ring below
    left = np.stack([a, c, d], -1)[:-1]  # at the bottom ring c and d are both the south pole: zero area
    right = np.stack([a, d, b], -1)[1:]  # at the top ring a and b are both the north pole
    tris = np.concatenate([left.reshape(-1, 3), right.reshape(-1, 3)])
    return Mesh(
        positions=(normals * radius).astype(np.float32),
        normals=normals.astype(np.float32),
        uvs=np.stack([u, v], -1).astype(np.float32),
        tangents=np.concatenate([t, np.ones((len(t), 1))], axis=1).astype(np.float32),
        triangles=tris.astype(np.uint32),
    )
