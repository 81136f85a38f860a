"""The "FaceForge" sidebar tab: Model -> Input -> Reconstruct -> Export."""

from __future__ import annotations

import bpy

from .. import preferences
from ..scene.head_builder import find_head


def _section(layout, title: str, icon: str):
    box = layout.box()
    box.label(text=title, icon=icon)
    return box


class FACEFORGE_PT_main(bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_main"
    bl_label = "FaceForge"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FaceForge"

    @classmethod
    def poll(cls, context):
        return hasattr(context.scene, "faceforge")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.faceforge

        # 1. Model
        box = _section(layout, "1. Model", "MESH_MONKEY")
        box.row().prop(settings, "model_source", expand=True)
        if settings.model_source == "CUSTOM":
            path = preferences.model_path(context)
            row = box.row()
            if path:
                row.label(text=bpy.path.basename(path), icon="FILE")
            else:
                row.alert = True
                row.label(text="No model file set", icon="ERROR")
            op = box.operator("preferences.addon_show", text="Set Model File…", icon="PREFERENCES")
            op.module = preferences.ADDON_ID
        prefs = preferences.get_prefs(context)
        if prefs is not None:
            box.prop(prefs, "device")

        # 2. Input
        box = _section(layout, "2. Input", "IMAGE_DATA")
        box.prop(settings, "photo_path", text="")

        # 3. Reconstruct
        box = _section(layout, "3. Reconstruct", "SHADERFX")
        op = box.operator("faceforge.reconstruct_photo", icon="USER")
        op.filepath = settings.photo_path
        if settings.status:
            box.label(text=settings.status, icon="INFO")
        if settings.last_error:
            col = box.column(align=True)
            col.alert = True
            col.label(text="Failed:", icon="ERROR")
            for line in _wrap(settings.last_error, 40):
                col.label(text=line)

        # 4. Export
        box = _section(layout, "4. Export", "EXPORT")
        head = find_head(context)
        if head is None:
            box.label(text="Reconstruct a head first")
        else:
            box.label(text=head.name, icon="OBJECT_DATA")
        col = box.column(align=True)
        col.enabled = head is not None
        col.operator("faceforge.export_fbx", icon="ARMATURE_DATA")
        col.operator("faceforge.export_gltf", icon="FILE_3D")


def _wrap(text: str, width: int) -> list:
    import textwrap
    return textwrap.wrap(text, width) or [""]


CLASSES = (FACEFORGE_PT_main,)
