"""pbrforge: three photos of a surface in, PBR maps (albedo, roughness, metallic, normal) out."""

__version__ = "0.1.0"
