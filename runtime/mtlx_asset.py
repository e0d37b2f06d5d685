"""A MaterialX document: a ``standard_surface`` reading the ambientCG-named PNG set beside it.

Houdini, Maya, Blender (through USD) and Omniverse read MaterialX. The base colour image is tagged
``srgb_texture``; roughness and metalness are read as plain floats, and the normal through MaterialX's
``normalmap`` node, which decodes (n + 1) / 2 itself.
"""

from __future__ import annotations

from pathlib import Path

from pbrforge.fileio import atomic_path
from pbrforge.runtime.texture_set import map_file


def mtlx_document(material: str, normal: str = "gl"):
    """The MaterialX document of the PNG set named ``material`` (files found relative to the document)."""
    import MaterialX as mx

    if normal != "gl":  # the normalmap node reads +Y-up maps only
        raise ValueError("a MaterialX document references the OpenGL normal map")
    ident = mx.createValidName(material)
    doc = mx.createDocument()

    def image(role: str, kind: str):
        node = doc.addNode("image", f"{ident}_{role}", kind)
        file = node.addInput("file", "filename")
        file.setValueString(map_file(role, material, normal))
        if role == "albedo":
            file.setColorSpace("srgb_texture")
        return node

    surface = doc.addNode("standard_surface", f"SR_{ident}", "surfaceshader")
    surface.addInput("base", "float").setValue(1.0)
    surface.addInput("base_color", "color3").setConnectedNode(image("albedo", "color3"))
    surface.addInput("specular_roughness", "float").setConnectedNode(image("roughness", "float"))
    surface.addInput("metalness", "float").setConnectedNode(image("metallic", "float"))
    normalmap = doc.addNode("normalmap", f"{ident}_normalmap", "vector3")
    normalmap.addInput("in", "vector3").setConnectedNode(image("normal", "vector3"))
    surface.addInput("normal", "vector3").setConnectedNode(normalmap)
    material_node = doc.addMaterialNode(f"M_{ident}", surface)
    material_node.setAttribute("doc", f"pbrforge material {material}")
    return doc


def write_mtlx(path: Path, material: str, normal: str = "gl") -> Path:
    import MaterialX as mx

    text = mx.writeToXmlString(mtlx_document(material, normal))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
