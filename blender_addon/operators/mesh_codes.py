"""``faceforge.fit_codes_to_mesh``: any head mesh (a sculpt, an import) -> the nearest head of the active model.

The selected mesh object, of any topology, is read (with its modifiers) and handed to the engine's
MAGE-style encoder and closest-point refinement (``core.stylize.encoder.fit_codes_to_mesh``); a new
FaceForge head of the active model with those identity codes, its expression shape keys at the fitted
values, is built next to it by the same scene builder as every other head. A non-mesh selection or a
mesh the engine refuses (empty, degenerate, far too small or large) changes nothing.
"""

import importlib
import json

import bpy
from bpy.props import StringProperty
import numpy as np

from ..engine import core, share_cpu_with_blender
from ..runner import JobOperator, _fail_poll
from ..scene.lookup import ORIGIN_PROP
from .reconstruct import EngineOptions, engine_poll, warnings_of


def _stylize_encoder():
    return importlib.import_module(f"{core.__name__}.stylize.encoder")


def _models():
    return importlib.import_module(f"{core.__name__}.models")


def source_object(context):
    """The mesh the user means: the active object if selected, else the only selected object."""
    view_layer = getattr(context, "view_layer", None)
    active = view_layer.objects.active if view_layer is not None else None
    selected = list(getattr(context, "selected_objects", None) or [])
    if active is not None and (active.select_get() or not selected):
        return active
    return selected[0] if len(selected) == 1 else None


def mesh_in_model_space(context, obj) -> tuple:
    """(vertices (V, 3) in model space, triangles (F, 3)) of ``obj`` as the viewport shows it (modifiers
    applied). A mesh hanging from a FaceForge origin empty (a copy of a head) is read in that empty's
    frame, i.e. the model's own; any other mesh in world space. Blender axes -> model axes (y up)."""
    from ..scene.head_builder import MODEL_TO_BLENDER

    depsgraph = context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        n_v, n_t = len(mesh.vertices), len(mesh.loop_triangles)
        co = np.empty(n_v * 3, np.float64)
        mesh.vertices.foreach_get("co", co)
        tris = np.empty(n_t * 3, np.int64)
        mesh.loop_triangles.foreach_get("vertices", tris)
    finally:
        evaluated.to_mesh_clear()
    frame = np.array(obj.matrix_world, np.float64)
    parent = obj.parent
    while parent is not None and not parent.get(ORIGIN_PROP):
        parent = parent.parent
    if parent is not None:
        frame = np.linalg.inv(np.array(parent.matrix_world, np.float64)) @ frame
    v = co.reshape(-1, 3) @ frame[:3, :3].T + frame[:3, 3]
    return v @ np.asarray(MODEL_TO_BLENDER), tris.reshape(-1, 3)     # Blender -> model: the inverse rotation


class FACEFORGE_OT_fit_codes_to_mesh(EngineOptions, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.fit_codes_to_mesh"
    bl_label = "Fit Codes to Mesh"
    bl_description = ("Find the head of the active model nearest to the selected mesh (any topology: a sculpt, "
                      "an imported head) and build it next to it, with its identity and expression codes. "
                      "The mesh should be roughly upright and facing front, in metres")
    bl_options = {"REGISTER", "UNDO"}

    encoder_path: StringProperty(
        name="Encoder", description="A mesh encoder file (.pt) trained for the model; empty: the one shipped for it",
        subtype="FILE_PATH", default="", options={"SKIP_SAVE"})

    @classmethod
    def job_poll(cls, context):
        if context.scene is None or not hasattr(context.scene, "faceforge"):
            return False
        obj = source_object(context)
        if obj is None:
            return _fail_poll(cls, "Select the mesh object to fit")
        if obj.type != "MESH":
            return _fail_poll(cls, f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a mesh object")
        return engine_poll(cls, context)

    def prepare(self, context):
        errors = core.errors
        obj = source_object(context)
        if obj is None:
            raise errors.InputError("Nothing is selected: select the mesh object to fit codes to.")
        if obj.type != "MESH":
            raise errors.InputError(f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a mesh object "
                                    "(a head of any topology) to fit codes to.")
        verts, faces = mesh_in_model_space(context, obj)
        what = f"The mesh '{obj.name}'"
        encoder_mod = _stylize_encoder()                  # (imports torch)
        share_cpu_with_blender()
        encoder_mod.check_mesh(verts, faces, what)       # empty / degenerate: refuse before any work
        spec = self.model_spec(context)
        encoder_path = bpy.path.abspath(self.encoder_path) if self.encoder_path else None
        self._source = obj.name
        models_mod = _models()

        def work(progress):   # worker thread: engine only, no bpy
            progress.update("loading the model", 0.0)
            model = models_mod.load_model(spec)
            encoder = encoder_mod.encoder_for(model, encoder_path)
            fit = encoder_mod.fit_codes_to_mesh(model, verts, faces, encoder, progress=progress.sub(0.05, 1.0),
                                                what=what)
            rig = encoder_mod.head_rig_from_codes(model, fit, name=f"{obj.name}_codes")
            return model, fit, rig

        return work

    def finish(self, context, result):
        from ..scene.head_builder import build_head
        model, fit, rig = result
        source = bpy.data.objects.get(self._source)
        cursor = context.scene.cursor
        saved = cursor.location.copy()
        if source is not None:                        # "next to it": look for room from the mesh's place
            cursor.location = source.matrix_world.translation
        try:
            built = build_head(context, rig)
        finally:
            cursor.location = saved
        head = built["mesh"]
        head["faceforge_params"] = json.dumps(fit.params_json(model))
        head["faceforge_source_mesh"] = self._source
        self.add_warnings(warnings_of(fit), head)
        e = fit.error_mm
        x, y, z = built["location"]
        return (f"Built '{head.name}' from '{self._source}' ({fit.input_vertices} vertices): the mesh lies "
                f"{e['median']:.2f} mm (median, 90%: {e['p90']:.2f} mm) from the fitted head; "
                f"{model.n_shape} identity and {model.n_expr} expression codes in {fit.timings['total_s']:.1f} s; "
                f"placed at ({x:.2f}, {y:.2f}, {z:.2f})")


CLASSES = (FACEFORGE_OT_fit_codes_to_mesh,)
