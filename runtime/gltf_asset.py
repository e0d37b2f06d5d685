"""A glTF 2.0 binary (.glb): a swatch and a sphere sharing one metallic-roughness material, textures inside.

glTF fixes the encodings the contract already uses: base colour sRGB, the packed
``metallicRoughnessTexture`` linear with G = roughness and B = metallic, and tangent-space normal maps
with +Y up (OpenGL), so the contract's maps go in unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pbrforge import __version__
from pbrforge.fileio import atomic_path
from pbrforge.runtime.meshes import Mesh, quad, uv_sphere
from pbrforge.runtime.texture_set import png_bytes, textures

FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, REPEAT = 9729, 9987, 10497
# where each shape stands, metres: side by side, resting on y = 0
PLACES = {"sphere": (-0.6, 0.5, 0.0), "swatch": (0.6, 0.5, 0.0)}


class _Blob:
    """The one binary buffer: appends 4-byte-aligned views and accessors to the glTF as it grows."""

    def __init__(self, gltf):
        self.gltf = gltf
        self.data = bytearray()

    def view(self, payload: bytes, target: int | None = None) -> int:
        import pygltflib as g

        self.data += b"\0" * (-len(self.data) % 4)
        self.gltf.bufferViews.append(
            g.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(payload), target=target)
        )
        self.data += payload
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, indices: bool = False) -> int:
        import pygltflib as g

        array = np.ascontiguousarray(array, np.uint32 if indices else np.float32)
        view = self.view(array.tobytes(), ELEMENT_ARRAY_BUFFER if indices else ARRAY_BUFFER)
        extra = {} if indices else {"min": array.min(0).tolist(), "max": array.max(0).tolist()}
        self.gltf.accessors.append(
            g.Accessor(
                bufferView=view,
                componentType=UNSIGNED_INT if indices else FLOAT,
                count=array.size if indices else len(array),
                type=kind,
                **extra,
            )
        )
        return len(self.gltf.accessors) - 1


def _primitive(blob: _Blob, mesh: Mesh):
    import pygltflib as g

    return g.Primitive(
        attributes=g.Attributes(
            POSITION=blob.accessor(mesh.positions, "VEC3"),
            NORMAL=blob.accessor(mesh.normals, "VEC3"),
            TANGENT=blob.accessor(mesh.tangents, "VEC4"),
            TEXCOORD_0=blob.accessor(mesh.uvs, "VEC2"),
        ),
        indices=blob.accessor(mesh.triangles.reshape(-1), "SCALAR", indices=True),
        material=0,
    )


def glb_bytes(maps: np.ndarray, name: str) -> bytes:
    """The .glb file of contract maps (8, H, W)."""
    import pygltflib as g

    gltf = g.GLTF2(asset=g.Asset(version="2.0", generator=f"pbrforge {__version__}"))
    blob = _Blob(gltf)
    images = textures(maps)
    roles = ("albedo", "metallic_roughness", "normal")
    for role in roles:
        gltf.images.append(
            g.Image(
                name=f"{name}_{role}", mimeType="image/png", bufferView=blob.view(png_bytes(images[role]))
            )
        )
    gltf.samplers.append(
        g.Sampler(magFilter=LINEAR, minFilter=LINEAR_MIPMAP_LINEAR, wrapS=REPEAT, wrapT=REPEAT)
    )
    gltf.textures = [g.Texture(sampler=0, source=i) for i in range(len(roles))]
    gltf.materials.append(
        g.Material(
            name=name,
            pbrMetallicRoughness=g.PbrMetallicRoughness(
                baseColorTexture=g.TextureInfo(index=0),
                metallicRoughnessTexture=g.TextureInfo(index=1),
                baseColorFactor=[1.0, 1.0, 1.0, 1.0],
                metallicFactor=1.0,
                roughnessFactor=1.0,
            ),
            normalTexture=g.NormalMaterialTexture(index=2, scale=1.0),
        )
    )
    for shape, mesh in (("sphere", uv_sphere()), ("swatch", quad())):
        gltf.meshes.append(g.Mesh(name=shape, primitives=[_primitive(blob, mesh)]))
        gltf.nodes.append(g.Node(name=shape, mesh=len(gltf.meshes) - 1, translation=list(PLACES[shape])))
    gltf.scenes.append(g.Scene(name=name, nodes=list(range(len(gltf.nodes)))))
    gltf.scene = 0
    blob.data += b"\0" * (-len(blob.data) % 4)
    gltf.buffers.append(g.Buffer(byteLength=len(blob.data)))
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


def write_glb(maps: np.ndarray, path: Path, name: str) -> Path:
    data = glb_bytes(maps, name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
