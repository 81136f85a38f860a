"""Finding FaceForge's objects in a scene (no numpy: used while drawing and polling)."""

from __future__ import annotations

HEAD_PROP = "faceforge_head"
RIG_PROP = "faceforge_rig"
CAMERA_PROP = "faceforge_camera"
CAMERA_HEAD_PROP = "faceforge_camera_of"          # on a camera: the head object it was built with (an ID reference)
CAMERA_RESOLUTION_PROP = "faceforge_resolution"   # on a camera: its photo / video size (width, height)
ORIGIN_PROP = "faceforge_origin"                  # on the empty that carries a head with its rig and cameras


def find_head(context):
    """The FaceForge head the user means: the active object (or its rig's head), else the first in the scene."""
    def head_of(o):
        if o is None:
            return None
        if o.get(HEAD_PROP):
            return o
        if o.get(ORIGIN_PROP):             # the empty the head, rig and cameras hang from
            for c in o.children:
                found = head_of(c) if (c.get(HEAD_PROP) or c.get(RIG_PROP)) else None
                if found is not None:
                    return found
            return None
        if o.get(RIG_PROP):
            for c in o.children:
                if c.get(HEAD_PROP):
                    return c
        if o.parent is not None and o.parent.get(RIG_PROP):
            return head_of(o.parent)
        return None

    view_layer = getattr(context, "view_layer", None)
    found = head_of(view_layer.objects.active) if view_layer is not None else None
    if found is not None:
        return found
    for o in getattr(context, "selected_objects", None) or []:
        found = head_of(o)
        if found is not None:
            return found
    scene = getattr(context, "scene", None)
    for o in (scene.objects if scene is not None else ()):
        if o.get(HEAD_PROP):
            return o
    return None


def rig_of(head_obj):
    """The armature object deforming ``head_obj`` (via its Armature modifier or parent), or None."""
    for m in head_obj.modifiers:
        if m.type == "ARMATURE" and m.object is not None:
            return m.object
    p = head_obj.parent
    return p if (p is not None and p.type == "ARMATURE") else None


def cameras_of(head_obj) -> list:
    """The photo / video cameras built with ``head_obj``: the primary (most frontal photo) first."""
    out, seen = [], set()
    for coll in head_obj.users_collection:
        for o in coll.objects:
            if o.type == "CAMERA" and o.get(CAMERA_PROP) and o.get(CAMERA_HEAD_PROP) == head_obj \
                    and o.as_pointer() not in seen:
                seen.add(o.as_pointer())
                out.append(o)
    if out:
        out.sort(key=lambda o: (not o.get("faceforge_primary", False), o.name))
        return out
    # heads built before cameras referenced them: match by name, then any FaceForge camera beside it
    for match in (lambda o: o.name.startswith(head_obj.name), lambda o: True):
        for coll in head_obj.users_collection:
            for o in coll.objects:
                if o.type == "CAMERA" and o.get(CAMERA_PROP) and o.get(CAMERA_HEAD_PROP) is None and match(o):
                    return [o]
    return []


def camera_of(head_obj, scene=None):
    """The head's camera to look through: the scene camera if it is one of them, else the primary one."""
    cams = cameras_of(head_obj)
    if scene is not None and scene.camera is not None and scene.camera in cams:
        return scene.camera
    return cams[0] if cams else None
