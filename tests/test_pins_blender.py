"""Pins on a Blender head (issue 13), through the plain functions the modal operator calls (mouse
events cannot be sent in background mode): a pin added at a photo pixel lands on the mesh point seen
there, dragging it re-solves the head so that Blender's own camera shows that point at the target,
locks hold, finishing bakes the identity (a glTF export carries the corrected head and only the
expression keys), Reset restores the automatic head, pins survive saving and reopening the file; a
multi-photo head shares the identity across its cameras; a tracked head is corrected by keyframe pins."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.operators import pins as pin_ops  # noqa: E402
from blender_addon.scene import head_builder  # noqa: E402

pytestmark = pytest.mark.blender

SIZE, FOCAL = 640, 1100.0


def _rotation(yaw):
    y = np.radians(yaw)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    return np.diag([1.0, -1.0, -1.0]) @ Ry


@pytest.fixture(scope="module")
def ict():
    from blender_addon.core.models import load_model
    return load_model("ict")


def build(ict, yaw=20.0, seed=0, second_yaw=None):
    """A head as the photo reconstruction leaves it: basis = identity, expression keys at their values,
    a camera with the fit's pose, the fit's parameters on the object."""
    from blender_addon.core.rig import CameraSpec, HeadRig
    from blender_addon.core.rig.model_rig import expression_shape_keys, model_topology
    rng = np.random.default_rng(seed)
    shape = (0.6 * rng.standard_normal(ict.n_shape)).astype(np.float32)
    expr = np.zeros(ict.n_expr, np.float32)
    expr[[0, 5, 20]] = (0.3, 0.2, 0.4)
    R, t = _rotation(yaw), np.array([0.0, 0.0, 0.55])
    names, deltas, values = expression_shape_keys(ict, expr)
    rig = HeadRig(name="pinned", vertices=(ict.v_template + ict.shape_basis @ shape).astype(np.float32),
                  faces=ict.faces.copy(), shape_key_names=names, shape_key_deltas=deltas, shape_key_values=values,
                  topology=model_topology(ict),
                  camera=CameraSpec(focal_px=FOCAL, width=SIZE, height=SIZE, rotation=R, translation=t,
                                    cx=SIZE / 2, cy=SIZE / 2),
                  views=[] if second_yaw is None else [CameraSpec(
                      focal_px=FOCAL, width=SIZE, height=SIZE, rotation=_rotation(second_yaw), translation=t,
                      cx=SIZE / 2, cy=SIZE / 2)],
                  metadata={"model": "ict"})
    head = head_builder.build_head(bpy.context, rig)["mesh"]
    head["faceforge_model"] = "ict"
    head["faceforge_params"] = json.dumps({"model": {"name": "ict", "source": ict.source},
                                           "params": {"shape": shape.tolist(), "expr": expr.tolist()}})
    return head, shape, expr, R, t


def seen_px(head, face, bary, cam):
    """Where Blender's camera shows a mesh point (evaluated mesh, world_to_camera_view): photo pixels."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    deps = bpy.context.evaluated_depsgraph_get()
    ev = head.evaluated_get(deps)
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    co = co.reshape(-1, 3)
    tri = pin_ops.solver_for(head)[0].faces[face]
    local = (co[tri] * np.asarray(bary)[:, None]).sum(0)
    world = head.matrix_world @ Vector(local.tolist())
    ndc = world_to_camera_view(bpy.context.scene, cam, world)
    return np.array([ndc.x * SIZE, (1 - ndc.y) * SIZE])


def test_scene_state_reads_the_fit_back(empty_scene, ict):
    head, shape, expr, R, t = build(ict)
    st = pin_ops.scene_state(head, ict)
    assert np.allclose(st.shape, shape, atol=1e-6)
    assert np.allclose(st.views[0].expr, expr, atol=1e-6)
    assert np.allclose(st.views[0].rotation, R, atol=1e-5) and np.allclose(st.views[0].translation, t, atol=1e-5)
    assert st.views[0].focal == pytest.approx(FOCAL) and st.views[0].cx == pytest.approx(SIZE / 2)
    # an identity that is not stored is read back from the basis mesh
    head["faceforge_params"] = "{}"
    assert np.allclose(pin_ops._identity_of(head, ict), shape, atol=1e-3)


def test_drag_pins_and_blender_shows_the_point_at_the_target(empty_scene, ict, tmp_path):
    head, shape, expr, R, t = build(ict)
    cam = bpy.context.scene.camera
    model, solver = pin_ops.solver_for(head)
    pin_ops.ensure_pin_data(head)
    _, state = pin_ops._states(head)
    emb = model.landmarks
    feats = [int(np.flatnonzero(emb.detector_index == d)[0]) for d in (1, 152, 61, 263)]
    pixels = solver.landmark_pixels(state)[feats]
    assert pin_ops.add_pin(head, 0, -500.0, -500.0) is None           # off the head: no pin
    for k, px in enumerate(pixels):
        assert pin_ops.add_pin(head, 0, *px) == k
    pins = pin_ops.load_pins(head)
    for p, px in zip(pins, pixels):                                    # the ray cast found the point seen there
        assert np.linalg.norm(seen_px(head, p.face, p.bary, cam) - px) < 0.05
    # drag the chin 12 px down in small steps, as a mouse does; the head follows while dragging
    times = []
    for s in np.linspace(0, 12, 7)[1:]:
        times.append(pin_ops.move_pin(head, 1, pixels[1][0], pixels[1][1] + s))
    target = np.array([pixels[1][0], pixels[1][1] + 12])
    assert np.linalg.norm(seen_px(head, pins[1].face, pins[1].bary, cam) - target) < 0.5
    for k in (0, 2, 3):                                                # the other pins stay put
        assert np.linalg.norm(seen_px(head, pins[k].face, pins[k].bary, cam) - pixels[k]) < 0.5
    assert np.median(times) < 1.0 / 5                                  # interactive (bench: ~15-40/s)
    # while pinning, the identity's change is one extra key; finishing bakes it into the basis (and every
    # key), so the mesh is the model's head for the solved parameters
    assert head.data.shape_keys.key_blocks.get(pin_ops.IDENTITY_KEY) is not None
    before_bake = seen_px(head, pins[1].face, pins[1].bary, cam)
    pin_ops.finish_pinning(head)
    assert head.data.shape_keys.key_blocks.get(pin_ops.IDENTITY_KEY) is None
    assert np.abs(seen_px(head, pins[1].face, pins[1].bary, cam) - before_bake).max() < 1e-3
    ref, cur = pin_ops._states(head)
    assert not np.allclose(cur.shape, ref.shape)
    basis = np.empty(len(head.data.vertices) * 3, np.float32)
    head.data.shape_keys.key_blocks[0].data.foreach_get("co", basis)
    want = head_builder.to_blender(ict.v_template + ict.shape_basis @ cur.shape)
    assert np.abs(basis.reshape(-1, 3) - want).max() < 1e-4
    # ... and an export carries the corrected head with the expression keys only
    import struct
    glb = tmp_path / "pinned.glb"
    assert bpy.ops.faceforge.export_gltf(filepath=str(glb)) == {"FINISHED"}
    data = glb.read_bytes()
    gltf = json.loads(data[20:20 + struct.unpack("<I", data[12:16])[0]])
    names = gltf["meshes"][0]["extras"]["targetNames"]
    assert pin_ops.IDENTITY_KEY not in names and len(names) == len(head.data.shape_keys.key_blocks) - 1
    lo = np.min([gltf["accessors"][p["attributes"]["POSITION"]]["min"] for p in gltf["meshes"][0]["primitives"]], 0)
    hi = np.max([gltf["accessors"][p["attributes"]["POSITION"]]["max"] for p in gltf["meshes"][0]["primitives"]], 0)
    neutral = ict.v_template + ict.shape_basis @ cur.shape            # glTF is y-up like model space
    assert np.allclose(lo, neutral.min(0), atol=1e-4) and np.allclose(hi, neutral.max(0), atol=1e-4)
    old = ict.v_template + ict.shape_basis @ ref.shape
    assert not np.allclose(hi, old.max(0), atol=1e-4)

    # locks: with the pose locked the camera does not move
    head["faceforge_lock_pose"] = True
    before = np.array(cam.matrix_world)
    pin_ops.move_pin(head, 3, pixels[3][0] + 5, pixels[3][1])
    assert np.allclose(np.array(cam.matrix_world), before, atol=1e-7)
    head["faceforge_lock_pose"] = False

    # save and reopen: pins, states and locks come back, and pinning goes on
    path = str(tmp_path / "pinned.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    head = bpy.data.objects["pinned"]
    cam = bpy.context.scene.camera
    back = pin_ops.load_pins(head)
    assert back == pin_ops.load_pins(head) and len(back) == 4 and back[1].target == pytest.approx(tuple(target))
    assert "faceforge_lock_identity" in head and pin_ops.pin_config(head).lock_pose is False
    pin_ops.move_pin(head, 1, target[0] + 3, target[1])
    assert np.linalg.norm(seen_px(head, back[1].face, back[1].bary, cam) - (target + [3, 0])) < 0.5

    # remove one, then reset: the automatic head and camera come back exactly
    pin_ops.remove_pin(head, 3)
    assert len(pin_ops.load_pins(head)) == 3
    pin_ops.reset_to_automatic(head)
    assert pin_ops.load_pins(head) == []
    st = pin_ops.scene_state(head, ict)
    head["faceforge_params"] = "{}"                                     # read the identity off the mesh
    assert np.allclose(pin_ops._identity_of(head, ict), shape, atol=1e-3)
    assert np.allclose(st.views[0].rotation, R, atol=1e-5) and np.allclose(st.views[0].translation, t, atol=1e-5)
    assert np.allclose(st.views[0].expr, expr, atol=1e-5)


def test_operators_are_registered_and_reset_polls(empty_scene, ict):
    assert hasattr(bpy.types, "FACEFORGE_OT_pin_mode") and hasattr(bpy.types, "FACEFORGE_OT_reset_pins")
    head, *_ = build(ict)
    assert not bpy.ops.faceforge.reset_pins.poll()                      # nothing pinned yet
    pin_ops.ensure_pin_data(head)
    _, solver = pin_ops.solver_for(head)
    _, state = pin_ops._states(head)
    px = solver.landmark_pixels(state)[0]
    i = pin_ops.add_pin(head, 0, *px)
    pin_ops.move_pin(head, i, px[0] + 6, px[1])
    assert bpy.ops.faceforge.reset_pins() == {"FINISHED"}
    assert pin_ops.load_pins(head) == []


def test_panel_draws_pin_controls(empty_scene, ict):
    """The panel's pin box (Pin Mode, locks, Reset) draws for a head with a camera."""
    from blender_addon.ui import panels
    head, *_ = build(ict)
    pin_ops.ensure_pin_data(head)
    drawn = []

    class Layout:                      # records what the panel asks for
        def __getattr__(self, name):
            def call(*a, **k):
                drawn.append((name, a, k))
                return Layout()
            return call

    pin_ops.draw_pin_panel(Layout(), bpy.context, head)
    ops = [a[0] for n, a, k in drawn if n == "operator"]
    props = [a[1] for n, a, k in drawn if n == "prop"]
    assert "faceforge.pin_mode" in ops and "faceforge.reset_pins" in ops
    assert props == ['["faceforge_lock_identity"]', '["faceforge_lock_expression"]', '["faceforge_lock_pose"]']
    assert "draw_pin_panel" in open(panels.__file__).read()


def test_tracked_head_corrected_by_keyframe_pins(empty_scene, ict, tmp_path):
    """A tracked head whose frames 20-40 were tracked wrong: pins added on frames 22 and 38 at the
    pixels where the head shows seven features, dragged to where the features really are; Refine Track
    re-keys the animation so that Blender shows the features of an unpinned frame in between (30) within
    3 px of the truth (about 22 px off before), frames far from the span keep their keys, and the
    refined track file carries the pins."""
    from blender_addon.core.pipeline.video import rig_from_track_file
    from core.fit.pins import PinSolver
    from core.models import load_model as load_core_model
    from core.track import save_track
    from tests.test_pins import feature_pins, synthetic_track

    core_ict = load_core_model("ict")
    core_solver = PinSolver(core_ict.layer("cpu"))
    truth, track = synthetic_track(core_ict)
    path = str(tmp_path / "clip.fftrack.npz")
    save_track(track, path)
    res = rig_from_track_file(path, "ict")
    built = head_builder.build_head(bpy.context, res.rig)
    head = built["mesh"]
    head["faceforge_model"] = "ict"
    head["faceforge_track_file"] = path
    head["faceforge_frames"] = [0, track.n_frames]
    cam = bpy.context.scene.camera
    assert pin_ops.is_tracked(head)
    feats = [1, 152, 61, 291, 263, 33, 10]

    def seen(frame, pins):
        bpy.context.scene.frame_set(frame + 1)                       # Blender frame = clip frame + 1
        return np.array([seen_px(head, p.face, p.bary, cam) for p in pins])

    for k in (22, 38):
        true_pins = feature_pins(core_ict, core_solver, truth(k), feats)
        st = pin_ops._frame_state(head, k)
        shown = pin_ops.solver_for(head)[1].pin_pixels(st, [pin_ops._core("fit.pins").Pin(p.face, p.bary, (0, 0), 0)
                                                             for p in true_pins])
        assert np.allclose(seen(k, true_pins), shown, atol=0.5)      # the track is what Blender shows
        for p, px in zip(true_pins, shown):
            i = pin_ops.add_track_pin(head, k, *px)
            assert i is not None and pin_ops.track_frame(head, k + 1) == k
            pin_ops.move_track_pin(head, i, *p.target)
    mid = feature_pins(core_ict, core_solver, truth(30), feats)
    far = feature_pins(core_ict, core_solver, truth(5), feats)
    before_mid = np.linalg.norm(seen(30, mid) - np.array([p.target for p in mid]), axis=1).mean()
    before_far = seen(5, far)
    out = pin_ops.refine_tracked_head(bpy.context, head)
    after_mid = np.linalg.norm(seen(30, mid) - np.array([p.target for p in mid]), axis=1).mean()
    assert before_mid > 15 and after_mid < 3.0, (before_mid, after_mid)
    assert np.abs(seen(5, far) - before_far).max() < 0.05
    from blender_addon.core.track import load_track
    assert len(load_track(out).pins) == 14 and head[pin_ops.REFINED_PROP] == out
    assert bpy.context.scene.camera == cam
    # the panel offers Refine Track and Reset for the tracked head; Reset keys the original track again
    drawn = []

    class Layout:
        def __getattr__(self, name):
            def call(*a, **k):
                drawn.append((name, a, k))
                return Layout()
            return call

    pin_ops.draw_pin_panel(Layout(), bpy.context, head)
    ops = [a[0] for n, a, k in drawn if n == "operator"]
    assert "faceforge.refine_track" in ops and "faceforge.reset_pins" in ops
    assert bpy.ops.faceforge.refine_track() == {"FINISHED"}
    assert np.linalg.norm(seen(30, mid) - np.array([p.target for p in mid]), axis=1).mean() < 3.0
    assert bpy.ops.faceforge.reset_pins() == {"FINISHED"}
    assert pin_ops.load_track_pins(head) == []
    back = np.linalg.norm(seen(30, mid) - np.array([p.target for p in mid]), axis=1).mean()
    assert back == pytest.approx(before_mid, abs=0.05)


def test_pins_in_the_second_photo_of_a_multi_photo_head(empty_scene, ict):
    """Two photo cameras share the identity: pins in the second photo re-solve the identity (the mesh
    changes for both), move only the second camera, and Blender's second camera shows each pin at its target."""
    head, shape, expr, R, t = build(ict, yaw=-10.0, second_yaw=50.0)
    cams = pin_ops.head_cameras(head)
    assert len(cams) == 2
    pin_ops.ensure_pin_data(head)
    model, solver = pin_ops.solver_for(head)
    _, state = pin_ops._states(head)
    emb = model.landmarks
    feats = [int(np.flatnonzero(emb.detector_index == d)[0]) for d in (1, 152, 61, 291, 263, 10)]
    px = solver.landmark_pixels(state, 1)[feats]
    first = np.array(cams[0].matrix_world)
    targets = px + np.array([[4.0, 0.0], [0.0, 5.0], [-3.0, 2.0], [3.0, 2.0], [0.0, -3.0], [0.0, -4.0]])
    for k, (p, q) in enumerate(zip(px, targets)):
        i = pin_ops.add_pin(head, 1, *p)
        assert i == k
        pin_ops.move_pin(head, i, *q)
    ref, cur = pin_ops._states(head)
    assert not np.allclose(cur.shape, ref.shape)                      # the shared identity moved
    assert np.allclose(np.array(cams[0].matrix_world), first, atol=1e-7)
    assert np.array_equal(cur.views[0].expr, ref.views[0].expr)
    bpy.context.scene.camera = cams[1]
    for p, q in zip(pin_ops.load_pins(head), targets):
        assert p.view == 1
        assert np.linalg.norm(seen_px(head, p.face, p.bary, cams[1]) - q) < 0.5
