"""Timing of the differentiable renderer: image + soft silhouette of a ~10k-face sphere at 256x256.

Run: .venv/bin/python benchmarks/bench_render.py [--runs 10] [--size 256]
Prints the median of forward, backward and forward+backward over the runs, per device/backend.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.render import default_sh, pytorch3d_backend, render  # noqa: E402


def uv_sphere(n_lat: int = 70, n_lon: int = 72):
    """Closed UV sphere of radius 1; 2 * n_lon * (n_lat - 1) faces, wound so normals point outward."""
    verts = [(0.0, -1.0, 0.0)]
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat
        for j in range(n_lon):
            phi = 2.0 * math.pi * j / n_lon
            verts.append((math.sin(theta) * math.cos(phi), -math.cos(theta), math.sin(theta) * math.sin(phi)))
    verts.append((0.0, 1.0, 0.0))
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    faces = []
    for j in range(n_lon):
        faces.append((0, ring(1, j), ring(1, j + 1)))
        faces.append((len(verts) - 1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)))
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [(a, c, b), (b, c, d)]
    verts = torch.tensor(verts, dtype=torch.float64)
    faces = torch.tensor(faces, dtype=torch.long)
    # make every face's winding normal point away from the centre
    v = verts[faces]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    flip = (n * v.mean(1)).sum(-1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts, faces


def scene(device, dtype, size):
    verts, faces = uv_sphere()
    verts_cam = (verts + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)).to(device, dtype)[None]
    # radius 1 at distance 3 with this focal covers ~60% of the image width
    focal = torch.tensor([0.6 * size * 3.0 / 2.0], device=device, dtype=dtype)
    albedo = torch.full_like(verts_cam, 0.6)
    sh = default_sh(1, device, dtype)
    sh[:, 2] = -0.4   # some light from the camera side, so shading depends on the normals
    return verts_cam, faces.to(device), albedo, sh, focal


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def bench(device, backend, size, runs, with_silhouette=True):
    verts_cam, faces, albedo, sh, focal = scene(device, torch.float32, size)
    weights = torch.rand(1, size, size, 3, device=device)
    c = size / 2.0
    fwd, bwd, total = [], [], []
    for it in range(runs + 2):           # two warm-up runs
        v = verts_cam.clone().requires_grad_(True)
        a = albedo.clone().requires_grad_(True)
        s = sh.clone().requires_grad_(True)
        f = focal.clone().requires_grad_(True)

        def forward():
            out = render(v, faces, a, s, f, c, c, size, size, backend=backend, with_silhouette=with_silhouette)
            loss = (out.image * weights).sum()
            if out.silhouette is not None:
                loss = loss + out.silhouette.sum()
            return loss

        loss, t_f = timed(forward, device)
        _, t_b = timed(loss.backward, device)
        if it >= 2:
            fwd.append(t_f)
            bwd.append(t_b)
            total.append(t_f + t_b)
    ms = lambda xs: 1000.0 * statistics.median(xs)  # noqa: E731
    return ms(fwd), ms(bwd), ms(total), 1000.0 * min(total)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    _, faces = uv_sphere()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {faces.shape[0]} faces, "
          f"{args.size}x{args.size}, float32, median of {args.runs} runs")
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        rows.append((device.type, "torch", "image+silhouette", *bench(device, "torch", args.size, args.runs)))
        rows.append((device.type, "torch", "image only", *bench(device, "torch", args.size, args.runs, False)))
        if pytorch3d_backend.available():
            rows.append((device.type, "pytorch3d", "image+silhouette",
                         *bench(device, "pytorch3d", args.size, max(3, args.runs // 3))))
    if not pytorch3d_backend.available():
        print("pytorch3d: not importable here, skipped")
    print("\nmedians (fwd+bwd is the median of per-run sums; 'best' its minimum: other load on the machine")
    print("only ever adds time)")
    print(f"{'device':<7}{'backend':<11}{'outputs':<18}{'forward ms':>11}{'backward ms':>13}{'fwd+bwd ms':>12}"
          f"{'best ms':>9}")
    for dev, backend, what, f, b, t, best in rows:
        print(f"{dev:<7}{backend:<11}{what:<18}{f:>11.1f}{b:>13.1f}{t:>12.1f}{best:>9.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    os._exit(0)   # see ENVIRONMENT notes: torch (+bpy) can hang in destructors at exit
