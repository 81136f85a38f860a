"""``faceforge.reconstruct_photo``: photo -> fitted head -> rigged head in the scene (all or nothing)."""

import json
import os
import traceback

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .. import preferences
from ..engine import core, load_pipeline
from ..scene.head_builder import build_head
from ..scene.rollback import SceneSnapshot

DEVICE_OVERRIDE_ITEMS = (("PREFS", "Preferences", "Use the device chosen in the add-on preferences"),) \
    + preferences.DEVICE_ITEMS


class ProgressPrinter:
    """core.jobs.Progress callback: console lines in background mode, the cursor counter in the UI."""

    def __init__(self, window_manager=None):
        self.wm = window_manager
        self.background = bpy.app.background or window_manager is None
        self._last = (None, -100)

    def __call__(self, stage: str, fraction: float) -> None:
        pct = int(round(100 * fraction))
        if self.background:
            last_stage, last_pct = self._last
            if stage != last_stage or pct >= last_pct + 10 or (pct == 100 and last_pct != 100):
                print(f"FaceForge: {stage} {pct:3d}%", flush=True)
                self._last = (stage, pct)
        else:
            self.wm.progress_update(pct)


class FACEFORGE_OT_reconstruct_photo(bpy.types.Operator):
    bl_idname = "faceforge.reconstruct_photo"
    bl_label = "Reconstruct from Photo"
    bl_description = ("Fit the head model to a photo of one face and build a rigged head with its "
                      "expression shape keys, skin colour and the camera that matches the photo")
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Photo", description="The photo to reconstruct", subtype="FILE_PATH",
                             default="", options={"SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    output_dir: StringProperty(name="Report Folder",
                               description="When set, also write params.json and overlay.png into this folder",
                               subtype="DIR_PATH", default="")
    model: StringProperty(name="Model Override",
                          description="'builtin' or a model file; empty uses the panel's choice and the preferences",
                          default="", options={"SKIP_SAVE"})
    device: EnumProperty(name="Device", description="Where the reconstruction runs",
                         items=DEVICE_OVERRIDE_ITEMS, default="PREFS")

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "faceforge")

    def invoke(self, context, event):
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    # -- helpers -----------------------------------------------------------------
    def model_spec(self, context) -> str:
        if self.model:
            return self.model if self.model == "builtin" else bpy.path.abspath(self.model)
        settings = context.scene.faceforge
        if settings.model_source == "CUSTOM":
            path = preferences.model_path(context)
            if not path:
                raise core.errors.ModelFileError(
                    "The custom model is selected but no model file is set: choose a FLAME .pkl or "
                    "FaceForge .npz in Preferences > Add-ons > FaceForge, or pick 'Built-in'.")
            return path
        return "builtin"

    def device_name(self, context) -> str:
        return preferences.device(context) if self.device == "PREFS" else self.device.lower()

    # -- run -----------------------------------------------------------------------
    def execute(self, context):
        settings = context.scene.faceforge
        settings.last_error = ""
        settings.status = "Reconstructing…"
        wm = context.window_manager
        show_progress = not bpy.app.background and wm is not None
        if show_progress:
            wm.progress_begin(0, 100)
        try:
            path = bpy.path.abspath(self.filepath) if self.filepath else ""
            if not path:
                raise core.errors.InputError("No photo was given: choose a photo of a face.")
            if not os.path.isfile(path):
                raise core.errors.ImageReadError(f"The photo '{path}' does not exist or is not a file.")
            model = self.model_spec(context)
            device = self.device_name(context)
            pipeline = load_pipeline()
            progress = core.jobs.Progress(ProgressPrinter(wm if show_progress else None))
            rec = pipeline.reconstruct_photo(path, model=model, device=device, progress=progress)

            if context.view_layer.objects.active is not None and context.view_layer.objects.active.mode != "OBJECT":
                bpy.ops.object.mode_set(mode="OBJECT")
            snap = SceneSnapshot(context)
            try:
                created = build_head(context, rec.rig)
                head = created["mesh"]
                head["faceforge_photo"] = path
                model_name = getattr(getattr(rec, "model", None), "name", None)
                if model_name:
                    head["faceforge_model"] = str(model_name)
                head["faceforge_params"] = json.dumps(pipeline.fit_params_json(rec))
                warnings = [str(w) for w in (getattr(rec, "warnings", None) or [])]
                if warnings:
                    head["faceforge_warnings"] = json.dumps(warnings)
                outputs = {}
                if self.output_dir:
                    out_dir = bpy.path.abspath(self.output_dir)
                    os.makedirs(out_dir, exist_ok=True)
                    outputs = pipeline.save_outputs(rec, out_dir) or {}
            except BaseException:
                snap.rollback()
                raise
        except core.errors.FaceForgeError as e:
            return self._fail(settings, str(e.args[0]) if e.args else type(e).__name__)
        except Exception as e:  # a bug, not a user error: keep the traceback on the console
            traceback.print_exc()
            return self._fail(settings, f"Reconstruction failed unexpectedly ({type(e).__name__}: {e}). "
                                        "Nothing was changed; see the console for details.")
        finally:
            if show_progress:
                wm.progress_end()

        for w in warnings:
            self.report({"WARNING"}, w)
        msg = (f"Built '{head.name}': {len(head.data.vertices)} vertices, "
               f"{max(0, len(head.data.shape_keys.key_blocks) - 1) if head.data.shape_keys else 0} expression keys")
        if outputs:
            msg += f"; wrote {', '.join(str(p) for p in outputs.values())}"
        settings.status = msg
        settings.photo_path = self.filepath
        self.report({"INFO"}, msg)
        return {"FINISHED"}

    def _fail(self, settings, message: str):
        settings.last_error = message
        settings.status = "Failed"
        self.report({"ERROR"}, message)
        return {"CANCELLED"}


CLASSES = (FACEFORGE_OT_reconstruct_photo,)
