"""``faceforge.view_photo_camera``: look at the head through the camera that matches the photo."""

import bpy

from ..runner import _fail_poll
from ..scene.lookup import camera_of, find_head


class FACEFORGE_OT_view_photo_camera(bpy.types.Operator):
    bl_idname = "faceforge.view_photo_camera"
    bl_label = "View Through Photo Camera"
    bl_description = ("Make the head's photo camera the scene camera and look through it in this 3D view: "
                      "the photo shows behind the head, so the fit can be checked")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        head = find_head(context)
        if head is None:
            return _fail_poll(cls, "No FaceForge head in the scene: reconstruct one first")
        if camera_of(head) is None:
            return _fail_poll(cls, f"'{head.name}' has no photo camera")
        if context.area is None or context.area.type != "VIEW_3D":
            return _fail_poll(cls, "Run it from a 3D viewport")
        return True

    def execute(self, context):
        cam = camera_of(find_head(context))
        context.scene.camera = cam
        rv3d = context.space_data.region_3d
        rv3d.view_perspective = "CAMERA"
        try:
            bpy.ops.view3d.view_center_camera()
        except RuntimeError:
            pass   # no window region (e.g. a script override): the camera view is set anyway
        return {"FINISHED"}


CLASSES = (FACEFORGE_OT_view_photo_camera,)
