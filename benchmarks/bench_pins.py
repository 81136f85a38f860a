"""Pins (issue 13): re-solve time per pin drag, and what pins correct.

Prints, for the default full head (ICT-FaceKit, 26.7k vertices, 100+57 components) and a FLAME-sized
model (~7k vertices, 300+100 components, 5 joints): the median time of one drag step (a re-solve
warm-started from the previous step, the pin's target moved by ~1 px, as mouse events come) with the
detector's landmarks and with pins only, 1 and 5 pins; in Blender (bpy), the whole drag step
(re-solve + shape keys + camera) on a built full head; and the accuracy figures of the tests: a wrong
profile fit corrected by five pins, a corrupted track span corrected by pins on two keyframes.
Run: .venv/bin/python benchmarks/bench_pins.py [--steps 40] [--no-blender]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def drag_times(solver, state, pins, cfg, steps):
    """Median seconds of a drag step, and the last pin error (px)."""
    from core.fit.pins import Pin
    out, times = state, []
    for s in range(steps):
        moved = [Pin(p.face, p.bary, (p.target[0] + 0.8 * s, p.target[1] + 0.5 * s), p.view) for p in pins[:1]] + pins[1:]
        t0 = time.perf_counter()
        out = solver.solve(state, moved, cfg, start=out)
        times.append(time.perf_counter() - t0)
    err = float(np.abs(solver.pin_pixels(out, moved) - np.array([p.target for p in moved])).max())
    return statistics.median(times[2:]), err


def core_rows(steps):
    from core.fit.pins import HeadState, PinConfig, PinSolver, ViewState
    from core.models import load_model
    from core.models.correspondence import find_landmark_embedding
    from core.models.synthetic import flame_sized_model
    from tests.likeness_support import rotation

    rows = []
    builtin = load_model("builtin")
    flame = flame_sized_model(builtin)
    flame.landmarks = find_landmark_embedding(flame)
    for name, model in (("full head", load_model()), ("FLAME-sized", flame)):
        solver = PinSolver(model.layer("cpu"))
        rng = np.random.default_rng(0)
        expr = np.zeros(model.n_expr, np.float32)
        if model.expr_range is not None:
            expr[:3] = 0.3
        st = HeadState((0.5 * rng.standard_normal(model.n_shape)).astype(np.float32), [ViewState(
            rotation(20).astype(np.float32), np.array([0, 0, 0.55], np.float32), 1100.0, 320.0, 320.0, expr,
            np.zeros((model.n_pose_joints, 3), np.float32))])
        lm = solver.landmark_pixels(st)
        st.views[0].landmarks, st.views[0].face_size = lm, float(np.ptp(lm[:, 0]))
        st = solver.solve(st, [], PinConfig(iters=60))           # an existing fit: its own optimum
        lm = solver.landmark_pixels(st)
        picks = [solver.pick(st, 0, *lm[k]) for k in np.linspace(0, len(lm) - 1, 7).astype(int)]
        picks = [p for p in picks if p is not None]
        for n_pins in (1, 5):
            for label, cfg in (("+ landmarks", PinConfig()), ("pins only", PinConfig(use_landmarks=False))):
                med, err = drag_times(solver, st, picks[:n_pins], cfg, steps)
                rows.append((f"{name}: drag step, {n_pins} pin{'s' if n_pins > 1 else ''} {label}",
                             f"{1000 * med:.1f} ms", f"{1 / med:.0f} updates/s; dragged pin {err:.2f} px off"))
    return rows


def accuracy_rows():
    from tests import test_pins as T
    from core.fit.pins import PinConfig, PinSolver
    from core.models import load_model
    from core.track.keyframes import refine_track_with_pins

    ict = load_model()
    solver = PinSolver(ict.layer("cpu"))
    idx = np.flatnonzero(ict.skin_vertex_mask())
    before, after, rot = [], [], []
    for seed in (3, 4, 5, 6, 7):
        rng, shape, expr = T.person(ict, seed)
        truth = T.head(ict, shape, expr, 70, (0.01, -0.01, 0.55))
        wrong = T.head(ict, shape + 0.3 * rng.standard_normal(ict.n_shape),
                       np.clip(expr + rng.normal(0, 0.05, ict.n_expr), 0, 1), 45, (0.03, 0.0, 0.58))
        pins = T.feature_pins(ict, solver, truth, [1, 152, 61, 263, 10])
        out = solver.solve(wrong, pins, PinConfig(use_landmarks=False, iters=30))
        before.append(T.centred_error_mm(solver, wrong, truth, idx))
        after.append(T.centred_error_mm(solver, out, truth, idx))
        rot.append(T.angle_deg(out.views[0].rotation, truth.views[0].rotation))
    rows = [("wrong profile fit + 5 pins (5 heads)", f"{np.mean(after):.2f} mm",
             f"face vertices, centred: {np.mean(before):.1f} mm before; rotation error {np.mean(rot):.2f} deg "
             f"(max {np.max(rot):.2f})")]
    truth, track = T.synthetic_track(ict)
    pins = [T.Pin(p.face, p.bary, p.target, k) for k in (22, 38)
            for p in T.feature_pins(ict, solver, truth(k), [1, 152, 61, 291, 263, 33, 10])]
    t0 = time.perf_counter()
    out = refine_track_with_pins(track, ict, pins, PinConfig(use_landmarks=False, lock_identity=True), falloff=6,
                                 solver=solver)
    dt = time.perf_counter() - t0
    sub = idx[::10]
    b = [T.frame_error_mm(solver, track, truth, k, sub) for k in range(22, 39)]
    a = [T.frame_error_mm(solver, out, truth, k, sub) for k in range(22, 39)]
    rows.append(("corrupted track span + pins on 2 keyframes", f"{np.mean(a):.2f} mm",
                 f"frames 22-38, camera space: {np.mean(b):.1f} mm before, worst after {np.max(a):.2f} mm; "
                 f"refine {dt:.2f} s"))
    return rows


def blender_rows(steps):
    import bpy

    import blender_addon
    from blender_addon.core.models import load_model
    from blender_addon.operators import pins as pin_ops
    sys.path.insert(0, str(ROOT / "tests"))
    import test_pins_blender as TB

    blender_addon.register()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    ict = load_model("ict")
    head, *_ = TB.build(ict)
    pin_ops.ensure_pin_data(head)
    _, solver = pin_ops.solver_for(head)
    _, state = pin_ops._states(head)
    px = solver.landmark_pixels(state)
    for k in (0, 100, 200, 300, 400):
        pin_ops.add_pin(head, 0, *px[k])
    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        pin_ops.move_pin(head, 1, px[100][0] + 0.8 * s, px[100][1] + 0.5 * s)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    pin_ops.finish_pinning(head)
    fin = time.perf_counter() - t0
    med = statistics.median(times[2:])
    return [("Blender, full head: drag step (solve + keys + camera)", f"{1000 * med:.1f} ms",
             f"{1 / med:.0f} updates/s, 5 pins; finishing (identity baked into 59 keys) {fin:.2f} s")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--no-blender", action="store_true")
    args = ap.parse_args()
    rows = core_rows(args.steps) + accuracy_rows()
    if not args.no_blender:
        rows += blender_rows(args.steps)
    print(f"\nPins benchmark (torch {torch.__version__}, CPU; the solve uses 1 thread)")
    w = max(len(r[0]) for r in rows)
    for name, val, note in rows:
        print(f"  {name:<{w}}  {val:>9}  {note}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)            # bpy/torch destructors can hang at interpreter exit (ENVIRONMENT.md)
