"""``faceforge.validate_model``: load the custom model file and say what it is, or why it can't be used.

A background job like any other (loading finds the landmark correspondences automatically,
which takes a few seconds); the result lands in the add-on preferences, not in the scene.
"""

import importlib
import os

import bpy
from bpy.props import StringProperty

from .. import dependencies, preferences
from ..engine import core
from ..runner import FAILED, JobOperator, _fail_poll


def format_summary(s: dict) -> str:
    text = (f"{s['vertices']} vertices, {s['identity_components']} identity, "
            f"{s['expression_components']} expression")
    joints = s.get("joints") or []
    return text + (f"; joints: {', '.join(joints)}" if joints else "; no joints")


class FACEFORGE_OT_validate_model(JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.validate_model"
    bl_label = "Validate Model"
    bl_description = ("Load the model file set in the preferences (FLAME .pkl or FaceForge .npz), find its "
                      "landmarks and report its vertices, identity / expression sizes and joints, or a clear error")
    bl_options = {"REGISTER"}
    changes_scene = False

    filepath: StringProperty(name="Model File", description="Model to check; empty: the one in the preferences",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})

    @classmethod
    def job_poll(cls, context):
        need = [r.module for r in dependencies.REQUIRED if r.module in ("torch", "numpy")
                and not dependencies.present(r.module)]
        if need:
            return _fail_poll(cls, f"Missing Python packages: {', '.join(need)} (see the add-on preferences)")
        return True

    def prepare(self, context):
        path = bpy.path.abspath(self.filepath) if self.filepath else preferences.model_path(context)
        self._path = path
        if not path:
            raise core.errors.ModelFileError("No model file is set: choose a FLAME .pkl or FaceForge .npz first.")
        if not os.path.isfile(path):
            raise core.errors.ModelFileError(f"Model file not found: {path}")
        models_name = f"{core.__name__}.models"

        def work(progress):   # worker thread
            progress.update("reading the model file", 0.05)
            models = importlib.import_module(models_name)
            model = models.load_model(path)
            progress.update("model ready", 1.0)
            return model.summary()

        return work

    def finish(self, context, summary):
        text = format_summary(summary)
        prefs = preferences.get_prefs(context)
        if prefs is not None:
            prefs.model_info, prefs.model_info_path, prefs.model_error = text, self._raw_path(prefs), ""
        return f"{os.path.basename(self._path)}: {text}"

    def job_failed(self, context, state, message):
        prefs = preferences.get_prefs(context)
        if prefs is not None and state == FAILED:
            prefs.model_error, prefs.model_info_path, prefs.model_info = message, self._raw_path(prefs), ""

    def _raw_path(self, prefs) -> str:
        # the summary belongs to the path as typed in the preferences (drawn only while it matches)
        return self.filepath or prefs.model_path


CLASSES = (FACEFORGE_OT_validate_model,)
