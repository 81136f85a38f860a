"""Where new heads appear (issue 12 item 10): each in its own collection, at the 3D cursor or beside
what is there, its cameras moved with it (still matching the photo / video exactly), and nothing
else in a photo camera's view. Plus the geometry underneath, checked against a linear program.

Drives bpy in-process with the sphere test head (no engine run).
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.scene import head_builder, lookup, placement  # noqa: E402

from test_multi_blender import multi_rig  # noqa: E402
from test_scene_builder import _fake_pipeline, make_rig, write_png  # noqa: E402
from test_track_blender import animated_rig, evaluated_world_vertices  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture
def startup_scene():
    """Blender's factory startup file: the default cube (2 m, at the origin), camera and light."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    blender_addon.runner._set_active(None)
    assert "Cube" in bpy.data.objects
    yield bpy.context
    blender_addon.runner._set_active(None)


def opencv_pixels(spec, model_points) -> np.ndarray:
    """Where the fit says model-space points appear in the photo (OpenCV pinhole, principal point)."""
    pc = np.asarray(model_points) @ np.asarray(spec.rotation).T + np.asarray(spec.translation)
    cx = spec.width / 2 if spec.cx is None else spec.cx
    cy = spec.height / 2 if spec.cy is None else spec.cy
    return np.stack([spec.focal_px * pc[:, 0] / pc[:, 2] + cx, spec.focal_px * pc[:, 1] / pc[:, 2] + cy], 1)


def blender_pixels(cam_obj, world_points) -> tuple:
    """Pixels (x right, y down) and depths of world points seen through ``cam_obj`` at its photo's size."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    scene = bpy.context.scene
    w, h = cam_obj["faceforge_resolution"]
    scene.render.resolution_x, scene.render.resolution_y = int(w), int(h)
    ndc = np.array([tuple(world_to_camera_view(scene, cam_obj, Vector(p))) for p in world_points])
    return np.stack([ndc[:, 0] * w, (1 - ndc[:, 1]) * h], 1), ndc[:, 2]


def seen_by(cam_obj, world_points) -> np.ndarray:
    """Which points a camera shows: inside its frame and between its clip distances."""
    px, depth = blender_pixels(cam_obj, world_points)
    w, h = cam_obj["faceforge_resolution"]
    return ((px[:, 0] >= 0) & (px[:, 0] <= w) & (px[:, 1] >= 0) & (px[:, 1] <= h)
            & (depth >= cam_obj.data.clip_start) & (depth <= cam_obj.data.clip_end))


def surface_samples(obj, n=24) -> np.ndarray:
    """Points on the faces of an object's box (world space), n x n per face."""
    bb = np.array([tuple(c) for c in obj.bound_box])
    lo, hi = bb.min(0), bb.max(0)
    s = np.linspace(0, 1, n)
    a, b = np.meshgrid(s, s)
    pts = []
    for axis in range(3):
        u, v = [k for k in range(3) if k != axis]
        for side in (lo[axis], hi[axis]):
            p = np.zeros((n * n, 3))
            p[:, axis] = side
            p[:, u] = lo[u] + a.ravel() * (hi[u] - lo[u])
            p[:, v] = lo[v] + b.ravel() * (hi[v] - lo[v])
            pts.append(p)
    return placement.transform_points(obj.matrix_world, np.concatenate(pts))


def in_clip_range(cam_obj, world_points) -> bool:
    """All points between the camera's clip distances (the far clip now sits just behind the head)."""
    _, depth = blender_pixels(cam_obj, world_points)
    return bool(((depth >= cam_obj.data.clip_start) & (depth <= cam_obj.data.clip_end)).all())


def world_box(points) -> tuple:
    p = np.asarray(points)
    return p.min(0), p.max(0)


def boxes_overlap(a, b) -> bool:
    return bool(np.all(a[0] <= b[1]) and np.all(b[0] <= a[1]))


# ----------------------------------------------------------------------------- scenes
def test_two_reconstructions_land_apart_beside_the_default_cube(startup_scene, tmp_path, monkeypatch):
    from blender_addon.operators import reconstruct
    scene = bpy.context.scene
    cube = bpy.data.objects["Cube"]
    rigs = []

    def pipeline():
        rigs.append(make_rig(tmp_path))
        fake = _fake_pipeline(rigs[-1], calls=[])
        fit = fake.reconstruct_photo
        fake.reconstruct_photo = lambda path, face=None, **kw: fit(path, **kw)     # (the face choice: any)
        return fake

    monkeypatch.setattr(reconstruct, "load_pipeline", pipeline)
    photo = write_png(tmp_path / "face.png")
    heads = []
    for _ in range(2):
        assert bpy.ops.faceforge.reconstruct_photo(filepath=str(photo), device="CPU") == {"FINISHED"}
        heads.append(lookup.find_head(bpy.context))
    assert heads[0] != heads[1]
    assert "placed beside what is at the 3D cursor" in bpy.context.window_manager.faceforge_job.last_message
    # one collection each, both inside the shared FaceForge collection
    colls = [h.users_collection for h in heads]
    assert all(len(c) == 1 for c in colls) and colls[0][0] != colls[1][0]
    assert {c[0].name for c in colls} <= set(bpy.data.collections["FaceForge"].children.keys())
    verts = [evaluated_world_vertices(h) for h in heads]
    cube_box = world_box(surface_samples(cube, 2))
    boxes = [world_box(v) for v in verts]
    assert not boxes_overlap(boxes[0], boxes[1])
    assert not any(boxes_overlap(b, cube_box) for b in boxes)        # not inside the default cube any more
    cube_points = surface_samples(cube)
    for k, (head, rig) in enumerate(zip(heads, rigs)):
        cam = lookup.camera_of(head)
        # the camera still sees the head exactly where the fit put it in the photo, whole
        px, depth = blender_pixels(cam, verts[k])
        keyed = rig.vertices + np.tensordot(rig.shape_key_values, rig.shape_key_deltas, axes=1)
        from test_scene_builder import lbs
        want = opencv_pixels(rig.camera, lbs(keyed, rig.bones))
        assert np.abs(px - want).max() < 1e-2, np.abs(px - want).max()
        assert in_clip_range(cam, verts[k]) and seen_by(cam, verts[k]).mean() > 0.9   # (the test photo crops the top)
        # ... and nothing else: not the default cube, not the other head
        assert not seen_by(cam, cube_points).any()
        assert not seen_by(cam, verts[1 - k]).any()
    assert scene.camera == lookup.camera_of(heads[1])
    assert scene.objects["Cube"].location.length == 0                # the user's objects are left alone


def test_the_3d_cursor_is_honoured(empty_scene, tmp_path):
    scene = bpy.context.scene
    scene.cursor.location = (1.5, -2.0, 0.75)
    rig = make_rig(tmp_path, bones=False)
    out = head_builder.build_head(bpy.context, rig)
    assert not out["moved"] and np.allclose(out["location"], (1.5, -2.0, 0.75))
    assert np.allclose(tuple(out["origin"].matrix_world.translation), (1.5, -2.0, 0.75))
    got = evaluated_world_vertices(out["mesh"])
    keyed = rig.vertices + np.tensordot(rig.shape_key_values, rig.shape_key_deltas, axes=1)
    assert np.abs(got - (head_builder.to_blender(keyed) + (1.5, -2.0, 0.75))).max() < 1e-5
    px, _ = blender_pixels(out["camera"], got)
    assert np.abs(px - opencv_pixels(rig.camera, keyed)).max() < 1e-2
    # everything hangs from the origin empty: moving it moves head and camera together
    assert out["mesh"].parent == out["origin"] and out["camera"].parent == out["origin"]
    bpy.context.view_layer.objects.active = out["origin"]              # the empty selected: its head is meant
    assert lookup.find_head(bpy.context) == out["mesh"]


def test_a_tracked_head_moved_aside_stays_on_its_video(empty_scene, tmp_path):
    scene = bpy.context.scene
    block = bpy.data.objects.new("Block", bpy.data.meshes.new("Block"))
    block.data.from_pydata([(-0.3, -0.3, -0.3), (0.3, 0.3, 0.3), (0.3, -0.3, 0.3)], [], [(0, 1, 2)])
    scene.collection.objects.link(block)
    rig = animated_rig(tmp_path)
    out = head_builder.build_head(bpy.context, rig)
    assert out["moved"] and out["location"][2] >= 0
    head, cam = out["mesh"], out["camera"]
    offset = np.array(out["location"])
    a = rig.animation
    from test_scene_builder import lbs
    for t in (0, 9, a.n_frames - 1):
        scene.frame_set(int(a.frame_start) + 1 + t)
        keyed = rig.vertices + np.tensordot(a.shape_key_values[t], rig.shape_key_deltas, axes=1)
        spec = rig.bones
        posed = lbs(keyed, type(spec)(names=spec.names, parents=spec.parents, heads=spec.heads,
                                      weights=spec.weights, pose=a.joint_pose[t]))
        model = posed @ np.asarray(a.root_rotation[t]).T + a.root_translation[t]
        got = evaluated_world_vertices(head)
        assert np.abs(got - (head_builder.to_blender(model) + offset)).max() < 1e-4, t
        px, _ = blender_pixels(cam, got)                     # on the video's face, frame by frame
        assert np.abs(px - opencv_pixels(rig.camera, model)).max() < 1e-2, t
        assert in_clip_range(cam, got) and not seen_by(cam, surface_samples(block)).any()


def test_every_photo_camera_of_a_multi_photo_head_moves_with_it(empty_scene, tmp_path):
    first = head_builder.build_head(bpy.context, multi_rig(tmp_path))
    rig = multi_rig(tmp_path)
    out = head_builder.build_head(bpy.context, rig)
    assert out["moved"] and out["collection"] != first["collection"]
    verts = evaluated_world_vertices(out["mesh"])
    keyed = rig.vertices + np.tensordot(rig.shape_key_values, rig.shape_key_deltas, axes=1)
    from test_scene_builder import lbs
    model = lbs(keyed, rig.bones)
    other = evaluated_world_vertices(first["mesh"])
    for cam, spec in zip(out["cameras"], [rig.camera] + list(rig.views)):
        px, _ = blender_pixels(cam, verts)
        assert np.abs(px - opencv_pixels(spec, model)).max() < 1e-2, cam.name
        assert not seen_by(cam, other).any(), cam.name
    for cam in first["cameras"]:                              # the first head's cameras do not see the new one
        assert not seen_by(cam, verts).any(), cam.name


def test_placement_failure_rolls_back(empty_scene, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("injected failure")
    monkeypatch.setattr(head_builder, "place_setup", boom)
    before = sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections)
    with pytest.raises(RuntimeError, match="injected"):
        head_builder.build_head(bpy.context, make_rig(tmp_path))
    assert (sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections)) == before


# ----------------------------------------------------------------------------- geometry
def lp_intersects(corners, lo, hi) -> bool:
    """Ground truth: is some convex combination of ``corners`` inside the box? (a linear program)"""
    from scipy.optimize import linprog
    n = len(corners)
    A_ub = np.concatenate([corners.T, -corners.T])
    b_ub = np.concatenate([hi, -lo])
    res = linprog(np.zeros(n), A_ub=A_ub, b_ub=b_ub, A_eq=np.ones((1, n)), b_eq=[1.0], bounds=[(0, None)] * n,
                  method="highs")
    return res.status == 0


def random_frustum(rng) -> np.ndarray:
    c = placement.frustum_corners(rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6), rng.uniform(-0.3, 0.3),
                                  rng.uniform(-0.3, 0.3), rng.uniform(0.01, 0.3), rng.uniform(0.5, 2.0))
    q = rng.normal(size=4)
    from mathutils import Quaternion
    R = np.array(Quaternion(q / np.linalg.norm(q)).to_matrix())
    return c @ R.T + rng.uniform(-1, 1, 3)


def test_frustum_box_test_agrees_with_a_linear_program():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(3)
    hits = misses = 0
    for _ in range(300):
        f = random_frustum(rng)
        centre = f.mean(0) + rng.uniform(-1.2, 1.2, 3)
        half = rng.uniform(0.02, 0.5, 3)
        lo, hi = centre - half, centre + half
        want = lp_intersects(f, lo, hi)
        assert placement.hexahedron_hits_boxes(f, lo[None], hi[None])[0] == want
        hits, misses = hits + want, misses + (not want)
    assert hits > 30 and misses > 30                  # both outcomes were exercised


def test_find_place_goes_to_the_nearest_free_spot():
    lo, hi = np.array([-0.1, -0.1, -0.1]), np.array([0.1, 0.1, 0.1])
    # a wall right of the cursor and a block on it: the head goes left, the nearest free side
    obstacles = placement.Obstacles([((-0.2, -0.2, -0.2), (0.2, 0.2, 0.2)), ((0.25, -1, -1), (0.3, 1, 1))])
    offset, moved = placement.find_place((0, 0, 0), lo, hi, [], obstacles)
    assert moved and offset[0] < -0.3 and offset[2] == 0 and offset[1] == 0
    assert placement.is_free(offset, lo, hi, [], obstacles)
    free, moved = placement.find_place((5, 0, 0), lo, hi, [], obstacles)
    assert not moved and tuple(free) == (5, 0, 0)
    # a frustum looking down +y from the head's front: a box far behind the head but in view blocks the spot
    f = placement.frustum_corners(0.3, 0.2, 0, 0, 0.01, 1.0) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T
    f = f + (0, -0.5, 0)                                     # camera 0.5 in front of the head, looking at it
    far_box = placement.Obstacles([((-0.05, 0.4, -0.05), (0.05, 0.45, 0.05))])
    assert not placement.is_free((0, 0, 0), lo, hi, [f], far_box)
    offset, moved = placement.find_place((0, 0, 0), lo, hi, [f], far_box)
    assert moved and placement.is_free(offset, lo, hi, [f], far_box) and offset[0] > 0    # ties go right
