"""A USDZ package (AR Quick Look, Reality Composer, Omniverse): a UsdPreviewSurface on a swatch and a sphere.

Built with Pixar's ``usd-core``: the layer is authored in a temporary folder beside its textures, then
``UsdUtils.CreateNewUsdzPackage`` packs layer and textures into one file. Metres and +Y up are stated in
the stage metadata. UsdPreviewSurface reads normals in [-1, 1], so the 8-bit normal texture gets scale
2 and bias -1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pbrforge.fileio import atomic_path
from pbrforge.runtime.gltf_asset import PLACES
from pbrforge.runtime.meshes import Mesh, quad, uv_sphere
from pbrforge.runtime.texture_set import textures

# role -> (texture output, source colour space, UsdPreviewSurface input and its type name)
INPUTS = {
    "albedo": ("rgb", "sRGB", "diffuseColor", "Color3f"),
    "roughness": ("r", "raw", "roughness", "Float"),
    "metallic": ("r", "raw", "metallic", "Float"),
    "normal": ("rgb", "raw", "normal", "Normal3f"),
}


def _mesh(stage, path: str, mesh: Mesh, place: tuple[float, float, float]):
    from pxr import Gf, Sdf, UsdGeom, Vt

    geom = UsdGeom.Mesh.Define(stage, path)
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(mesh.positions))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(mesh.triangles)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray(mesh.triangles.reshape(-1).astype(np.int32).tolist()))
    geom.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(mesh.normals))
    geom.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    geom.CreateExtentAttr(
        Vt.Vec3fArray([Gf.Vec3f(*mesh.positions.min(0).tolist()), Gf.Vec3f(*mesh.positions.max(0).tolist())])
    )
    st = UsdGeom.PrimvarsAPI(geom).CreatePrimvar(
        "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex
    )
    uv = mesh.uvs.copy()
    uv[:, 1] = 1 - uv[:, 1]  # USD's st has t up the image
    st.Set(Vt.Vec2fArray.FromNumpy(uv))
    UsdGeom.XformCommonAPI(geom).SetTranslate(Gf.Vec3d(*place))
    return geom


def _material(stage, path: str, files: dict[str, str]):
    from pxr import Gf, Sdf, UsdShade

    material = UsdShade.Material.Define(stage, path)
    surface = UsdShade.Shader.Define(stage, f"{path}/PreviewSurface")
    surface.CreateIdAttr("UsdPreviewSurface")
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    reader = UsdShade.Shader.Define(stage, f"{path}/TexCoords")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    st = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
    for role, (output, space, name, type_name) in INPUTS.items():
        tex = UsdShade.Shader.Define(stage, f"{path}/{role.capitalize()}Texture")
        tex.CreateIdAttr("UsdUVTexture")
        tex.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(files[role])
        tex.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(space)
        tex.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st)
        tex.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
        tex.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
        if role == "normal":
            tex.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2, 2, 2, 1))
            tex.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1, -1, -1, 0))
        out_type = Sdf.ValueTypeNames.Float3 if output == "rgb" else Sdf.ValueTypeNames.Float
        source = tex.CreateOutput(output, out_type)
        surface.CreateInput(name, getattr(Sdf.ValueTypeNames, type_name)).ConnectToSource(source)
    return material


def write_usdz(maps: np.ndarray, path: Path, name: str) -> Path:
    """Author the stage and its textures in a temporary folder and pack them into ``path``."""
    from pxr import Sdf, Usd, UsdGeom, UsdShade, UsdUtils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = textures(maps)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.usd-") as work:
        root = Path(work)
        files = {}
        for role in INPUTS:
            rel = f"textures/{name}_{role}.png"
            (root / rel).parent.mkdir(exist_ok=True)
            images[role].save(root / rel, format="PNG")
            files[role] = f"./{rel}"
        layer = root / f"{name}.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, UsdGeom.LinearUnits.meters)
        world = UsdGeom.Xform.Define(stage, "/Root")
        stage.SetDefaultPrim(world.GetPrim())
        material = _material(stage, f"/Root/Materials/{_identifier(name)}", files)
        for shape, mesh in (("sphere", uv_sphere()), ("swatch", quad())):
            geom = _mesh(stage, f"/Root/{shape.capitalize()}", mesh, PLACES[shape])
            UsdShade.MaterialBindingAPI.Apply(geom.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()
        with atomic_path(path) as tmp:
            if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(tmp)):
                raise RuntimeError(f"usd-core could not package {path}")
    return path


def _identifier(name: str) -> str:
    """A valid USD prim name from a material name."""
    from pxr import Tf

    return Tf.MakeValidIdentifier(name)
