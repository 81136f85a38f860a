"""Key an ARKit recording (core ``KeyDrive`` + head rotations) onto an existing FaceForge head.

The shape keys get one new action (one F-curve per driven key), the head rotation a second one:
on the armature's root bone when the head has a rig (rotation only, about the bone's head, in the
armature's own axes), else on the head object's rotation (after its current rotation). Keys are
written in bulk through ``animation.py``'s version-aware helpers. Recording frame 0 lands on
``start``; at another scene rate than the recording's, keys are retimed (placed by time).

All or nothing: the caller snapshots the new datablocks (``SceneSnapshot``); this module also
puts back what it changes on existing ones (their action and slot, rotation mode and values,
slider ranges) if anything fails half-way.
"""

from __future__ import annotations

import numpy as np

from .animation import _escape, fcurve, fps_settings, matrices_to_quaternions, new_action, write_keys
from .head_builder import MODEL_TO_BLENDER
from .lookup import rig_of

GROUP = "ARKit"


def root_bone(arm_obj):
    """The armature's first parentless bone (FaceForge rigs have exactly one: 'root' / FLAME's global joint)."""
    for pb in arm_obj.pose.bones:
        if pb.parent is None:
            return pb
    return None


class _Undo:
    """Remembers attributes and animation assignments of existing datablocks, to put them back."""

    def __init__(self):
        self.items = []

    def attr(self, owner, name: str) -> None:
        value = getattr(owner, name)
        self.items.append((owner, name, tuple(value) if hasattr(value, "__len__") and not isinstance(value, str)
                           else value))

    def animation(self, owner) -> None:
        ad = owner.animation_data
        if ad is None:
            self.items.append((owner, None, None))
        else:
            slot = getattr(ad, "action_slot", None)
            self.items.append((owner, "animation_data", (ad.action, slot)))

    def restore(self) -> None:
        for owner, name, value in reversed(self.items):
            if name is None:
                owner.animation_data_clear()
            elif name == "animation_data":
                action, slot = value
                owner.animation_data.action = action
                if slot is not None and action is not None and owner.animation_data.action_slot != slot:
                    owner.animation_data.action_slot = slot
            else:
                setattr(owner, name, value)


def key_recording(context, head, drive, rotations, offsets, start: float, fps: float,
                  set_timing: bool = True) -> dict:
    """Key ``drive`` (a core ``KeyDrive``) and ``rotations`` ((T, 3, 3) model space, or None) on ``head``.

    ``offsets``: each row's frame at the recording's rate ``fps`` from the first row. With
    ``set_timing`` the scene takes the recording's fps and its frame range. Returns
    ``{"shape_keys": action, "rotation": action or None, "rotation_target": str, "frames": (first, last)}``."""
    scene = context.scene
    undo = _Undo()
    try:
        if set_timing:
            scene.render.fps, scene.render.fps_base = fps_settings(fps)
        scene_fps = scene.render.fps / scene.render.fps_base
        frames = start + np.asarray(offsets, np.float64) * (scene_fps / float(fps))
        near = np.round(frames)
        frames = np.where(np.abs(frames - near) < 1e-4, near, frames)   # retimed keys that land on frames
        out = {"shape_keys": None, "rotation": None, "rotation_target": "",
               "frames": (int(np.floor(frames[0])), int(np.ceil(frames[-1])))}

        keys = head.data.shape_keys
        undo.animation(keys)
        action = new_action(keys, f"{head.name}_arkit")
        values = np.asarray(drive.values, np.float64)
        for k, key_name in enumerate(drive.keys):
            kb = keys.key_blocks[key_name]
            lo, hi = float(values[:, k].min()), float(values[:, k].max())
            if lo < kb.slider_min or hi > kb.slider_max:     # keyed values are clamped to the slider range
                undo.attr(kb, "slider_min")
                undo.attr(kb, "slider_max")
                kb.slider_min = max(-10.0, min(kb.slider_min, np.floor(lo)))
                kb.slider_max = min(10.0, max(kb.slider_max, np.ceil(hi)))
            write_keys(fcurve(action, f'key_blocks["{_escape(key_name)}"].value', 0, GROUP), frames, values[:, k])
        out["shape_keys"] = action

        if rotations is not None:
            A = MODEL_TO_BLENDER
            M = A @ np.asarray(rotations, np.float64) @ A.T          # (T, 3, 3) in Blender axes
            arm = rig_of(head)
            bone = root_bone(arm) if arm is not None else None
            if bone is not None:
                # pose rotation in the bone's rest frame: the head turns about the root bone's head
                B = np.array(bone.bone.matrix_local.to_3x3(), np.float64)
                owner, path, target = arm, f'pose.bones["{_escape(bone.name)}"]', f"bone '{bone.name}' of '{arm.name}'"
                q = matrices_to_quaternions(B.T @ M @ B)
                rotated, group = bone, bone.name
            else:
                # no rig: the object turns about its origin, after the rotation it has now
                R0 = np.array(head.matrix_basis.to_3x3().normalized(), np.float64)
                owner, path, target = head, "", f"object '{head.name}'"
                q = matrices_to_quaternions(R0 @ M)
                rotated, group = head, "Object Transforms"
            undo.animation(owner)
            undo.attr(rotated, "rotation_mode")
            undo.attr(rotated, "rotation_quaternion")
            rotated.rotation_mode = "QUATERNION"
            action = new_action(owner, f"{head.name}_arkit_head")
            data_path = f"{path}.rotation_quaternion" if path else "rotation_quaternion"
            for i in range(4):
                write_keys(fcurve(action, data_path, i, group), frames, q[:, i])
            out["rotation"], out["rotation_target"] = action, target

        if set_timing:
            scene.frame_start, scene.frame_end = out["frames"]
        return out
    except BaseException:
        undo.restore()
        raise
