"""Pins: correcting a head by dragging points of its mesh to where they belong in its photo.

``faceforge.pin_mode`` is a modal operator in the camera view of a reconstructed head: a click on the
mesh adds a pin there (ray cast -> triangle + barycentric), dragging moves the pin's target and the
head re-solves while dragging, a right click removes the nearest pin, Esc / Enter ends. Pins are drawn
over the view (GPU overlay). ``faceforge.reset_pins`` goes back to the automatic result.

Everything the operator does is a plain function of (head, view, pixel) below, so tests drive it with
bpy in background mode; the modal operator only turns mouse events into calls. What lives on the head
object (custom properties, so it is saved with the file and undone with it):
- ``faceforge_pins``: JSON list of pins (triangle, barycentric, target pixel, view = camera index);
- ``faceforge_pin_reference``: JSON head state of the automatic result (identity, and per camera its
  pose and expression), what the pins correct and Reset goes back to;
- ``faceforge_pin_state``: JSON head state now; ``faceforge_pin_cameras``: the cameras' names, in view order;
- ``faceforge_lock_identity`` / ``_expression`` / ``_pose``: what may move while pinning.
The solve moves the cameras (a head's pose is its camera's), the shape keys' values (expression) and,
for an identity change, the basis and every shape key by the same offset.

On a tracked head (one with a saved track file) a pin belongs to the current frame, which becomes a
keyframe: ``faceforge_track_pins`` holds them, and on letting go of a pin (or with ``faceforge.refine_track``)
the keyframes are re-solved, the corrections blended into the neighbouring frames (core/track/keyframes.py),
the refined track saved beside the original with its pins (``faceforge_track_file_refined``) and the
animation keyed again; the camera stays, the identity is the clip's.
"""

import importlib
import json
import time

import bpy
import numpy as np
from mathutils import Matrix, Vector

from ..runner import JobOperator, _fail_poll
from ..scene.lookup import CAMERA_RESOLUTION_PROP, cameras_of, find_head

PINS_PROP = "faceforge_pins"
STATE_PROP = "faceforge_pin_state"
REFERENCE_PROP = "faceforge_pin_reference"
CAMERAS_PROP = "faceforge_pin_cameras"
LOCKS = ("identity", "expression", "pose")
PICK_RADIUS_PX = 12          # region pixels within which a click grabs an existing pin
SENSOR_WIDTH_MM = 36.0

# model (x, y, z) -> Blender (x, -z, y), as scene/head_builder.py
_M2B = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
_CV = np.diag([1.0, -1.0, -1.0])                  # OpenCV camera axes <-> Blender camera axes

_solvers = {}                # model spec -> (model, PinSolver): loading a model takes seconds


def _core(name: str):
    from ..engine import core
    return importlib.import_module(f"{core.__name__}.{name}")


# ----------------------------------------------------------------------------- the head's data
def _model_spec(head) -> str:
    try:
        info = json.loads(head.get("faceforge_params", "{}")).get("model")
    except ValueError:
        info = None
    if isinstance(info, dict) and info.get("source"):
        import os
        if os.path.isfile(info["source"]):
            return info["source"]
    return str(head.get("faceforge_model", "") or "ict")


def solver_for(head):
    """(model, PinSolver) of a head's model (cached)."""
    spec = _model_spec(head)
    if spec not in _solvers:
        model = _core("models").load_model(spec)
        _solvers[spec] = (model, _core("fit.pins").PinSolver(model.layer("cpu")))
    return _solvers[spec]


def _key_names(model) -> list:
    return list(_core("models.arkit").shape_key_layout(model.expr_names)[0])


def camera_intrinsics(cam) -> tuple:
    """(focal, cx, cy, width, height) in pixels of a head camera, as scene/head_builder.py made it."""
    res = cam.get(CAMERA_RESOLUTION_PROP)
    scene = bpy.context.scene
    W, H = (int(res[0]), int(res[1])) if res else (scene.render.resolution_x, scene.render.resolution_y)
    size = float(max(W, H))
    data = cam.data
    focal = data.lens * size / SENSOR_WIDTH_MM
    return focal, W / 2.0 - data.shift_x * size, H / 2.0 + data.shift_y * size, W, H


def _head_frame(head) -> np.ndarray:
    return np.array(head.matrix_world, np.float64)


def camera_extrinsics(head, cam) -> tuple:
    """OpenCV (R, t), model -> camera, of ``cam`` relative to the head's own frame."""
    M = np.linalg.inv(_head_frame(head)) @ np.array(cam.matrix_world, np.float64)
    rot, loc = M[:3, :3], M[:3, 3]
    rot = rot / np.linalg.norm(rot, axis=0, keepdims=True)            # no scale
    R = (_M2B.T @ rot @ _CV).T                                         # inverse of head_builder._camera_pose
    centre = _M2B.T @ loc
    return R, -R @ centre


def set_camera_extrinsics(head, cam, R, t) -> None:
    R = np.asarray(R, np.float64)
    centre = -R.T @ np.asarray(t, np.float64)
    local = np.eye(4)
    local[:3, :3] = _M2B @ R.T @ _CV
    local[:3, 3] = _M2B @ centre
    cam.matrix_world = Matrix((_head_frame(head) @ local).tolist())


def _identity_of(head, model) -> np.ndarray:
    """The head's identity coefficients: the fit's, else a least-squares fit to its basis mesh."""
    try:
        params = json.loads(head.get("faceforge_params", "{}")).get("params", {})
    except ValueError:
        params = {}
    if "shape" in params and len(params["shape"]) == model.n_shape:
        return np.asarray(params["shape"], np.float32)
    V = len(head.data.vertices)
    co = np.empty(V * 3, np.float32)
    keys = head.data.shape_keys
    (keys.key_blocks[0].data if keys else head.data.vertices).foreach_get("co", co)
    neutral = co.reshape(V, 3) @ _M2B                                  # Blender -> model axes
    A = model.shape_basis.reshape(V * 3, -1)
    return np.linalg.lstsq(A, (neutral - model.v_template).reshape(-1), rcond=None)[0].astype(np.float32)


def _expression_of(head, model) -> np.ndarray:
    keys = head.data.shape_keys
    e = np.zeros(model.n_expr, np.float32)
    if keys is not None:
        for k, name in enumerate(_key_names(model)[:model.n_expr]):
            kb = keys.key_blocks.get(name)
            if kb is not None:
                e[k] = kb.value
    return e


def _joint_pose_of(head, model) -> np.ndarray:
    try:
        jp = json.loads(head.get("faceforge_params", "{}")).get("params", {}).get("joint_pose")
    except ValueError:
        jp = None
    n = model.n_pose_joints
    return np.asarray(jp, np.float32).reshape(-1, 3) if jp is not None and n else np.zeros((n, 3), np.float32)


def head_cameras(head) -> list:
    """The head's cameras in view order (as the pins first saw them; the primary first)."""
    names = head.get(CAMERAS_PROP)
    cams = cameras_of(head)
    if names:
        by_name = {c.name: c for c in cams}
        ordered = [by_name[n] for n in json.loads(names) if n in by_name]
        if len(ordered) == len(json.loads(names)):
            return ordered
    return cams


def scene_state(head, model):
    """The head as the scene shows it now, as a core HeadState (one view per camera)."""
    pins_mod = _core("fit.pins")
    shape, expr, jp = _identity_of(head, model), _expression_of(head, model), _joint_pose_of(head, model)
    views = []
    for cam in head_cameras(head):
        R, t = camera_extrinsics(head, cam)
        f, cx, cy, _, _ = camera_intrinsics(cam)
        views.append(pins_mod.ViewState(R.astype(np.float32), t.astype(np.float32), f, cx, cy, expr.copy(), jp.copy()))
    return pins_mod.HeadState(shape, views)


def ensure_pin_data(head) -> None:
    """First use on a head: its current (automatic) result becomes the reference."""
    if head.get(REFERENCE_PROP):
        return
    model, _ = solver_for(head)
    cams = cameras_of(head)
    if not cams:
        raise _core("errors").InputError(f"'{head.name}' has no photo camera to pin in.")
    head[CAMERAS_PROP] = json.dumps([c.name for c in cams])
    st = json.dumps(scene_state(head, model).to_dict())
    head[REFERENCE_PROP] = st
    head[STATE_PROP] = st
    head[BASIS_SHAPE_PROP] = json.dumps(json.loads(st)["shape"])
    head[PINS_PROP] = "[]"
    ensure_locks(head)


def load_pins(head) -> list:
    Pin = _core("fit.pins").Pin
    return [Pin.from_dict(d) for d in json.loads(head.get(PINS_PROP, "[]") or "[]")]


def _save_pins(head, pins) -> None:
    head[PINS_PROP] = json.dumps([p.to_dict() for p in pins])


def _states(head):
    HeadState = _core("fit.pins").HeadState
    return HeadState.from_dict(json.loads(head[REFERENCE_PROP])), HeadState.from_dict(json.loads(head[STATE_PROP]))


def pin_config(head):
    return _core("fit.pins").PinConfig(use_landmarks=False, **{f"lock_{k}": bool(head.get(f"faceforge_lock_{k}", False))
                                                               for k in LOCKS})


def view_index(head, cam) -> int:
    cams = head_cameras(head)
    return cams.index(cam) if cam in cams else 0


# ----------------------------------------------------------------------------- scene updates
IDENTITY_KEY = "FaceForge Identity"      # while pinning: the identity's change, as one more relative key
BASIS_SHAPE_PROP = "faceforge_pin_basis_shape"


def _basis_shape(head, state) -> np.ndarray:
    """The identity the basis mesh (and so every shape key) embodies."""
    if BASIS_SHAPE_PROP not in head:
        head[BASIS_SHAPE_PROP] = json.dumps(np.asarray(state.shape, np.float64).tolist())
    return np.asarray(json.loads(head[BASIS_SHAPE_PROP]), np.float32)


def apply_state(head, state, view: int) -> None:
    """Show ``state`` on the head: cameras moved, shape-key values of ``view``'s expression, and the
    identity's change from the basis as one extra relative key at 1 (rewriting the basis and every
    key per drag step costs ~0.25 s on the full head; one key ~10 ms); finish_pinning() bakes it in."""
    model, solver = solver_for(head)
    keys = head.data.shape_keys
    base = _basis_shape(head, state)
    change = np.asarray(state.shape, np.float32) - base
    kb = keys.key_blocks.get(IDENTITY_KEY) if keys is not None else None
    if np.any(change != 0) or kb is not None:
        if keys is None:
            head.shape_key_add(name="Basis", from_mix=False)
            keys = head.data.shape_keys
            kb = None
        if kb is None:
            kb = head.shape_key_add(name=IDENTITY_KEY, from_mix=False)
        V = len(head.data.vertices)
        co = np.empty(V * 3, np.float32)
        keys.key_blocks[0].data.foreach_get("co", co)
        d = np.ascontiguousarray((model.shape_basis @ change) @ _M2B.T, np.float32).ravel()
        kb.data.foreach_set("co", co + d)
        kb.slider_max = max(kb.slider_max, 1.0)
        kb.value = 1.0
    if keys is not None:
        values = _core("models.arkit").expand_key_values(state.views[view].expr, len(_key_names(model)))
        for name, val in zip(_key_names(model), values):
            kb = keys.key_blocks.get(name)
            if kb is not None:
                kb.value = float(val)
    for cam, v in zip(head_cameras(head), state.views):
        set_camera_extrinsics(head, cam, v.rotation, v.translation)
    head.data.update()


def finish_pinning(head) -> None:
    """When pinning ends: bake the identity key into the basis and every shape key, so exports and other
    tools see a plain head, and let the fit's parameters (params.json, exports) follow the pins."""
    keys = head.data.shape_keys
    kb = keys.key_blocks.get(IDENTITY_KEY) if keys is not None else None
    if kb is not None:
        V = len(head.data.vertices)
        basis, co, buf = np.empty(V * 3, np.float32), np.empty(V * 3, np.float32), np.empty(V * 3, np.float32)
        keys.key_blocks[0].data.foreach_get("co", basis)
        kb.data.foreach_get("co", co)
        d = co - basis
        head.shape_key_remove(kb)
        for other in head.data.shape_keys.key_blocks:
            other.data.foreach_get("co", buf)
            other.data.foreach_set("co", buf + d)
        head.data.vertices.foreach_get("co", buf)
        head.data.vertices.foreach_set("co", buf + d)
        head.data.update()
    if not head.get(STATE_PROP):
        return
    _, state = _states(head)
    head[BASIS_SHAPE_PROP] = json.dumps(np.asarray(state.shape, np.float64).tolist())
    try:
        info = json.loads(head.get("faceforge_params", "{}"))
    except ValueError:
        info = {}
    if isinstance(info.get("params"), dict):
        v = state.views[0]                   # the primary photo's camera
        info["params"].update(shape=state.shape.tolist(), expr=v.expr.tolist(), rotation=v.rotation.tolist(),
                              translation=v.translation.tolist())
        head["faceforge_params"] = json.dumps(info)


def _store_and_show(head, new_state, view: int) -> None:
    apply_state(head, new_state, view)
    head[STATE_PROP] = json.dumps(new_state.to_dict())


# ----------------------------------------------------------------------------- the edits (tests call these)
def add_pin(head, view: int, u: float, v: float):
    """A pin on the mesh point seen at photo pixel (u, v) of camera ``view``; its index, or None
    when the pixel shows no part of the head."""
    ensure_pin_data(head)
    _, solver = solver_for(head)
    _, state = _states(head)
    pin = solver.pick(state, view, float(u), float(v))
    if pin is None:
        return None
    pins = load_pins(head)
    pins.append(pin)
    _save_pins(head, pins)                 # at its own pixel: nothing to re-solve
    return len(pins) - 1


def move_pin(head, index: int, u: float, v: float, view: int = None) -> float:
    """Move pin ``index``'s target to photo pixel (u, v) and re-solve; returns the solve's seconds.
    ``view`` is the camera whose expression the shape keys show (default: the pin's)."""
    pins = load_pins(head)
    p = pins[index]
    pins[index] = type(p)(p.face, p.bary, (float(u), float(v)), p.view)
    _save_pins(head, pins)
    return resolve(head, p.view if view is None else view)


def remove_pin(head, index: int, view: int = None) -> None:
    pins = load_pins(head)
    gone = pins.pop(index)
    _save_pins(head, pins)
    resolve(head, gone.view if view is None else view)


def resolve(head, view: int = 0, polish: bool = False) -> float:
    """Re-solve the head around its pins (from the current solution) and show it. A drag step stops
    early (it starts next to its answer and the next step goes on); ``polish`` (when a pin is let go)
    solves to convergence, from there and from the automatic result, and keeps the better."""
    import dataclasses
    model, solver = solver_for(head)
    ref, cur = _states(head)
    cfg = pin_config(head)
    if polish:
        cfg = dataclasses.replace(cfg, iters=60, tol=1e-7)
    t0 = time.perf_counter()
    pins = load_pins(head)
    new = solver.solve(ref, pins, cfg, start=cur)
    if polish:
        # also from the automatic result, pose first: dragging can lead into a minimum where the head is
        # bent to the pins rather than turned; the lower objective wins
        cost = solver.last_cost
        fresh = solver.solve(ref, pins, cfg)
        if solver.last_cost < cost:
            new = fresh
    dt = time.perf_counter() - t0
    _store_and_show(head, new, view)
    return dt


def reset_to_automatic(head, view: int = 0) -> None:
    """Remove every pin and show the automatic result again."""
    ref, _ = _states(head)
    _save_pins(head, [])
    _store_and_show(head, ref, view)
    finish_pinning(head)


def pin_pixels(head) -> tuple:
    """(targets (P, 2), where each pin's mesh point is seen now (P, 2)), photo pixels of each pin's view."""
    pins = load_pins(head)
    if not pins or not head.get(STATE_PROP):
        return np.zeros((0, 2)), np.zeros((0, 2))
    _, solver = solver_for(head)
    _, state = _states(head)
    return np.array([p.target for p in pins], np.float64), solver.pin_pixels(state, pins).astype(np.float64)


# ----------------------------------------------------------------------------- tracked heads: keyframe pins
TRACK_PINS_PROP = "faceforge_track_pins"            # JSON pins, view = frame of the track (0 = its first)
REFINED_PROP = "faceforge_track_file_refined"       # the refined track (the original file stays the reference)
_tracks = {}


def is_tracked(head) -> bool:
    return bool(head.get("faceforge_track_file")) and head.get("faceforge_frames") is not None


def _load_track(path):
    import os
    key = (path, os.path.getmtime(path))
    if key not in _tracks:
        _tracks.clear()
        _tracks[key] = _core("track.track_file").load_track(path)
    return _tracks[key]


def track_frame(head, scene_frame: int) -> int:
    """The track frame (0 = its first) a scene frame shows (Blender frame = clip frame + 1)."""
    return int(scene_frame) - 1 - int(head["faceforge_frames"][0])


def _current_track(head):
    refined = head.get(REFINED_PROP)
    import os
    return _load_track(refined if refined and os.path.isfile(refined) else head["faceforge_track_file"])


def load_track_pins(head) -> list:
    Pin = _core("fit.pins").Pin
    return [Pin.from_dict(d) for d in json.loads(head.get(TRACK_PINS_PROP, "[]") or "[]")]


def _save_track_pins(head, pins) -> None:
    head[TRACK_PINS_PROP] = json.dumps([p.to_dict() for p in pins])


def _frame_state(head, frame: int):
    model, _ = solver_for(head)
    det = model.landmarks.detector_index if model.landmarks is not None else None
    return _core("track.keyframes").state_of_frame(_current_track(head), frame, det)


def ensure_locks(head) -> None:
    for lock in LOCKS:
        if f"faceforge_lock_{lock}" not in head:
            head[f"faceforge_lock_{lock}"] = False


def add_track_pin(head, frame: int, u: float, v: float):
    """A keyframe pin on the mesh point seen at pixel (u, v) of track frame ``frame``; its index or None."""
    ensure_locks(head)
    _, solver = solver_for(head)
    pin = solver.pick(_frame_state(head, frame), 0, float(u), float(v))
    if pin is None:
        return None
    pins = load_track_pins(head)
    pins.append(type(pin)(pin.face, pin.bary, pin.target, int(frame)))
    _save_track_pins(head, pins)
    return len(pins) - 1


def move_track_pin(head, index: int, u: float, v: float) -> None:
    """Move a keyframe pin's target (the track is refined by refine_tracked_head, e.g. on release)."""
    pins = load_track_pins(head)
    p = pins[index]
    pins[index] = type(p)(p.face, p.bary, (float(u), float(v)), p.view)
    _save_track_pins(head, pins)


def remove_track_pin(head, index: int) -> None:
    pins = load_track_pins(head)
    pins.pop(index)
    _save_track_pins(head, pins)


def refine_tracked_head(context, head, progress=None) -> str:
    """Re-solve the keyframes with pins and blend the corrections into their neighbours (from the
    original track: the result is a function of the automatic track and the pins), save the refined
    track with its pins beside the original, and key the head's animation from it."""
    solve = track_refinement(head)
    return key_refined_track(context, head, solve(progress))


def track_refinement(head):
    """Main thread: what refining ``head``'s track needs, read from the head; returns
    ``solve(progress) -> refined Track`` (engine only, no bpy: the Refine Track job runs it in the
    background, with progress and cancel)."""
    model, solver = solver_for(head)
    original = _load_track(head["faceforge_track_file"])
    pins = load_track_pins(head)
    cfg = _core("fit.pins").PinConfig(use_landmarks=original.landmarks is not None, lock_identity=True,
                                      lock_expression=bool(head.get("faceforge_lock_expression", False)),
                                      lock_pose=bool(head.get("faceforge_lock_pose", False)))
    keyframes = _core("track.keyframes")

    def solve(progress=None):
        return keyframes.refine_track_with_pins(original, model, pins, cfg, progress=progress, solver=solver)

    solve.model, solve.original = model, original
    return solve


def key_refined_track(context, head, refined, model=None, original=None) -> str:
    """Main thread: save the refined track beside the original (with its pins) and key the head's
    animation from it. The camera stays: the head's motion is keyed relative to the original track's
    reference frame, as when imported."""
    import dataclasses
    import os

    from ..scene.head_builder import MODEL_TO_BLENDER
    from ..scene.animation import animate_head
    from ..scene.lookup import rig_of
    if model is None:
        model, _ = solver_for(head)
    if original is None:
        original = _load_track(head["faceforge_track_file"])
    base = head["faceforge_track_file"]
    stem = base[:-len(".fftrack.npz")] if base.endswith(".fftrack.npz") else os.path.splitext(base)[0]
    out = stem + ".refined.fftrack.npz"
    _core("track.track_file").save_track(refined, out)
    head[REFINED_PROP] = out
    rig = _core("pipeline.video").head_rig_from_track(model, refined)
    ref = int(np.flatnonzero(original.valid)[0]) if original.valid.any() else 0
    R0 = original.rotation[ref].astype(np.float64)
    t0 = original.translation[ref].astype(np.float64)
    anim = dataclasses.replace(
        rig.animation,
        root_rotation=np.einsum("ji,tjk->tik", R0, refined.rotation.astype(np.float64)).astype(np.float32),
        root_translation=np.einsum("ji,tj->ti", R0, refined.translation.astype(np.float64) - t0).astype(np.float32))
    frame = context.scene.frame_current
    animate_head(context, dataclasses.replace(rig, animation=anim), head, rig_of(head), MODEL_TO_BLENDER)
    context.scene.frame_set(frame)
    return out


def pins_shown(head, scene) -> list:
    """[(index, target (u, v), where its mesh point is now (u, v))] of the pins in the camera's photo
    (photo heads) or on the current frame (tracked heads)."""
    _, solver = solver_for(head)
    if is_tracked(head):
        frame = track_frame(head, scene.frame_current)
        pins = load_track_pins(head)
        sel = [i for i, p in enumerate(pins) if p.view == frame]
        if not sel or not 0 <= frame < _current_track(head).n_frames:
            return []
        Pin = _core("fit.pins").Pin
        now = solver.pin_pixels(_frame_state(head, frame), [Pin(pins[i].face, pins[i].bary, (0, 0), 0) for i in sel])
        return [(i, pins[i].target, tuple(n)) for i, n in zip(sel, now)]
    if not head.get(STATE_PROP):
        return []
    view = view_index(head, scene.camera)
    targets, now = pin_pixels(head)
    return [(i, tuple(t), tuple(n)) for i, (p, t, n) in enumerate(zip(load_pins(head), targets, now)) if p.view == view]


# ----------------------------------------------------------------------------- region <-> photo pixels
def region_to_pixel(region, rv3d, cam, focal, cx, cy, x, y):
    """A region coordinate in the camera view -> photo pixel (u, v) (through the view's own ray)."""
    from bpy_extras import view3d_utils
    d = view3d_utils.region_2d_to_vector_3d(region, rv3d, (x, y))
    local = np.array(cam.matrix_world.to_3x3().inverted() @ d, np.float64) * np.array([1.0, -1.0, -1.0])
    if local[2] <= 1e-9:
        return None
    return focal * local[0] / local[2] + cx, focal * local[1] / local[2] + cy


def pixel_to_region(region, rv3d, cam, focal, cx, cy, u, v):
    from bpy_extras import view3d_utils
    local = Vector(((u - cx) / focal, -(v - cy) / focal, -1.0))
    return view3d_utils.location_3d_to_region_2d(region, rv3d, cam.matrix_world @ local)


# ----------------------------------------------------------------------------- drawing
DRAW_STATS = {"calls": 0, "points": 0, "error": None}      # what the overlay drew last (GUI test, debugging)


def _draw(op, context):
    try:
        _draw_pins(op, context)
    except Exception as exc:                # never let a drawing error spam every redraw
        DRAW_STATS["error"] = f"{type(exc).__name__}: {exc}"


def _draw_pins(op, context):
    import gpu
    from gpu_extras.batch import batch_for_shader
    DRAW_STATS["calls"] += 1
    head = bpy.data.objects.get(op.head_name)
    cam = context.scene.camera
    if head is None or cam is None or context.region_data is None:
        return
    shown = pins_shown(head, context.scene)
    if not shown:
        return
    focal, cx, cy, _, _ = camera_intrinsics(cam)
    pts_t, pts_n, lines = [], [], []
    for _, tgt, cur in shown:
        a = pixel_to_region(context.region, context.region_data, cam, focal, cx, cy, *tgt)
        b = pixel_to_region(context.region, context.region_data, cam, focal, cx, cy, *cur)
        if a is None or b is None:
            continue
        pts_t.append(tuple(a))
        pts_n.append(tuple(b))
        lines += [tuple(a), tuple(b)]
    DRAW_STATS["points"] = len(pts_t)
    name = "UNIFORM_COLOR" if bpy.app.version >= (4, 0, 0) else "2D_UNIFORM_COLOR"
    shader = gpu.shader.from_builtin(name)
    gpu.state.blend_set("ALPHA")
    gpu.state.point_size_set(9.0)
    for coords, colour, kind in ((lines, (1.0, 0.8, 0.1, 0.9), "LINES"), (pts_n, (0.1, 0.6, 1.0, 1.0), "POINTS"),
                                 (pts_t, (1.0, 0.25, 0.1, 1.0), "POINTS")):
        if coords:
            batch = batch_for_shader(shader, kind, {"pos": coords})
            shader.bind()
            shader.uniform_float("color", colour)
            batch.draw(shader)
    gpu.state.point_size_set(1.0)
    gpu.state.blend_set("NONE")


# ----------------------------------------------------------------------------- operators
def _poll_head_camera(cls, context) -> bool:
    head = find_head(context) if context.scene is not None else None
    if head is None:
        return _fail_poll(cls, "No FaceForge head in the scene: reconstruct one first")
    cams = cameras_of(head)
    if not cams:
        return _fail_poll(cls, "The head has no photo camera")
    return True


class FACEFORGE_OT_pin_mode(bpy.types.Operator):
    bl_idname = "faceforge.pin_mode"
    bl_label = "Pin Mode"
    bl_description = ("Correct the head in its photo: click the mesh to add a pin, drag it to where that point "
                      "is in the photo (the head follows), right-click removes a pin; Esc or Enter ends")
    bl_options = {"REGISTER"}

    head_name: bpy.props.StringProperty(options={"HIDDEN", "SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return _poll_head_camera(cls, context)

    def invoke(self, context, event):
        if context.area is None or context.area.type != "VIEW_3D":
            self.report({"WARNING"}, "Pin Mode works in a 3D view")
            return {"CANCELLED"}
        if context.region is None or context.region.type != "WINDOW":
            # clicked in the sidebar: the mode belongs to the view itself (its mouse coordinates, its camera)
            from .view import view_region
            region = view_region(context.area)
            if region is None:
                return {"CANCELLED"}
            with context.temp_override(region=region):
                return bpy.ops.faceforge.pin_mode("INVOKE_DEFAULT")
        head = find_head(context)
        try:
            if is_tracked(head):
                solver_for(head)
                ensure_locks(head)
            else:
                ensure_pin_data(head)
        except Exception as exc:          # a model that will not load, a head without cameras
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if context.scene.camera not in cameras_of(head):
            cam = context.scene.camera = cameras_of(head)[0]
            res = cam.get(CAMERA_RESOLUTION_PROP)
            if res:                               # the frame Blender draws has the photo's shape
                context.scene.render.resolution_x, context.scene.render.resolution_y = int(res[0]), int(res[1])
        context.region_data.view_perspective = "CAMERA"
        self.head_name = head.name
        self._drag = None
        self._handle = bpy.types.SpaceView3D.draw_handler_add(_draw, (self, context), "WINDOW", "POST_PIXEL")
        context.window_manager.modal_handler_add(self)
        context.workspace.status_text_set("Pins: click the mesh to add, drag to move, right-click to remove, "
                                          "Esc / Enter to finish")
        context.area.tag_redraw()
        return {"RUNNING_MODAL"}

    def _pixel(self, context, event):
        cam = context.scene.camera
        focal, cx, cy, _, _ = camera_intrinsics(cam)
        return region_to_pixel(context.region, context.region_data, cam, focal, cx, cy,
                               event.mouse_region_x, event.mouse_region_y)

    def _nearest(self, context, head, event):
        cam = context.scene.camera
        focal, cx, cy, _, _ = camera_intrinsics(cam)
        best, best_d = None, PICK_RADIUS_PX
        for i, tgt, _ in pins_shown(head, context.scene):
            r = pixel_to_region(context.region, context.region_data, cam, focal, cx, cy, *tgt)
            if r is None:
                continue
            d = np.hypot(r[0] - event.mouse_region_x, r[1] - event.mouse_region_y)
            if d < best_d:
                best, best_d = i, d
        return best

    def _finish(self, context):
        head = bpy.data.objects.get(self.head_name)
        if head is not None and not is_tracked(head):
            finish_pinning(head)
            bpy.ops.ed.undo_push(message="Finish Pins")
        bpy.types.SpaceView3D.draw_handler_remove(self._handle, "WINDOW")
        context.workspace.status_text_set(None)
        context.area.tag_redraw()

    def modal(self, context, event):
        head = bpy.data.objects.get(self.head_name)
        if head is None or context.area is None:
            self._finish(context)
            return {"CANCELLED"}
        if event.type in {"ESC", "RET", "NUMPAD_ENTER"} and event.value == "PRESS":
            self._finish(context)
            return {"FINISHED"}
        inside = 0 <= event.mouse_region_x < context.region.width and 0 <= event.mouse_region_y < context.region.height
        tracked = is_tracked(head)
        # a photo head re-solves on every mouse move; a tracked head's keyframes are re-solved and the
        # track re-keyed when the pin is let go (a whole clip per mouse move would not keep up)
        view = track_frame(head, context.scene.frame_current) if tracked else view_index(head, context.scene.camera)
        if event.type == "LEFTMOUSE" and event.value == "PRESS" and inside:
            px = self._pixel(context, event)
            if px is None:
                return {"RUNNING_MODAL"}
            i = self._nearest(context, head, event)
            if i is None:
                i = add_track_pin(head, view, *px) if tracked else add_pin(head, view, *px)
            self._drag = i
            return {"RUNNING_MODAL"}
        if event.type == "MOUSEMOVE" and self._drag is not None:
            px = self._pixel(context, event)
            if px is not None:
                if tracked:
                    move_track_pin(head, self._drag, *px)
                else:
                    move_pin(head, self._drag, *px, view=view)
                context.area.tag_redraw()
            return {"RUNNING_MODAL"}
        if event.type == "LEFTMOUSE" and event.value == "RELEASE" and self._drag is not None:
            self._drag = None
            if tracked:
                refine_tracked_head(context, head)
            else:
                resolve(head, view, polish=True)
            bpy.ops.ed.undo_push(message="Pin")           # one undo step per pin edit
            context.area.tag_redraw()
            return {"RUNNING_MODAL"}
        if event.type == "RIGHTMOUSE" and event.value == "PRESS" and inside:
            i = self._nearest(context, head, event)
            if i is not None:
                if tracked:
                    remove_track_pin(head, i)
                    refine_tracked_head(context, head)
                else:
                    remove_pin(head, i, view=view)
                bpy.ops.ed.undo_push(message="Remove Pin")
                context.area.tag_redraw()
            return {"RUNNING_MODAL"}
        return {"PASS_THROUGH"}          # navigation, zoom, undo, the sidebar's lock toggles


class FACEFORGE_OT_reset_pins(bpy.types.Operator):
    bl_idname = "faceforge.reset_pins"
    bl_label = "Reset to Automatic"
    bl_description = "Remove every pin and put the head back as the automatic reconstruction made it"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        head = find_head(context) if context.scene is not None else None
        return head is not None and (bool(head.get(REFERENCE_PROP)) or bool(head.get(REFINED_PROP)))

    def execute(self, context):
        head = find_head(context)
        if is_tracked(head):
            _save_track_pins(head, [])
            refine_tracked_head(context, head)        # no pins: the original track, keyed again
            return {"FINISHED"}
        cam = context.scene.camera
        reset_to_automatic(head, view_index(head, cam) if cam is not None else 0)
        return {"FINISHED"}


class FACEFORGE_OT_refine_track(JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.refine_track"
    bl_label = "Refine Track"
    bl_description = ("Re-solve the frames with pins (keyframes) and blend the corrections into their "
                      "neighbours; the refined track is saved beside the original, with the pins. Runs in the "
                      "background: Esc or Cancel stops it and changes nothing")
    bl_options = {"UNDO"}

    @classmethod
    def job_poll(cls, context):
        head = find_head(context) if context.scene is not None else None
        if head is None or not is_tracked(head):
            return _fail_poll(cls, "Needs a tracked head with a saved track file")
        return True

    def prepare(self, context):
        head = find_head(context)
        self._head = head.name
        self._solve = track_refinement(head)
        return self._solve

    def finish(self, context, refined):
        head = bpy.data.objects.get(self._head)
        if head is None:
            raise _core("errors").InputError(f"The head '{self._head}' was removed while its track was refined.")
        out = key_refined_track(context, head, refined, self._solve.model, self._solve.original)
        n = len(load_track_pins(head))
        return f"Refined the track with {n} pin{'s' if n != 1 else ''}; saved {out}"


def draw_pin_panel(layout, context, head) -> None:
    """The pins' part of the panel (called from ui/panels.py)."""
    if head is None or not cameras_of(head):
        return
    box = layout.box()
    row = box.row(align=True)
    row.operator("faceforge.pin_mode", icon="PINNED")
    if is_tracked(head):
        pins = json.loads(head.get(TRACK_PINS_PROP, "[]") or "[]")
        frames = len({p["view"] for p in pins})
        row.label(text=f"{len(pins)} pins, {frames} keyframe{'s' if frames != 1 else ''}")
        box.operator("faceforge.refine_track", icon="FILE_REFRESH")
        if "faceforge_lock_pose" in head:
            locks = box.row(align=True)
            locks.label(text="Lock:")
            for k in ("expression", "pose"):        # one identity for the clip: always held
                locks.prop(head, f'["faceforge_lock_{k}"]', text=k.capitalize(), toggle=True)
        if head.get(REFINED_PROP):
            box.operator("faceforge.reset_pins", icon="LOOP_BACK")
        return
    n = len(json.loads(head.get(PINS_PROP, "[]") or "[]"))
    row.label(text=f"{n} pin{'s' if n != 1 else ''}")
    if head.get(REFERENCE_PROP):
        locks = box.row(align=True)
        locks.label(text="Lock:")
        for k in LOCKS:
            locks.prop(head, f'["faceforge_lock_{k}"]', text=k.capitalize(), toggle=True)
        box.operator("faceforge.reset_pins", icon="LOOP_BACK")


CLASSES = (FACEFORGE_OT_pin_mode, FACEFORGE_OT_reset_pins, FACEFORGE_OT_refine_track)
