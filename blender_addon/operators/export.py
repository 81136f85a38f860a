"""Export the active FaceForge head (mesh + its armature) as FBX or glTF binary, shape keys kept.

Shape-key weights leave in [0, 1] (``scene.export_keys``: keys keyed outside it become _pos/_neg
pairs), since FBX/glTF readers clamp them. A tracked (animated) head exports its animation too: the
root bone's motion, the joints and the expression shape-key values on every frame of the scene range
(FBX: baked curves + blend-shape channels; glTF: one animation with node and morph-weight channels).
"""

import os

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from ..scene.export_keys import export_copy
from ..scene.lookup import find_head, rig_of
from ..scene.rollback import restore_selection


def _supported(op, kwargs: dict) -> dict:
    """Keep only the keyword arguments this Blender's exporter knows (options differ by version)."""
    known = set(op.get_rna_type().properties.keys())
    return {k: v for k, v in kwargs.items() if k in known}


def _has_animation(head, rig) -> bool:
    keys = head.data.shape_keys
    for owner in (rig, head, keys):
        ad = getattr(owner, "animation_data", None) if owner is not None else None
        if ad is not None and (ad.action is not None or len(ad.nla_tracks) > 0):
            return True
    return False


class _ExportHead:
    """Shared part: select the head and its rig only, export, restore the user's selection."""

    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        if find_head(context) is None:
            if hasattr(cls, "poll_message_set"):
                cls.poll_message_set("No FaceForge head in the scene: reconstruct one first")
            return False
        return True

    def invoke(self, context, event):
        head = find_head(context)
        if head is not None and not self.filepath:
            self.filepath = bpy.path.clean_name(head.name) + self.filename_ext
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        head = find_head(context)
        if head is None:
            self.report({"ERROR"}, "No FaceForge head in the scene: reconstruct one first.")
            return {"CANCELLED"}
        rig = rig_of(head)
        objs = [head] + ([rig] if rig is not None else [])
        view_layer = context.view_layer
        for o in objs:
            if view_layer.objects.get(o.name) is None or not o.visible_get(view_layer=view_layer):
                self.report({"ERROR"}, f"'{o.name}' is hidden or not in this view layer: unhide it to export.")
                return {"CANCELLED"}
        path = bpy.path.ensure_ext(bpy.path.abspath(self.filepath), self.filename_ext)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        active = view_layer.objects.active
        selected = [o for o in view_layer.objects if o.select_get()]
        try:
            if active is not None and active.mode != "OBJECT":
                bpy.ops.object.mode_set(mode="OBJECT")
            for o in selected:
                o.select_set(False)
            # keys keyed outside 0..1 leave as _pos/_neg pairs that readers don't clamp (a temporary copy)
            with export_copy(context, head) as target:
                for o in [target] + objs[1:]:
                    o.select_set(True)
                view_layer.objects.active = target
                self.export(context, path, target, rig)
        except Exception as e:
            self.report({"ERROR"}, f"Export failed: {e}")
            return {"CANCELLED"}
        finally:
            restore_selection(view_layer, active, selected)
        self.report({"INFO"}, f"Exported '{head.name}' to {path}")
        return {"FINISHED"}


class FACEFORGE_OT_export_fbx(_ExportHead, bpy.types.Operator, ExportHelper):
    bl_idname = "faceforge.export_fbx"
    bl_label = "Export FBX Rig"
    bl_description = ("Export the FaceForge head with its expression shape keys and armature as FBX "
                      "(for game engines and other 3D tools)")
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})

    def export(self, context, path, head, rig):
        op = bpy.ops.export_scene.fbx
        op(**_supported(op, dict(
            filepath=path,
            use_selection=True,
            object_types={"MESH", "ARMATURE"},
            use_mesh_modifiers=False,       # applying modifiers would drop the shape keys
            add_leaf_bones=False,
            mesh_smooth_type="FACE",
            use_custom_props=True,
            armature_nodetype="NULL",
            bake_anim=_has_animation(head, rig),
            bake_anim_use_all_bones=True,
            bake_anim_use_nla_strips=False,
            bake_anim_use_all_actions=False,  # only what the head plays, not every action in the file
            bake_anim_force_startend_keying=True,
            bake_anim_step=1.0,
            bake_anim_simplify_factor=0.0,    # keep every frame's key: the track is the ground truth
            path_mode="COPY",
            embed_textures=True,
        )))


class FACEFORGE_OT_export_gltf(_ExportHead, bpy.types.Operator, ExportHelper):
    bl_idname = "faceforge.export_gltf"
    bl_label = "Export glTF Binary"
    bl_description = "Export the FaceForge head with its morph targets and skin as a binary glTF (.glb)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    def export(self, context, path, head, rig):
        op = bpy.ops.export_scene.gltf
        animated = _has_animation(head, rig)
        op(**_supported(op, dict(
            filepath=path,
            export_format="GLB",
            use_selection=True,
            export_morph=True,
            export_skins=rig is not None,
            export_apply=False,             # keep the shape keys
            export_animations=animated,
            # one animation on the scene's timeline: bone motion + morph weights together (3.6+)
            export_animation_mode="SCENE",
            export_nla_strips=False,          # up to 3.5: the head's actions merged into one animation
            export_morph_animation=True,      # 3.6+ (older: shape-key animation always follows export_morph)
            export_frame_range=True,          # the tracked frames only
            export_force_sampling=True,
            export_optimize_animation_size=False,
            export_def_bones=False,
            export_anim_single_armature=True,
            export_anim_scene_split_object=False,   # 4.2+: one animation, not one per object
            export_cameras=False,
            export_lights=False,
            export_extras=True,
            export_yup=True,
            export_vertex_color="MATERIAL",  # 4.2+
            export_colors=True,              # up to 4.1
        )))


CLASSES = (FACEFORGE_OT_export_fbx, FACEFORGE_OT_export_gltf)
