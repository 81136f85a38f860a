"""Building a head whose skin wears a baked texture: the PNG goes beside the saved .blend (never
overwriting a file) or, for an unsaved file, is packed into it. Shared by the single- and
multi-photo operators; all or nothing like build_head."""

import os
import shutil
import tempfile

import bpy

from .. import paths
from .head_builder import build_head


def texture_image(material):
    for node in material.node_tree.nodes:
        if node.type == "TEX_IMAGE" and node.image is not None:
            return node.image
    return None


def build_textured_head(context, rig, write_texture) -> tuple:
    """``write_texture(path)`` writes the PNG and points ``rig.texture_path`` at it; then the head is
    built. Returns ``(built, image, where)``: build_head's dict, the image datablock, and a phrase
    saying where the texture lives. On failure the PNG is removed and the error propagates (the
    caller's runner removes the datablocks)."""
    from ..engine import core

    name = bpy.path.clean_name(rig.name or "head")
    beside_blend = bool(paths.blend_dir())
    if beside_blend:   # //<name>_albedo.png, never overwriting another file
        tex_path = paths.unique_path(os.path.join(paths.blend_dir(), f"{name}_albedo.png"))
        tmp_dir = None
    else:              # unsaved file: a temp copy, packed into the .blend below
        tmp_dir = tempfile.mkdtemp(prefix="faceforge_texture_")
        tex_path = os.path.join(tmp_dir, f"{name}_albedo.png")
    try:
        write_texture(tex_path)
        built = build_head(context, rig)
        image = texture_image(built["material"])
        if image is None:
            raise core.errors.FaceForgeError("The texture could not be attached to the head's material.")
        if beside_blend:
            image.filepath = bpy.path.relpath(tex_path)
            where = f"saved as {image.filepath}"
        else:
            image.pack()
            where = "packed into the .blend file (save the file to keep it)"
    except BaseException:
        if beside_blend and os.path.isfile(tex_path):
            os.remove(tex_path)          # all or nothing: the runner removes the datablocks
        raise
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return built, image, where
