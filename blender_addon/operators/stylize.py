"""Learn Style / Apply Style: one-shot stylization (LeGO) of FaceForge heads.

Learn Style: select the neutral FaceForge head, then the stylized sculpt of it (same vertices,
moved; it is the active object) -> a background job fine-tunes the model's surface deformer on
that pair and saves a style file (``<sculpt>.ffstyle.pt`` beside the .blend, never overwriting).
Apply Style: on any FaceForge head of the same model (photo, photos, tracked) -> a stylized copy
beside it, with stylized ARKit-named shape keys driven by the same animation.
"""

from __future__ import annotations

import json
import os

import bpy
from bpy.props import IntProperty, StringProperty

from .. import preferences
from ..engine import core
from ..paths import output_dir, unique_path
from ..properties import EMBEDDED_MODEL_NAMES
from ..runner import JobOperator, _fail_poll
from ..scene.lookup import HEAD_PROP, find_head
from .reconstruct import engine_job, engine_poll, head_job_poll


def head_model_spec(head) -> str:
    """The model a FaceForge head was built with: an embedded name, or its file (which must still exist)."""
    errors = core.errors
    name = str(head.get("faceforge_model", "") or "")
    if name.lower() in EMBEDDED_MODEL_NAMES:
        return name.lower()
    source = ""
    try:
        params = json.loads(head.get("faceforge_params", "") or "{}")
        source = (params.get("model") or {}).get("source", "") if isinstance(params.get("model"), dict) \
            else params.get("model_source", "")
    except (TypeError, ValueError):
        pass
    if source and os.path.isfile(source):
        return source
    if not name:
        raise errors.InputError(f"'{head.name}' is not a FaceForge head (no model recorded on it): build the "
                                f"neutral head with FaceForge.")
    raise errors.ModelFileError(f"'{head.name}' was built with the model '{name}' whose file "
                                f"({source or 'unknown'}) is not there any more.")


def _selected_pair(context):
    """(neutral, stylized) from the selection: the active mesh is the sculpt, the other selected mesh the neutral."""
    active = context.view_layer.objects.active
    others = [o for o in context.selected_objects if o != active]
    return (others[0] if len(others) == 1 else None), active


class FACEFORGE_OT_learn_style(JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.learn_style"
    bl_label = "Learn Style"
    bl_description = ("Learn a style from one example: select the neutral FaceForge head, then Shift-click your "
                      "stylized sculpt of it (same vertices, moved) so it is active. Runs in the background "
                      "(Esc cancels) and saves a style file; Apply Style puts it on any head of the model")
    bl_options = {"REGISTER"}
    changes_scene = False

    iterations: IntProperty(name="Iterations", description="Fine-tuning steps (0: the panel's setting)", min=0,
                            default=0, options={"SKIP_SAVE"})
    filepath: StringProperty(name="Style File", description="Where to save the style (empty: beside the .blend)",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})

    @classmethod
    def job_poll(cls, context):
        if context.scene is None or not hasattr(context.scene, "faceforge"):
            return False
        neutral, stylized = _selected_pair(context)
        if stylized is None or neutral is None:
            return _fail_poll(cls, "Select the neutral head, then the stylized sculpt (active)")
        return engine_poll(cls, context)

    def prepare(self, context):
        from ..scene.style import rest_vertices
        errors = core.errors
        neutral_obj, stylized_obj = _selected_pair(context)
        if neutral_obj is None or stylized_obj is None:
            raise errors.InputError("Select exactly two objects: the neutral FaceForge head, then the stylized "
                                    "sculpt of it (the active one).")
        for o in (neutral_obj, stylized_obj):
            if o.type != "MESH":
                raise errors.InputError(f"'{o.name}' is a {o.type.lower()}, not a mesh: select the neutral head and "
                                        f"its stylized sculpt.")
        if not neutral_obj.get(HEAD_PROP):
            raise errors.InputError(f"'{neutral_obj.name}' is not a FaceForge head: select the FaceForge head the "
                                    f"sculpt was made from first, then the sculpt.")
        spec = head_model_spec(neutral_obj)
        neutral = rest_vertices(neutral_obj)
        stylized = rest_vertices(stylized_obj)
        if len(neutral) != len(stylized):
            raise errors.TopologyError(f"'{stylized_obj.name}' has {len(stylized)} vertices and '{neutral_obj.name}' "
                                       f"{len(neutral)}: sculpt the style on a copy of the head (Shift+D) without "
                                       f"adding or removing vertices.")
        settings = context.scene.faceforge
        iterations = int(self.iterations or settings.style_iterations)
        prefs = preferences.get_prefs(context)
        clip_path = bpy.path.abspath(prefs.clip_checkpoint) if (prefs is not None and prefs.clip_checkpoint) else ""
        device = preferences.device(context)
        style_name = bpy.path.clean_name(stylized_obj.name)
        out = bpy.path.abspath(self.filepath) if self.filepath else \
            unique_path(os.path.join(output_dir(), f"{style_name}.ffstyle.pt"))
        if self.filepath and os.path.exists(out):
            raise errors.InputError(f"{out} exists already; choose another file name (styles are never overwritten).")
        self._out = out

        # minutes of optimisation: clicked in the UI it runs in a child process (runner.ChildJob)
        return engine_job("stylize.style:learn_style_job", spec, neutral, stylized, iterations, clip_path,
                          style_name, out, device=device)

    def finish(self, context, result):
        name, r = result
        context.scene.faceforge.style_path = self._out
        clip = "CLIP on" if r.clip.startswith("on") else "CLIP off (no checkpoint in the preferences)"
        return (f"Style '{name}' learned in {r.seconds:.0f} s ({r.iterations} iterations, {clip}); the sculpt "
                f"is reproduced to {r.exemplar_error_mm:.2f} mm (median). Saved to {self._out}")


class FACEFORGE_OT_apply_style(JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.apply_style"
    bl_label = "Apply Style"
    bl_description = ("Make a stylized copy of the selected FaceForge head with the learned style: same "
                      "expression shape keys (stylized), same rig and animation. The original head is kept")
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Style File", description="A .ffstyle.pt from Learn Style (empty: the panel's)",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})

    @classmethod
    def job_poll(cls, context):
        return head_job_poll(cls, context)

    def prepare(self, context):
        from ..scene.style import rest_vertices, shape_key_names
        errors = core.errors
        path = bpy.path.abspath(self.filepath or context.scene.faceforge.style_path)
        if not path:
            raise errors.InputError("No style chosen: learn one with Learn Style, or pick a .ffstyle.pt file.")
        if not os.path.isfile(path):
            raise errors.InputError(f"The style file {path} does not exist.")
        head = find_head(context)
        if head is None or head.type != "MESH":
            raise errors.InputError("Select the FaceForge head to stylize.")
        spec = head_model_spec(head)
        neutral = rest_vertices(head)
        names = shape_key_names(head)
        device = preferences.device(context)
        self._head = head.name

        return engine_job("stylize.style:apply_style_job", path, spec, neutral, names, device=device)

    def finish(self, context, result):
        from ..scene.style import build_stylized_head
        name, neutral, deltas, names = result
        head = bpy.data.objects.get(self._head)
        if head is None:
            raise core.errors.InputError(f"The head '{self._head}' was removed while the style was computed.")
        new = build_stylized_head(context, head, neutral, deltas, names, name)
        return f"'{new.name}': '{head.name}' with the style '{name}' ({len(names)} stylized shape keys)"


CLASSES = (FACEFORGE_OT_learn_style, FACEFORGE_OT_apply_style)
