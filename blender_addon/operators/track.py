"""``faceforge.track_video`` and ``faceforge.import_track``: a video (or a saved track) -> an animated head.

Same pattern as reconstruct.py: ``prepare`` checks the inputs and returns the engine work, the
runner runs it (in the background when clicked), ``finish`` builds the scene on the main thread,
all or nothing. The head is the tracked identity with its expression shape keys keyed per frame,
an armature whose root bone carries the head's motion, and the clip's camera with the video behind
it; the scene takes the clip's fps and frame range (Blender frame = clip frame + 1, see
scene/animation.py).
"""

import os

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from .. import paths
from ..engine import core, load_pipeline
from ..runner import JobOperator
from .reconstruct import BrowseFirst, EngineOptions, engine_poll, model_override, pipeline_job, warnings_of

VIDEO_GLOB = "*.mp4;*.mov;*.avi;*.mkv;*.m4v;*.webm;*.mpg;*.mpeg"
TRACK_SUFFIX = ".fftrack.npz"


def build_tracked_head(op, context, result, source: str, track_path: str = "", saved: bool = False) -> str:
    """Scene part shared by both operators: build the animated head, label it, return the message."""
    from ..scene.head_builder import build_head, media_kind
    from ..scene.placement import placement_note
    rig = result.rig
    anim = rig.animation
    built = build_head(context, rig)
    head = built["mesh"]
    head["faceforge_video"] = str(anim.video_path or "")
    if track_path:
        head["faceforge_track_file"] = track_path
    head["faceforge_frames"] = [int(anim.frame_start), int(anim.frame_start + anim.n_frames)]
    model_name = getattr(getattr(result, "model", None), "name", None)
    if model_name:
        head["faceforge_model"] = str(model_name)
    # the track's own warnings already say which frames without a face were interpolated or held
    warnings = warnings_of(result)
    if not media_kind(anim.video_path):
        warnings.append(f"The video '{anim.video_path}' was not found: the camera has no background.")
    op.add_warnings(warnings, head)
    first, last = built["actions"]["frames"]
    scene = context.scene
    fps = scene.render.fps / scene.render.fps_base
    msg = (f"{source}: '{head.name}' animated over {anim.n_frames} frames (scene frames {first}-{last}, "
           f"{fps:.3f} fps)") + placement_note(built)
    if saved and track_path:
        msg += f"; track saved to {track_path}"
    return msg


class FACEFORGE_OT_track_video(BrowseFirst, EngineOptions, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.track_video"
    bl_label = "Track Video"
    bl_description = ("Track the face through a video (or a folder of frames): one identity for the whole clip, "
                      "expression shape keys and head motion keyed on every frame, the video behind the camera. "
                      "Runs in the background: Esc or Cancel stops it and changes nothing")
    bl_options = {"UNDO"}

    filepath: StringProperty(name="Video", description="A video file (mp4, mov, avi, mkv, ...) or a folder of frames",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default=VIDEO_GLOB, options={"HIDDEN", "SKIP_SAVE"})
    filter_movie: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    frame_start: IntProperty(name="Start Frame", min=0, default=0,
                             description="First clip frame to track (counted from 0; shown at scene frame start + 1)")
    frame_end: IntProperty(name="End Frame", min=0, default=0,
                           description="Clip frame to stop before (exclusive); 0 tracks to the end of the clip")
    refine: BoolProperty(name="Photometric Refinement", default=False,
                         description="Refine every frame against the pixels too (slower; a little steadier detail)")
    save_track: BoolProperty(name="Save Track File", default=True,
                             description="Write the per-frame result as <video>.fftrack.npz next to the .blend file "
                                         "(or in the temp folder) to re-import it later without tracking again. "
                                         "An existing file is never overwritten: a number is added")
    track_file: StringProperty(name="Track File", subtype="FILE_PATH", default="", options={"SKIP_SAVE"},
                               description="Where to save the track (empty: next to the .blend file, else the "
                                           "temp folder); a number is added if the file exists")

    def track_path(self, video: str) -> str:
        if not self.save_track:
            return ""
        if self.track_file:
            path = bpy.path.abspath(self.track_file)
            if not path.lower().endswith(TRACK_SUFFIX):
                path += TRACK_SUFFIX
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        else:
            path = os.path.join(paths.output_dir(), paths.media_stem(video) + TRACK_SUFFIX)
        return paths.unique_path(path)

    def prepare(self, context):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path:
            raise core.errors.InputError("No video was given: choose a video of a face (or a folder of frames).")
        if not (os.path.isfile(path) or os.path.isdir(path) or any(ch in path for ch in "*?[")):
            raise core.errors.InputError(f"The video '{path}' does not exist.")
        if self.frame_end and self.frame_end <= self.frame_start + 1:
            raise core.errors.InputError(
                f"The end frame ({self.frame_end}) must be at least 2 after the start frame ({self.frame_start}): "
                "tracking needs 2 frames or more (0 = to the end of the clip).")
        frame_range = None
        if self.frame_start or self.frame_end:
            frame_range = (int(self.frame_start), int(self.frame_end) if self.frame_end else 2 ** 31 - 1)
        model, device = self.model_spec(context), self.device_name(context)
        track_path = self.track_path(path)
        refine = bool(self.refine)
        self._video, self._track_path = path, track_path

        return pipeline_job(lambda: load_pipeline(), "track_video_to_rig", path, model=model, device=device,
                            frame_range=frame_range, refine=refine, track_path=track_path or None)

    def finish(self, context, result):
        msg = build_tracked_head(self, context, result, "Tracked", self._track_path, saved=True)
        settings = context.scene.faceforge
        if not settings.video_path:
            settings.video_path = self.filepath
        if self._track_path:
            settings.track_path = self._track_path
        return msg


class FACEFORGE_OT_import_track(BrowseFirst, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.import_track"
    bl_label = "Import Track"
    bl_description = ("Build the animated head from a saved FaceForge track (.fftrack.npz) without tracking "
                      "the video again: same head, keys, camera and video background as Track Video")
    bl_options = {"UNDO"}

    filepath: StringProperty(name="Track File", description="A .fftrack.npz written by Track Video",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN", "SKIP_SAVE"})
    model: StringProperty(name="Model Override", default="", options={"SKIP_SAVE"},
                          description="Empty: the model the track was made with; else 'builtin' or a model file "
                                      "(it must be the same model)")

    @classmethod
    def job_poll(cls, context):
        if context.scene is None or not hasattr(context.scene, "faceforge"):
            return False
        return engine_poll(cls, context)

    def prepare(self, context):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path:
            raise core.errors.InputError("No track file was given: choose a .fftrack.npz written by Track Video.")
        if not os.path.isfile(path):
            raise core.errors.InputError(f"The track file '{path}' does not exist.")
        model = None
        if self.model:
            model = model_override(self.model)
        self._track = path

        def work(progress):
            progress.update("loading the track", 0.0)
            result = load_pipeline().rig_from_track_file(path, model=model)
            progress.update("done", 1.0)
            return result

        return work

    def finish(self, context, result):
        msg = build_tracked_head(self, context, result, f"Imported {os.path.basename(self._track)}", self._track)
        context.scene.faceforge.track_path = self.filepath
        return msg


CLASSES = (FACEFORGE_OT_track_video, FACEFORGE_OT_import_track)
