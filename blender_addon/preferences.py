"""Add-on preferences: model file (+ Validate), CLIP checkpoint, compute device, Python packages."""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import dependencies
from .widgets import draw_job_status, wrap  # noqa: F401  (wrap: used below and by callers)

ADDON_ID = __package__  # the add-on's module name: "faceforge", "bl_ext.<repo>.faceforge", "blender_addon"

DEVICE_ITEMS = (
    ("AUTO", "Auto", "The NVIDIA GPU when torch sees one (CUDA), else the CPU"),
    ("CPU", "CPU", "Always run on the CPU"),
    ("CUDA", "CUDA", "Run on the NVIDIA GPU (fails with a clear message when none is available)"),
)


class FACEFORGE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    model_path: StringProperty(
        name="Model File",
        description=("Custom morphable head model: a FLAME .pkl (flame.is.tue.mpg.de) or a FaceForge .npz. "
                     "Used when the FaceForge panel's Model is set to 'Custom'"),
        subtype="FILE_PATH",
        default="",
    )
    # filled by faceforge.validate_model
    model_info: StringProperty(name="Model Summary", default="", options={"HIDDEN"})
    model_info_path: StringProperty(name="Validated File", default="", options={"HIDDEN"})
    model_error: StringProperty(name="Model Error", default="", options={"HIDDEN"})

    clip_checkpoint: StringProperty(
        name="CLIP Checkpoint",
        description=("Optional open_clip image-text model weights (.pt / .bin / .safetensors; ViT-B-32 unless an "
                     "open_clip config JSON lies beside it) for Learn Style's CLIP terms. Without one, styles "
                     "are learned with the geometric losses only"),
        subtype="FILE_PATH",
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where reconstructions run",
        items=DEVICE_ITEMS,
        default="AUTO",
    )
    install_optional: BoolProperty(
        name="Include Stylize Packages",
        description="Also install torchvision and open_clip (the CLIP terms of Learn Style)",
        default=False,
    )

    def draw(self, context):
        layout = self.layout
        draw_job_status(layout, context)

        box = layout.box()
        box.label(text="Head Model", icon="MESH_MONKEY")
        row = box.row(align=True)
        row.prop(self, "model_path")
        row.operator("faceforge.validate_model", text="Validate", icon="CHECKMARK")
        draw_model_summary(box, self)
        box.label(text="The panel's Model choice picks Built-in (default) or this file, per reconstruction.")

        box = layout.box()
        box.label(text="Compute", icon="SETTINGS")
        box.prop(self, "device")
        info = dependencies.torch_summary()
        if info:
            box.label(text=info, icon="INFO")
        box.prop(self, "clip_checkpoint")
        if self.clip_checkpoint and not os.path.isfile(bpy.path.abspath(self.clip_checkpoint)):
            sub = box.row()
            sub.alert = True
            sub.label(text="CLIP checkpoint not found", icon="ERROR")

        draw_dependencies(layout, self)


def draw_model_summary(layout, prefs) -> None:
    path = prefs.model_path
    if not path:
        layout.label(text="No file: the built-in model is used.", icon="INFO")
    elif prefs.model_error and prefs.model_info_path == path:
        col = layout.column(align=True)
        col.alert = True
        for i, line in enumerate(wrap(prefs.model_error, 70)):
            col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
    elif prefs.model_info and prefs.model_info_path == path:
        layout.label(text=prefs.model_info, icon="CHECKMARK")
    else:
        layout.label(text="Not validated yet: click Validate (takes a few seconds)", icon="QUESTION")


def draw_dependencies(layout, prefs) -> None:
    box = layout.box()
    box.label(text="Python Packages", icon="SCRIPTPLUGINS")
    grid = box.grid_flow(columns=2, even_columns=True, align=True)
    for req in dependencies.REQUIRED + dependencies.OPTIONAL:
        ok = dependencies.present(req.module)
        optional = req in dependencies.OPTIONAL
        grid.label(text=f"{req.module}{' (optional)' if optional else ''}",
                   icon="CHECKMARK" if ok else ("DOT" if optional else "ERROR"))
        grid.label(text=req.purpose if ok else f"missing: pip install {req.pip}")
    row = box.row(align=True)
    row.operator("faceforge.install_dependencies", icon="IMPORT")
    row.prop(prefs, "install_optional", toggle=True)
    row.operator("faceforge.check_dependencies", text="", icon="FILE_REFRESH")
    box.label(text=f"Installs into {dependencies.deps_dir()}")
    box.label(text="torch is large (about 1-3 GB): the download can take a while.")


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
