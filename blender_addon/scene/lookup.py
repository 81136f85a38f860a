"""Finding FaceForge's objects in a scene (no numpy: used while drawing and polling)."""

from __future__ import annotations

HEAD_PROP = "faceforge_head"
RIG_PROP = "faceforge_rig"
CAMERA_PROP = "faceforge_camera"


def find_head(context):
    """The FaceForge head the user means: the active object (or its rig's head), else the first in the scene."""
    def head_of(o):
        if o is None:
            return None
        if o.get(HEAD_PROP):
            return o
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


def camera_of(head_obj):
    """The photo camera built with ``head_obj`` (same collection), or None."""
    for coll in head_obj.users_collection:
        for o in coll.objects:
            if o.type == "CAMERA" and o.get(CAMERA_PROP) and o.name.startswith(head_obj.name):
                return o
    for coll in head_obj.users_collection:
        for o in coll.objects:
            if o.type == "CAMERA" and o.get(CAMERA_PROP):
                return o
    return None
