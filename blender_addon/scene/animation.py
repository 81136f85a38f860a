"""Keyframes in bulk, on every Blender FaceForge supports (3.4 ... 5.0), and the tracked head's animation.

Actions changed twice: Blender 4.4 introduced *slotted* (layered) actions, where F-curves live in a
channelbag (``action.layers[0].strips[0].channelbag(slot)``) for the slot the animated datablock
uses; Blender 5.0 removed the old ``Action.fcurves``. ``new_action`` + ``fcurve`` hide the
difference; ``write_keys`` fills an F-curve with all its keys at once (``keyframe_points.add`` +
``foreach_set``), never one ``keyframe_insert`` per frame.

Frame convention: **Blender frame = clip frame + 1.** Videos count frames from 0 (the track file's
``frame_start`` and ``core``'s ``frame_range`` do), Blender's timeline from 1. Clip frame ``c`` is
keyed at scene frame ``c + 1``, and the video background (a movie clip with its default
``frame_start = 1``) shows clip frame ``c`` at that same scene frame, so the head sits on the
right picture on every frame. A track of clip frames ``[s, s + T)`` sets the scene range to
``s + 1 .. s + T``.

Head motion: frame ``t``'s model-space vertices are ``R_t @ skinned_t + t_t`` (core's
``HeadAnimation``). The root bone carries that rigid motion as location + quaternion keys in its
rest frame (``P_t = B^-1 M_t B``, ``B`` the bone's rest matrix, ``M_t`` the motion in Blender axes),
the other bones carry ``joint_pose`` as quaternion keys, and the shape keys their values.
"""

from __future__ import annotations

import numpy as np

import bpy

SLOTTED = bpy.app.version >= (4, 4, 0)     # slotted actions: layers / strips / channelbags
_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
_INTERPOLATION = {k.identifier: k.value for k in bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items}


# ----------------------------------------------------------------------------- version-aware F-curves
def _id_type(owner) -> str:
    """'OBJECT', 'KEY', ... (``ID.id_type`` is missing in 3.x: the RNA class name is the same word)."""
    return getattr(owner, "id_type", None) or type(owner).__name__.upper()


def new_action(owner, name: str):
    """A new action assigned to ``owner`` (an ID: object, shape-key block, ...), with a slot for it on 4.4+."""
    ad = owner.animation_data or owner.animation_data_create()
    action = bpy.data.actions.new(name)
    if SLOTTED:
        slot = action.slots.new(id_type=_id_type(owner), name=owner.name)
        ad.action = action
        if ad.action_slot != slot:
            ad.action_slot = slot
    else:
        action.id_root = _id_type(owner)
        ad.action = action
    return action


def _channelbag(action, slot=None):
    if slot is None:
        if len(action.slots) == 0:
            raise ValueError(f"Action '{action.name}' has no slot: create it with new_action()")
        slot = action.slots[0]
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(slot, ensure=True)


def _group(groups, name: str):
    for g in groups:
        if g.name == name:
            return g
    return groups.new(name)


def fcurve(action, data_path: str, index: int = 0, group: str = "", slot=None):
    """The F-curve for ``(data_path, index)`` in ``action`` (created, in ``group``, if missing).

    Blender 3.4 - 4.3: ``action.fcurves``; 4.4+ (and 5.0, where ``Action.fcurves`` is gone): the
    channelbag of ``slot`` (default: the action's first slot) in the first layer's keyframe strip.
    """
    if SLOTTED:
        bag = _channelbag(action, slot)
        fc = bag.fcurves.find(data_path, index=index)
        if fc is None:
            fc = bag.fcurves.new(data_path, index=index)
            if group:
                fc.group = _group(bag.groups, group)
        return fc
    fc = action.fcurves.find(data_path, index=index)
    if fc is None:
        fc = action.fcurves.new(data_path, index=index, action_group=group)
    return fc


def fcurves_of(action) -> list:
    """Every F-curve of ``action`` (all slots and layers on 4.4+)."""
    if not SLOTTED:
        return list(action.fcurves)
    out = []
    for layer in action.layers:
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                out.extend(bag.fcurves)
    return out


def write_keys(fc, frames, values, interpolation: str = "LINEAR") -> None:
    """Append one key per (frame, value) to ``fc`` in bulk and set their interpolation."""
    frames = np.asarray(frames, dtype=np.float32).ravel()
    values = np.asarray(values, dtype=np.float32).ravel()
    n = len(frames)
    if n != len(values):
        raise ValueError(f"{n} frames but {len(values)} values")
    if n == 0:
        return
    points = fc.keyframe_points
    first = len(points)
    points.add(n)
    co = np.empty(2 * (first + n), dtype=np.float32)
    if first:
        points.foreach_get("co", co)
    co[2 * first::2], co[2 * first + 1::2] = frames, values
    points.foreach_set("co", co)
    interp = np.empty(first + n, dtype=np.int32)
    if first:
        points.foreach_get("interpolation", interp)
    interp[first:] = _INTERPOLATION[interpolation]
    points.foreach_set("interpolation", interp)
    # handles on the keys (they do not affect LINEAR segments; update() recomputes auto handles)
    for side in ("handle_left", "handle_right"):
        points.foreach_set(side, co)
    fc.update()


# ----------------------------------------------------------------------------- rotations (numpy, vectorised)
def matrices_to_quaternions(R: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations -> (T, 4) unit quaternions (w, x, y, z), signs kept continuous in time."""
    R = np.asarray(R, dtype=np.float64)
    T = len(R)
    q = np.empty((T, 4))
    tr = np.trace(R, axis1=1, axis2=2)
    # Shepperd: pick the largest of (w, x, y, z) to divide by
    cand = np.stack([tr, R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], 1)
    k = np.argmax(cand, 1)
    for i in range(T):
        m = R[i]
        if k[i] == 0:
            s = 2.0 * np.sqrt(max(1.0 + tr[i], 1e-12))
            q[i] = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
        elif k[i] == 1:
            s = 2.0 * np.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 1e-12))
            q[i] = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
        elif k[i] == 2:
            s = 2.0 * np.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 1e-12))
            q[i] = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
        else:
            s = 2.0 * np.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 1e-12))
            q[i] = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return continuous_quaternions(q)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """Flip signs so neighbouring keys are on the same hemisphere (linear interpolation takes the short way)."""
    q = np.array(q, dtype=np.float64)
    if len(q) and q[0, 0] < 0:
        q[0] = -q[0]
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    return q


def axis_angle_to_quaternions(aa: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(T, 3) axis-angle in model axes -> (T, 4) quaternions in a bone's rest frame.

    ``frame`` is the 3x3 that maps model axes to the bone's local axes (rest^T @ MODEL_TO_BLENDER)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=1)
    safe = np.where(theta > 1e-12, theta, 1.0)
    axis = (aa / safe[:, None]) @ np.asarray(frame, dtype=np.float64).T
    q = np.concatenate([np.cos(theta / 2)[:, None], np.sin(theta / 2)[:, None] * axis], 1)
    q[theta <= 1e-12] = (1.0, 0.0, 0.0, 0.0)
    return continuous_quaternions(q)


# ----------------------------------------------------------------------------- the tracked head
def scene_frames(anim) -> np.ndarray:
    """Blender frame of each animation frame (clip frame + 1, see the module docstring)."""
    return np.arange(anim.n_frames, dtype=np.float64) + int(anim.frame_start) + 1


def fps_settings(fps: float) -> tuple:
    """Video fps -> Blender's (fps integer, fps_base): 23.976 -> (24, 1.001), 30 -> (30, 1.0)."""
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        fps = 25.0
    whole = max(1, int(round(fps)))
    base = whole / fps
    return whole, (1.0 if abs(base - 1.0) < 1e-6 else base)


def animate_head(context, rig, mesh_obj, arm_obj, model_to_blender: np.ndarray) -> dict:
    """Key ``rig.animation`` on the head's shape keys and armature and set the scene's fps and range.

    Returns ``{"shape_keys": action or None, "armature": action or None, "frames": (first, last)}``
    (+ ``"visibility"``: the mesh's action hiding it on frames without a tracked face, when there are any).
    """
    anim = rig.animation
    T = anim.n_frames
    frames = scene_frames(anim)
    name = mesh_obj.name
    out = {"shape_keys": None, "armature": None, "frames": (int(frames[0]), int(frames[-1]))}

    # expressions: one F-curve per shape key on the mesh's Key datablock
    keys = mesh_obj.data.shape_keys
    values = np.asarray(anim.shape_key_values, dtype=np.float64)
    if keys is not None and values.size and len(rig.shape_key_names):
        lim = float(min(10.0, max(3.0, np.ceil(np.abs(values).max()))))
        action = new_action(keys, f"{name}_expressions")
        for k, key_name in enumerate(rig.shape_key_names):
            kb = keys.key_blocks[str(key_name)]
            kb.slider_max = max(kb.slider_max, lim)     # keyed values are clamped to the slider range
            kb.slider_min = min(kb.slider_min, -lim)
            fc = fcurve(action, f'key_blocks["{_escape(key_name)}"].value', 0, "Expressions")
            write_keys(fc, frames, np.clip(values[:, k], -lim, lim))
        out["shape_keys"] = action

    # rigid head motion on the root bone, joint rotations on the others
    if arm_obj is not None:
        A = np.asarray(model_to_blender, dtype=np.float64)
        action = new_action(arm_obj, f"{name}_motion")
        bones = arm_obj.pose.bones
        names = list(rig.bones.names)
        root = bones[str(names[0])]
        root.rotation_mode = "QUATERNION"
        B = np.array(root.bone.matrix_local, dtype=np.float64)
        W = np.array(arm_obj.matrix_world, dtype=np.float64)
        M = np.tile(np.eye(4), (T, 1, 1))
        M[:, :3, :3] = A @ np.asarray(anim.root_rotation, dtype=np.float64) @ A.T
        M[:, :3, 3] = np.asarray(anim.root_translation, dtype=np.float64) @ A.T
        P = np.linalg.inv(B) @ np.linalg.inv(W) @ M @ W @ B       # (T, 4, 4) pose in the bone's rest frame
        group = str(names[0])
        path = f'pose.bones["{_escape(names[0])}"]'
        for i in range(3):
            write_keys(fcurve(action, f"{path}.location", i, group), frames, P[:, i, 3])
        q = matrices_to_quaternions(P[:, :3, :3])
        for i in range(4):
            write_keys(fcurve(action, f"{path}.rotation_quaternion", i, group), frames, q[:, i])
        if anim.joint_pose is not None and len(names) > 1:
            jp = np.asarray(anim.joint_pose, dtype=np.float64)
            for j in range(1, len(names)):
                pb = bones[str(names[j])]
                pb.rotation_mode = "QUATERNION"
                rest = np.array(pb.bone.matrix_local.to_3x3(), dtype=np.float64)
                qj = axis_angle_to_quaternions(jp[:, j - 1], rest.T @ A)
                path = f'pose.bones["{_escape(names[j])}"].rotation_quaternion'
                for i in range(4):
                    write_keys(fcurve(action, path, i, str(names[j])), frames, qj[:, i])
        out["armature"] = action

    # frames without a tracked face (long gaps, another person): the head is hidden, keyed on the
    # frames where that changes (constant interpolation: no half-visible frames)
    visible = getattr(anim, "visible", None)
    if visible is not None and not np.asarray(visible, bool).all():
        visible = np.asarray(visible, bool)
        changes = np.concatenate([[0], np.flatnonzero(visible[1:] != visible[:-1]) + 1])
        action = new_action(mesh_obj, f"{name}_visibility")
        for prop in ("hide_viewport", "hide_render"):
            write_keys(fcurve(action, prop, 0, "Visibility"), frames[changes], (~visible[changes]).astype(np.float64),
                       interpolation="CONSTANT")
        out["visibility"] = action

    # the scene plays the clip at its own rate over the tracked frames
    scene = context.scene
    scene.render.fps, scene.render.fps_base = fps_settings(anim.fps)
    scene.frame_start, scene.frame_end = out["frames"]
    scene.frame_set(out["frames"][0])
    return out


def _escape(name) -> str:
    return str(name).replace("\\", "\\\\").replace('"', '\\"')
