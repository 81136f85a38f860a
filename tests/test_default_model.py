"""The default full-head model (ICT-FaceKit) end to end: the shipped file, the model layer's parts,
the build script's pieces, a photo fit with its texture, and the Blender head it becomes, read
back by independent readers (ufbx, assimp, Khronos glTF-Validator)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.models import DEFAULT_MODEL, load_model
from core.models.arkit import ARKIT_NAMES, missing_arkit_names
from core.models.correspondence import embedding_points
from core.models.npz_format import load_model_npz, save_model_npz

ROOT = Path(__file__).resolve().parent.parent
ICT_PARTS = ["face", "head_and_neck", "mouth_socket", "eye_socket_left", "eye_socket_right", "gums_and_tongue",
             "teeth", "eyeball_left", "eyeball_right", "lacrimal_fluid_left", "lacrimal_fluid_right",
             "eye_blend_left", "eye_blend_right", "eye_occlusion_left", "eye_occlusion_right",
             "eyelashes_left", "eyelashes_right"]


@pytest.fixture(scope="module")
def ict():
    return load_model(None)


# ----------------------------------------------------------------------------- the shipped file
def test_default_is_the_full_head(ict):
    assert DEFAULT_MODEL == "ict" and ict.name == "ict"
    assert load_model("ict") is ict and load_model("default") is ict
    assert load_model("builtin").n_vertices == 468 == load_model("facemask").n_vertices
    s = ict.summary()
    assert (s["vertices"], s["identity_components"], s["expression_components"]) == (26719, 100, 57)
    assert ict.parts.names == ICT_PARTS
    # polygons: ICT's 26,384 (25,836 quads + 548 triangles), triangulated for the renderer
    sizes = ict.polygons.sizes
    assert len(sizes) == 26384 and int((sizes == 4).sum()) == 25836 and int((sizes == 3).sum()) == 548
    assert len(ict.faces) == 25836 * 2 + 548
    assert (ROOT / "weights" / "ICT-FaceKit-LICENSE.txt").read_text().startswith("MIT License")
    assert (ROOT / "weights" / "ict_facekit.md").is_file()
    assert (ROOT / "weights" / "ict_facekit.npz").stat().st_size < 30 * 2 ** 20


def test_parts_skin_and_uvs(ict):
    skin = ict.skin_vertex_mask()
    assert skin.sum() == 9409 + 1839                            # face + head and neck only
    sf = ict.skin_faces()
    assert skin[ict.faces[sf]].all() and 0 < len(sf) < len(ict.faces)
    uv = ict.corner_uv()
    assert uv.shape == (len(ict.faces), 3, 2)
    # every triangle's corners are its polygon's corners (the triangulation keeps the polygon's UVs)
    pg = ict.polygons
    starts = pg.starts
    for f in (0, 1000, len(ict.faces) - 1):
        p = pg.face_polygon[f]
        poly = pg.vertices[starts[p]:starts[p] + pg.sizes[p]]
        assert set(ict.faces[f]) <= set(poly)
    # the eyeballs are UV-mapped inside one tile; the teeth in their own (ICT's tiles)
    fp = ict.face_parts()
    teeth = uv[fp == ICT_PARTS.index("teeth")][..., 0]
    assert 3.0 <= teeth.min() and teeth.max() <= 4.0


def test_expressions_carry_arkit_names(ict):
    names = ict.expr_names
    assert "eyeBlinkLeft" in names and "jawOpen" in names and "mouthSmileRight" in names
    assert {"browInnerUp_L", "browInnerUp_R", "cheekPuff_L", "cheekPuff_R", "cheekRaiser_L", "PupilDilate_R"} <= set(names)
    assert missing_arkit_names(names) == ["tongueOut"]
    assert ict.expr_range == (0.0, 1.0)
    # ICT's eyeLook shapes move the eyeballs: gaze follows them
    eye = ict.parts.vertex_part == ICT_PARTS.index("eyeball_left")
    k = names.index("eyeLookOutLeft")
    assert np.abs(ict.expr_basis[eye, :, k]).max() > 1e-3


def test_landmarks_lie_on_the_face_not_through_the_holes(ict):
    lm = ict.landmarks
    assert lm is not None and lm.error_mm is not None and len(lm.point_error_mm) == len(lm.face_index)
    assert len(lm.face_index) >= 400
    parts = ict.parts.vertex_part[ict.faces[lm.face_index][:, 0]]
    assert (parts == 0).all()                                   # all on the face part
    # the eyelid and inner-lip points the old method lifted ~19 cm back through the openings
    pts = embedding_points(ict, lm)
    nose_tip_z = ict.v_template[:9409, 2].max()
    for d in (144, 145, 159, 373, 374, 386, 13, 82, 311, 312):
        if d in lm.detector_index:
            z = pts[list(lm.detector_index).index(d), 2]
            assert nose_tip_z - z < 0.05, (d, nose_tip_z - z)


def test_float16_bases_round_trip(ict, tmp_path):
    """The repository copy stores float16 bases; a re-save keeps them exactly (no second loss)."""
    path = save_model_npz(ict, tmp_path / "copy.npz", basis_dtype=np.float16)
    again = load_model_npz(path)
    assert again.shape_basis.dtype == np.float32
    assert np.array_equal(again.shape_basis, ict.shape_basis) and np.array_equal(again.expr_basis, ict.expr_basis)
    assert again.parts.names == ict.parts.names and np.array_equal(again.polygons.uv, ict.polygons.uv)


# ----------------------------------------------------------------------------- the build script's pieces
def test_obj_reading_and_quad_triangulation():
    from tools.build_default_model import obj_topology, triangulate
    text = ("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 0.5\n"
            "usemtl A\nf 1/1 2/2 3/3 4/4\nusemtl B\nf 2/2 5/5 3/3\n")
    v, uv, sizes, cv, cuv, mats = obj_topology(text)
    assert v.shape == (5, 3) and uv.shape == (5, 2) and list(sizes) == [4, 3] and mats == ["A", "B"]
    assert list(cv) == [0, 1, 2, 3, 1, 4, 2] and list(cuv) == [0, 1, 2, 3, 1, 4, 2]
    tris, owner = triangulate(sizes, cv, v)
    assert len(tris) == 3 and list(owner) == [0, 0, 1]
    # the quad is split along a diagonal, both halves keep its winding (normals along +z)
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    assert (n[:, 2] > 0).all()


def test_old_version_1_files_still_load(tmp_path):
    """Format version 2 added parts and polygons; a version-1 file (none of them) loads as before."""
    m = load_model("builtin")
    path = save_model_npz(m, tmp_path / "v1.npz")
    data = dict(np.load(path, allow_pickle=False))
    data["format_version"] = np.array(1, dtype=np.int64)
    np.savez(tmp_path / "v1b.npz", **data)
    old = load_model_npz(tmp_path / "v1b.npz")
    assert old.parts is None and old.polygons is None and old.n_vertices == 468
    assert len(old.skin_faces()) == len(old.faces)


# ----------------------------------------------------------------------------- a photo fit with it
@pytest.fixture(scope="module")
def astronaut_fit(tmp_path_factory):
    import imageio.v3 as iio
    import skimage.data

    from core.pipeline import reconstruct_photo
    photo = tmp_path_factory.mktemp("photo") / "astronaut.png"
    iio.imwrite(photo, skimage.data.astronaut())
    return reconstruct_photo(str(photo), device="cpu")


def test_photo_fit_with_the_full_head(astronaut_fit):
    rec = astronaut_fit
    assert rec.model.name == "ict"
    assert rec.fit.landmark_error_px < 2.0
    expr = rec.fit.params["expr"]
    assert expr.min() > -0.02 and expr.max() < 1.02                 # blendshape weights stay in 0..1
    smile = [rec.model.expr_names.index(n) for n in ("mouthSmileLeft", "mouthSmileRight")]
    assert expr[smile].min() > 0.3                                    # she smiles
    rig = rec.rig
    assert rig.topology is not None and rig.topology.material_names[0] == "skin"
    assert {"eye", "teeth", "lashes"} <= set(rig.topology.material_names)
    assert rig.shape_key_names[-2:] == ["browInnerUp", "cheekPuff"]
    k = rig.shape_key_names.index("browInnerUp")
    a, b = (rig.shape_key_names.index(n) for n in ("browInnerUp_L", "browInnerUp_R"))
    assert np.allclose(rig.shape_key_deltas[k], rig.shape_key_deltas[a] + rig.shape_key_deltas[b])


def test_photo_texture_in_the_models_uvs(astronaut_fit):
    rec = astronaut_fit
    tex = rec.texture
    assert tex is not None and tex.shape == (1024, 2048, 3)          # ICT's two skin tiles side by side
    chart = rec.bake.chart
    assert rec.bake.filled_from["photos"] > 0.05 * chart.sum()
    # the fill continues the face's skin: no black or saturated texels inside the chart
    inside = tex[chart].astype(float)
    assert inside.min(1).mean() > 60 and (inside.max(1) - inside.min(1)).mean() < 120
    # and the face region has the photo's features: more contrast there than in the flat fill
    face = tex[:, :1024][chart[:, :1024]].astype(float)
    back = tex[:, 1024:][chart[:, 1024:]].astype(float)
    assert face.std(0).mean() > 2 * back.std(0).mean()


# ----------------------------------------------------------------------------- in Blender, and exported
@pytest.mark.slow
def test_blender_head_exports_every_part_and_key(tmp_path):
    """The default head in Blender: quads, UVs, a material per part, ARKit keys, the baked texture;
    FBX and GLB read back by ufbx, assimp and the Khronos glTF-Validator."""
    import bpy

    import blender_addon
    from tests.test_scene_builder import read_fbx_with_ufbx
    from tests.test_track_blender import read_glb, validate_gltf

    import imageio.v3 as iio
    import skimage.data

    bpy.ops.wm.read_factory_settings(use_empty=True)
    if not hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo"):
        blender_addon.register()
    photo = tmp_path / "astronaut.png"
    iio.imwrite(photo, skimage.data.astronaut())
    assert bpy.ops.faceforge.reconstruct_photo(filepath=str(photo), device="CPU") == {"FINISHED"}
    from blender_addon.scene.lookup import find_head
    head = find_head(bpy.context)
    me = head.data
    assert len(me.vertices) == 26719 and len(me.polygons) == 26384
    assert sum(1 for p in me.polygons if p.loop_total == 4) == 25836
    assert [m.name.split("_", 1)[1] for m in me.materials] == \
        ["skin", "mouth", "gums", "teeth", "eye", "eye_wet", "eye_occlusion", "lashes"]
    assert [uv.name for uv in me.uv_layers] == ["UVMap", "UVMap_model"]
    keys = [k.name for k in me.shape_keys.key_blocks][1:]
    assert len(keys) == 59 and "jawOpen" in keys and "browInnerUp" in keys and "tongueOut" not in keys
    img = next(n.image for n in me.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    assert tuple(img.size) == (2048, 1024)
    # glTF multiplies every primitive by the vertex colours: white except where a material reads them
    col = np.zeros(len(me.vertices) * 4, dtype=np.float32)
    me.color_attributes["albedo"].data.foreach_get("color", col)
    col = col.reshape(-1, 4)[:, :3]
    assert np.allclose(col[:9409], 1.0)                                 # textured skin: white
    assert np.allclose(col[17039:21451], 1.0)                           # teeth: a plain material colour
    eyes = col[21451:24591]
    assert eyes.min() < 0.1 and np.ptp(eyes) > 0.5                      # pupils, irises and sclera
    lashes = me.materials[len(me.materials) - 1]
    assert getattr(lashes, "blend_method", "BLEND") == "BLEND"

    fbx, glb = tmp_path / "head.fbx", tmp_path / "head.glb"
    assert bpy.ops.faceforge.export_fbx(filepath=str(fbx)) == {"FINISHED"}
    assert bpy.ops.faceforge.export_gltf(filepath=str(glb)) == {"FINISHED"}

    info = read_fbx_with_ufbx(fbx)                                  # ufbx: one mesh, every key
    assert info["meshes"][0] == [26719, 26384]
    assert sorted(info["channels"]) == sorted(keys)
    if shutil.which("assimp"):                                      # assimp: one mesh per material
        out = tmp_path / "via_assimp.gltf"
        r = subprocess.run(["assimp", "export", str(fbx), str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        g = json.loads(out.read_text())
        assert len(g["materials"]) >= 8 and all(len(p.get("targets", [])) == 59
                                                for m in g["meshes"] for p in m["primitives"])
    gl = read_glb(glb)                                              # glTF: a primitive per material
    prims = gl["meshes"][0]["primitives"]
    assert len(prims) == 8 and all(len(p["targets"]) == 59 for p in prims)
    assert gl["meshes"][0]["extras"]["targetNames"] == keys
    assert any(m.get("alphaMode") == "BLEND" for m in gl["materials"])
    assert len(gl["images"]) >= 1
    report = validate_gltf(glb)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]


def test_the_add_on_knows_the_engines_embedded_model_names():
    """The Blender side keeps its own copy of the names (reading them must not import torch)."""
    from blender_addon.properties import EMBEDDED_MODEL_NAMES
    from core.models.builtin import ALIASES
    assert set(EMBEDDED_MODEL_NAMES) == set(ALIASES)
