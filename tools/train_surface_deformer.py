"""Pretrains the surface deformation network DS for a model and writes it to weights/ or a path.

DS (core/stylize/deformer.py) maps a template surface point and (identity, expression) codes to the
deformed point. It starts from the SVD of the model's bases and is trained on random codes at random
vertices and points inside triangles. The default model's network ships as
weights/surface_deformer_ict.pt (see weights/surface_deformer_ict.md); for another model
`faceforge train-deformer --model FILE` trains one and caches it.

Reproduce the shipped file:
    .venv/bin/python tools/train_surface_deformer.py --model ict --steps 600 --out weights/surface_deformer_ict.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from faceforge.core.jobs import Progress  # noqa: E402
from faceforge.core.models import load_model  # noqa: E402
from faceforge.core.stylize.deformer import evaluate, save_deformer, train_surface_deformer  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ict", help="embedded model name or model file (default: ict)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    t0 = time.perf_counter()
    net, info = train_surface_deformer(model, steps=args.steps, device=args.device,
                                       progress=Progress(lambda stage, f: print(f"\r{stage}", end="", flush=True)))
    print()
    ev = evaluate(net, model)
    path = save_deformer(net, args.out, model, info)
    report = {"model": model.name, "steps": args.steps, "device": args.device, "threads": torch.get_num_threads(),
              "train_seconds": round(info.seconds, 1), "total_seconds": round(time.perf_counter() - t0, 1),
              "held_out_vertex_error_mm": {k: round(v, 3) for k, v in ev.items()},
              "file_mb": round(path.stat().st_size / 1e6, 2)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
