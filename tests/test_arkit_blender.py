"""ARKit recordings in Blender: ``faceforge.import_arkit_recording`` keys a head's ARKit-named shape keys
and its head rotation (root bone, or the object without a rig) so that every frame shows the CSV's
values; bad files and heads change nothing; the ``import-arkit`` command line.

(Undo itself is not checked: ``ed.undo`` needs a window, which the bpy module has not. The operator
is one UNDO step like every other scene-changing FaceForge operator, see test_addon.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.core.models.arkit import ARKIT_NAMES  # noqa: E402
from blender_addon.core.rig import BoneSpec, HeadRig  # noqa: E402
from blender_addon.core.track.arkit_recording import head_rotations  # noqa: E402
from blender_addon.scene import animation, head_builder  # noqa: E402

from test_arkit import random_take, write_llf  # noqa: E402
from test_scene_builder import make_rig, uv_sphere  # noqa: E402
from test_track_blender import cli, evaluated_world_vertices, names_of_data, scene_settings  # noqa: E402

pytestmark = pytest.mark.blender

# a head with ARKit names, ICT halves + the combined key, an ICT alias, an extra ICT shape
KEYS = ["eyeBlinkLeft", "jawOpen", "browInnerUp_L", "browInnerUp_R", "browInnerUp", "mouthSmile_L",
        "cheekRaiser_L", "eyeWideRight"]
COLUMNS = ["eyeBlinkLeft", "jawOpen", "browInnerUp", "mouthSmileLeft", "tongueOut"]   # no eyeWideRight
DRIVEN = {"eyeBlinkLeft": "eyeBlinkLeft", "jawOpen": "jawOpen", "browInnerUp": "browInnerUp",
          "mouthSmile_L": "mouthSmileLeft"}
ROOT_HEAD = np.array([0.0, -0.1, 0.0])


def arkit_rig(bones=True) -> HeadRig:
    v, f = uv_sphere()
    rng = np.random.default_rng(5)
    deltas = rng.normal(scale=0.004, size=(len(KEYS), len(v), 3))     # distinct per key: a wrong key shows
    spec = None
    if bones:
        W = np.zeros((len(v), 2))
        W[:, 0] = 1.0                                                  # all on the root: a rigid head
        spec = BoneSpec(names=["root", "jaw"], parents=np.array([-1, 0]),
                        heads=np.array([ROOT_HEAD, [0.0, -0.05, 0.03]]), weights=W)
    return HeadRig(name="ArkitHead", vertices=v, faces=f, shape_key_names=list(KEYS), shape_key_deltas=deltas,
                   shape_key_values=np.zeros(len(KEYS)), bones=spec)


def take(tmp_path, T=40, fps=30, seed=0, name="take.csv", scale=1.0):
    values, head, eyes = random_take(T, seed)
    values *= scale
    path = write_llf(tmp_path / name, values, head, eyes, fps=fps, start=(10, 0, 0, fps - 3), columns=COLUMNS)
    return path, values, head


def col(values, name):
    return values[:, ARKIT_NAMES.index(name)].astype(np.float64)


def expected_vertices(rig, values, head_ypr, t, about=ROOT_HEAD, R0=np.eye(3)):
    """Blender world vertices of frame ``t``: the CSV's key values, then the head rotation about ``about``."""
    w = np.zeros(len(KEYS))
    for key, channel in DRIVEN.items():
        w[KEYS.index(key)] = col(values, channel)[t]
    keyed = rig.vertices + np.tensordot(w, rig.shape_key_deltas, axes=1)
    R = R0 @ head_rotations(head_ypr[t:t + 1])[0]
    return head_builder.to_blender((keyed - about) @ R.T + about)


def key_values(head) -> dict:
    return {kb.name: round(kb.value, 6) for kb in head.data.shape_keys.key_blocks}


def import_take(path, **kw):
    return bpy.ops.faceforge.import_arkit_recording(filepath=str(path), **kw)


# ----------------------------------------------------------------------------- the recording on a head
def test_recording_keys_shape_keys_and_root_bone(empty_scene, tmp_path):
    scene = bpy.context.scene
    rig = arkit_rig()
    head = head_builder.build_head(bpy.context, rig)["mesh"]
    arm = head.parent
    scene.frame_set(7)                                   # the recording starts at the current frame
    path, values, ypr = take(tmp_path)
    assert import_take(path) == {"FINISHED"}
    msg = bpy.context.window_manager.faceforge_job.last_message
    assert "40 frames at 30 fps" in msg and "(scene frames 7-46)" in msg and "4 shape keys" in msg
    assert "head rotation on bone 'root'" in msg
    assert "no shape key for: tongueOut" in msg and "not in the recording: eyeWideRight" in msg
    assert (scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end) == (30, 1.0, 7, 46)

    keys = head.data.shape_keys
    action = keys.animation_data.action
    assert action.name == "ArkitHead_arkit"
    paths = sorted(fc.data_path for fc in animation.fcurves_of(action))
    assert paths == sorted(f'key_blocks["{k}"].value' for k in DRIVEN)      # halves, extras untouched
    assert len(animation.fcurves_of(arm.animation_data.action)) == 4        # root rotation_quaternion
    assert arm.pose.bones["root"].rotation_mode == "QUATERNION"

    for t in (0, 1, 13, 39):
        scene.frame_set(7 + t)
        for key, channel in DRIVEN.items():
            assert keys.key_blocks[key].value == pytest.approx(col(values, channel)[t], abs=1e-5), (t, key)
        assert keys.key_blocks["browInnerUp_L"].value == 0.0 and keys.key_blocks["eyeWideRight"].value == 0.0
        got = evaluated_world_vertices(head)
        assert np.abs(got - expected_vertices(rig, values, ypr, t)).max() < 2e-5, t
    # keys are linear between frames (no overshoot between recorded values)
    fc = next(fc for fc in animation.fcurves_of(action) if fc.data_path == 'key_blocks["jawOpen"].value')
    mid = 0.5 * (col(values, "jawOpen")[2] + col(values, "jawOpen")[3])
    assert fc.evaluate(9.5) == pytest.approx(mid, abs=1e-5)


def test_head_rotation_direction_in_blender(empty_scene, tmp_path):
    """Positive yaw turns the face (Blender -Y, the front view) toward the head's own left (+X)."""
    head = head_builder.build_head(bpy.context, arkit_rig())["mesh"]
    path = tmp_path / "yaw.csv"
    path.write_text("Timecode,JawOpen,HeadYaw,HeadPitch,HeadRoll\n"
                    "00:00:00:00.0,0,0,0,0\n00:00:00:01.0,0,0.5,0,0\n00:00:00:02.0,0,0,0.5,0\n")
    bpy.context.scene.frame_set(1)
    assert import_take(path, fps=30) == {"FINISHED"}
    nose = int(np.argmin(evaluated_world_vertices(head)[:, 1]))       # the most frontal vertex at rest
    bpy.context.scene.frame_set(2)
    yawed = evaluated_world_vertices(head)[nose]
    bpy.context.scene.frame_set(3)
    pitched = evaluated_world_vertices(head)[nose]
    assert yawed[0] > 0.04                  # toward +X: the model's left
    assert pitched[2] < -0.05               # down (-Z): the face tips forward about the root at the chin


def test_without_rig_the_object_rotates_and_keys_are_retimed(empty_scene, tmp_path):
    scene = bpy.context.scene
    scene.render.fps, scene.frame_start, scene.frame_end = 24, 1, 250
    rig = arkit_rig(bones=False)
    head = head_builder.build_head(bpy.context, rig)["mesh"]
    head.rotation_euler = (0.0, 0.0, 0.3)                   # the user turned the head: the recording adds to it
    R0 = np.array(head.matrix_basis.to_3x3())
    path, values, ypr = take(tmp_path, T=31, fps=60)
    assert import_take(path, use_current_frame=False, frame_start=10, set_scene_timing=False) == {"FINISHED"}
    msg = bpy.context.window_manager.faceforge_job.last_message
    assert "31 frames at 60 fps" in msg and "head rotation on object 'ArkitHead'" in msg
    assert (scene.render.fps, scene.frame_start, scene.frame_end) == (24, 1, 250)   # scene timing kept
    A = head_builder.MODEL_TO_BLENDER
    for t in (0, 5, 30):                                     # 60 fps rows on a 24 fps scene: row t at 10 + 0.4 t
        scene.frame_set(10 + int(0.4 * t))
        keys = head.data.shape_keys.key_blocks
        assert keys["jawOpen"].value == pytest.approx(col(values, "jawOpen")[t], abs=1e-5)
        R = R0 @ A @ head_rotations(ypr[t:t + 1])[0] @ A.T
        np.testing.assert_allclose(np.array(head.matrix_world.to_3x3()), R, atol=1e-5)


# ----------------------------------------------------------------------------- nothing changes on errors
def state(head):
    arm = head.parent
    ads = [o.animation_data for o in (head, head.data.shape_keys, arm) if o is not None]
    return (names_of_data(), scene_settings(bpy.context.scene), key_values(head),
            [(ad.action.name if ad is not None and ad.action else None) for ad in ads],
            [(kb.slider_min, kb.slider_max) for kb in head.data.shape_keys.key_blocks],
            arm.pose.bones["root"].rotation_mode if arm is not None else None)


@pytest.mark.parametrize("case", ["not_a_number", "binary", "missing", "pca_head"])
def test_bad_input_changes_nothing(empty_scene, tmp_path, case):
    rig = make_rig(tmp_path, camera=False) if case == "pca_head" else arkit_rig()
    head = head_builder.build_head(bpy.context, rig)["mesh"]
    head.data.shape_keys.key_blocks[1].value = 0.25
    head.data.shape_keys.key_blocks[1].keyframe_insert("value", frame=1)   # the head was animated before
    path = tmp_path / "take.csv"
    if case == "not_a_number":
        path.write_text("Timecode,JawOpen\n00:00:00:00.0,0.5\n00:00:00:01.0,lots\n")
        match = "line 3, column 'JawOpen'"
    elif case == "binary":
        path.write_bytes(b"\x00\x01\x02 not text" * 40)
        match = "not a text CSV"
    elif case == "missing":
        path, match = tmp_path / "nope.csv", "does not exist"
    else:
        take(tmp_path)
        match = "have no ARKit names"
    before = state(head)
    with pytest.raises(RuntimeError, match=match):
        import_take(path)
    assert state(head) == before
    job = bpy.context.window_manager.faceforge_job
    assert job.last_state == "FAILED" and match in job.last_message


def test_failure_while_keying_puts_the_previous_animation_back(empty_scene, tmp_path, monkeypatch):
    from blender_addon.scene import arkit as scene_arkit
    head = head_builder.build_head(bpy.context, arkit_rig())["mesh"]
    first, _, _ = take(tmp_path, name="first.csv")
    assert import_take(first) == {"FINISHED"}
    arm = head.parent
    arm.pose.bones["root"].rotation_mode = "XYZ"
    bpy.context.scene.frame_set(5)
    second, _, _ = take(tmp_path, T=90, fps=60, seed=3, name="second.csv", scale=4.5)   # beyond the sliders
    before = state(head)
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 6:                        # after the shape keys, inside the head rotation
            raise RuntimeError("injected failure")
        return animation.write_keys(*args, **kw)

    monkeypatch.setattr(scene_arkit, "write_keys", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        import_take(second)
    assert len(calls) == 6
    assert state(head) == before
    assert sorted(a.name for a in bpy.data.actions) == ["ArkitHead_arkit", "ArkitHead_arkit_head"]


def test_no_head_no_poll(empty_scene, tmp_path):
    path, _, _ = take(tmp_path)
    with pytest.raises(RuntimeError, match="No FaceForge head"):
        import_take(path)


# ----------------------------------------------------------------------------- command line
def test_cli_import_arkit(empty_scene, tmp_path):
    r = cli("import-arkit", "--help")
    assert r.returncode == 0 and all(f in r.stdout for f in ("--start", "--fps", "--no-head-rotation", "--glb"))
    r = cli("import-arkit", "head.blend", "take.csv")
    assert r.returncode == 2 and "nothing to write" in r.stderr

    head_builder.build_head(bpy.context, arkit_rig())
    blend = tmp_path / "head.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    path, values, _ = take(tmp_path)
    out = tmp_path / "animated.blend"
    r = cli("import-arkit", blend, path, "--start", "3", "--blend", out, "--glb", tmp_path / "animated.glb")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 frames at 30 fps" in r.stdout and f"wrote {out}" in r.stdout
    assert (tmp_path / "animated.glb").stat().st_size > 0

    bad = tmp_path / "bad.csv"
    bad.write_text("Timecode,Foo\n1,2\n")
    r = cli("import-arkit", blend, bad, "--blend", tmp_path / "never.blend")
    assert r.returncode == 1 and "no ARKit blendshape column" in r.stderr and not (tmp_path / "never.blend").exists()

    bpy.ops.wm.open_mainfile(filepath=str(out))
    scene = bpy.context.scene
    head = bpy.data.objects["ArkitHead"]
    assert (scene.frame_start, scene.frame_end, scene.render.fps) == (3, 42, 30)
    scene.frame_set(3 + 11)
    assert head.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(col(values, "jawOpen")[11], abs=1e-5)


def test_cli_photo_to_animated_default_head(tmp_path):
    """The issue's end point: a photo becomes the default (ICT, ARKit-named) head and a take animates it."""
    import cv2
    import skimage.data
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), skimage.data.astronaut()[:, :, ::-1])
    values, head, eyes = random_take(30)
    path = write_llf(tmp_path / "take.csv", values, 0.3 * head, eyes, fps=60)
    r = cli("import-arkit", photo, path, "--out", tmp_path / "head.fbx", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "30 frames at 60 fps" in r.stdout and "51 shape keys" in r.stdout
    assert "no shape key for: tongueOut" in r.stdout and (tmp_path / "head.fbx").stat().st_size > 0
