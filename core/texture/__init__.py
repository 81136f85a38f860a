"""UV layouts and albedo textures baked from photos."""

from .bake import BakeResult, bake_texture, render_textured
from .uv import cylindrical_uv

__all__ = ["BakeResult", "bake_texture", "cylindrical_uv", "render_textured"]
