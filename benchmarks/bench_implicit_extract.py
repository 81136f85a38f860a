"""Octree surface extraction vs a dense grid at 256^3 on a head (issue 11 item 3; targets: >= 20x fewer
SDF queries, Chamfer distance between the two meshes <= 0.5% of the bounding-box diagonal).

Two head SDFs, both from the default model's (ICT-FaceKit) skin, holes filled:

- ``mesh``: the exact (truncated) signed distance to that surface (``core.implicit.mesh_sdf``), a true
  1-Lipschitz SDF: the band's guarantee applies and the meshes must be identical;
- ``mlp``: a small SDF network (Fourier features + softplus MLP, like the implicit head's geometry
  network) fitted to it for ``--fit-steps`` steps: what extraction costs with a learned SDF, which
  is only roughly 1-Lipschitz (its gradient norm near the surface is printed).

For each: SDF queries (octree / dense), wall time of both, per-level figures, Chamfer distance between
the meshes (vertex sets and 200k area samples) as % of the dense mesh's bounding-box diagonal.

Run: .venv/bin/python benchmarks/bench_implicit_extract.py [--resolution 256] [--coarse 32]
     [--band 1.0 1.5] [--sdf mesh mlp] [--threads N]
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
from torch import nn  # noqa: E402

from core.implicit.extract import chamfer_distance, dense_surface, extract_surface, sample_surface  # noqa: E402
from core.implicit.mesh_sdf import model_skin_sdf  # noqa: E402
from core.models import load_model  # noqa: E402


class FittedSDF(nn.Module):
    """Fourier features of the normalised position -> softplus MLP -> signed distance (metres)."""

    def __init__(self, centre, half: float, freqs: int = 6, width: int = 128, layers: int = 4):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32))
        self.half = float(half)
        self.register_buffer("bands", (2.0 ** torch.arange(freqs, dtype=torch.float32)) * math.pi)
        dims = [3 + 6 * freqs] + [width] * layers
        mods = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.Softplus(beta=100)]
        mods.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*mods)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        x = (p - self.centre) / self.half
        xb = x[:, :, None] * self.bands
        feats = torch.cat([x, torch.sin(xb).flatten(1), torch.cos(xb).flatten(1)], 1)
        return self.net(feats)[:, 0] * self.half


def fit_mlp(sdf, lo, hi, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    centre, half = (lo + hi) / 2, float((hi - lo).max() / 2)
    net = FittedSDF(centre, half)
    surf = sample_surface(sdf.vertices, sdf.faces, 400000, seed)
    n = 200000
    pts = np.concatenate([surf[rng.integers(0, len(surf), n)] + rng.normal(scale=0.004, size=(n, 3)),
                          surf[rng.integers(0, len(surf), n // 2)] + rng.normal(scale=0.02, size=(n // 2, 3)),
                          lo + rng.random((n // 2, 3)) * (hi - lo)])
    target = torch.as_tensor(sdf.signed_distance(pts), dtype=torch.float32)
    pts = torch.as_tensor(pts, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    for _ in range(steps):
        i = torch.randint(0, len(pts), (8192,))
        loss = (net(pts[i]) - target[i]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        err = (net(pts[:n]) - target[:n]).abs().mean().item()
    return net, time.perf_counter() - t0, err


def grad_norms(fn, points: np.ndarray) -> np.ndarray:
    p = torch.as_tensor(points, dtype=torch.float32).requires_grad_(True)
    (g,) = torch.autograd.grad(fn(p).sum(), p)
    return g.norm(dim=1).numpy()


def compare(label, fn, lo, hi, args, diag_ref=None):
    print(f"\n{label}: {args.resolution}^3 cells ({args.resolution + 1}^3 grid points), box "
          f"{np.round(hi - lo, 3).tolist()} m, coarse {args.coarse}^3")
    t0 = time.perf_counter()
    vd, fd, sd = dense_surface(fn, lo, hi, args.resolution, chunk=args.chunk)
    dense_s = time.perf_counter() - t0
    diag = float(np.linalg.norm(vd.max(0) - vd.min(0)))
    print(f"  dense : {sd['queries']:>10,d} SDF queries, {dense_s:7.2f} s (evaluate {sd['evaluate_s']:.2f} s, "
          f"marching cubes {sd['marching_cubes_s']:.2f} s), {len(vd):,d} vertices, bbox diagonal {diag:.4f} m")
    for band in args.band:
        t0 = time.perf_counter()
        vo, fo, so = extract_surface(fn, lo, hi, args.resolution, coarse=args.coarse, band=band, chunk=args.chunk)
        oct_s = time.perf_counter() - t0
        same_tri = fo.shape == fd.shape and np.array_equal(fo, fd)
        dv = float(np.abs(vo - vd).max()) if same_tri and vo.shape == vd.shape else float("nan")
        same = (f"same triangles, vertices within {dv * 1000:.2g} mm" if same_tri and dv == dv
                else f"NOT the same triangles ({len(fo):,d} vs {len(fd):,d})")
        cv = chamfer_distance(vo, vd)
        cs = chamfer_distance(vo, vd, fo, fd, samples=200000)
        levels = ", ".join(f"step {lv['step']}: {lv['points']:,d} pts / {lv['refined_cells']:,d} cells refined "
                           f"{lv['seconds']:.2f} s" for lv in so["levels"])
        print(f"  octree band {band:g}: {so['queries']:>10,d} SDF queries ({so['query_ratio']:.1f}x fewer), "
              f"{oct_s:7.2f} s ({dense_s / oct_s:.1f}x faster; marching cubes {so['marching_cubes_s']:.2f} s), "
              f"{len(vo):,d} vertices; vs dense: {same}")
        print(f"    Chamfer octree-dense: vertices {100 * cv / diag:.5f}% / surface samples {100 * cs / diag:.5f}% "
              f"of the bbox diagonal ({cv * 1000:.4f} / {cs * 1000:.4f} mm)")
        print(f"    levels: {levels}")
    return vd, fd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--coarse", type=int, default=32)
    ap.add_argument("--band", type=float, nargs="+", default=[1.0, 1.5])
    ap.add_argument("--sdf", nargs="+", default=["mesh", "mlp"], choices=["mesh", "mlp"])
    ap.add_argument("--margin", type=float, default=0.03, help="box margin around the head (m), room for hair")
    ap.add_argument("--fit-steps", type=int, default=1500)
    ap.add_argument("--chunk", type=int, default=1 << 18)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(find_landmarks=False)
    vmin, vmax = model.v_template.min(0).astype(np.float64), model.v_template.max(0).astype(np.float64)
    centre, half = (vmin + vmax) / 2, float((vmax - vmin).max() / 2 + args.margin)
    lo, hi = centre - half, centre + half
    h = (hi - lo) / args.resolution
    step0 = 2 ** max(0, math.ceil(math.log2(args.resolution / args.coarse)))
    # truncate where the coarsest level stops refining anyway (keeps the SDF exact where it matters)
    trunc = 1.05 * max(args.band) * 0.5 * step0 * float(np.linalg.norm(h))
    t0 = time.perf_counter()
    sdf = model_skin_sdf(model, truncation=trunc)
    print(f"ICT skin, holes filled: {len(sdf.vertices):,d} vertices, {len(sdf.faces):,d} triangles; exact SDF "
          f"truncated at {trunc * 1000:.1f} mm, built in {time.perf_counter() - t0:.1f} s; torch threads "
          f"{torch.get_num_threads()}")
    if "mesh" in args.sdf:
        compare("mesh SDF (exact, 1-Lipschitz)", sdf, lo, hi, args)
    if "mlp" in args.sdf:
        net, fit_s, err = fit_mlp(sdf, lo, hi, args.fit_steps)
        with torch.no_grad():
            n = 1 << 18
            x = torch.as_tensor(lo + np.random.default_rng(2).random((n, 3)) * (hi - lo), dtype=torch.float32)
            t0 = time.perf_counter()
            net(x)
            per_m = (time.perf_counter() - t0) / n * 1e6
        near = sample_surface(sdf.vertices, sdf.faces, 20000)
        g = grad_norms(net, near + np.random.default_rng(1).normal(scale=0.003, size=near.shape))
        print(f"\nfitted SDF network: {sum(p.numel() for p in net.parameters()):,d} parameters, {args.fit_steps} steps "
              f"in {fit_s:.1f} s, mean |error| near the surface {err * 1000:.2f} mm, {per_m:.2f} s per million "
              f"queries; |grad| within 3 mm of the surface: median {np.median(g):.2f}, 99th pct "
              f"{np.percentile(g, 99):.2f}, max {g.max():.2f}")
        compare("fitted SDF network", net, lo, hi, args)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
