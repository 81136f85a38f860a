"""``faceforge.implicit_head_from_video``: a video -> a per-person neural head (hair included) -> one
animated object of a single topology.

The engine (``core.pipeline.implicit``) tracks the clip (or reads the scene's track file), trains
the implicit head on frames spread over the clip, extracts its surface and moves it into every
frame; the result arrives as a PCA blendshape basis with keyed weights, a root bone for the head
motion and the clip's camera - built by the same scene builder as tracked heads. Training writes a
checkpoint beside the .blend (``<video>.ffimplicit.pt``): run again after a cancel or crash and it
resumes there.

``faceforge.preview_implicit_head`` renders the learned head of the active implicit head for the scene's
current frame, from the tracked camera, into the image "FaceForge Preview" (head over the video frame),
straight from that checkpoint (direct surface rendering: seconds on a CPU, no training data needed).
"""

import os

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty
import numpy as np

from .. import paths
from ..engine import core
from ..runner import JobOperator, _fail_poll
from ..scene.lookup import find_head
from .reconstruct import BrowseFirst, EngineOptions, engine_job
from .track import VIDEO_GLOB, build_tracked_head

CHECKPOINT_SUFFIX = ".ffimplicit.pt"
CHECKPOINT_PROP = "faceforge_implicit_checkpoint"
PREVIEW_IMAGE = "FaceForge Preview"


class FACEFORGE_OT_implicit_head_from_video(BrowseFirst, EngineOptions, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.implicit_head_from_video"
    bl_label = "Implicit Head from Video"
    bl_description = ("Learn the person's whole head (hair included) as a neural surface from a video and import it "
                      "as one animated mesh of a single topology. Long on a CPU (minutes to hours): runs in the "
                      "background, Esc or Cancel stops it, and the next run resumes from the saved checkpoint")
    bl_options = {"UNDO"}

    filepath: StringProperty(name="Video", subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default=VIDEO_GLOB, options={"HIDDEN", "SKIP_SAVE"})
    filter_movie: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    track_file: StringProperty(name="Track File", subtype="FILE_PATH", default="", options={"SKIP_SAVE"},
                               description="A saved track of this video (.fftrack.npz); empty: track the video first")
    steps: IntProperty(name="Training Steps", min=2, default=1500, description="More is sharper and slower")
    size: IntProperty(name="Image Size", min=16, max=512, default=96,
                      description="Training frames are cropped around the head and resized to this many pixels")
    max_frames: IntProperty(name="Training Frames", min=2, max=2000, default=40,
                            description="Frames spread over the clip that the head is learned from")
    resolution: IntProperty(name="Mesh Resolution", min=32, max=512, default=128,
                            description="Cells per axis of the surface extraction")
    checkpoint: StringProperty(name="Checkpoint", subtype="FILE_PATH", default="", options={"SKIP_SAVE"},
                               description="Where training is saved and resumed from; empty: <video>"
                                           + CHECKPOINT_SUFFIX + " next to the .blend file (or in the temp folder)")

    def prepare(self, context):
        errors = core.errors
        video = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not video or not os.path.exists(video):
            raise errors.InputError(f"The video '{video}' does not exist: choose a clip of one face.")
        track = bpy.path.abspath(self.track_file) if self.track_file else ""
        if track and not os.path.isfile(track):
            raise errors.InputError(f"The track file '{track}' does not exist.")
        model = self.model_spec(context)
        device = self.device_name(context)
        checkpoint = (bpy.path.abspath(self.checkpoint) if self.checkpoint
                      else os.path.join(paths.output_dir(), paths.media_stem(video) + CHECKPOINT_SUFFIX))
        steps, size, frames, resolution = int(self.steps), int(self.size), int(self.max_frames), int(self.resolution)
        self._video, self._checkpoint = video, checkpoint

        # minutes of training: clicked in the UI it runs in a child process (runner.ChildJob)
        return engine_job("pipeline.implicit:implicit_head_job", video, paths.media_stem(video) + "_implicit", steps,
                          model=model, track_path=track or None, device=device, checkpoint=checkpoint, size=size,
                          max_frames=frames, resolution=resolution)

    def finish(self, context, result):
        result = _Result(*result)
        msg = build_tracked_head(self, context, result, "Implicit head")
        b = result.basis
        r = result.implicit.report
        head = find_head(context)
        if head is not None:
            head[CHECKPOINT_PROP] = self._checkpoint
        resumed = f", resumed at step {r.resumed_from}" if r.resumed_from else ""
        return (f"{msg}; {b.n_vertices} vertices, {b.n_components} blendshapes (error mean {b.error_mean_mm:.2f} mm, "
                f"max {b.error_max_mm:.2f} mm); trained {r.steps} steps in {r.seconds:.0f} s{resumed}; "
                f"checkpoint {self._checkpoint}")


class _Result:
    """What ``build_tracked_head`` reads (rig, warnings), plus the implicit job's own figures."""

    def __init__(self, rig, implicit_result, basis):
        self.rig, self.implicit, self.basis = rig, implicit_result, basis
        self.warnings = implicit_result.warnings
        self.model = None


class FACEFORGE_OT_preview_implicit_head(EngineOptions, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.preview_implicit_head"
    bl_label = "Preview Implicit Head"
    bl_description = ("Render the learned head of the active implicit head at the current frame, from the tracked "
                      "camera, over the video frame, into the image 'FaceForge Preview' (open it in an Image Editor)")
    bl_options = {"REGISTER"}

    width: IntProperty(name="Width", min=16, max=2048, default=320, description="Preview width in pixels")
    frame: IntProperty(name="Frame", min=-1, default=-1,
                       description="Scene frame to preview; -1: the current frame")

    @classmethod
    def job_poll(cls, context):
        head = find_head(context)
        if head is None or not head.get(CHECKPOINT_PROP):
            return _fail_poll(cls, "Select a head made by Implicit Head from Video")
        return True

    def prepare(self, context):
        errors = core.errors
        head = find_head(context)
        checkpoint = str(head.get(CHECKPOINT_PROP, "")) if head is not None else ""
        if not checkpoint or not os.path.isfile(checkpoint):
            raise errors.InputError(f"The implicit head's checkpoint '{checkpoint}' is missing: it was moved or "
                                    f"deleted, so there is nothing to preview (run Implicit Head from Video again).")
        scene_frame = context.scene.frame_current if self.frame < 0 else int(self.frame)
        first = int(head.get("faceforge_frames", [0, 0])[0])      # the track's first clip frame
        frame = scene_frame - 1 - first                            # clip frame c shows at scene frame c + 1
        width, device = int(self.width), self.device_name(context)
        self._scene_frame, self._head = scene_frame, head.name

        def work(progress):
            import importlib
            implicit = importlib.import_module(f"{core.__name__}.pipeline.implicit")
            progress.update(f"Rendering frame {scene_frame}", 0.1)
            return implicit.preview_frame(checkpoint, frame, width=width, device=device)

        return work

    def finish(self, context, result):
        h, w = result.composite.shape[:2]
        image = bpy.data.images.get(PREVIEW_IMAGE)
        if image is not None and tuple(image.size) != (w, h):
            bpy.data.images.remove(image)
            image = None
        if image is None:
            image = bpy.data.images.new(PREVIEW_IMAGE, w, h, alpha=True, float_buffer=True)
        rgba = np.concatenate([result.composite, np.ones((h, w, 1), np.float32)], -1)[::-1]   # Blender: bottom row first
        image.pixels.foreach_set(np.ascontiguousarray(rgba, np.float32).reshape(-1))
        image.update()
        for area in getattr(context.screen, "areas", []) if context.screen else []:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                break
        kind = "a training frame" if result.trained_frame else "codes interpolated between training frames"
        note = f"; {result.note}" if result.note else ""
        return (f"Preview of '{self._head}' at frame {self._scene_frame} ({kind}) in the image '{PREVIEW_IMAGE}', "
                f"{w}x{h}, rendered in {result.seconds:.2f} s{note}")


CLASSES = (FACEFORGE_OT_implicit_head_from_video, FACEFORGE_OT_preview_implicit_head)
