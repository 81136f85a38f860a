"""What the real-Blender GUI drivers (gui_screenshot.py, gui_pins.py) share: running their steps.

A driver's steps are a generator: each ``yield seconds`` waits that long on ``bpy.app.timers`` while
the window keeps drawing and handling events. ``drive`` runs it; a step that raises, or a run past
``timeout_s``, is recorded in ``result["errors"]`` and ends Blender through the driver's ``finish``.
"""

import time
import traceback

import bpy


def drive(steps, result: dict, finish, timeout_s: float, first_interval: float = 2.0) -> None:
    state = {"gen": None, "t0": time.monotonic()}

    def tick():
        try:
            if state["gen"] is None:
                state["gen"] = steps()
            wait = next(state["gen"])
            if time.monotonic() - state["t0"] > timeout_s:
                result["errors"].append("timed out")
                finish(1)
            return wait
        except StopIteration:
            return None
        except Exception:  # noqa: BLE001 - recorded for the test, then Blender ends
            result["errors"].append(traceback.format_exc())
            print(traceback.format_exc(), flush=True)
            finish(1)

    bpy.app.timers.register(tick, first_interval=first_interval)
