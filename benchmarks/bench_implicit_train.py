"""Implicit head training figures on the synthetic talking head with hair (core/implicit/synthetic.py).

Prints: training steps per second on this CPU, the fraction of ray samples the occupancy grid sends
through the networks, re-rendering PSNR and silhouette IoU of training frames and of a held-out
frame (its latent interpolated from its neighbours) before training (the morphable start) and after,
the canonical mesh's symmetric Chamfer distance to the true head-with-hair (and the bald morphable
head's one-sided distance from the truth, for scale), and the per-frame inversion time.

Run: .venv/bin/python benchmarks/bench_implicit_train.py [--frames 12] [--size 48] [--steps 400]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


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
    data_full = data_from_synthetic(model, full)
    data = data_from_synthetic(model, full)
    for name in ("images", "masks", "rotation", "translation", "expr", "posed"):
        setattr(data, name, getattr(data_full, name)[keep])

    def quality(head, box, grid, frames, latent_of=None):
        psnr, iou = [], []
        for f in frames:
            if latent_of is not None:
                saved = head.latents.data[0].clone()
                head.latents.data[0] = latent_of(f)
                fi = 0
            else:
                fi = f
            rgb, op = R.render_image(head, fi, torch.as_tensor(data_full.expr[f if latent_of else keep[f]]),
                                     torch.as_tensor(data_full.rotation[f if latent_of else keep[f]]),
                                     torch.as_tensor(data_full.translation[f if latent_of else keep[f]]),
                                     data.focal, data.cx, data.cy, args.size, args.size, box, grid)
            if latent_of is not None:
                head.latents.data[0] = saved
            target = full.images[f if latent_of else keep[f]]
            mask = full.masks[f if latent_of else keep[f]]
            psnr.append(10 * math.log10(1.0 / float(((rgb.numpy() - target) ** 2).mean())))
            a = op.numpy() > 0.5
            iou.append((a & mask).sum() / max((a | mask).sum(), 1))
        return float(np.mean(psnr)), float(np.mean(iou))

    def interp(head):
        lat = head.latents.detach()
        return lambda f: 0.5 * (lat[held - 1] + lat[held])      # neighbours in the kept list

    cfg = TrainConfig(steps=0, pretrain_steps=200)
    h0, b0, g0, _ = train(data, cfg)
    before_train = quality(h0, b0, g0, [1, len(keep) - 2])
    before_held = quality(h0, b0, g0, [held], interp(h0))
    cfg.steps = args.steps
    t0 = time.perf_counter()
    head, box, meshes, report, stats, timings = implicit_head_from_data(data, cfg, resolution=96)
    grid = R.OccupancyGrid(box, 32)
    grid.update(head.canonical_sdf, margin=0.02)
    after_train = quality(head, box, grid, [1, len(keep) - 2])
    after_held = quality(head, box, grid, [held], interp(head))
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
    print(f"training frames: PSNR {before_train[0]:.2f} -> {after_train[0]:.2f} dB, silhouette IoU "
          f"{before_train[1]:.3f} -> {after_train[1]:.3f} (morphable start -> trained)")
    print(f"held-out frame:  PSNR {before_held[0]:.2f} -> {after_held[0]:.2f} dB, silhouette IoU "
          f"{before_held[1]:.3f} -> {after_held[1]:.3f}")
    print(f"canonical mesh vs the true head with hair: symmetric Chamfer {chamfer:.2f} mm "
          f"(the bald morphable head: {bald:.2f} mm from the truth); {len(got)} vertices")
    print(f"inversion: {meshes.seconds_per_frame:.2f} s per frame, residual max {float(meshes.residual_mm.max()):.4f} mm; "
          f"extraction {timings['extract_s']:.1f} s ({stats.get('queries', '?')} SDF queries)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
