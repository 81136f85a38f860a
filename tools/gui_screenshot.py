"""Drive a real Blender window like a user would, and take screenshots (the GUI test's driver).

    xvfb-run -a -s "-screen 0 1600x900x24" blender --factory-startup --enable-event-simulate \\
        --window-geometry 0 0 1600 900 --python tools/gui_screenshot.py -- \\
        --zip dist/faceforge-0.1.0-legacy.zip --photo astronaut.png --out out/screens

Steps (each on a bpy.app.timers tick, so the window keeps drawing in between):
 1. install + enable the built legacy zip through Blender's own add-on operators;
 2. open the 3D view's sidebar on the FaceForge tab, set the photo in the panel;
 3. click Reconstruct (INVOKE: the background job + modal progress path), press Esc (a simulated
    key event) and check the scene did not change and the engine's child process is gone;
 4. click Reconstruct again, screenshot the progress bar every tick while the engine computes (nothing
    paused), and let it finish (the startup cube stays: the head goes beside it);
    view through the photo camera, screenshot, and record where Blender draws the camera frame;
 5. undo once and check the head is gone (one undo step); write result.json and quit.
Everything it saw goes to result.json; the test asserts on it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import faulthandler

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # tools/: the drivers' shared part
from gui_support import drive  # noqa: E402
from mathutils import Euler, Vector

faulthandler.enable(all_threads=True)   # a crash prints every thread's Python stack into the log

ARGS = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []


def _arg(name: str, default=None):
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


ZIP, PHOTO, OUT = _arg("--zip"), _arg("--photo"), _arg("--out", "out/screens")
TIMEOUT_S = float(_arg("--timeout", "240"))
os.makedirs(OUT, exist_ok=True)
RESULT = {"blender": bpy.app.version_string, "steps": [], "errors": []}
T0 = time.monotonic()


def log(msg: str) -> None:
    RESULT["steps"].append(f"{time.monotonic() - T0:6.1f}s {msg}")
    print(f"[gui] {msg}", flush=True)


def finish(code: int = 0) -> None:
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(RESULT, f, indent=1)
    log(f"done (exit {code})")
    sys.stdout.flush()
    os._exit(code)   # torch + bpy can hang in exit handlers; everything is written already


def window_area(kind="VIEW_3D"):
    win = bpy.context.window_manager.windows[0]
    area = next(a for a in win.screen.areas if a.type == kind)
    region = next(r for r in area.regions if r.type == "WINDOW")
    return win, area, region


def override(kind="VIEW_3D", region_type="WINDOW"):
    win, area, _ = window_area(kind)
    region = next(r for r in area.regions if r.type == region_type)
    return bpy.context.temp_override(window=win, screen=win.screen, area=area, region=region)


def screenshot(name: str) -> str:
    path = os.path.abspath(os.path.join(OUT, name))
    win, area, _ = window_area()
    with bpy.context.temp_override(window=win, screen=win.screen, area=area):
        bpy.ops.screen.screenshot(filepath=path)
    log(f"screenshot {path} ({os.path.getsize(path) if os.path.exists(path) else 0} bytes)")
    return path


def datablock_names() -> dict:
    kinds = ("objects", "meshes", "materials", "cameras", "armatures", "images", "collections", "shape_keys")
    return {k: sorted(i.name for i in getattr(bpy.data, k)) for k in kinds}


def job():
    return bpy.context.window_manager.faceforge_job


def press_escape() -> str:
    """A real Esc key event through the window's event queue (needs --enable-event-simulate)."""
    win, _, region = window_area()
    x, y = region.x + region.width // 2, region.y + region.height // 2
    try:
        win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=x, y=y)
        win.event_simulate(type="ESC", value="PRESS", x=x, y=y)
        win.event_simulate(type="ESC", value="RELEASE", x=x, y=y)
        return "esc"
    except Exception as e:  # noqa: BLE001 - Blender started without --enable-event-simulate
        log(f"event_simulate unavailable ({e}); using the panel's Cancel button operator")
        with override("VIEW_3D", "UI"):
            bpy.ops.faceforge.cancel_job()
        return "cancel_button"


# ----------------------------------------------------------------------------- the steps
def run_steps():
    """A generator: each ``yield seconds`` waits that long (the UI redraws meanwhile)."""
    prefs = bpy.context.preferences
    prefs.view.show_splash = False
    yield 0.5

    # 1. install + enable the built zip
    r1 = bpy.ops.preferences.addon_install(filepath=os.path.abspath(ZIP), overwrite=True)
    r2 = bpy.ops.preferences.addon_enable(module="faceforge")
    mod = sys.modules.get("faceforge")
    RESULT["installed"] = r1 == {"FINISHED"} and r2 == {"FINISHED"} and mod is not None
    RESULT["addon_file"] = getattr(mod, "__file__", None)
    RESULT["registered"] = hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo")
    log(f"installed {ZIP}: {RESULT['installed']} from {RESULT['addon_file']}")

    # 2. the startup scene as a user has it (the default cube stays: the head must go beside it),
    # sidebar on the FaceForge tab
    bpy.context.scene.faceforge.photo_path = os.path.abspath(PHOTO)
    win, area, _ = window_area()
    space = area.spaces.active
    space.show_region_ui = True
    space.shading.type = "SOLID"
    space.shading.color_type = "VERTEX"        # the head's fitted skin colours
    yield 0.5
    RESULT["sidebar_category"] = yield from show_faceforge_tab(area)
    log(f"sidebar tab: {RESULT['sidebar_category']}")

    # 3. Reconstruct, then Esc while it runs: nothing may change
    before = datablock_names()
    with override("VIEW_3D", "UI"):
        r = bpy.ops.faceforge.reconstruct_photo("INVOKE_DEFAULT", filepath=os.path.abspath(PHOTO))
    RESULT["cancel_run_invoke"] = sorted(r)
    log(f"reconstruct invoked: {r}, running={job().running}")
    yield 1.0
    RESULT["cancel_run_stage"] = job().stage
    RESULT["cancel_via"] = press_escape()
    t = time.monotonic()
    while job().running and time.monotonic() - t < 30:
        yield 0.1
    RESULT["cancel_seconds"] = round(time.monotonic() - t, 2)
    RESULT["cancel_state"] = job().last_state
    RESULT["cancel_message"] = job().last_message
    RESULT["unchanged_after_cancel"] = datablock_names() == before
    child = getattr(sys.modules["faceforge.runner"], "_last_child_pid", None)
    RESULT["engine_in_child"] = child is not None
    RESULT["child_gone_after_cancel"] = child is not None and not os.path.exists(f"/proc/{child}")
    log(f"after Esc: {job().last_state} in {RESULT['cancel_seconds']} s ({job().last_message})")

    # 4. Reconstruct to the end; screenshot the progress bar on the way
    with override("VIEW_3D", "UI"):
        r = bpy.ops.faceforge.reconstruct_photo("INVOKE_DEFAULT", filepath=os.path.abspath(PHOTO))
    RESULT["invoke"] = sorted(r)
    # mid-job screenshots while the engine computes, nothing paused: Blender 3.4 crashed on these
    # (a forced redraw next to any Python thread); the engine now runs in a child process
    t, max_fraction, polls, stages = time.monotonic(), 0.0, 0, []
    RESULT["screens"], RESULT["mid_job_screenshots"] = {}, 0
    while job().running and time.monotonic() - t < TIMEOUT_S:
        max_fraction = max(max_fraction, job().fraction)
        if not stages or stages[-1][1] != job().stage:
            stages.append((round(time.monotonic() - t, 1), job().stage))
        if job().fraction >= 0.2:
            key = "progress" if "progress" not in RESULT["screens"] else "progress_later"
            if key == "progress":
                RESULT["progress_text"] = job().text
            RESULT["screens"][key] = screenshot(f"faceforge_{key}.png")
            RESULT["mid_job_screenshots"] += 1
        polls += 1
        yield 0.1
    RESULT["stages"] = stages
    torch = sys.modules.get("torch")
    RESULT["torch_threads"] = torch.get_num_threads() if torch else None
    RESULT["run_seconds"] = round(time.monotonic() - t, 1)
    RESULT["max_fraction_seen"] = round(max_fraction, 3)
    RESULT["ui_polls_while_running"] = polls      # the UI kept ticking: Blender was not frozen
    RESULT["operator_state"] = job().last_state
    RESULT["operator_message"] = job().last_message
    head = next((o for o in bpy.data.objects if o.get("faceforge_head")), None)
    RESULT["object_exists"] = head is not None
    RESULT["head_name"] = head.name if head else None
    RESULT["vertices"] = len(head.data.vertices) if head else 0
    RESULT["shape_keys"] = len(head.data.shape_keys.key_blocks) - 1 if head and head.data.shape_keys else 0
    log(f"finished: {RESULT['operator_state']} {RESULT['operator_message']}")
    if head is None:
        RESULT["errors"].append("no head after the run")
        finish(1)

    with override():
        RESULT["view_camera"] = sorted(bpy.ops.faceforge.view_photo_camera())
    yield 1.5   # let the viewport and sidebar redraw
    RESULT["screens"]["result"] = screenshot("faceforge_result.png")
    RESULT["camera_view"] = camera_view_check(head)
    log(f"camera view: {RESULT['camera_view']}")

    # 4b. the head itself, turned three-quarters, in material preview; then with its
    # eyes following an eyeLook shape (the default head's eyeLook shapes turn the eyeballs)
    _win, area, _region = window_area()
    space = area.spaces[0]
    space.shading.type = "MATERIAL"          # EEVEE's preview: the skin texture and the eyes' iris colours
    r3d = space.region_3d
    r3d.view_perspective = "PERSP"
    centre = sum((head.matrix_world @ Vector(c) for c in head.bound_box), Vector()) / 8
    r3d.view_location = centre + Vector((0.0, 0.0, 0.06))
    r3d.view_rotation = Euler((math.radians(80), 0.0, math.radians(35))).to_quaternion()
    r3d.view_distance = 0.55
    yield 4.0                                # shaders compile in the background
    RESULT["screens"]["head"] = screenshot("faceforge_head.png")
    keys = head.data.shape_keys.key_blocks
    for name in ("eyeLookOutLeft", "eyeLookInRight"):
        if name in keys:
            keys[name].value = 1.0
    r3d.view_rotation = Euler((math.radians(88), 0.0, 0.0)).to_quaternion()
    r3d.view_location = centre + Vector((0.0, 0.0, 0.09))
    r3d.view_distance = 0.35
    yield 1.0
    RESULT["screens"]["gaze"] = screenshot("faceforge_gaze.png")
    for name in ("eyeLookOutLeft", "eyeLookInRight"):
        if name in keys:
            keys[name].value = 0.0

    # 5. one undo step removes the whole head
    with override():
        bpy.ops.ed.undo()
    yield 0.5
    RESULT["undo_removes_head"] = not any(o.get("faceforge_head") for o in bpy.data.objects)
    log(f"undo removes the head: {RESULT['undo_removes_head']}")
    finish(0)


def camera_view_check(head) -> dict:
    """Where the photo camera's frame is drawn (Blender's own view matrices), what covers the view,
    where the head went, and whether the startup cube shows in the photo camera."""
    from bpy_extras.object_utils import world_to_camera_view
    from bpy_extras.view3d_utils import location_3d_to_region_2d
    scene = bpy.context.scene
    _win, area, region = window_area()
    rv3d = area.spaces.active.region_3d
    cam = scene.camera
    frame = [cam.matrix_world @ v for v in cam.data.view_frame(scene=scene)]
    corners = [tuple(location_3d_to_region_2d(region, rv3d, p)) for p in frame]
    covers = {r.type: [r.x - region.x, r.y - region.y, r.width, r.height] for r in area.regions
              if r.type in ("TOOLS", "UI", "TOOL_HEADER") and r.width > 1 and r.height > 1}
    out = {"corners": corners, "region": [region.width, region.height], "covers": covers,
           "head_origin": list(head.matrix_world.translation), "cube_points_in_view": None}
    cube = bpy.data.objects.get("Cube")
    if cube is not None:
        seen = 0
        for i in range(11):
            for j in range(11):
                for k in (0, 10):            # two opposite faces per axis, an 11 x 11 grid each
                    for p in ((i, j, k), (i, k, j), (k, i, j)):
                        local = Vector([-1 + 0.2 * c for c in p])
                        x, y, z = world_to_camera_view(scene, cam, cube.matrix_world @ local)
                        seen += 0 <= x <= 1 and 0 <= y <= 1 and cam.data.clip_start <= z <= cam.data.clip_end
        out["cube_points_in_view"] = seen
    return out


def show_faceforge_tab(area):
    """Make FaceForge the sidebar's active tab, like a user clicking it.

    Blender 4.1+ has Region.active_panel_category; 3.x has no API for it, so click down the tab
    strip (the sidebar's right edge) until the FaceForge panel reports that it drew."""
    region = next(r for r in area.regions if r.type == "UI")
    if hasattr(region, "active_panel_category"):
        region.active_panel_category = "FaceForge"
        yield 0.3
        return region.active_panel_category
    drawn = []

    def mark(_panel, _context):
        drawn.append(time.monotonic())

    panel = bpy.types.FACEFORGE_PT_main
    panel.append(mark)
    try:
        yield 0.3
        if drawn:
            return "FaceForge (already active)"
        win = bpy.context.window_manager.windows[0]
        scale = bpy.context.preferences.system.ui_scale
        x = region.x + region.width - int(10 * scale)
        for y in range(region.y + region.height - int(10 * scale), region.y, -int(12 * scale)):
            win.event_simulate(type="MOUSEMOVE", value="NOTHING", x=x, y=y)
            win.event_simulate(type="LEFTMOUSE", value="PRESS", x=x, y=y)
            win.event_simulate(type="LEFTMOUSE", value="RELEASE", x=x, y=y)
            del drawn[:]
            region.tag_redraw()
            yield 0.25
            if drawn:
                log(f"FaceForge tab clicked at ({x}, {y})")
                return "FaceForge (tab clicked)"
        return "not found"
    finally:
        panel.remove(mark)


drive(run_steps, RESULT, finish, timeout_s=TIMEOUT_S + 120)
