"""Blender's responsiveness while a FaceForge job runs (issue 12 item 9): run inside a real Blender window.

    xvfb-run -a -s "-screen 0 1600x900x24" blender --factory-startup --window-geometry 0 0 1600 900 \\
        --python tools/ui_lag_probe.py -- --zip dist/faceforge-0.1.0-legacy.zip --video clip.mp4 \\
        --out result.json [--idle 20] [--screenshots]

A 50 ms ``bpy.app.timers`` timer records the gaps between its calls while Track Video (clicked:
INVOKE, the modal path) runs on the clip; with ``--idle S`` no job runs and the gaps are measured
for S seconds. ``--screenshots`` also forces a window redraw + screenshot every 0.3 s (what crashed
Blender 3.4 next to a Python worker thread). Writes {p50, p95, max, n, state, message, run_s}.
"""

import json
import os
import sys
import time

import faulthandler

import bpy

faulthandler.enable(all_threads=True)
ARGS = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []


def _arg(name, default=None):
    return ARGS[ARGS.index(name) + 1] if name in ARGS else default


ZIP, VIDEO, OUT = _arg("--zip"), _arg("--video"), _arg("--out", "ui_lag.json")
IDLE = float(_arg("--idle", "0"))
SHOTS = "--screenshots" in ARGS
TICK_S = 0.05
state = {"measuring": False, "last": None, "gaps": [], "shots": 0}


def tick():
    now = time.monotonic()
    if state["measuring"] and state["last"] is not None:
        state["gaps"].append(now - state["last"])
    state["last"] = now
    return TICK_S


def force_redraw():
    if not state["measuring"] or not SHOTS:
        return 0.3
    win = bpy.context.window_manager.windows[0]
    area = next(a for a in win.screen.areas if a.type == "VIEW_3D")
    with bpy.context.temp_override(window=win, screen=win.screen, area=area):
        bpy.ops.screen.screenshot(filepath=os.path.join(os.path.dirname(os.path.abspath(OUT)), "ui_lag_shot.png"))
    state["shots"] += 1
    return 0.3


def finish(extra):
    g = sorted(state["gaps"])
    res = dict(extra, n=len(g), p50=g[len(g) // 2] if g else None, p95=g[int(0.95 * (len(g) - 1))] if g else None,
               max=g[-1] if g else None, screenshots=state["shots"], timer_s=TICK_S)
    with open(OUT, "w") as f:
        json.dump(res, f)
    print(f"[ui_lag] {json.dumps(res)}", flush=True)
    sys.stdout.flush()
    os._exit(0)    # torch + bpy can hang in exit handlers


def steps():
    bpy.context.preferences.view.show_splash = False
    if ZIP:
        bpy.ops.preferences.addon_install(filepath=os.path.abspath(ZIP), overwrite=True)
        bpy.ops.preferences.addon_enable(module="faceforge")
    yield 1.0
    if IDLE:
        state["measuring"] = True
        yield IDLE
        finish({"mode": "idle"})
    win = bpy.context.window_manager.windows[0]
    area = next(a for a in win.screen.areas if a.type == "VIEW_3D")
    area.spaces.active.show_region_ui = True
    region = next(r for r in area.regions if r.type == "UI")
    with bpy.context.temp_override(window=win, screen=win.screen, area=area, region=region):
        bpy.ops.faceforge.track_video("INVOKE_DEFAULT", filepath=os.path.abspath(VIDEO), save_track=False)
    job = bpy.context.window_manager.faceforge_job
    t = time.monotonic()
    state["measuring"] = True
    while job.running and time.monotonic() - t < 900:
        yield 0.2
    state["measuring"] = False
    finish({"mode": "thread" if os.environ.get("FACEFORGE_ENGINE_IN_THREAD") == "1" else "child",
            "state": job.last_state, "message": job.last_message[:160], "run_s": round(time.monotonic() - t, 1)})


_steps = steps()


def driver():
    try:
        return next(_steps)
    except StopIteration:
        return None


bpy.app.timers.register(driver, first_interval=1.0)
bpy.app.timers.register(tick, first_interval=1.0)
bpy.app.timers.register(force_redraw, first_interval=2.0)
