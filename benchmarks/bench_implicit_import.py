"""Import of an implicit head's tracked meshes into Blender (issue 11 item 5; target: 300 frames of a
20k-vertex mesh sequence in <= 5 s): PCA compression to a blendshape basis + HeadRig + scene build
with bulk keyframes, i.e. what "Implicit Head from Video" does once its meshes exist.

The sequence: the default model's full head (ICT-FaceKit, 26,719 vertices: more than 20k) through 300
frames of smooth random expressions (57 blendshapes), a jaw-like rotation of the lower face (not
linear: no finite basis holds it exactly), rigid head motion and 0.05 mm vertex noise. The head motion
is passed as the rig's root motion (as the pipeline does with the tracked pose).

Prints, for each of ``--repeats`` fresh scenes: compression (PCA size K, error mean / max in mm,
compression ratio), HeadRig, scene build (shape keys + keyframes + armature), the total, as wall time
and as this process's CPU time (the machine may be shared); then the evaluated mesh's error in
Blender on a few frames and FBX / GLB export times.

Run: .venv/bin/python benchmarks/bench_implicit_import.py [--frames 300] [--tolerance 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def smooth(rng, T, dims, scale, knots=20):
    k = rng.normal(scale=scale, size=(knots, dims))
    s = np.linspace(0, knots - 1, T)
    return np.stack([np.interp(s, np.arange(knots), k[:, d]) for d in range(dims)], 1)


def rodrigues(aa):
    th = float(np.linalg.norm(aa))
    if th < 1e-12:
        return np.eye(3)
    k = aa / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


def sequence(model, T: int, seed: int = 0, noise_mm: float = 0.05):
    rng = np.random.default_rng(seed)
    v0 = model.v_template.astype(np.float32)
    w = smooth(rng, T, model.n_expr, 0.5).astype(np.float32)
    E = model.expr_basis.astype(np.float32).reshape(-1, model.n_expr)              # (3V, K)
    frames = v0[None] + (w @ E.T).reshape(T, -1, 3)
    lower = np.clip((0.0 - v0[:, 1]) / 0.04, 0.0, 1.0)[:, None].astype(np.float32)
    jaw = 0.25 * (0.5 + 0.5 * np.sin(np.linspace(0, 12 * np.pi, T)))
    pivot = np.array([0.0, 0.02, -0.02], np.float32)
    for t in range(T):
        Rj = rodrigues(np.array([jaw[t], 0.0, 0.0])).astype(np.float32)
        frames[t] += lower * ((frames[t] - pivot) @ Rj.T + pivot - frames[t])
    frames += rng.normal(scale=noise_mm * 1e-3, size=frames.shape).astype(np.float32)
    R = np.stack([rodrigues(a) for a in smooth(rng, T, 3, 0.25)])
    tr = smooth(rng, T, 3, 0.03)
    posed = np.einsum("tij,tvj->tvi", R.astype(np.float32), frames) + tr[:, None].astype(np.float32)
    return posed, R, tr


class _Op:
    def report(self, kind, message):
        pass


class _Result:
    def __init__(self, rig):
        self.rig, self.warnings, self.model = rig, [], None


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--tolerance", type=float, default=0.5, help="worst vertex error allowed (mm)")
    ap.add_argument("--max-components", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import bpy

    import blender_addon
    from blender_addon.core.implicit.sequence import compress_sequence, reconstruct, sequence_head_rig
    from blender_addon.core.models import load_model
    from blender_addon.operators.track import build_tracked_head
    from blender_addon.scene import animation, head_builder
    blender_addon.register()

    model = load_model(find_landmarks=False)
    frames, R, tr = sequence(model, args.frames)
    T, V = frames.shape[:2]
    print(f"sequence: {T} frames x {V:,d} vertices ({frames.nbytes / 1e6:.0f} MB float32), {len(model.faces):,d} "
          f"triangles; tolerance {args.tolerance} mm, at most {args.max_components} components")
    rows = []
    for _ in range(args.repeats):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        basis, w1, c1 = timed(lambda: compress_sequence(frames, max_components=args.max_components,
                                                        tolerance_mm=args.tolerance, rotation=R, translation=tr))
        rig, w2, c2 = timed(lambda: sequence_head_rig(basis, model.faces, name="ImplicitBench",
                                                      vertex_colors=model.albedo_mean, fps=25.0, frame_start=0))
        msg, w3, c3 = timed(lambda: build_tracked_head(_Op(), bpy.context, _Result(rig), "Benchmark"))
        rows.append((w1, w2, w3, w1 + w2 + w3, c1, c2, c3, c1 + c2 + c3))
    med = [statistics.median(r[i] for r in rows) for i in range(8)]
    keys = sum(len(fc.keyframe_points) for a in bpy.data.actions for fc in animation.fcurves_of(a))
    print(f"PCA basis: K = {basis.n_components} components, error mean {basis.error_mean_mm:.3f} mm, max "
          f"{basis.error_max_mm:.3f} mm (worst frame max {basis.frame_error_max_mm.max():.3f}), variance kept "
          f"{100 * basis.variance_kept:.4f}%, {basis.compression_ratio():.0f}x smaller than the raw frames; "
          f"{keys:,d} keyframes written")
    print(f"import, median of {args.repeats} fresh scenes (wall / CPU s): compress {med[0]:.2f} / {med[4]:.2f}, "
          f"HeadRig {med[1]:.3f} / {med[5]:.3f}, Blender build + keying {med[2]:.2f} / {med[6]:.2f}; "
          f"TOTAL {med[3]:.2f} s wall / {med[7]:.2f} s CPU (target <= 5 s); "
          f"all totals: {', '.join(f'{r[3]:.2f}' for r in rows)}")
    print(f"  {msg}")

    head = head_builder.find_head(bpy.context)
    scene = bpy.context.scene
    played = reconstruct(basis)
    worst = 0.0
    for t in (0, T // 3, T // 2, T - 1):
        scene.frame_set(t + 1)
        deps = bpy.context.evaluated_depsgraph_get()
        ev = head.evaluated_get(deps)
        me = ev.to_mesh()
        co = np.zeros(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        M = np.array(ev.matrix_world)
        ev.to_mesh_clear()
        world = co.reshape(-1, 3).astype(np.float64) @ M[:3, :3].T + M[:3, 3]
        worst = max(worst, float(np.linalg.norm(world - head_builder.to_blender(frames[t]), axis=1).max() * 1000))
        assert np.abs(world - head_builder.to_blender(played[t])).max() < 1e-5
    print(f"  Blender's evaluated mesh vs the input frames (4 frames): worst vertex {worst:.3f} mm "
          f"(reported max {basis.error_max_mm:.3f} mm)")
    with tempfile.TemporaryDirectory() as out:
        for op_name, ext in (("export_fbx", ".fbx"), ("export_gltf", ".glb")):
            path = os.path.join(out, "implicit" + ext)
            _, w, _ = timed(lambda: getattr(bpy.ops.faceforge, op_name)(filepath=path))
            print(f"  {ext[1:].upper()} export ({T} frames): {w:.2f} s, {os.path.getsize(path) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
