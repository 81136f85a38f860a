"""Scene side of stylization: read heads' vertices in the model's frame, and build the stylized copy.

The stylized character is a copy of the head (and of its rig and origin empty) that shares the
original's actions, so a tracked clip or an ARKit recording keyed on the head plays on both; only
its vertices and shape-key offsets are new. It gets its own collection beside the head's.
"""

from __future__ import annotations

import numpy as np

import bpy
from mathutils import Vector

from .head_builder import to_blender
from .lookup import HEAD_PROP, ORIGIN_PROP, rig_of
from .placement import BOUNDS_PROP, find_place, scene_obstacles
from .rollback import SceneSnapshot

STYLE_PROP = "faceforge_style"              # on a stylized head: the style's name
STYLED_FROM_PROP = "faceforge_styled_from"  # ... and the head it was made from


def from_blender(points: np.ndarray) -> np.ndarray:
    """Blender axes -> model axes (the inverse of ``head_builder.to_blender``)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def rest_vertices(obj) -> np.ndarray:
    """(V, 3) the mesh's rest shape in its own (local) coordinates, model axes: the shape keys'
    reference key when it has shape keys (what a sculpt on the Basis changes), else the vertices."""
    if obj is None or obj.type != "MESH":
        raise TypeError(f"{getattr(obj, 'name', obj)!r} is not a mesh object")
    mesh = obj.data
    keys = mesh.shape_keys
    src = keys.reference_key.data if keys is not None else mesh.vertices
    co = np.empty(len(src) * 3, dtype=np.float32)
    src.foreach_get("co", co)
    return from_blender(co.reshape(-1, 3))


def shape_key_names(obj) -> list:
    keys = obj.data.shape_keys
    if keys is None:
        return []
    return [kb.name for kb in keys.key_blocks if kb != keys.reference_key]


def _origin_of(obj):
    o = obj.parent
    while o is not None:
        if o.get(ORIGIN_PROP):
            return o
        o = o.parent
    return None


def _box(origin, head) -> tuple:
    if origin is not None and origin.get(BOUNDS_PROP) is not None and len(origin[BOUNDS_PROP]) == 6:
        b = [float(x) for x in origin[BOUNDS_PROP]]
        return np.array(b[:3]), np.array(b[3:])
    co = to_blender(rest_vertices(head))
    return co.min(0), co.max(0)


def build_stylized_head(context, head, neutral: np.ndarray, deltas: np.ndarray, key_names, style_name: str):
    """A copy of ``head`` (with its rig and origin empty, sharing their actions) whose rest shape is
    ``neutral`` (V, 3, model axes) and whose shape key ``key_names[k]`` is ``neutral + deltas[k]``.

    Placed beside the head in a collection of its own, clear of other objects. On any error the
    scene is left as it was. Returns the new head object."""
    snap = SceneSnapshot(context)
    try:
        name = f"{head.name}_{style_name}"
        parents = [c for c in head.users_collection]
        parent_coll = None
        for c in bpy.data.collections:             # the collection holding the head's collection
            if any(p.name in c.children for p in parents):
                parent_coll = c
                break
        coll = bpy.data.collections.new(name)
        (parent_coll.children if parent_coll is not None else context.scene.collection.children).link(coll)

        origin = _origin_of(head)
        arm = rig_of(head)
        new_origin = None
        if origin is not None:
            new_origin = origin.copy()
            new_origin.name = f"{name}_origin"
            coll.objects.link(new_origin)
        new_arm = None
        if arm is not None:
            new_arm = arm.copy()               # shares the armature data and its action
            new_arm.name = f"{name}_rig"
            coll.objects.link(new_arm)
            if new_origin is not None and arm.parent == origin:
                new_arm.parent = new_origin
        new_head = head.copy()
        new_head.data = head.data.copy()       # its own mesh and shape keys (keyed by the same action)
        new_head.name = name
        new_head.data.name = name
        coll.objects.link(new_head)
        if new_arm is not None:
            for m in new_head.modifiers:
                if m.type == "ARMATURE" and m.object == arm:
                    m.object = new_arm
            if head.parent == arm:
                new_head.parent = new_arm
        elif new_origin is not None and head.parent == origin:
            new_head.parent = new_origin
        _set_shape(new_head, neutral, deltas, key_names)
        new_head[HEAD_PROP] = 1
        new_head[STYLE_PROP] = str(style_name)
        new_head[STYLED_FROM_PROP] = head.name

        # beside the original, clear of everything else
        if new_origin is not None:
            lo, hi = _box(new_origin, new_head)
            new_lo = to_blender(neutral).min(0)
            new_hi = to_blender(neutral).max(0)
            lo, hi = np.minimum(lo, new_lo), np.maximum(hi, new_hi)
            new_origin[BOUNDS_PROP] = [float(x) for x in list(lo) + list(hi)]
            start = np.array(origin.matrix_world.translation) + np.array([1.3 * float(hi[0] - lo[0]), 0.0, 0.0])
            obstacles = scene_obstacles(context, skip=[new_origin, new_arm, new_head])
            location, _ = find_place(start, lo, hi, [], obstacles)
            new_origin.parent = origin.parent
            new_origin.matrix_world.translation = Vector([float(x) for x in location])
        view_layer = context.view_layer
        for o in view_layer.objects:
            if o.select_get():
                o.select_set(False)
        new_head.select_set(True)
        view_layer.objects.active = new_head
        context.view_layer.update()
    except BaseException:
        snap.rollback()
        raise
    return new_head


def _set_shape(obj, neutral: np.ndarray, deltas: np.ndarray, key_names) -> None:
    mesh = obj.data
    V = len(mesh.vertices)
    if neutral.shape != (V, 3):
        raise ValueError(f"stylized vertices {neutral.shape} do not match the mesh ({V} vertices)")
    basis = np.ascontiguousarray(to_blender(neutral), dtype=np.float32)
    mesh.vertices.foreach_set("co", basis.ravel())
    keys = mesh.shape_keys
    if keys is None:
        mesh.update()
        return
    keys.reference_key.data.foreach_set("co", basis.ravel())
    index = {n: k for k, n in enumerate(key_names)}
    for kb in keys.key_blocks:
        if kb == keys.reference_key:
            continue
        k = index.get(kb.name)
        co = basis if k is None else np.ascontiguousarray(to_blender(neutral + deltas[k]), dtype=np.float32)
        kb.data.foreach_set("co", co.ravel())
    mesh.update()
