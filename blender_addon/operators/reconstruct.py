"""``faceforge.reconstruct_photo``: photo -> fitted head -> rigged head in the scene (all or nothing).

The pattern every capability follows (see runner.py): ``prepare`` checks the inputs on the main
thread and returns the engine work; the runner runs it (in the background when clicked);
``finish`` builds the scene on the main thread.
"""

import json
import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .. import dependencies, preferences
from ..properties import EMBEDDED_MODEL_NAMES, MODEL_NAMES
from ..engine import core, load_pipeline
from ..engine_process import EngineCall
from ..core.detect.images import image_file_glob
from ..runner import JobOperator, _fail_poll

# Blender's image filter hides formats it does not read itself (.ppm, .pgm, .pfm, ...): the glob adds them
IMAGE_GLOB = image_file_glob()

DEVICE_OVERRIDE_ITEMS = (("PREFS", "Preferences", "Use the device chosen in the add-on preferences"),) \
    + preferences.DEVICE_ITEMS


def pipeline_job(loader, function: str, *args, **kwargs):
    """The work of a job that is one ``core.pipeline`` call. Inline (scripts, --background, tests)
    it runs through ``loader()`` (tests swap in a stand-in pipeline); clicked in the UI, the runner
    runs ``work.engine_call``, the same call, in a child process (runner.ChildJob)."""
    def work(progress):   # engine only, no bpy
        progress.update("loading the engine", 0.0)
        return getattr(loader(), function)(*args, progress=progress, **kwargs)

    work.engine_call = EngineCall(core.__name__, f"pipeline:{function}", *args, **kwargs)
    return work


def engine_job(target: str, *args, **kwargs):
    """The work of a job that is one call of a ``core`` function (``"module:function"``): inline it
    runs here; clicked in the UI, the runner runs ``work.engine_call`` in a child process."""
    call = EngineCall(core.__name__, target, *args, **kwargs)

    def work(progress):   # engine only, no bpy
        return call(progress)

    work.engine_call = call
    return work


def engine_poll(cls, context) -> bool:
    """Shared poll: the engine's Python packages must be importable."""
    message = dependencies.missing_message()
    return _fail_poll(cls, message) if message else True


def head_job_poll(cls, context) -> bool:
    """Shared poll of jobs that act on a FaceForge head (ARKit recordings, styles)."""
    from ..scene.lookup import find_head
    if context.scene is None or not hasattr(context.scene, "faceforge"):
        return False
    if find_head(context) is None:
        return _fail_poll(cls, "No FaceForge head in the scene: select or build one first")
    return engine_poll(cls, context)


def model_override(spec: str) -> str:
    """An operator's model argument: an embedded model's name as it is, a file path made absolute."""
    return spec if spec.strip().lower() in EMBEDDED_MODEL_NAMES else bpy.path.abspath(spec)


class BrowseFirst:
    """Mix-in for file-taking job operators: invoked without a file (F3, a menu), they open the file
    browser first; with one (the panel, scripts) they run as jobs straight away."""

    def has_input(self) -> bool:
        return bool(self.filepath)

    def invoke(self, context, event):
        if not self.has_input():
            context.window_manager.fileselect_add(self)
            return {"RUNNING_MODAL"}
        return JobOperator.invoke(self, context, event)


class EngineOptions:
    """Mix-in for engine jobs: the model / device overrides and the shared poll (used by every
    capability: photo, photos, video)."""

    model: StringProperty(name="Model Override",
                          description="'ict', 'facemask' or a model file; empty uses the panel's choice and the "
                                      "preferences",
                          default="", options={"SKIP_SAVE"})
    device: EnumProperty(name="Device", description="Where the engine runs",
                         items=DEVICE_OVERRIDE_ITEMS, default="PREFS")

    @classmethod
    def job_poll(cls, context):
        if context.scene is None or not hasattr(context.scene, "faceforge"):
            return False
        return engine_poll(cls, context)

    def model_spec(self, context) -> str:
        if self.model:
            return model_override(self.model)
        if context.scene.faceforge.model_source == "CUSTOM":
            path = preferences.model_path(context)
            if not path:
                raise core.errors.ModelFileError(
                    "The custom model is selected but no model file is set: choose a FLAME .pkl or "
                    "FaceForge .npz in Preferences > Add-ons > FaceForge, or pick 'Full Head'.")
            return path
        return MODEL_NAMES.get(context.scene.faceforge.model_source, "ict")

    def device_name(self, context) -> str:
        return preferences.device(context) if self.device == "PREFS" else self.device.lower()


def warnings_of(result) -> list:
    return [str(w) for w in (getattr(result, "warnings", None) or [])]


class FACEFORGE_OT_reconstruct_photo(BrowseFirst, EngineOptions, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.reconstruct_photo"
    bl_label = "Reconstruct from Photo"
    bl_description = ("Fit the head model to a photo of one face and build a rigged head with its "
                      "expression shape keys, skin colour and the camera that matches the photo. "
                      "Runs in the background: Esc or Cancel stops it and changes nothing")
    # UNDO: the built head is one undo step. No REGISTER: its redo panel would re-run the whole fit
    # in the foreground whenever a field there was touched
    bl_options = {"UNDO"}

    filepath: StringProperty(name="Photo", description="The photo to reconstruct", subtype="FILE_PATH",
                             default="", options={"SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: StringProperty(default=IMAGE_GLOB, options={"HIDDEN", "SKIP_SAVE"})
    output_dir: StringProperty(name="Report Folder",
                               description="When set, also write params.json and overlay.png into this folder "
                                           "(and faces.png, the faces numbered, when the photo has several)",
                               subtype="DIR_PATH", default="")
    face_index: IntProperty(name="Face", description="Which face of a photo with several, counted from the left "
                                                     "starting at 0; -1 takes the most confident one",
                            min=-1, default=-1, options={"SKIP_SAVE"})

    def prepare(self, context):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path:
            raise core.errors.InputError("No photo was given: choose a photo of a face.")
        if not os.path.isfile(path):
            raise core.errors.ImageReadError(f"The photo '{path}' does not exist or is not a file.")
        model, device = self.model_spec(context), self.device_name(context)
        face = None if self.face_index < 0 else self.face_index
        self._photo = path

        return pipeline_job(lambda: load_pipeline(), "reconstruct_photo", path, model=model, device=device,
                            face=face)

    # -- scene (main thread, rolled back by the runner if anything raises) ---------------------
    def finish(self, context, result):
        from ..scene.head_builder import build_head
        from ..scene.placement import placement_note
        from ..scene.texture import build_textured_head
        pipeline, rec = load_pipeline(), result
        where = ""
        if getattr(rec, "texture", None) is not None:      # models with UVs get the photo baked in
            built, image, where = build_textured_head(context, rec.rig, lambda p: pipeline.save_texture(rec, p))
            where = f", {image.size[0]}x{image.size[1]} texture {where}"
        else:
            built = build_head(context, rec.rig)
        head = built["mesh"]
        head["faceforge_photo"] = self._photo
        model_name = getattr(getattr(rec, "model", None), "name", None)
        if model_name:
            head["faceforge_model"] = str(model_name)
        head["faceforge_params"] = json.dumps(pipeline.fit_params_json(rec))
        self.add_warnings(warnings_of(rec), head)
        outputs = {}
        if self.output_dir:
            out_dir = bpy.path.abspath(self.output_dir)
            os.makedirs(out_dir, exist_ok=True)
            outputs = pipeline.save_outputs(rec, out_dir) or {}
        settings = context.scene.faceforge
        settings.photo_path = self.filepath           # (resets the face choice: set it after)
        settings.faces_found = len(getattr(rec, "face_boxes", None) or ())
        if settings.faces_found > 1:                  # the panel's Face field shows the face used
            settings.face_index = rec.face_index
        keys = head.data.shape_keys
        msg = (f"Built '{head.name}': {len(head.data.vertices)} vertices, "
               f"{max(0, len(keys.key_blocks) - 1) if keys else 0} expression keys{where}")
        msg += placement_note(built)
        if getattr(rec, "exif_focal_px", None):       # the camera's lens, not a guess
            msg += "; focal length from the photo's EXIF"
        if outputs:
            msg += f"; wrote {', '.join(str(p) for p in outputs.values())}"
        return msg


CLASSES = (FACEFORGE_OT_reconstruct_photo,)
