"""The "FaceForge" sidebar tab, read top to bottom as a workflow:

    FaceForge   status: missing packages, the running job's progress bar + Cancel, the last result
    1. Model    Built-in / Custom (+ Validate), device
    2. Input    a photo, a folder of photos (+ texture size), a video (+ frame range, refinement, track file)
    3. Reconstruct  from Photo / from Photos / Track Video / Import Track / Implicit Head from Video; cameras
    4. Rig      what the head has: expression shape keys (editable; Import ARKit Recording), armature
    5. Stylize  Fit Codes to Mesh; Learn Style from a (neutral, sculpt) pair; Apply Style to any head
    6. Export   FBX rig / glTF

Steps that are not possible yet are drawn disabled with a hint saying why.
"""

from __future__ import annotations

import os

import bpy

from .. import dependencies, preferences, runner
from ..widgets import draw_job_status, draw_path, hint as _hint
from ..scene.lookup import camera_of, cameras_of, find_head, rig_of

CATEGORY = "FaceForge"


class FACEFORGE_PT_main(bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_main"
    bl_label = "FaceForge"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY

    @classmethod
    def poll(cls, context):
        return hasattr(context.scene, "faceforge")

    def draw(self, context):
        layout = self.layout
        message = dependencies.missing_message()
        if message:
            box = layout.box()
            _hint(box, message, icon="ERROR", alert=True)
            op = box.operator("preferences.addon_show", text="Open FaceForge Preferences", icon="PREFERENCES")
            op.module = preferences.ADDON_ID
        draw_job_status(layout, context)


class _Step:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_parent_id = "FACEFORGE_PT_main"

    @classmethod
    def poll(cls, context):
        return hasattr(context.scene, "faceforge")


# what the embedded choices are, in one line each (no engine import needed to draw the panel)
EMBEDDED_SUMMARY = {"FULL_HEAD": "Full head: eyes, teeth, UVs, 57 ARKit shapes",
                    "BUILTIN": "Face mask: 468 vertices, fastest"}


class FACEFORGE_PT_model(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_model"
    bl_label = "1. Model"

    def draw_header(self, context):
        self.layout.label(icon="MESH_MONKEY")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.faceforge
        layout.row().prop(settings, "model_source", expand=True)
        prefs = preferences.get_prefs(context)
        if settings.model_source == "CUSTOM":
            path = preferences.model_path(context)
            if path:
                draw_path(layout, path, icon="FILE")
                if prefs is not None:
                    preferences.draw_model_summary(layout, prefs)
                layout.operator("faceforge.validate_model", icon="CHECKMARK")
            else:
                _hint(layout, "No model file set: choose a FLAME .pkl or FaceForge .npz in the preferences",
                      icon="ERROR", alert=True)
            op = layout.operator("preferences.addon_show", text="Set Model File…", icon="PREFERENCES")
            op.module = preferences.ADDON_ID
        else:
            _hint(layout, EMBEDDED_SUMMARY.get(settings.model_source, "ready to use"), icon="CHECKMARK")
        if prefs is not None:
            layout.prop(prefs, "device")


class FACEFORGE_PT_input(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_input"
    bl_label = "2. Input"

    def draw_header(self, context):
        self.layout.label(icon="IMAGE_DATA")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.faceforge
        layout.prop(settings, "photo_path", text="Photo")
        if settings.faces_found > 1:      # the last reconstruction saw several faces: which one to fit
            row = layout.row(align=True)
            row.prop(settings, "face_index", text="Face")
            row.label(text=f"of {settings.faces_found}, 0 = leftmost")
        layout.prop(settings, "photos_dir", text="Photos")
        if settings.photos_dir:
            layout.prop(settings, "texture_size", text="Texture")
        layout.prop(settings, "video_path", text="Video")
        if settings.video_path:
            row = layout.row(align=True)
            row.prop(settings, "track_frame_start", text="Start")
            row.prop(settings, "track_frame_end", text="End")
            layout.prop(settings, "track_refine")
            layout.prop(settings, "track_save")


def _job_hint(layout) -> bool:
    """Why the engine buttons are greyed out right now (missing packages / a running job), if they are."""
    if dependencies.missing():
        _hint(layout, "Install the missing Python packages first (see above)", icon="ERROR")
        return True
    if runner.active_job() is not None:
        _hint(layout, "Another FaceForge job is running", icon="SORTTIME")
        return True
    return False


class FACEFORGE_PT_reconstruct(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_reconstruct"
    bl_label = "3. Reconstruct"

    def draw_header(self, context):
        self.layout.label(icon="USER")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.faceforge
        hints = []

        col = layout.column(align=True)
        col.scale_y = 1.4
        row = col.row(align=True)
        row.enabled = bool(settings.photo_path)
        op = row.operator("faceforge.reconstruct_photo", icon="USER")
        op.filepath = settings.photo_path
        op.face_index = settings.face_index
        if not settings.photo_path:
            hints.append("Choose a photo in 2. Input")

        # several photos: the folder from 2. Input, else "…" picks the files in the browser (never a dead button)
        op = col.operator("faceforge.reconstruct_photos", icon="OUTLINER_OB_CAMERA",
                          text="Reconstruct from Photos" if settings.photos_dir else "Reconstruct from Photos…")
        op.directory = settings.photos_dir
        op.texture_size = int(settings.texture_size)

        row = col.row(align=True)
        row.enabled = bool(settings.video_path)
        op = row.operator("faceforge.track_video", icon="TRACKER")
        op.filepath = settings.video_path
        op.frame_start = settings.track_frame_start
        op.frame_end = settings.track_frame_end
        op.refine = settings.track_refine
        op.save_track = settings.track_save
        if not settings.video_path:
            hints.append("Choose a video in 2. Input")
        col.operator("faceforge.import_track", icon="IMPORT", text="Import Track…")
        row = col.row(align=True)
        row.enabled = bool(settings.video_path)
        op = row.operator("faceforge.implicit_head_from_video", icon="META_BALL")
        op.filepath = settings.video_path
        if settings.track_path and os.path.isfile(bpy.path.abspath(settings.track_path)):
            op.track_file = settings.track_path

        if not _job_hint(layout):
            for h in hints:
                _hint(layout, h)

        head = find_head(context)
        if head is not None and head.get("faceforge_implicit_checkpoint"):
            layout.operator("faceforge.preview_implicit_head", icon="RENDER_STILL")
        row = layout.row()
        row.enabled = head is not None and camera_of(head) is not None
        row.operator("faceforge.view_photo_camera", text="View Photo Camera", icon="VIEW_CAMERA")  # fits the sidebar
        cams = cameras_of(head) if head is not None else []
        if len(cams) > 1:   # one camera per photo: switch the scene camera among them
            box = layout.box()
            box.label(text=f"{len(cams)} photo cameras", icon="OUTLINER_OB_CAMERA")
            flow = box.column(align=True)
            for cam in cams:
                current = context.scene.camera == cam
                op = flow.operator("faceforge.set_camera", text=cam.name,
                                   icon="RADIOBUT_ON" if current else "RADIOBUT_OFF", depress=current)
                op.camera = cam.name
        from ..operators.pins import draw_pin_panel      # corrections with pins: mode, locks, reset
        draw_pin_panel(layout, context, head)


class FACEFORGE_PT_rig(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_rig"
    bl_label = "4. Rig"

    def draw_header(self, context):
        self.layout.label(icon="ARMATURE_DATA")

    def draw(self, context):
        layout = self.layout
        head = find_head(context)
        if head is None:
            _hint(layout, "Reconstruct a head first")
            return
        layout.label(text=f"{head.name}: {len(head.data.vertices)} vertices", icon="OBJECT_DATA")
        keys = head.data.shape_keys
        if keys is not None and len(keys.key_blocks) > 1:
            layout.label(text=f"{len(keys.key_blocks) - 1} expression shape keys", icon="SHAPEKEY_DATA")
            layout.template_list("MESH_UL_shape_keys", "faceforge", keys, "key_blocks",
                                 head, "active_shape_key_index", rows=4)
            layout.operator("faceforge.import_arkit_recording", icon="IMPORT", text="Import ARKit Recording…")
        rig = rig_of(head)
        if rig is not None:
            layout.label(text=f"{rig.name}: {len(rig.data.bones)} bones", icon="BONE_DATA")
        else:
            layout.label(text="No bones in this model", icon="BONE_DATA")
        frames = head.get("faceforge_frames")
        if frames is not None and len(frames) == 2:   # a tracked head: keyed on every frame of its clip
            scene = context.scene
            layout.label(text=f"Animated: {int(frames[1]) - int(frames[0])} frames "
                              f"({scene.render.fps / scene.render.fps_base:.3g} fps)", icon="ANIM")


class FACEFORGE_PT_stylize(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_stylize"
    bl_label = "5. Stylize"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_header(self, context):
        self.layout.label(icon="BRUSH_DATA")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.faceforge
        # Fit Codes to Mesh: any head mesh (another topology too) -> the nearest head of the model
        if hasattr(bpy.types, "FACEFORGE_OT_fit_codes_to_mesh"):
            layout.operator("faceforge.fit_codes_to_mesh", icon="MOD_MESHDEFORM")
        box = layout.box()
        box.label(text="Learn a Style from One Sculpt", icon="SCULPTMODE_HLT")
        active = context.view_layer.objects.active
        others = [o for o in context.selected_objects if o != active]
        if active is not None and len(others) == 1:
            box.label(text=f"Neutral: {others[0].name}", icon="OBJECT_DATA")
            box.label(text=f"Sculpt: {active.name} (active)", icon="SCULPTMODE_HLT")
        else:
            _hint(box, "Select the neutral head, then Shift-click its stylized copy")
        box.prop(settings, "style_iterations")
        box.operator("faceforge.learn_style", icon="BRUSH_DATA")
        prefs = preferences.get_prefs(context)
        clip = prefs.clip_checkpoint if prefs is not None else ""
        if clip and os.path.isfile(bpy.path.abspath(clip)):
            box.label(text="CLIP terms on:", icon="CHECKMARK")
            draw_path(box, clip, icon="BLANK1")
        else:
            _hint(box, "CLIP terms off: no CLIP checkpoint in the preferences (geometric losses only)",
                  icon="INFO")
        box = layout.box()
        box.label(text="Apply a Style", icon="SHADERFX")
        box.prop(settings, "style_path", text="")
        col = box.column()
        col.enabled = bool(settings.style_path)
        col.operator("faceforge.apply_style", icon="DUPLICATE")


class FACEFORGE_PT_export(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_export"
    bl_label = "6. Export"

    def draw_header(self, context):
        self.layout.label(icon="EXPORT")

    def draw(self, context):
        layout = self.layout
        head = find_head(context)
        if head is None:
            _hint(layout, "Reconstruct a head first")
        else:
            layout.label(text=head.name, icon="OBJECT_DATA")
        col = layout.column(align=True)
        col.enabled = head is not None
        col.operator("faceforge.export_fbx", icon="ARMATURE_DATA")
        col.operator("faceforge.export_gltf", icon="FILE_3D")


CLASSES = (FACEFORGE_PT_main, FACEFORGE_PT_model, FACEFORGE_PT_input, FACEFORGE_PT_reconstruct,
           FACEFORGE_PT_rig, FACEFORGE_PT_stylize, FACEFORGE_PT_export)
