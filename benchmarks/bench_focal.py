"""Focal length and likeness: one frontal photo taken with other lenses than the likeness benchmark's.

The photo fit cannot read a frontal face's focal length from its landmarks (and what they say is
biased), so the field of view it starts from (``FitConfig.initial_fov_deg``) matters. This renders
subjects exactly as benchmarks/bench_likeness.py does (Blender Workbench, the face 40% of the image
width, so a shorter lens means a closer camera) but only the frontal view, with each lens given, and
fits it with ``core.pipeline.reconstruct_photo`` four ways:
  - starting at a 30-degree field of view (the default before the likeness work: a 67 mm lens);
  - starting at the default 40 degrees (a 50 mm lens);
  - with the TRUE focal length held fixed (FitConfig(fit_focal=False));
  - the default pipeline on the render saved as JPEG with the lens in its EXIF (FocalLengthIn35mmFilm,
    whole millimetres as cameras write it): what a phone photo gets.
Prints, per lens, the median face error's ratio to the mean face's, the mean of the per-subject
ratios, and the fitted focal length relative to the true one.

Run: .venv/bin/python benchmarks/bench_focal.py [--lenses 26 85] [--subjects 8] [--first-seed 100]
     (seeds from 100 by default: subjects the likeness settings were never run on; ~2 min per lens)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tools")]

import bench_likeness as B  # noqa: E402


def with_exif_focal(png: str, focal_px: float) -> str:
    """The render as a JPEG whose EXIF says its lens (35 mm equivalent on the frame's diagonal)."""
    from PIL import Image

    from core.detect.images import FULL_FRAME_DIAGONAL_MM

    with Image.open(png) as im:
        rgb = im.convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = int(round(focal_px * FULL_FRAME_DIAGONAL_MM / np.hypot(*rgb.size)))
    out = str(Path(png).with_suffix(".jpg"))
    rgb.save(out, quality=95, exif=exif.tobytes())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lenses", type=float, nargs="+", default=[26.0, 85.0], help="full-frame equivalent mm")
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--size", type=int, default=640)
    args = ap.parse_args()

    import torch

    from core.fit import FitConfig
    from core.models import load_model
    from core.pipeline import reconstruct_photo

    torch.set_num_threads(1)
    model = load_model(None)
    regs = B.regions(model)
    seeds = range(args.first_seed, args.first_seed + args.subjects)
    print(f"Focal length vs likeness: model '{model.name}', {args.subjects} subjects (seeds {seeds.start}-"
          f"{seeds.stop - 1}), one frontal Blender render each, {args.size} px")
    for lens in args.lenses:
        subjects = []
        for s in seeds:
            subj = B.make_subject(model, s, 1.0)
            subj["lens_mm"] = lens
            subj["views"] = subj["views"][:1]
            B.plan_views(model, subj, args.size)
            subjects.append(subj)
        true_fov = float(np.degrees(2 * np.arctan(18.0 / lens)))      # across the 36 mm side
        variants = {"start 30 deg": FitConfig(initial_fov_deg=30.0),
                    "start 40 deg (no EXIF)": FitConfig(),
                    "true focal held": FitConfig(initial_fov_deg=true_fov, fit_focal=False),
                    "EXIF in a JPEG": FitConfig()}
        with tempfile.TemporaryDirectory() as tmp:
            B.render_all(model, subjects, args.size, Path(tmp))
            err = {k: [] for k in variants}
            focal = {k: [] for k in variants}
            mean = []
            for subj in subjects:
                truth = B.neutral(model, subj["shape"])
                mean.append(B.region_error_mm(model.v_template, truth, regs["face"]))
                for k, cfg in variants.items():
                    path = subj["views"][0]["path"]
                    if k.startswith("EXIF"):
                        path = with_exif_focal(path, subj["focal_px"])
                    rec = reconstruct_photo(path, model=model, device="cpu", texture_size=0, config=cfg)
                    err[k].append(B.region_error_mm(rec.fit.vertices_neutral, truth, regs["face"]))
                    focal[k].append(float(rec.fit.params["focal"]) / subj["focal_px"])
        m = np.array(mean)
        dist = subjects[0]["distance_m"]
        print(f"\n  {lens:.0f} mm lens (field of view {true_fov:.1f} deg, camera ~{dist:.2f} m away); mean face "
              f"{np.median(m):.2f} mm")
        for k in variants:
            e = np.array(err[k])
            print(f"    {k:24s} median {np.median(e):.2f} mm ({np.median(e) / np.median(m):.2f}x), mean of ratios "
                  f"{np.mean(e / m):.2f}x, fitted / true focal {np.median(focal[k]):.2f} "
                  f"({min(focal[k]):.2f}-{max(focal[k]):.2f})")


if __name__ == "__main__":
    main()
