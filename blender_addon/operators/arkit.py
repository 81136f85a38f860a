"""``faceforge.import_arkit_recording``: an ARKit blendshape recording (Live Link Face's CSV) animates a head.

Acts on the selected FaceForge head (or the scene's only one). The CSV is read and mapped onto the
head's shape keys by the engine (``core.track.arkit_recording``); the scene part (``scene/arkit.py``)
keys the shape keys and the head rotation. One undo step; a bad file or a head without
ARKit-named shape keys changes nothing.
"""

import os

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from ..engine import core
from ..runner import JobOperator
from ..scene.lookup import find_head
from .reconstruct import BrowseFirst, head_job_poll


def _arkit_module():
    import importlib
    return importlib.import_module(f"{core.__name__}.track.arkit_recording")


def _key_names(head) -> list:
    keys = head.data.shape_keys
    if keys is None:
        return []
    return [kb.name for kb in keys.key_blocks if kb != keys.reference_key]


class FACEFORGE_OT_import_arkit_recording(BrowseFirst, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.import_arkit_recording"
    bl_label = "Import ARKit Recording"
    bl_description = ("Animate the selected FaceForge head with an ARKit blendshape recording (the CSV that "
                      "Epic's Live Link Face app writes): its ARKit-named shape keys and the head rotation are "
                      "keyed on every frame")
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Recording", description="A Live Link Face .csv (ARKit blendshape columns)",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN", "SKIP_SAVE"})
    use_current_frame: BoolProperty(name="Start at Current Frame", default=True,
                                    description="Put the recording's first frame on the scene's current frame")
    frame_start: IntProperty(name="Start Frame", default=1,
                             description="Scene frame of the recording's first frame (when not the current frame)")
    fps: FloatProperty(name="Frame Rate", default=0.0, min=0.0, max=1000.0,
                       description="The recording's frame rate; 0 infers it from the timecodes")
    set_scene_timing: BoolProperty(name="Set Scene Frame Rate and Range", default=True,
                                   description="Give the scene the recording's frame rate and frame range "
                                               "(off: keys are retimed to the scene's rate)")
    head_rotation: BoolProperty(name="Head Rotation", default=True,
                                description="Key the recorded head yaw / pitch / roll on the rig's root bone "
                                            "(or on the head object when it has no rig)")

    @classmethod
    def job_poll(cls, context):
        return head_job_poll(cls, context)

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "use_current_frame")
        row = layout.row()
        row.enabled = not self.use_current_frame
        row.prop(self, "frame_start")
        layout.prop(self, "fps")
        layout.prop(self, "set_scene_timing")
        layout.prop(self, "head_rotation")

    def prepare(self, context):
        errors = core.errors
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path:
            raise errors.InputError("No recording was given: choose the .csv that Live Link Face wrote for a take.")
        if not os.path.isfile(path):
            raise errors.InputError(f"The recording '{path}' does not exist.")
        head = find_head(context)
        if head is None:
            raise errors.InputError("No FaceForge head in the scene: select or build one first.")
        arkit = _arkit_module()
        names = _key_names(head)
        arkit.arkit_targets(names)            # refuse a head without ARKit-named keys before reading anything
        fps = float(self.fps) or None
        rotate = bool(self.head_rotation)
        self._head = head.name
        self._start = context.scene.frame_current if self.use_current_frame else int(self.frame_start)

        def work(progress):   # engine only, no bpy
            progress.update("reading the recording", 0.0)
            rec = arkit.load_recording(path, fps=fps)
            drive = arkit.drive_shape_keys(rec, names)
            rotations = arkit.head_rotations(rec.head) if (rotate and rec.head is not None) else None
            progress.update("done", 1.0)
            return rec, drive, rotations

        return work

    def finish(self, context, result):
        from ..scene.arkit import key_recording
        rec, drive, rotations = result
        head = bpy.data.objects.get(self._head)
        if head is None:
            raise core.errors.InputError(f"The head '{self._head}' was removed while the recording was read.")
        done = key_recording(context, head, drive, rotations, rec.frame_offsets(), self._start, rec.fps,
                             set_timing=self.set_scene_timing)
        head["faceforge_arkit_recording"] = rec.path
        first, last = done["frames"]
        msg = (f"{os.path.basename(rec.path)}: {rec.n_frames} frames at {rec.fps:g} fps keyed on '{head.name}' "
               f"(scene frames {first}-{last}): {len(drive.keys)} shape keys")
        if done["rotation"] is not None:
            msg += f", head rotation on {done['rotation_target']}"
        elif self.head_rotation:
            msg += ", no head rotation in the file"
        if drive.unused:
            msg += f"; no shape key for: {_listed(drive.unused)}"
        if drive.not_recorded:
            msg += f"; not in the recording: {_listed(drive.not_recorded)}"
        self.add_warnings(rec.warnings)
        return msg


def _listed(names, most: int = 8) -> str:
    """A list for the status line: every name up to ``most``, then a count (a non-ARKit head misses dozens)."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


CLASSES = (FACEFORGE_OT_import_arkit_recording,)
