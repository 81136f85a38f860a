"""``faceforge.fit_codes_to_mesh`` in Blender: a mesh of any topology -> a new FaceForge head of the active
model with the fitted codes, built next to it; a non-mesh selection or a mesh the engine refuses changes
nothing. Drives bpy in-process with the shipped encoder (a few seconds per fit)."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.core.models.builtin import load_embedded  # noqa: E402
from blender_addon.core.stylize import remesh  # noqa: E402
from blender_addon.core.stylize.encoder import CodesFit, head_rig_from_codes, sample_training_codes  # noqa: E402
from blender_addon.scene import head_builder  # noqa: E402
from blender_addon.scene.lookup import HEAD_PROP  # noqa: E402

from test_track_blender import names_of_data  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def model():
    return load_embedded("ict")


def random_head(model, seed):
    s, e = sample_training_codes(model, 1, np.random.default_rng(seed))
    neutral = model.v_template + np.einsum("vck,k->vc", model.shape_basis, s[0])
    return s[0], e[0], neutral, neutral + np.einsum("vck,k->vc", model.expr_basis, e[0])


def add_mesh(name, verts_model, faces, location=(0.0, 0.0, 0.0), scale=1.0):
    """A mesh object from model-space vertices (converted to Blender axes), selected and active."""
    me = bpy.data.meshes.new(name)
    me.from_pydata(head_builder.to_blender(verts_model).tolist(), [], np.asarray(faces).tolist())
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = location
    obj.scale = (scale, scale, scale)
    select_only(obj)
    return obj


def select_only(obj):
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def local_vertices_model(obj) -> np.ndarray:
    """The object's evaluated vertices (shape keys applied) in its own frame, model axes."""
    deps = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(deps)
    me = ev.to_mesh()
    try:
        co = np.zeros(len(me.vertices) * 3)
        me.vertices.foreach_get("co", co)
    finally:
        ev.to_mesh_clear()
    return co.reshape(-1, 3) @ head_builder.MODEL_TO_BLENDER


def heads_in_scene():
    return [o for o in bpy.context.scene.objects if o.get(HEAD_PROP)]


def world_box(obj):
    pts = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    return pts.min(0), pts.max(0)


def test_fit_builds_the_nearest_head_next_to_a_mesh_of_another_topology(empty_scene, model):
    s, e, neutral, posed = random_head(model, seed=4)
    skin = remesh.parts_topology(model, "skin")
    topo = remesh.decimate(skin, 2500, skin.evaluate(posed))          # its own triangulation, 2.5k vertices
    src = add_mesh("Sculpt", topo.evaluate(posed), topo.faces, location=(0.5, 0.0, 0.0))
    before = np.array([v.co for v in src.data.vertices])
    assert bpy.ops.faceforge.fit_codes_to_mesh() == {"FINISHED"}
    job = bpy.context.window_manager.faceforge_job
    assert job.last_message.startswith("Built 'Sculpt_codes' from 'Sculpt'"), job.last_message
    heads = heads_in_scene()
    assert len(heads) == 1
    head = heads[0]
    assert len(head.data.vertices) == model.n_vertices and head["faceforge_source_mesh"] == "Sculpt"
    keys = {kb.name: kb.value for kb in head.data.shape_keys.key_blocks}
    assert set(model.expr_names) <= set(keys)
    params = json.loads(head["faceforge_params"])
    assert params["model"] == "ict" and len(params["shape"]) == model.n_shape
    assert params["error_mm"]["median"] < 0.5
    assert keys["jawOpen"] == pytest.approx(params["expression"]["jawOpen"], abs=1e-4)
    # the head shows the mesh's person: evaluated (keys applied) vs the true head, model frame
    lv = np.nonzero(model.skin_vertex_mask())[0]
    err = np.linalg.norm(local_vertices_model(head)[lv] - posed[lv], axis=1) * 1000
    assert np.median(err) < 2.0, np.median(err)
    # next to the mesh, not on it; the mesh itself untouched
    lo, hi = world_box(head)
    slo, shi = world_box(src)
    assert (hi < slo).any() or (lo > shi).any()
    assert np.allclose(np.array([v.co for v in src.data.vertices]), before)
    assert bpy.context.view_layer.objects.active == head


def test_a_copy_of_a_faceforge_head_is_read_in_the_heads_own_frame(empty_scene, model):
    """Sculpting a copy of a head: the copy hangs from the head's origin empty, away from the world origin."""
    s, e, neutral, posed = random_head(model, seed=8)
    fit = CodesFit(shape=s, expr=e, vertices=posed, vertices_neutral=neutral, rotation=np.eye(3),
                   translation=np.zeros(3), error_mm={"median": 0.0}, encoder_error_mm={}, encoder_shape=s,
                   encoder_expr=e, timings={})
    bpy.context.scene.cursor.location = (2.0, 1.0, 0.0)
    built = head_builder.build_head(bpy.context, head_rig_from_codes(model, fit, name="Original"))
    head = built["mesh"]
    assert head.parent is not None and tuple(head.matrix_world.translation) != (0.0, 0.0, 0.0)
    select_only(head)
    assert bpy.ops.faceforge.fit_codes_to_mesh() == {"FINISHED"}
    new = [h for h in heads_in_scene() if h != head]
    assert len(new) == 1
    params = json.loads(new[0]["faceforge_params"])
    assert params["error_mm"]["median"] < 0.5
    lv = np.nonzero(model.skin_vertex_mask())[0]
    err = np.linalg.norm(local_vertices_model(new[0])[lv] - posed[lv], axis=1) * 1000
    assert np.median(err) < 1.5, np.median(err)
    t = np.array(params["mesh_to_model"]["translation"])
    assert np.linalg.norm(t) < 0.01                      # read in the head's frame: no metre-sized offset


def test_non_mesh_or_no_selection_is_refused(empty_scene):
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    bpy.context.scene.collection.objects.link(cam)
    select_only(cam)
    before = names_of_data()
    with pytest.raises(RuntimeError, match="'Cam' is a camera, not a mesh"):
        bpy.ops.faceforge.fit_codes_to_mesh()
    cam.select_set(False)
    bpy.context.view_layer.objects.active = None
    with pytest.raises(RuntimeError, match="Select the mesh object"):
        bpy.ops.faceforge.fit_codes_to_mesh()
    assert names_of_data() == before


@pytest.mark.parametrize("case", ["tiny", "empty", "not_a_head_size"])
def test_a_mesh_the_engine_refuses_changes_nothing(empty_scene, model, case):
    skin = remesh.parts_topology(model, "skin")
    topo = remesh.decimate(skin, 600, skin.evaluate(model.v_template))
    v = topo.evaluate(model.v_template)
    if case == "tiny":
        add_mesh("Tiny", v, topo.faces, scale=0.001)
        match = "far too small"
    elif case == "empty":
        add_mesh("Empty", np.zeros((0, 3)), np.zeros((0, 3), int))
        match = "is empty"
    else:
        add_mesh("Huge", v * 100.0, topo.faces)
        match = "far too large"
    before = names_of_data()
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.faceforge.fit_codes_to_mesh()
    assert names_of_data() == before
    job = bpy.context.window_manager.faceforge_job
    assert job.last_state == "FAILED" and match in job.last_message
