"""Implicit head training figures on the synthetic talking head with hair (core/implicit/synthetic.py).

Prints: training steps per second on this CPU, the fraction of ray samples the occupancy grid sends
through the networks, re-rendering PSNR and silhouette IoU of training frames and of a held-out
frame (its per-frame codes interpolated from its neighbours) before training (the morphable start)
and after, beside the same frames rendered from the tracked morphable head with its texture baked
from the training frames (core/texture/bake.py, the product's bake, with the clip's true light: the
baseline issue #11 asks to beat); the canonical mesh's symmetric Chamfer distance to the true
head-with-hair (and the bald morphable head's one-sided distance from the truth, for scale); the
per-frame inversion time; the Preview's direct surface rendering against volume rendering (time,
PSNR of each against the frame).

The clip is rendered by FaceForge's rasteriser, which also renders the baseline: that favours the
baseline (same renderer as the truth, true light), not the implicit head (NeuS volume rendering).

Run: .venv/bin/python benchmarks/bench_implicit_train.py [--frames 12] [--size 48] [--steps 400]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def baked_head(model, cams: list, images: np.ndarray, focal: float, cx: float, cy: float, sh: np.ndarray,
               trained: list):
    """A morphable head textured by the product's bake (core/texture/bake.py) from the ``trained`` frames:
    ``cams`` its vertices per frame in camera space; returns frame -> (image (H, W, 3), mask (H, W))."""
    from blender_addon.core.pipeline.photo import fill_albedo
    from blender_addon.core.rig.model_rig import skin_uv
    from blender_addon.core.texture.bake import bake_texture, render_textured
    tris, uv, tiles = skin_uv(model)
    faces = model.faces[tris]
    H, W = images.shape[1:3]
    views = [dict(image=(images[f] * 255).round().astype(np.uint8), vertices_camera=cams[f], focal=focal, cx=cx,
                  cy=cy, sh=sh, weight=1.0) for f in trained]
    bake = bake_texture(faces, uv, views, fill_albedo(model, model.albedo_mean), size=256, symmetric=True,
                        model_vertices=model.v_template, tiles=tiles)
    return lambda f: render_textured(cams[f], faces, uv, bake.texture, sh, focal, cx, cy, H, W, tiles=tiles)


def baked_morphable(model, clip, trained: list):
    """The tracked morphable head of the synthetic clip (its true identity, expressions and poses, its
    true light) with the texture baked from the training frames."""
    from blender_addon.core.implicit.synthetic import clip_light
    neutral = model.v_template + np.einsum("vck,k->vc", model.shape_basis, clip.shape)
    posed = neutral[None] + np.einsum("vck,tk->tvc", model.expr_basis, clip.expr)
    cams = [posed[f] @ clip.rotation[f].T + clip.translation[f] for f in range(len(posed))]
    return baked_head(model, cams, clip.images, clip.focal, clip.cx, clip.cy, clip_light().numpy(), trained)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    from scipy.spatial import cKDTree

    from blender_addon.core.implicit import render as R
    from blender_addon.core.implicit.synthetic import make_clip
    from blender_addon.core.implicit.train import TrainConfig, data_from_synthetic, train
    from blender_addon.core.models.builtin import load_embedded
    from blender_addon.core.pipeline.implicit import implicit_head_from_data
    from blender_addon.core.stylize.surface import sample_surface
    model = load_embedded("ict")
    # one more frame than trained on: the middle one is held out
    full = make_clip(model, n_frames=args.frames + 1, size=args.size, seed=0)
    held = (args.frames + 1) // 2
    keep = [i for i in range(args.frames + 1) if i != held]
    data = data_from_synthetic(model, full)
    for name in ("images", "masks", "rotation", "translation", "expr", "posed"):
        setattr(data, name, getattr(data, name)[keep])
    shown = [keep[1], keep[-2]]                     # two training frames (clip indices)

    def frame_view(head, f):
        """(head, slot) rendering clip frame f: its own slot, or slot 0 of a copy with interpolated codes."""
        if f in keep:
            return head, keep.index(f)
        other = copy.deepcopy(head)
        other.interpolate_codes(keep, f, slot=0)
        return other, 0

    def quality(head, box, grid, frames, renderer=R.render_image):
        p, i = [], []
        for f in frames:
            h, slot = frame_view(head, f)
            out = renderer(h, slot, torch.as_tensor(full.expr[f]), torch.as_tensor(full.rotation[f]),
                           torch.as_tensor(full.translation[f]), data.focal, data.cx, data.cy, args.size, args.size,
                           box, grid)
            p.append(psnr(out[0].numpy(), full.images[f]))
            i.append(iou(out[1].numpy() > 0.5, full.masks[f]))
        return float(np.mean(p)), float(np.mean(i))

    t0 = time.perf_counter()
    baseline = baked_morphable(model, full, keep)
    bake_s = time.perf_counter() - t0
    base = {}
    for name, frames in (("train", shown), ("held", [held])):
        outs = [baseline(f) for f in frames]
        base[name] = (float(np.mean([psnr(o[0], full.images[f]) for o, f in zip(outs, frames)])),
                      float(np.mean([iou(o[1], full.masks[f]) for o, f in zip(outs, frames)])))

    cfg = TrainConfig(steps=0, pretrain_steps=200)
    h0, b0, g0, _ = train(data, cfg)
    before_train = quality(h0, b0, g0, shown)
    before_held = quality(h0, b0, g0, [held])
    cfg.steps = args.steps
    head, box, meshes, report, stats, timings = implicit_head_from_data(data, cfg, resolution=96)
    grid = R.OccupancyGrid(box, 32)
    grid.update(head.canonical_sdf, margin=0.02)
    after_train = quality(head, box, grid, shown)
    after_held = quality(head, box, grid, [held])
    surface_held = quality(head, box, grid, [held], renderer=lambda *a: R.render_surface(*a)[:2])

    # Preview speed: one frame at 256 px, direct surface rendering vs volume rendering (medians of 3)
    def timed(fn):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))
    scale = 256 / args.size
    cam = (torch.as_tensor(full.expr[held]), torch.as_tensor(full.rotation[held]), torch.as_tensor(full.translation[held]),
           data.focal * scale, data.cx * scale, data.cy * scale, 256, 256, box, grid)
    t_surface = timed(lambda: R.render_surface(head, 0, *cam))
    t_volume = timed(lambda: R.render_image(head, 0, *cam))

    truth = sample_surface(full.canonical_verts, full.canonical_faces, 40000, np.random.default_rng(0)) \
        .blend(torch.as_tensor(full.canonical_verts)).numpy()
    truth = truth[truth[:, 1] > data.neutral[:, 1].min() + 0.012]
    got = meshes.canonical
    chamfer = 0.5 * (cKDTree(truth).query(got)[0].mean() + cKDTree(got).query(truth)[0].mean()) * 1000
    bald = cKDTree(data.neutral).query(truth)[0].mean() * 1000
    print(f"synthetic clip: {args.frames} training frames + 1 held out, {args.size} px, {args.steps} steps "
          f"(pretraining {report.pretrain_seconds:.0f} s)")
    print(f"training: {report.steps_per_second:.2f} steps/s on {torch.get_num_threads()} CPU thread(s) "
          f"({report.seconds:.0f} s); occupancy grid sends {100 * report.rendered_fraction:.0f}% of the samples "
          f"through the networks")
    print("re-rendering (PSNR dB / silhouette IoU)          training frames      held-out frame")
    print(f"  implicit head, morphable start                   {before_train[0]:5.2f} / {before_train[1]:.3f}"
          f"       {before_held[0]:5.2f} / {before_held[1]:.3f}")
    print(f"  implicit head, trained (volume rendering)        {after_train[0]:5.2f} / {after_train[1]:.3f}"
          f"       {after_held[0]:5.2f} / {after_held[1]:.3f}")
    print(f"  implicit head, trained (Preview: surface)                 -            {surface_held[0]:5.2f} / "
          f"{surface_held[1]:.3f}")
    print(f"  tracked morphable head + baked texture           {base['train'][0]:5.2f} / {base['train'][1]:.3f}"
          f"       {base['held'][0]:5.2f} / {base['held'][1]:.3f}   (bake {bake_s:.1f} s)")
    d = after_held[0] - base["held"][0]
    print(f"  held-out frame: the implicit head is {abs(d):.2f} dB {'better' if d > 0 else 'WORSE'} than the baseline")
    print(f"canonical mesh vs the true head with hair: symmetric Chamfer {chamfer:.2f} mm "
          f"(the bald morphable head: {bald:.2f} mm from the truth); {len(got)} vertices")
    print(f"inversion: {meshes.seconds_per_frame:.2f} s per frame, residual max {float(meshes.residual_mm.max()):.4f} mm; "
          f"extraction {timings['extract_s']:.1f} s ({stats.get('queries', '?')} SDF queries)")
    print(f"Preview at 256x256: direct surface rendering {t_surface:.2f} s, volume rendering {t_volume:.2f} s "
          f"({t_volume / t_surface:.1f}x), medians of 3")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
