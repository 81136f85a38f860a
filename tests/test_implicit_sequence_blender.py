"""A PCA-compressed mesh sequence in Blender (issue 11 item 5): one object whose evaluated vertices at
every keyed frame equal the input frame within the reported error, with the head motion on a root
bone, vertex colours, and FBX / glTF export through the add-on's own operators.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402,F401
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.engine import core  # noqa: E402,F401
from blender_addon.core.implicit.sequence import compress_sequence, reconstruct, sequence_head_rig  # noqa: E402
from blender_addon.core.models import load_model  # noqa: E402
from blender_addon.core.rig.key_ranges import needs_split  # noqa: E402
from blender_addon.scene import head_builder  # noqa: E402

from test_implicit_sequence import expression_clip  # noqa: E402
from test_track_blender import evaluated_world_vertices, read_glb, validate_gltf  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def clip():
    model = load_model(find_landmarks=False)
    frames, R, tr = expression_clip(model, T=30, seed=7, motion=True)
    basis = compress_sequence(frames, max_components=29, tolerance_mm=0.3, rotation=R, translation=tr)
    colours = np.clip(0.5 + 2.0 * model.v_template, 0.0, 1.0)
    return {"model": model, "frames": frames, "basis": basis, "colours": colours}


def build(clip, frame_start=4, fps=25.0):
    rig = sequence_head_rig(clip["basis"], clip["model"].faces, name="ImplicitHead",
                            vertex_colors=clip["colours"], fps=fps, frame_start=frame_start)
    return rig, head_builder.build_head(bpy.context, rig)


def test_one_object_plays_the_sequence_within_the_reported_error(clip, empty_scene):
    basis, frames = clip["basis"], clip["frames"]
    rig, out = build(clip)
    head, arm, scene = out["mesh"], out["armature"], bpy.context.scene
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    assert meshes == [head] and len(head.data.vertices) == basis.n_vertices
    keys = head.data.shape_keys.key_blocks
    assert [k.name for k in keys] == ["Basis"] + [f"pc{k:03d}" for k in range(basis.n_components)]
    assert out["actions"]["shape_keys"] is not None and out["actions"]["armature"] is not None
    assert (scene.frame_start, scene.frame_end) == (5, 34)          # clip frames 4..33 -> Blender 5..34
    assert head.data.color_attributes.get("albedo") is not None
    played = reconstruct(basis)
    for t in (0, 9, 17, 29):
        scene.frame_set(t + 5)
        got = evaluated_world_vertices(head)
        assert np.abs(got - head_builder.to_blender(played[t])).max() < 2e-6, t      # the basis, exactly
        err_mm = np.linalg.norm(got - head_builder.to_blender(frames[t]), axis=1).max() * 1000
        assert err_mm <= basis.error_max_mm + 0.002, t                             # the input, within the error
    assert arm is not None and [b.name for b in arm.data.bones] == ["root"]


def test_exports_fbx_and_glb_with_the_animation(clip, empty_scene, tmp_path):
    basis = clip["basis"]
    _, out = build(clip, frame_start=0, fps=30.0)
    K = basis.n_components
    fbx, glb = tmp_path / "implicit.fbx", tmp_path / "implicit.glb"
    assert bpy.ops.faceforge.export_fbx(filepath=str(fbx)) == {"FINISHED"} and fbx.stat().st_size > 0
    assert bpy.ops.faceforge.export_gltf(filepath=str(glb)) == {"FINISHED"}
    gltf = read_glb(glb)
    mesh = gltf["meshes"][0]
    # components keyed outside 0..1 leave as _pos/_neg pairs (the readers' sliders clamp to 0..1)
    split = [needs_split(basis.weights[:, k]) for k in range(K)]
    names = ([f"pc{k:03d}_pos" if split[k] else f"pc{k:03d}" for k in range(K)]    # the _neg keys come last
             + [f"pc{k:03d}_neg" for k in range(K) if split[k]])
    assert mesh["extras"]["targetNames"] == names
    assert len(mesh["primitives"][0]["targets"]) == len(names) > K
    (anim,) = gltf["animations"]
    paths = {(gltf["nodes"][c["target"]["node"]]["name"], c["target"]["path"]) for c in anim["channels"]}
    assert {("root", "translation"), ("root", "rotation"), (out["mesh"].name, "weights")} <= paths
    weights = next(s for c, s in zip(anim["channels"], anim["samplers"]) if c["target"]["path"] == "weights")
    assert gltf["accessors"][weights["output"]]["count"] == 30 * len(names)
    report = validate_gltf(glb)                      # skips without node/npm
    assert report["issues"]["numErrors"] == 0

    # Blender's own FBX importer in a fresh scene: the same shapes on the same frames
    ref = {}
    for f in (1, 12, 30):
        bpy.context.scene.frame_set(f)
        ref[f] = evaluated_world_vertices(out["mesh"])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(fbx), anim_offset=0.0)
    mesh = next(o for o in bpy.context.scene.objects if o.type == "MESH")
    for f, verts in ref.items():
        bpy.context.scene.frame_set(f)
        assert np.abs(evaluated_world_vertices(mesh) - verts).max() < 1e-4, f
