"""All-or-nothing scene edits: snapshot bpy.data before, remove whatever is new on failure.

Used by the scene builder and the operators so that a failed reconstruction leaves the
file exactly as it was (no stray objects, meshes, materials, cameras, armatures, actions,
images, movie clips, collections or shape-key blocks; scene camera, resolution, fps, frame range,
current frame and selection restored).
"""

from __future__ import annotations

import bpy

# bpy.data collections whose new members are removed on rollback
ID_COLLECTIONS = (
    "objects", "meshes", "materials", "cameras", "armatures", "actions", "images",
    "collections", "shape_keys", "node_groups", "textures", "worlds", "lights", "movieclips",
)


def _ids(name):
    coll = getattr(bpy.data, name, None)
    return {} if coll is None else {i.as_pointer(): i for i in coll}


class SceneSnapshot:
    """What existed before an edit, and the scene settings the edit may change."""

    def __init__(self, context):
        self.scene = context.scene
        self.view_layer = context.view_layer
        self.before = {name: set(_ids(name)) for name in ID_COLLECTIONS}
        scene = self.scene
        self.camera = scene.camera
        self.resolution = (scene.render.resolution_x, scene.render.resolution_y)
        self.timing = (scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end)
        self.frame = scene.frame_current
        self.scene_children = {c.as_pointer() for c in scene.collection.children}
        self.active = self.view_layer.objects.active
        self.selected = [o for o in self.view_layer.objects if o is not None and o.select_get()]

    def new_ids(self) -> list:
        out = []
        for name in ID_COLLECTIONS:
            old = self.before[name]
            out.extend(i for p, i in _ids(name).items() if p not in old)
        return out

    def rollback(self) -> None:
        """Remove every datablock created since the snapshot and restore the scene settings."""
        scene = self.scene
        # leave edit/pose mode first so removing objects is safe
        obj = self.view_layer.objects.active
        if obj is not None and obj.mode != "OBJECT":
            try:
                bpy.ops.object.mode_set(mode="OBJECT")
            except RuntimeError:
                pass
        # collections that existed before but were linked to the scene by the edit
        for child in list(scene.collection.children):
            if child.as_pointer() not in self.scene_children and child.as_pointer() in self.before["collections"]:
                scene.collection.children.unlink(child)
        new = self.new_ids()
        objects = [i for i in new if isinstance(i, bpy.types.Object)]
        if objects:
            bpy.data.batch_remove(objects)
        rest = [i for i in self.new_ids()]
        if rest:
            bpy.data.batch_remove(rest)
        # anything batch_remove left (e.g. blocks freed along with their owner are gone already)
        for i in self.new_ids():
            coll = getattr(bpy.data, _collection_of(i), None)
            if coll is not None and hasattr(coll, "remove"):
                coll.remove(i)
        self.restore_settings()

    def restore_settings(self) -> None:
        scene = self.scene
        scene.camera = self.camera
        scene.render.resolution_x, scene.render.resolution_y = self.resolution
        scene.render.fps, scene.render.fps_base, start, end = self.timing
        scene.frame_start = start      # (Blender pushes the end up if needed, and end >= start always holds)
        scene.frame_end = end
        if scene.frame_current != self.frame:
            scene.frame_set(self.frame)
        restore_selection(self.view_layer, self.active, self.selected)


def _collection_of(idblock) -> str:
    for name, typ in (("objects", bpy.types.Object), ("meshes", bpy.types.Mesh),
                      ("materials", bpy.types.Material), ("cameras", bpy.types.Camera),
                      ("armatures", bpy.types.Armature), ("actions", bpy.types.Action),
                      ("images", bpy.types.Image), ("collections", bpy.types.Collection),
                      ("node_groups", bpy.types.NodeTree), ("textures", bpy.types.Texture),
                      ("movieclips", bpy.types.MovieClip)):
        if isinstance(idblock, typ):
            return name
    return ""


def restore_selection(view_layer, active, selected) -> None:
    """Select exactly ``selected`` (those still alive and in the view layer) and make ``active`` active."""
    objects = [o for o in view_layer.objects if o is not None]  # stale bases read as None right after removals
    alive = {o.as_pointer() for o in objects}
    keep = {o.as_pointer() for o in selected if _alive(o) and o.as_pointer() in alive}
    for o in objects:
        want = o.as_pointer() in keep
        if o.select_get() != want:
            try:
                o.select_set(want)
            except RuntimeError:
                pass
    view_layer.objects.active = active if (active is not None and _alive(active)
                                           and active.as_pointer() in alive) else None


def _alive(idblock) -> bool:
    try:
        idblock.name  # raises ReferenceError once the block was removed
        return True
    except ReferenceError:
        return False
