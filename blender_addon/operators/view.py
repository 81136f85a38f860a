"""Looking at the head through its photo / video cameras.

``faceforge.view_photo_camera`` looks through the head's camera (the scene camera when it is one of
the head's, else the primary photo's); ``faceforge.set_camera`` makes another of the head's cameras
(one per photo of a multi-photo head) the scene camera, with that photo's resolution.
"""

import bpy
from bpy.props import StringProperty

from ..runner import _fail_poll
from ..scene.lookup import CAMERA_RESOLUTION_PROP, camera_of, cameras_of, find_head


def use_camera(context, cam) -> None:
    """Make ``cam`` the scene camera (and its photo's size the render size); look through it in a 3D view."""
    scene = context.scene
    scene.camera = cam
    size = cam.get(CAMERA_RESOLUTION_PROP)
    if size is not None and len(size) == 2:
        scene.render.resolution_x, scene.render.resolution_y = int(size[0]), int(size[1])
    space = getattr(context, "space_data", None)
    if space is not None and getattr(space, "type", "") == "VIEW_3D" and space.region_3d is not None:
        space.region_3d.view_perspective = "CAMERA"
        try:
            bpy.ops.view3d.view_center_camera()
        except RuntimeError:
            pass   # no window region (e.g. a script override): the camera view is set anyway


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
        use_camera(context, camera_of(find_head(context), context.scene))
        return {"FINISHED"}


class FACEFORGE_OT_set_camera(bpy.types.Operator):
    bl_idname = "faceforge.set_camera"
    bl_label = "Use Photo Camera"
    bl_description = ("Make this photo's camera the scene camera (its photo behind the head, its size as the "
                      "render size) and look through it in the 3D view")
    bl_options = {"REGISTER", "UNDO"}

    camera: StringProperty(name="Camera", description="Name of one of the head's photo cameras", default="")

    @classmethod
    def poll(cls, context):
        head = find_head(context)
        if head is None:
            return _fail_poll(cls, "No FaceForge head in the scene: reconstruct one first")
        if not cameras_of(head):
            return _fail_poll(cls, f"'{head.name}' has no photo camera")
        return True

    def execute(self, context):
        head = find_head(context)
        cams = cameras_of(head)
        cam = next((c for c in cams if c.name == self.camera), None) if self.camera else None
        if cam is None and not self.camera and cams:   # no name: step to the next camera
            current = context.scene.camera
            cam = cams[(cams.index(current) + 1) % len(cams)] if current in cams else cams[0]
        if cam is None:
            self.report({"ERROR"}, f"'{self.camera}' is not one of {head.name}'s cameras")
            return {"CANCELLED"}
        use_camera(context, cam)
        self.report({"INFO"}, f"Scene camera: {cam.name}")
        return {"FINISHED"}


CLASSES = (FACEFORGE_OT_view_photo_camera, FACEFORGE_OT_set_camera)
