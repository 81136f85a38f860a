"""Per-scene settings (``scene.faceforge``): the workflow's inputs, saved with the .blend file."""

import bpy
from bpy.props import EnumProperty, PointerProperty, StringProperty

MODEL_ITEMS = (
    ("BUILTIN", "Built-in", "FaceForge's own head model, shipped with the add-on (nothing to set up)"),
    ("CUSTOM", "Custom", "The model file set in the add-on preferences (FLAME .pkl or FaceForge .npz)"),
)


class FaceForgeSceneSettings(bpy.types.PropertyGroup):
    model_source: EnumProperty(
        name="Model",
        description="Which morphable head model the next reconstruction fits",
        items=MODEL_ITEMS,
        default="BUILTIN",
    )
    photo_path: StringProperty(
        name="Photo",
        description="A photo of one face, looking roughly at the camera (jpg, png, ...)",
        subtype="FILE_PATH",
        default="",
    )


def register_props():
    bpy.types.Scene.faceforge = PointerProperty(type=FaceForgeSceneSettings)


def unregister_props():
    if hasattr(bpy.types.Scene, "faceforge"):
        del bpy.types.Scene.faceforge


CLASSES = (FaceForgeSceneSettings,)
