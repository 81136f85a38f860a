"""Train the MAGE-style mesh encoder (core/stylize/encoder.py) for a model and save it.

    .venv/bin/python tools/train_mesh_encoder.py --model ict --steps 3000 --out weights/mage_encoder_ict.pt

``--model`` is an embedded model's name ('ict', 'facemask') or a model file (.npz / FLAME .pkl). The
script prints the training log, then evaluates the result on held-out random heads on a seen and an
unseen topology and writes those figures next to the weights (``--report``, JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_model(spec: str):
    from faceforge.core.models import load_model as load_any

    return load_any(spec)


def evaluate(model, enc, n_heads: int = 8, seed: int = 1234) -> dict:
    """Decoded-head vertex error (mm, skin + eyeballs) of the encoder alone on held-out random heads, on a
    topology from training and on ones it never saw (a grid-clustered remesh, another decimation)."""
    import numpy as np

    from faceforge.core.stylize import remesh
    from faceforge.core.stylize.encoder import _loss_vertices, sample_training_codes, simplify_for_encoder

    rng = np.random.default_rng(seed)
    skin = remesh.parts_topology(model, "skin")
    lv = _loss_vertices(model)
    tops = {
        "seen: skin decimated to 900 (a training mesh)": remesh.decimate(skin, 900, skin.evaluate(model.v_template)),
        "unseen: skin decimated to 1300 from another head": remesh.decimate(
            skin, 1300, skin.evaluate(remesh.random_head(model, rng, expression=False))),
        "unseen: grid-clustered remesh (8 mm cells)": remesh.cluster_remesh(
            skin, skin.evaluate(model.v_template), 0.008),
    }
    V = model.n_vertices
    S = model.shape_basis.reshape(V * 3, -1)
    E = model.expr_basis.reshape(V * 3, -1)
    out = {}
    for name, tp in tops.items():
        errs, times = [], []
        s_true, e_true = sample_training_codes(model, n_heads, rng)
        for i in range(n_heads):
            head = model.v_template + (S @ s_true[i] + E @ e_true[i]).reshape(V, 3)
            v, f = simplify_for_encoder(tp.evaluate(head).astype(np.float64), tp.faces, enc.config.max_vertices)
            r = enc.encode(v, f)
            s = np.zeros(model.n_shape)
            s[: len(r["shape"])] = r["shape"]
            d = ((S @ (s - s_true[i]) + E @ (r["expr"] - e_true[i])).reshape(V, 3))[lv]
            errs.append(np.linalg.norm(d, axis=1) * 1000)
            times.append(r["network_s"])
        e = np.concatenate(errs)
        out[name] = {"vertices": tp.n_vertices, "median_mm": round(float(np.median(e)), 3),
                     "mean_mm": round(float(e.mean()), 3), "p90_mm": round(float(np.percentile(e, 90)), 3),
                     "network_s_median": round(float(np.median(times)), 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ict", help="embedded model name or model file")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", default=None, help="output .pt (default weights/mage_encoder_<model>.pt)")
    ap.add_argument("--n-shape", type=int, default=None, help="identity codes to predict (default: all)")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--k-eig", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--calibrations", type=int, default=2,
                    help="closed-form readout solves before the end one (start, then evenly during training)")
    ap.add_argument("--calibrate-samples", type=int, default=2000)
    ap.add_argument("--meshes-per-step", type=int, default=2)
    ap.add_argument("--codes-per-mesh", type=int, default=4)
    ap.add_argument("--pool-geometries", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="continue from this encoder file")
    ap.add_argument("--report", default=None, help="write training info + evaluation as JSON here")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from faceforge.core.stylize.encoder import load_encoder, save_encoder, train_encoder

    model = load_model(args.model)
    out = Path(args.out) if args.out else ROOT / "weights" / f"mage_encoder_{model.name}.pt"
    if out.exists() and not args.overwrite and not args.init:
        print(f"{out} exists: pass --overwrite to replace it", file=sys.stderr)
        return 2
    init = load_encoder(args.init, model) if args.init else None
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    enc, info = train_encoder(model, steps=args.steps, n_shape=args.n_shape, width=args.width, blocks=args.blocks,
                              k_eig=args.k_eig, lr=args.lr, meshes_per_step=args.meshes_per_step,
                              codes_per_mesh=args.codes_per_mesh, pool_geometries=args.pool_geometries,
                              seed=args.seed, init=init, threads=args.threads, calibrations=args.calibrations,
                              calibrate_samples=args.calibrate_samples, log=lambda s: print(s, flush=True))
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    info["process_cpu_s"] = round(time.process_time() - cpu0, 1)
    save_encoder(enc, out)
    size = out.stat().st_size
    print(f"saved {out} ({size / 1e6:.1f} MB) after {info['wall_s']:.0f} s wall, {info['process_cpu_s']:.0f} s CPU",
          flush=True)
    ev = evaluate(model, enc)
    for k, v in ev.items():
        print(f"  {k}: {v}")
    if args.report:
        Path(args.report).write_text(json.dumps({"command": " ".join(sys.argv), "info": info, "file_bytes": size,
                                                 "evaluation": ev}, indent=2))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
