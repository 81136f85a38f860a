"""Add-on preferences: which morphable model to use and which torch device to run on."""

import bpy
from bpy.props import EnumProperty, StringProperty

ADDON_ID = __package__  # the add-on's module name: "faceforge", "bl_ext.<repo>.faceforge", "blender_addon"

DEVICE_ITEMS = (
    ("AUTO", "Auto", "Use the GPU when torch sees one, else the CPU"),
    ("CPU", "CPU", "Always run on the CPU"),
    ("CUDA", "CUDA", "Run on the NVIDIA GPU (fails with a clear message when none is available)"),
)


class FACEFORGE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    model_path: StringProperty(
        name="Model File",
        description=("Morphable head model: a FLAME .pkl or a FaceForge .npz file. "
                     "Leave empty to use the built-in model"),
        subtype="FILE_PATH",
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where the reconstruction runs",
        items=DEVICE_ITEMS,
        default="AUTO",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "model_path")
        if not self.model_path:
            layout.label(text="Empty: the built-in model is used.", icon="INFO")
        layout.prop(self, "device")


def get_prefs(context=None):
    """The add-on's preferences, or None when it was registered without the add-on manager."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return None if addon is None else addon.preferences


def model_path(context=None) -> str:
    prefs = get_prefs(context)
    return bpy.path.abspath(prefs.model_path) if (prefs is not None and prefs.model_path) else ""


def device(context=None) -> str:
    prefs = get_prefs(context)
    return (prefs.device if prefs is not None else "AUTO").lower()


CLASSES = (FACEFORGE_AP_preferences,)
