"""Where a new head goes: at the 3D cursor, or beside what is already there, never in a photo camera's view.

A head, its armature and its photo cameras are built around the model's origin (the fit's frame)
and then parented, as one unit, to an empty (``<head>_origin``) placed here. Moving that empty moves
the head with its cameras, so every camera keeps matching its photo exactly, and tracked heads
(keyed on the root bone, inside the armature's frame) stay on their video.

Each photo camera's far clip is set just behind the head (``fit_clip_end``): the camera then only
sees a bounded box of space, which placement keeps free of other objects (the default cube, other
heads). User objects are never moved or hidden: the head goes to the nearest free spot right, left
or above the cursor instead, and the caller reports that it did.

Geometry is plain numpy: boxes are axis-aligned ``(lo, hi)`` pairs in world space, camera views
are frusta given by 8 corners in the order of Blender's ``Object.bound_box``.
"""

from __future__ import annotations

import numpy as np

from .lookup import CAMERA_PROP, CAMERA_RESOLUTION_PROP, ORIGIN_PROP, RIG_PROP

BOUNDS_PROP = "faceforge_bounds"      # on a head's origin empty: the head's local box over all its frames
# objects whose surfaces show in a camera view (lights, cameras and empties are overlays only)
SOLID_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT", "VOLUME", "GPENCIL", "GREASEPENCIL",
               "POINTCLOUD", "CURVES", "ARMATURE", "LATTICE"}
GAP = 0.02                            # metres kept between a new head's space and anything else

# Object.bound_box corner order: corner i has x = max if i >= 4, y = max if i in (2, 3, 6, 7),
# z = max if i in (1, 2, 5, 6)
_BITS = np.array([[i >= 4, i in (2, 3, 6, 7), i in (1, 2, 5, 6)] for i in range(8)])
_FACES = ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (3, 2, 6, 7), (0, 3, 7, 4), (1, 2, 6, 5))
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


# ----------------------------------------------------------------------------- geometry (numpy only)
def box_corners(lo, hi) -> np.ndarray:
    """The 8 corners of an axis-aligned box, in bound_box order."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return np.where(_BITS, hi, lo)


def frustum_corners(half_w: float, half_h: float, cx: float, cy: float, near: float, far: float) -> np.ndarray:
    """A camera's view (camera axes: looks down -z) between ``near`` and ``far``, as 8 corners in bound_box
    order (x: left/right edge, y: bottom/top edge, z: far/near). The frame at unit depth spans
    ``cx +- half_w`` by ``cy +- half_h``."""
    out = np.empty((8, 3))
    for i, (bx, by, bz) in enumerate(_BITS):
        d = near if bz else far
        out[i] = ((cx + (half_w if bx else -half_w)) * d, (cy + (half_h if by else -half_h)) * d, -d)
    return out


def _axes(corners: np.ndarray) -> np.ndarray:
    """Candidate separating axes of a hexahedron against axis-aligned boxes: its face normals, the
    world axes, and the cross products of its edges with the world axes."""
    c = np.asarray(corners, np.float64)
    normals = [np.cross(c[f[1]] - c[f[0]], c[f[3]] - c[f[0]]) for f in _FACES]
    edges = [c[b] - c[a] for a, b in _EDGES]
    world = np.eye(3)
    crosses = [np.cross(e, w) for e in edges for w in world]
    axes = np.array(normals + list(world) + crosses)
    n = np.linalg.norm(axes, axis=1)
    keep = n > 1e-12 * max(1.0, float(np.abs(c).max()) ** 2)
    return axes[keep] / n[keep, None]


def hexahedron_hits_boxes(corners: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(N,) bool: does the convex hexahedron ``corners`` (8, 3) intersect each box ``lo[i]..hi[i]``?

    Separating-axis test, exact for convex solids (touching counts as a hit)."""
    lo, hi = np.atleast_2d(lo).astype(np.float64), np.atleast_2d(hi).astype(np.float64)
    if len(lo) == 0:
        return np.zeros(0, bool)
    axes = _axes(corners)                                   # (A, 3)
    proj = np.asarray(corners, np.float64) @ axes.T         # (8, A)
    pmin, pmax = proj.min(0), proj.max(0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2             # (N, 3)
    c = centre @ axes.T                                     # (N, A)
    r = half @ np.abs(axes).T
    separated = (pmax[None] < c - r) | (pmin[None] > c + r)
    return ~separated.any(1)


def boxes_hit(lo, hi, los, his) -> np.ndarray:
    """(N,) bool: does the box ``lo..hi`` intersect each box ``los[i]..his[i]``?"""
    los, his = np.atleast_2d(los), np.atleast_2d(his)
    if len(los) == 0:
        return np.zeros(0, bool)
    return np.all((np.asarray(lo) <= his) & (np.asarray(hi) >= los), axis=1)


def transform_points(matrix, points) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    p = np.asarray(points, np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


class Obstacles:
    """What a new head must keep clear of: solid objects' boxes (world) and the views of existing
    FaceForge cameras (world frusta), which must not get the new head in them."""

    def __init__(self, boxes=(), frusta=()):
        boxes = list(boxes)
        self.lo = np.array([b[0] for b in boxes], np.float64).reshape(-1, 3) - GAP
        self.hi = np.array([b[1] for b in boxes], np.float64).reshape(-1, 3) + GAP
        self.frusta = [np.asarray(f, np.float64) for f in frusta]

    def extent(self):
        pts = [self.lo, self.hi] + self.frusta
        pts = np.concatenate([p.reshape(-1, 3) for p in pts]) if any(len(p) for p in pts) else np.zeros((0, 3))
        return (pts.min(0), pts.max(0)) if len(pts) else None


def is_free(offset, head_lo, head_hi, frusta, obstacles: Obstacles) -> bool:
    """Is a head whose box is ``head_lo..head_hi`` and whose cameras see ``frusta`` (all local), moved by
    ``offset``, clear of every obstacle (and out of every existing camera's view)?"""
    o = np.asarray(offset, np.float64)
    lo, hi = np.asarray(head_lo) + o, np.asarray(head_hi) + o
    if boxes_hit(lo, hi, obstacles.lo, obstacles.hi).any():
        return False
    if len(obstacles.lo):
        for f in frusta:
            fw = f + o
            near = boxes_hit(fw.min(0), fw.max(0), obstacles.lo, obstacles.hi)   # cheap pre-check
            if near.any() and hexahedron_hits_boxes(fw, obstacles.lo[near], obstacles.hi[near]).any():
                return False
    for f in obstacles.frusta:
        if boxes_hit(f.min(0), f.max(0), lo[None], hi[None])[0] and hexahedron_hits_boxes(f, lo, hi)[0]:
            return False
    return True


def find_place(cursor, head_lo, head_hi, frusta, obstacles: Obstacles, steps: int = 40):
    """The offset (world position of the head's origin) nearest ``cursor`` where the head and its camera
    views are clear; ``(offset, moved)``.

    Candidates lie on a grid in the cursor's x-z plane (the photo cameras look along +y, so this
    keeps the heads side by side facing them), cheaper sideways than upward and never below the
    cursor (a floor is often there); ties go right. If the grid is full, the head goes just right
    of everything in the scene, which is always free."""
    cursor = np.asarray(cursor, np.float64)
    frusta = [np.asarray(f, np.float64) for f in frusta]
    if is_free(cursor, head_lo, head_hi, frusta, obstacles):
        return cursor, False
    pts = np.concatenate([np.array([head_lo, head_hi], np.float64)] + frusta)
    size = pts.max(0) - pts.min(0)
    step = max(0.02, 0.1 * float(max(size[0], size[2])))
    i, j = np.meshgrid(np.arange(-steps, steps + 1), np.arange(0, steps + 1), indexing="ij")
    i, j = i.ravel(), j.ravel()
    cost = np.hypot(i, 2.0 * j)
    for k in np.lexsort((-i, cost)):             # nearest first; of equals, the rightmost
        offset = cursor + step * np.array([i[k], 0.0, j[k]])
        if is_free(offset, head_lo, head_hi, frusta, obstacles):
            return offset, True
    ext = obstacles.extent()
    offset = cursor.copy()
    if ext is not None:
        offset[0] = max(cursor[0], ext[1][0] - pts.min(0)[0] + 2 * GAP)
    return offset, True


# ----------------------------------------------------------------------------- Blender side
def camera_frame(cam_data, resolution) -> tuple:
    """(half_w, half_h, cx, cy) of a camera's frame at unit depth, for a photo of ``resolution`` pixels
    (FaceForge cameras use sensor fit AUTO: the longer side spans the sensor width)."""
    w, h = (float(resolution[0]), float(resolution[1])) if resolution else (1.0, 1.0)
    size = max(w, h)
    k = float(cam_data.sensor_width) / float(cam_data.lens)
    return 0.5 * k * w / size, 0.5 * k * h / size, k * float(cam_data.shift_x), k * float(cam_data.shift_y)


def camera_frustum_local(cam_obj, resolution=None) -> np.ndarray:
    """The camera's view between its clip distances, 8 corners in the camera object's axes."""
    data = cam_obj.data
    res = resolution or cam_obj.get(CAMERA_RESOLUTION_PROP)
    return frustum_corners(*camera_frame(data, res), float(data.clip_start), float(data.clip_end))


def fit_clip_end(cam_obj, points_world, margin: float) -> None:
    """Far clip just behind ``points_world`` (as seen by the camera) plus ``margin``: the camera shows the
    head and what is built around it, not the rest of the scene behind it."""
    m = np.linalg.inv(np.array(cam_obj.matrix_world, np.float64))
    depth = -transform_points(m, points_world)[:, 2]
    cam_obj.data.clip_end = float(max(depth.max(), cam_obj.data.clip_start * 10) + margin)


def _world_box(obj) -> tuple:
    pts = transform_points(obj.matrix_world, np.array([tuple(c) for c in obj.bound_box]))
    return pts.min(0), pts.max(0)


def scene_obstacles(context, skip=()) -> Obstacles:
    """The visible solid objects of the view layer (their evaluated boxes) and FaceForge's cameras' views.

    FaceForge rigs are inside their heads and are left out; a head's origin empty adds the box the
    head covers over all its animated frames."""
    skip = {o.as_pointer() for o in skip}
    depsgraph = context.evaluated_depsgraph_get()
    boxes, frusta = [], []
    for obj in context.view_layer.objects:
        if obj is None or obj.as_pointer() in skip:
            continue
        if obj.type == "CAMERA" and obj.get(CAMERA_PROP):
            frusta.append(transform_points(obj.matrix_world, camera_frustum_local(obj)))
            continue
        if obj.get(ORIGIN_PROP) and obj.get(BOUNDS_PROP) is not None and len(obj[BOUNDS_PROP]) == 6:
            b = np.asarray(obj[BOUNDS_PROP], np.float64)
            pts = transform_points(obj.matrix_world, box_corners(b[:3], b[3:]))
            boxes.append((pts.min(0), pts.max(0)))
            continue
        if obj.type not in SOLID_TYPES or obj.get(RIG_PROP) or not obj.visible_get():
            continue
        boxes.append(_world_box(obj.evaluated_get(depsgraph)))
    return Obstacles(boxes, frusta)


def head_box(points) -> tuple:
    """A head's box from its points, padded by 5% of its size (expressions and poses move a little)."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    lo, hi = p.min(0), p.max(0)
    pad = 0.05 * float(np.linalg.norm(hi - lo))
    return lo - pad, hi + pad


def place_setup(context, collection, name: str, objects, head_lo, head_hi, location):
    """Parent ``objects`` (the new, still unparented head / rig / cameras) to an empty at ``location``;
    returns the empty. Their own transforms are kept, so everything moves as one unit."""
    import bpy
    from mathutils import Vector
    root = bpy.data.objects.new(f"{name}_origin", None)
    collection.objects.link(root)
    root.empty_display_type = "PLAIN_AXES"
    root.empty_display_size = 0.02        # stays inside the head: no lines across the photo camera's view
    root[ORIGIN_PROP] = 1
    root[BOUNDS_PROP] = [float(x) for x in list(head_lo) + list(head_hi)]
    root.location = Vector([float(x) for x in location])
    for obj in objects:
        if obj.parent is None:
            obj.parent = root             # parent inverse stays identity: local = the model's frame
    return root


def placement_head_points(rig, to_blender, model_to_blender) -> np.ndarray:
    """Corners of the head's box in Blender axes at rest and, for a tracked head, at every frame."""
    v = to_blender(rig.vertices)
    corners = box_corners(v.min(0), v.max(0))
    anim = getattr(rig, "animation", None)
    if anim is None:
        return corners
    A = np.asarray(model_to_blender, np.float64)
    R = A @ np.asarray(anim.root_rotation, np.float64) @ A.T                 # (T, 3, 3)
    t = np.asarray(anim.root_translation, np.float64) @ A.T                  # (T, 3)
    moved = np.einsum("tij,cj->tci", R, corners) + t[:, None]
    return np.concatenate([corners, moved.reshape(-1, 3)])


def placement_note(built: dict) -> str:
    """What a job's message adds when the head could not go to the 3D cursor (``build_head``'s result)."""
    if not built.get("moved"):
        return ""
    x, y, z = built["location"]
    return f"; placed beside what is at the 3D cursor, at ({x:.2f}, {y:.2f}, {z:.2f})"
