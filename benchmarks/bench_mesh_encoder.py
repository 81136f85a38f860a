"""Mesh encoder figures (issue 10, part 2: MAGE-style encoder and Fit Codes to Mesh).

Prints, for the shipped encoder of the default model (ICT-FaceKit) on random model heads re-meshed
several ways (seen in training and not):
- encode time per mesh (median over the meshes; the operators, i.e. the Laplacian eigenbasis and
  gradients, shown separately from the network), target < 1 s;
- the encoder's accuracy alone: per-vertex error of the decoded head vs the true head (skin + eyeballs, mm);
- ``fit_codes_to_mesh`` time and accuracy (encoder + closest-point refinement), head vs truth in the
  mesh's frame and the mesh's distance to the fitted surface.
Run: .venv/bin/python benchmarks/bench_mesh_encoder.py [--heads N] [--threads T] [--json out.json]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=4, help="random heads per topology")
    ap.add_argument("--fits", type=int, default=2, help="fit_codes_to_mesh runs per topology")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--encoder", default=None, help="encoder file (default: the shipped one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from core.models.builtin import load_embedded
    from core.stylize import remesh
    from core.stylize.encoder import (_loss_vertices, encoder_for, fit_codes_to_mesh, load_encoder,
                                      sample_training_codes)

    model = load_embedded("ict")
    enc = load_encoder(args.encoder, model) if args.encoder else encoder_for(model)
    lv = _loss_vertices(model)
    skin = remesh.parts_topology(model, "skin")
    g = skin.evaluate(model.v_template)
    rng = np.random.default_rng(2024)
    other = skin.evaluate(remesh.random_head(model, np.random.default_rng(11), expression=False))
    big = remesh.decimate(skin, 2000, g)
    topologies = {
        "seen: skin decimated to 900": remesh.decimate(skin, 900, g),
        "seen: face-mask topology (468)": remesh.facemask_topology(model),
        "unseen: decimated to 1000 from another head": remesh.decimate(skin, 1000, other),
        "unseen: grid-clustered remesh, 8 mm": remesh.cluster_remesh(skin, g, 0.008),
        "unseen: face crop": remesh.crop(big, big.evaluate(model.v_template), remesh.face_center(model),
                                         (0.1, 0.13, 0.105)),
        "unseen: full-resolution skin (11k, simplified to 1200)": skin,
    }
    V = model.n_vertices
    S = model.shape_basis.reshape(V * 3, -1)
    E = model.expr_basis.reshape(V * 3, -1)
    rows, report = [], {"threads": args.threads, "encoder": str(args.encoder or "shipped"), "topologies": {}}
    from core.stylize.encoder import simplify_for_encoder
    for name, topo in topologies.items():
        s_true, e_true = sample_training_codes(model, args.heads, rng)
        ops_t, net_t, errs, code_err = [], [], [], []
        for i in range(args.heads):
            head = model.v_template + (S @ s_true[i] + E @ e_true[i]).reshape(V, 3)
            v, f = simplify_for_encoder(topo.evaluate(head).astype(np.float64), topo.faces, enc.config.max_vertices)
            r = enc.encode(v, f)
            ops_t.append(r["operators_s"])
            net_t.append(r["network_s"])
            s = np.zeros(model.n_shape)
            s[: len(r["shape"])] = r["shape"]
            d = (S @ (s - s_true[i]) + E @ (r["expr"] - e_true[i])).reshape(V, 3)[lv]
            errs.append(np.linalg.norm(d, axis=1) * 1000)
            code_err.append((np.sqrt(np.mean((s - s_true[i])[:20] ** 2)), np.mean(np.abs(r["expr"] - e_true[i]))))
        err = np.concatenate(errs)
        fit_t, fit_err, surf = [], [], []
        for i in range(args.fits):
            head = model.v_template + (S @ s_true[i] + E @ e_true[i]).reshape(V, 3)
            t0 = time.perf_counter()
            fit = fit_codes_to_mesh(model, topo.evaluate(head), topo.faces, enc)
            fit_t.append(time.perf_counter() - t0)
            region = lv if topo.kind not in ("crop", "facemask") else np.intersect1d(lv, topo.weights.tocoo().col)
            d = np.linalg.norm(fit.vertices_in_mesh_frame()[region] - head[region], axis=1)
            fit_err.append(np.median(d) * 1000)
            surf.append(fit.error_mm["median"])
        entry = {"vertices": topo.n_vertices, "encoded_vertices": int(len(v)),
                 "operators_s_median": round(float(np.median(ops_t)), 3),
                 "network_s_median": round(float(np.median(net_t)), 3),
                 "encoder_median_mm": round(float(np.median(err)), 3), "encoder_mean_mm": round(float(err.mean()), 3),
                 "encoder_p90_mm": round(float(np.percentile(err, 90)), 3),
                 "identity_code_rms_first20": round(float(np.mean([c[0] for c in code_err])), 3),
                 "expression_mae": round(float(np.mean([c[1] for c in code_err])), 3),
                 "fit_s_median": round(float(np.median(fit_t)), 2) if fit_t else None,
                 "fit_head_median_mm": round(float(np.median(fit_err)), 3) if fit_err else None,
                 "fit_surface_median_mm": round(float(np.median(surf)), 3) if surf else None}
        report["topologies"][name] = entry
        rows.append((name, entry))
        print(f"{name}: {entry}", flush=True)
    print()
    print(f"{'topology':58s} {'verts':>6s} {'ops s':>6s} {'net s':>6s} {'enc med':>8s} {'enc p90':>8s} "
          f"{'fit s':>6s} {'fit med':>8s} {'surf':>6s}")
    for name, e in rows:
        print(f"{name:58s} {e['vertices']:6d} {e['operators_s_median']:6.2f} {e['network_s_median']:6.3f} "
              f"{e['encoder_median_mm']:8.2f} {e['encoder_p90_mm']:8.2f} {e['fit_s_median'] or 0:6.1f} "
              f"{e['fit_head_median_mm'] or 0:8.2f} {e['fit_surface_median_mm'] or 0:6.2f}")
    all_ops = [e["operators_s_median"] for _, e in rows]
    all_net = [e["network_s_median"] for _, e in rows]
    print(f"\nencode per mesh (median over topologies): operators {np.median(all_ops):.2f} s + network "
          f"{np.median(all_net):.3f} s (target < 1 s); errors in mm; 'fit med' on the region each mesh shows")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
