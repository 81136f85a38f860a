"""Stylization figures (issue #10): DS pretraining, LeGO fine-tuning with and without CLIP, style quality,
and Apply Style on a 500-frame tracked head.

- DS pretraining: seconds per step on the default model (ICT, 26,719 vertices) over a few steps,
  and a whole on-demand training of the face mask (468 vertices, 300 steps) with its held-out error.
- Fine-tuning: 100 LeGO iterations on the goblin sculpt (core/stylize/examples.py) of one ICT head
  without CLIP; with CLIP (an open_clip ViT-B-32, random weights: the real architecture and cost,
  since no CLIP weights can be downloaded here) over ``--clip-iterations`` iterations, scaled to 100.
- Quality of the learned style on 3 identities it never saw, against the goblin sculpt of each
  (what the style should produce): median error, correlation and size of the style displacement;
  the sculpt itself (exemplar error); and jawOpen on the stylized head vs the model's.
- Apply Style: core time for every shape key, and the Blender operator on a 500-frame tracked head.

Run: .venv/bin/python benchmarks/bench_stylize.py [--clip-iterations 5] [--no-blender]
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
import torch  # noqa: E402


def identity(model, seed, scale=0.8):
    return (np.random.default_rng(seed).standard_normal(model.n_shape) * scale).astype(np.float32)


def head(model, shape):
    return model.v_template + np.einsum("vck,k->vc", model.shape_basis, shape)


def style_quality(model, ds, asset, seeds=(101, 102, 103)) -> dict:
    from blender_addon.core.stylize.examples import goblin_sculpt
    errs, corrs, sizes = [], [], []
    for seed in seeds:
        s = identity(model, seed)
        n = head(model, s)
        want = goblin_sculpt(model, n) - n
        moved = np.linalg.norm(want, axis=1) > 1e-3
        with torch.no_grad():
            S, Z = torch.as_tensor(s)[None], torch.zeros(1, model.n_expr)
            got = (asset.network.vertices(S, Z) - ds.vertices(S, Z))[0].numpy()
        a, b = got[moved], want[moved]
        errs.append(float(np.median(np.linalg.norm(a - b, axis=1))) * 1000)
        corrs.append(float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))))
        sizes.append(float(np.median(np.linalg.norm(a, axis=1)) / np.median(np.linalg.norm(b, axis=1))))
    return {"median_error_mm": statistics.median(errs), "correlation": statistics.median(corrs),
            "size_ratio": statistics.median(sizes), "goblin_size_mm": float(np.median(
                np.linalg.norm(want[moved], axis=1)) * 1000)}


def jaw_check(model, ds, asset, seed=101) -> tuple:
    from blender_addon.core.stylize.style import stylized_head
    s = identity(model, seed)
    e = np.zeros((1, model.n_expr), np.float32)
    e[0, model.expr_names.index("jawOpen")] = 1.0
    _, d = stylized_head(asset, model, s, e)
    with torch.no_grad():
        S = torch.as_tensor(s)[None]
        ref = (ds.vertices(S, torch.as_tensor(e)) - ds.vertices(S, torch.zeros(1, model.n_expr)))[0].numpy()
    a, b = ref.ravel(), d[0].ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), float(np.linalg.norm(b) / np.linalg.norm(a))


def bench_pretraining(ict, mask) -> None:
    from blender_addon.core.stylize.deformer import evaluate, train_surface_deformer
    steps = 10
    _, info = train_surface_deformer(ict, steps=steps)
    per_step = info.seconds / steps
    print(f"DS pretraining, ICT ({ict.n_vertices} vertices, {ict.n_shape}+{ict.n_expr} codes): "
          f"{per_step:.2f} s/step on {torch.get_num_threads()} CPU thread(s) -> 600 steps ~ {600 * per_step / 60:.1f} min "
          f"(shipped: 600 steps, held-out RMS 0.41 mm)")
    net, info = train_surface_deformer(mask, steps=300, n_vertex_points=468, n_inside_points=1024)
    ev = evaluate(net, mask)
    print(f"DS trained on demand, face mask ({mask.n_vertices} vertices, 300 steps): {info.seconds:.1f} s, "
          f"held-out RMS {ev['rms_mm']:.3f} mm, max {ev['max_mm']:.2f} mm")


def bench_finetune(ict, ds, clip_iterations: int):
    from blender_addon.core.stylize.clip_guidance import ClipGuide
    from blender_addon.core.stylize.examples import goblin_sculpt
    from blender_addon.core.stylize.style import StyleConfig, learn_style
    s_ref = identity(ict, 100)
    neutral = head(ict, s_ref)
    sculpt = goblin_sculpt(ict, neutral)
    asset = learn_style(ict, ds, neutral, sculpt, StyleConfig(iterations=100), name="goblin")
    r = asset.report
    q = style_quality(ict, ds, asset)
    corr, ratio = jaw_check(ict, ds, asset)
    print(f"LeGO fine-tuning, 100 iterations, no CLIP: {r.seconds:.1f} s ({r.seconds / r.iterations:.2f} s/it)")
    print(f"  the sculpt (goblin, median move {r.style_size_mm:.2f} mm): reproduced to median {r.exemplar_error_mm:.2f} mm, "
          f"max {r.exemplar_max_mm:.2f} mm")
    print(f"  on 3 unseen identities vs their own goblin sculpt (median move {q['goblin_size_mm']:.2f} mm): "
          f"median error {q['median_error_mm']:.2f} mm, correlation {q['correlation']:.3f}, size {q['size_ratio']:.2f}x")
    print(f"  jawOpen on the stylized head vs the model's: correlation {corr:.4f}, size {ratio:.3f}x")
    if clip_iterations > 0:
        import open_clip
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        guide = ClipGuide(model, 224, "ViT-B-32 (random weights, timing only)")
        t0 = time.perf_counter()
        a2 = learn_style(ict, ds, neutral, sculpt, StyleConfig(iterations=clip_iterations), clip=guide)
        dt = time.perf_counter() - t0
        print(f"LeGO fine-tuning with CLIP ViT-B-32 (2 renders + 3 image encodings per iteration): "
              f"{dt / clip_iterations:.2f} s/it over {clip_iterations} iterations -> 100 iterations ~ "
              f"{100 * dt / clip_iterations / 60:.1f} min on this CPU ({a2.report.clip})")
    return asset


def bench_apply_core(ict, asset) -> None:
    from blender_addon.core.stylize.style import stylize_head
    from blender_addon.core.rig.model_rig import expression_shape_keys
    names, _, _ = expression_shape_keys(ict)
    n = head(ict, identity(ict, 7))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        stylize_head(asset, ict, n, names)
        times.append(time.perf_counter() - t0)
    print(f"Apply Style, engine: stylized neutral + {len(names)} shape keys: median {statistics.median(times):.2f} s")


def bench_apply_blender(ict, style_path, frames: int) -> None:
    import bpy

    import blender_addon
    from blender_addon.core.pipeline import VideoTrackResult, head_rig_from_track
    from blender_addon.operators.track import build_tracked_head
    from bench_blender_import import _Op, synthetic_track
    blender_addon.register()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    track = synthetic_track(ict, frames, "")
    rig = head_rig_from_track(ict, track)
    build_tracked_head(_Op(), bpy.context, VideoTrackResult(track=track, rig=rig, model=ict, warnings=[]), "Actor")
    t0 = time.perf_counter()
    assert bpy.ops.faceforge.apply_style(filepath=str(style_path)) == {"FINISHED"}
    dt = time.perf_counter() - t0
    print(f"Apply Style in Blender on a {frames}-frame tracked head (engine + stylized copy sharing the clip's "
          f"actions): {dt:.2f} s -> {bpy.context.view_layer.objects.active.name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip-iterations", type=int, default=5, help="CLIP iterations to time (0: skip)")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--no-blender", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from blender_addon.core.models.builtin import load_embedded
    from blender_addon.core.stylize.deformer import deformer_for
    ict, mask = load_embedded("ict"), load_embedded("facemask")
    ds = deformer_for(ict)
    bench_pretraining(ict, mask)
    asset = bench_finetune(ict, ds, args.clip_iterations)
    bench_apply_core(ict, asset)
    if not args.no_blender:
        with tempfile.TemporaryDirectory() as tmp:
            path = asset.save(Path(tmp) / "goblin.ffstyle.pt")
            bench_apply_blender(ict, path, args.frames)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
