"""Correct a deliberately wrong fit by dragging pins in a real Blender window (the pins GUI test's driver).

    xvfb-run -a -s "-screen 0 1600x900x24" blender --factory-startup --enable-event-simulate \\
        --window-geometry 0 0 1600 900 --python tools/gui_pins.py -- --out out/screens

``--free`` leaves identity and expression unlocked (the test locks them: the pose is what is wrong).

Steps (each on a bpy.app.timers tick, so the window keeps drawing in between):
 1. register the add-on from this repository; render a "photo" of a known head (the default full head,
    turned 55 degrees, lit) with core's renderer;
 2. build the head as a wrong fit of that photo would leave it (turned 25 degrees, 3 cm off), with the
    photo behind its camera; look through the camera; screenshot;
 3. lock identity and expression (the pose is what is wrong), start Pin Mode from the sidebar (INVOKE,
    the modal operator) and, with simulated mouse events, press on five features of the mesh (nose tip,
    chin, mouth corner, eye corner, forehead; a little inside the outline where one lies on it) and drag
    each, in small steps, to where the photo shows that point; Ctrl+Z / Ctrl+Shift+Z; screenshot with
    the pins drawn; Esc ends the mode;
 4. measure the head against the truth; write result.json and quit.
"""

import json
import os
import sys
import time

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # tools/: the drivers' shared part
from gui_support import drive  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ARGS = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
OUT = ARGS[ARGS.index("--out") + 1] if "--out" in ARGS else os.path.join(ROOT, "out", "screens")
os.makedirs(OUT, exist_ok=True)
RESULT = {"blender": bpy.app.version_string, "steps": [], "errors": [], "screens": {}}
T0 = time.monotonic()
SIZE, FOCAL = 640, 1100.0
FEATURES = (1, 152, 61, 263, 10)             # mediapipe indices: nose tip, chin, mouth corner, eye corner, forehead


def log(msg):
    RESULT["steps"].append(f"{time.monotonic() - T0:6.1f}s {msg}")
    print(f"[gui-pins] {msg}", flush=True)


def finish(code=0):
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    with open(os.path.join(OUT, "pins_result.json"), "w") as f:
        json.dump(RESULT, f, indent=1)
    log(f"done (exit {code})")
    sys.stdout.flush()
    os._exit(code)


def view3d():
    win = bpy.context.window_manager.windows[0]
    area = next(a for a in win.screen.areas if a.type == "VIEW_3D")
    region = next(r for r in area.regions if r.type == "WINDOW")
    return win, area, region


def screenshot(name):
    path = os.path.abspath(os.path.join(OUT, name))
    win, area, _ = view3d()
    with bpy.context.temp_override(window=win, screen=win.screen, area=area):
        bpy.ops.screen.screenshot(filepath=path)
    log(f"screenshot {path}")
    return path


def rotation(yaw):
    import numpy as np
    y = np.radians(yaw)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    return np.diag([1.0, -1.0, -1.0]) @ Ry


def run_steps():
    import numpy as np
    import torch

    import blender_addon
    bpy.context.preferences.view.show_splash = False
    blender_addon.register()
    from blender_addon.core.fit.pins import HeadState, Pin, ViewState
    from blender_addon.core.models import load_model
    from blender_addon.core.render import default_sh, render
    from blender_addon.core.rig import CameraSpec, HeadRig
    from blender_addon.core.rig.model_rig import expression_shape_keys, model_topology
    from blender_addon.operators import pins as pin_ops
    from blender_addon.scene import head_builder

    # the splash screen closes on a click outside it
    win, area, region = view3d()
    win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=region.x + 20, y=region.y + 20)
    win.event_simulate(type="LEFTMOUSE", value="PRESS", x=region.x + 20, y=region.y + 20)
    win.event_simulate(type="LEFTMOUSE", value="RELEASE", x=region.x + 20, y=region.y + 20)
    yield 0.3

    # 1. the photo: a known head
    for o in list(bpy.data.objects):                       # an empty scene (the cube would sit in the view)
        bpy.data.objects.remove(o)
    ict = load_model("ict")
    rng = np.random.default_rng(3)
    shape = (0.7 * rng.standard_normal(ict.n_shape)).astype(np.float32)
    expr = np.zeros(ict.n_expr, np.float32)
    truth = HeadState(shape, [ViewState(rotation(55).astype(np.float32), np.array([0.0, 0.0, 0.55], np.float32),
                                        FOCAL, SIZE / 2, SIZE / 2, expr, np.zeros((0, 3), np.float32))])
    verts = (ict.v_template + ict.shape_basis @ shape) @ truth.views[0].rotation.T + truth.views[0].translation
    sh = default_sh(1) * 0.7
    sh[0, 1:4] = torch.tensor([0.25, -0.2, 0.45])[:, None]      # light from above, in front, to the side
    img = render(torch.as_tensor(verts[None], dtype=torch.float32), ict.faces[ict.skin_faces()],
                 torch.full((1, ict.n_vertices, 3), 0.8), sh, FOCAL, SIZE / 2, SIZE / 2, SIZE, SIZE).image[0]
    import cv2
    photo = os.path.join(OUT, "pins_photo.png")
    rgb = (img.clamp(0, 1).numpy() * 255).astype(np.uint8)
    rgb[rgb.sum(-1) == 0] = (40, 60, 90)
    cv2.imwrite(photo, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    # 2. the wrong fit, built as the photo reconstruction builds heads
    wrong_R, wrong_t = rotation(25), np.array([0.03, 0.0, 0.58])
    names, deltas, values = expression_shape_keys(ict, expr)
    rig = HeadRig(name="wrong_fit", vertices=(ict.v_template + ict.shape_basis @ shape).astype(np.float32),
                  faces=ict.faces.copy(), shape_key_names=names, shape_key_deltas=deltas, shape_key_values=values,
                  topology=model_topology(ict),
                  camera=CameraSpec(focal_px=FOCAL, width=SIZE, height=SIZE, rotation=wrong_R, translation=wrong_t,
                                    cx=SIZE / 2, cy=SIZE / 2, image_path=photo),
                  metadata={"model": "ict"})
    head = head_builder.build_head(bpy.context, rig)["mesh"]
    head["faceforge_model"] = "ict"
    head["faceforge_params"] = json.dumps({"model": {"name": "ict", "source": ict.source},
                                           "params": {"shape": shape.tolist(), "expr": expr.tolist()}})
    win, area, region = view3d()
    space = area.spaces.active
    space.shading.type = "SOLID"
    space.overlay.show_overlays = True
    with bpy.context.temp_override(window=win, screen=win.screen, area=area, region=region):
        bpy.ops.faceforge.view_photo_camera()
    cam = bpy.context.scene.camera
    for bg in cam.data.background_images:                  # the photo over the mesh, as FaceBuilder shows it
        bg.display_depth = "FRONT"
        bg.alpha = 0.5
    head.data.materials[0].diffuse_color = (0.85, 0.45, 0.25, 1.0)
    space.shading.color_type = "MATERIAL"
    head.select_set(False)
    yield 1.5
    RESULT["screens"]["before"] = screenshot("pins_before.png")

    model, solver = pin_ops.solver_for(head)
    idx = np.flatnonzero(model.skin_vertex_mask())

    def centred_mm():
        st = pin_ops.scene_state(head, model)               # what the scene shows: cameras, keys, identity
        A, B = solver.vertices(st)[idx], solver.vertices(truth)[idx]
        return float(np.linalg.norm((A - A.mean(0)) - (B - B.mean(0)), axis=1).mean() * 1000)

    RESULT["error_before_mm"] = centred_mm()

    # 3. Pin Mode, started from the sidebar as its button does, driven by mouse events. The pose is what
    # is wrong: identity and expression are locked first (the panel's toggles), as an artist would
    head["faceforge_lock_identity"] = "--free" not in ARGS
    head["faceforge_lock_expression"] = "--free" not in ARGS
    space.show_region_ui = True
    yield 0.3
    sidebar = next(r for r in area.regions if r.type == "UI")
    with bpy.context.temp_override(window=win, screen=win.screen, area=area, region=sidebar):
        RESULT["invoke"] = sorted(bpy.ops.faceforge.pin_mode("INVOKE_DEFAULT"))
    space.show_region_ui = False                 # the whole photo in view again (the mode keeps running)
    yield 0.5
    solves = []

    def settle():
        """Wait until the modal has worked through every queued mouse event (a loaded machine lags)."""
        for _ in range(40):
            n = len(solves)
            yield 0.3
            if len(solves) == n:
                return
    real_move = pin_ops.move_pin

    def timed_move(*a, **k):
        t = time.perf_counter()
        out = real_move(*a, **k)
        solves.append(time.perf_counter() - t)
        return out

    pin_ops.move_pin = timed_move                # the modal calls the module's move_pin on every mouse move
    presses = []
    real_add = pin_ops.add_pin

    def logged_add(head_, view, u, v):
        i = real_add(head_, view, u, v)
        presses.append([round(u, 1), round(v, 1), i])
        return i

    pin_ops.add_pin = logged_add
    emb = model.landmarks
    rv3d = space.region_3d
    f, cx, cy, _, _ = pin_ops.camera_intrinsics(cam)
    targets = []
    for d in FEATURES:
        k = int(np.flatnonzero(emb.detector_index == d)[0])
        p = Pin(int(emb.face_index[k]), tuple(emb.bary[k].tolist()), (0.0, 0.0), 0)
        targets.append((p, solver.pin_pixels(truth, [p])[0]))
    drags = []
    for p, target in targets:
        st = pin_ops._states(head)[1]
        start = solver.pin_pixels(st, [p])[0]                 # where the mesh shows the feature now
        # a feature on the outline (the chin in profile): press a little inside it, as a user would
        X = solver.vertices(st)
        centre = np.array([f * X[:, 0].mean() / X[:, 2].mean() + cx, f * X[:, 1].mean() / X[:, 2].mean() + cy])
        inward = (centre - start) / max(np.linalg.norm(centre - start), 1e-9)
        ring = np.array([[0, 0], [1.5, 0], [-1.5, 0], [0, 1.5], [0, -1.5]])     # mouse pixels are whole

        def solid(pt):
            return all(solver.pick(st, 0, *(pt + o)) is not None for o in ring)

        for step in range(15):
            if solid(start + step * inward):
                break
        else:
            RESULT.setdefault("skipped", []).append(int(p.face))       # no safe place to press
            continue
        start = start + step * inward
        hit = solver.pick(st, 0, *start)
        if hit is not None:                                   # where the photo shows that very point
            target = solver.pin_pixels(truth, [Pin(hit.face, hit.bary, (0.0, 0.0), 0)])[0]
        a = pin_ops.pixel_to_region(region, rv3d, cam, f, cx, cy, *start)
        b = pin_ops.pixel_to_region(region, rv3d, cam, f, cx, cy, *target)
        if a is None or b is None:
            RESULT["errors"].append(f"feature off screen: {start} -> {target}")
            continue
        n_before = len(pin_ops.load_pins(head))
        x0, y0 = region.x + a[0], region.y + a[1]
        win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=int(x0), y=int(y0))
        win.event_simulate(type="LEFTMOUSE", value="PRESS", x=int(x0), y=int(y0))
        yield 0.2
        for s in np.linspace(0, 1, 13)[1:]:
            x, y = region.x + a[0] + s * (b[0] - a[0]), region.y + a[1] + s * (b[1] - a[1])
            win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=int(round(x)), y=int(round(y)))
            yield 0.05
        win.event_simulate(type="LEFTMOUSE", value="RELEASE", x=int(round(x)), y=int(round(y)))
        yield from settle()
        drags.append({"from_px": start.tolist(), "to_px": target.tolist(),
                      "added": len(pin_ops.load_pins(head)) - n_before})
    RESULT["drags"] = drags
    RESULT["presses"] = presses                  # photo pixel of each press that added (or missed) a pin
    RESULT["pins"] = len(pin_ops.load_pins(head))
    RESULT["solves"] = len(solves)
    RESULT["solve_ms_median"] = round(1000 * float(np.median(solves)), 1) if solves else None
    region.tag_redraw()
    yield 1.0
    RESULT["screens"]["after"] = screenshot("pins_after.png")
    RESULT["overlay"] = dict(pin_ops.DRAW_STATS)
    # where Blender's camera now shows each pinned feature, against where the photo shows it
    targets_px, now_px = pin_ops.pin_pixels(head)
    RESULT["pin_error_px"] = [round(float(e), 2) for e in np.linalg.norm(targets_px - now_px, axis=1)]
    # Ctrl+Z in pin mode takes back the last pin edit (the fifth pin), Ctrl+Shift+Z brings it back
    x, y = int(region.x + 10), int(region.y + 10)
    cam_before = [list(r) for r in bpy.context.scene.camera.matrix_world]
    win.event_simulate(type="Z", value="PRESS", x=x, y=y, ctrl=True)
    win.event_simulate(type="Z", value="RELEASE", x=x, y=y, ctrl=True)
    yield 1.0
    head = bpy.data.objects["wrong_fit"]                  # undo reloads the data: look it up again
    RESULT["pins_after_undo"] = len(pin_ops.load_pins(head))
    RESULT["camera_moved_by_undo"] = [list(r) for r in bpy.context.scene.camera.matrix_world] != cam_before
    win.event_simulate(type="Z", value="PRESS", x=x, y=y, ctrl=True, shift=True)
    win.event_simulate(type="Z", value="RELEASE", x=x, y=y, ctrl=True, shift=True)
    yield 1.0
    head = bpy.data.objects["wrong_fit"]
    RESULT["pins_after_redo"] = len(pin_ops.load_pins(head))
    win.event_simulate(type="ESC", value="PRESS", x=int(region.x + 10), y=int(region.y + 10))
    win.event_simulate(type="ESC", value="RELEASE", x=int(region.x + 10), y=int(region.y + 10))
    yield 0.5
    RESULT["identity_key_after_esc"] = head.data.shape_keys.key_blocks.get(pin_ops.IDENTITY_KEY) is not None
    RESULT["error_after_mm"] = centred_mm()
    R = pin_ops.scene_state(head, model).views[0].rotation
    RESULT["rotation_error_deg"] = float(np.degrees(np.arccos(np.clip((np.trace(R @ truth.views[0].rotation.T) - 1) / 2,
                                                                       -1, 1))))
    space.overlay.show_overlays = True
    yield 0.5
    RESULT["screens"]["done"] = screenshot("pins_done.png")
    log(f"before {RESULT['error_before_mm']:.1f} mm, after {RESULT['error_after_mm']:.1f} mm, "
        f"{RESULT['solves']} solves, median {RESULT['solve_ms_median']} ms")
    finish(0)


drive(run_steps, RESULT, finish, timeout_s=300)
