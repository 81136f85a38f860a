"""Looking at the head through its photo / video cameras.

``faceforge.view_photo_camera`` looks through the head's camera (the scene camera when it is one of
the head's, else the primary photo's); ``faceforge.set_camera`` makes another of the head's cameras
(one per photo of a multi-photo head) the scene camera, with that photo's resolution. Both frame
the camera to the part of the 3D view that is not under the toolbar, sidebar or tool header
(which overlap the view), so the whole photo is visible. ``faceforge.copy_path`` is the panel's
path button: the full path as its tooltip, a click copies it.
"""

import math

import bpy
from bpy.props import StringProperty

from ..runner import _fail_poll
from ..scene.lookup import CAMERA_RESOLUTION_PROP, camera_of, cameras_of, find_head

FRAME_MARGIN = 12       # pixels (at UI scale 1) left around the framed photo
CAMZOOM_MIN, CAMZOOM_MAX = -30.0, 600.0          # Blender's RV3D_CAMZOOM_MIN / MAX
_SHOWN = {"UI": "show_region_ui", "TOOLS": "show_region_toolbar", "TOOL_HEADER": "show_region_tool_header",
          "HEADER": "show_region_header"}


def view_region(area):
    """The 3D view's main (WINDOW) region: the one holding the space's RegionView3D (quad view: the camera one)."""
    space = area.spaces.active
    windows = [r for r in area.regions if r.type == "WINDOW"]
    for r in windows:
        if getattr(r, "data", None) is not None and r.data == space.region_3d:
            return r
    return windows[-1] if windows else None


def visible_rect(area, region) -> tuple:
    """(x0, y0, x1, y1), in ``region``'s pixels, of the part not covered by the regions drawn over it
    (with Region Overlap the toolbar, sidebar and tool header lie on top of the 3D view)."""
    space = area.spaces.active
    x0, y0, x1, y1 = 0, 0, region.width, region.height
    for r in area.regions:
        if r == region or r.type in ("WINDOW", "HUD") or r.width <= 1 or r.height <= 1:
            continue
        if not getattr(space, _SHOWN.get(r.type, ""), True):
            continue
        ox0, ox1 = max(r.x, region.x), min(r.x + r.width, region.x + region.width)
        oy0, oy1 = max(r.y, region.y), min(r.y + r.height, region.y + region.height)
        if ox1 <= ox0 or oy1 <= oy0:
            continue                     # beside the view, not over it (Region Overlap off)
        if r.height >= region.height / 2:            # a side bar
            if r.x + r.width / 2 < region.x + region.width / 2:
                x0 = max(x0, ox1 - region.x)
            else:
                x1 = min(x1, ox0 - region.x)
        elif r.y + r.height / 2 > region.y + region.height / 2:    # a bar along the top
            y1 = min(y1, oy0 - region.y)
        else:
            y0 = max(y0, oy1 - region.y)
    return x0, y0, x1, y1


def zoom_to_fac(camzoom: float) -> float:
    """Blender's BKE_screen_view3d_zoom_to_fac: camera-view zoom -> scale of the camera frame."""
    return (math.sqrt(2.0) + camzoom / 50.0) ** 2 / 4.0


def fac_to_zoom(fac: float) -> float:
    return (2.0 * math.sqrt(fac) - math.sqrt(2.0)) * 50.0


def camera_frame_size(scene, cam_data, region) -> tuple:
    """Size in pixels of the camera frame in ``region`` at zoom factor 1 (as Blender's
    ED_view3d_calc_camera_border: render and view sensor fits, pixel aspect)."""
    r = scene.render
    xsch, ysch = float(r.resolution_x), float(r.resolution_y)
    xasp, yasp = float(r.pixel_aspect_x), float(r.pixel_aspect_y)
    ycor = yasp / xasp
    fit = cam_data.sensor_fit
    horizontal = fit == "HORIZONTAL" or (fit == "AUTO" and xsch * xasp >= ysch * yasp)
    viewfac_render = xsch if horizontal else ycor * ysch
    view_horizontal = fit == "HORIZONTAL" or (fit == "AUTO" and region.width >= region.height)
    viewfac_view = float(region.width if view_horizontal else region.height)
    k = viewfac_view / viewfac_render
    return k * xsch, k * ycor * ysch


def frame_camera(context, area, region, rv3d, cam) -> None:
    """Zoom and pan the camera view so the whole camera frame sits in the region's visible part."""
    x0, y0, x1, y1 = visible_rect(area, region)
    margin = FRAME_MARGIN * max(0.5, float(getattr(context.preferences.system, "ui_scale", 1.0) or 1.0))
    w1, h1 = camera_frame_size(context.scene, cam.data, region)
    fac = min((x1 - x0 - 2 * margin) / w1, (y1 - y0 - 2 * margin) / h1)
    zoom = min(CAMZOOM_MAX, max(CAMZOOM_MIN, fac_to_zoom(max(fac, 1e-3))))
    fac = zoom_to_fac(zoom)
    rv3d.view_camera_zoom = zoom
    # the frame's centre sits at winx / 2 - 2 * fac * winx * camdx (BKE_camera_params_from_view3d)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    rv3d.view_camera_offset = ((region.width / 2.0 - cx) / (2.0 * fac * region.width),
                               (region.height / 2.0 - cy) / (2.0 * fac * region.height))
    region.tag_redraw()


def use_camera(context, cam) -> None:
    """Make ``cam`` the scene camera (and its photo's size the render size); look through it in a 3D
    view, framed to the view's visible part."""
    scene = context.scene
    scene.camera = cam
    size = cam.get(CAMERA_RESOLUTION_PROP)
    if size is not None and len(size) == 2:
        scene.render.resolution_x, scene.render.resolution_y = int(size[0]), int(size[1])
    space = getattr(context, "space_data", None)
    area = getattr(context, "area", None)
    if space is None or getattr(space, "type", "") != "VIEW_3D" or space.region_3d is None:
        return
    space.region_3d.view_perspective = "CAMERA"
    region = view_region(area) if area is not None else None
    if region is not None and region.width > 1 and region.height > 1:   # none in a script override
        frame_camera(context, area, region, space.region_3d, cam)


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


class FACEFORGE_OT_copy_path(bpy.types.Operator):
    bl_idname = "faceforge.copy_path"
    bl_label = "Copy Path"
    bl_description = "Copy this path to the clipboard (the panel shows it shortened to fit)"
    bl_options = {"INTERNAL"}

    path: StringProperty(name="Path", description="The full path", default="", options={"SKIP_SAVE"})

    @classmethod
    def description(cls, context, properties):
        return f"{properties.path}\n(click to copy)" if properties.path else cls.bl_description

    def execute(self, context):
        context.window_manager.clipboard = self.path
        self.report({"INFO"}, f"Copied {self.path}")
        return {"FINISHED"}


CLASSES = (FACEFORGE_OT_view_photo_camera, FACEFORGE_OT_set_camera, FACEFORGE_OT_copy_path)
