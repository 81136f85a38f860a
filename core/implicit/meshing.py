"""One topology for every frame: the canonical mesh moved into each frame by inverting the deformation.

The learned deformation maps observed points to canonical ones (x_c = x + D(x, e_t, l_t)). A
canonical vertex's position in frame t is the x with x + D(x) = x_c: Newton's method on that
3x3 system per vertex, started from the tracked morphable model's own motion of the nearest model
vertex (so it starts close and converges in a few steps). Colours come from the appearance MLP
at the canonical surface (albedo, unshaded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..jobs import ensure_progress


@dataclass
class TrackedMeshes:
    faces: np.ndarray             # (F, 3) shared by every frame
    canonical: np.ndarray         # (V, 3) the neutral head (model space)
    frames: np.ndarray            # (T, V, 3) every frame in its model space (head pose not applied)
    colours: np.ndarray           # (V, 3) albedo in [0, 1]
    residual_mm: np.ndarray       # (T,) mean |x + D(x) - x_c| after the last Newton step
    seconds_per_frame: float


def _jacobian_solve(head, x, expr, latent, target):
    """One Newton step for x + D(x) = target (batched 3x3 systems)."""
    x = x.detach().requires_grad_(True)
    xc, _ = head.deformation(x, expr, latent)
    residual = xc - target
    rows = [torch.autograd.grad(xc[:, i].sum(), x, retain_graph=i < 2)[0] for i in range(3)]
    J = torch.stack(rows, 1)                                   # (N, 3, 3): d xc_i / d x_j
    step = torch.linalg.solve(J, residual.detach()[..., None])[..., 0]
    return (x - step).detach(), residual.detach()


def invert_deformation(head, canonical: np.ndarray, expr: np.ndarray, frame, init: np.ndarray,
                       iterations: int = 5, chunk: int = 20000, tol: float = 1e-6) -> tuple:
    """Observed positions (V, 3) of ``canonical`` points in a frame: ``frame`` is a training frame's
    index, or that frame's latent code itself (an array: frames between training frames get
    interpolated latents). Newton stops early once every point's residual is under ``tol`` metres
    (the steps converge quadratically from the morphable start). Returns (points, mean residual mm)."""
    device = next(head.parameters()).device
    out, res = [], []
    for a, b in zip(np.array_split(canonical, max(1, len(canonical) // chunk)),
                    np.array_split(init, max(1, len(canonical) // chunk))):
        target = torch.as_tensor(a, dtype=torch.float32, device=device)
        x = torch.as_tensor(b, dtype=torch.float32, device=device)
        e = torch.as_tensor(expr, dtype=torch.float32, device=device).reshape(1, -1).expand(len(x), -1)
        code = head.latents[frame] if isinstance(frame, (int, np.integer)) else torch.as_tensor(
            np.asarray(frame, np.float32), device=device)
        lat = code.detach().reshape(1, -1).expand(len(x), -1)
        for _ in range(iterations):
            x, r = _jacobian_solve(head, x, e, lat, target)
            if float(r.norm(dim=-1).max()) < tol:         # r: before this step; after it, far smaller
                break
        with torch.no_grad():
            xc, _ = head.deformation(x, e, lat)
            res.append((xc - target).norm(dim=-1))
        out.append(x.cpu().numpy())
    return np.concatenate(out), float(torch.cat(res).mean()) * 1000.0


def track_meshes(head, verts: np.ndarray, faces: np.ndarray, expr: np.ndarray, neutral: np.ndarray,
                 posed: np.ndarray, progress=None, latents: np.ndarray = None) -> TrackedMeshes:
    """Move the canonical mesh (``verts``, ``faces``) into every frame (codes ``expr`` (T, Ke);
    ``latents`` (T, L), default: the training frames' own). ``neutral`` / ``posed`` (T, Vm, 3): the
    tracked morphable head, for the starting points."""
    from scipy.spatial import cKDTree
    progress = ensure_progress(progress)
    device = next(head.parameters()).device
    _, nearest = cKDTree(neutral).query(verts)
    T = expr.shape[0]
    frames, residual = [], []
    t0 = time.perf_counter()
    for f in range(T):
        init = verts + (posed[f, nearest] - neutral[nearest])
        x, r = invert_deformation(head, verts, expr[f], f if latents is None else latents[f], init)
        frames.append(x.astype(np.float32))
        residual.append(r)
        progress.update(f"Moving the mesh into frame {f + 1}/{T}", (f + 1) / T)
    per_frame = (time.perf_counter() - t0) / max(T, 1)
    with torch.no_grad():
        device = next(head.parameters()).device
        x = torch.as_tensor(verts, dtype=torch.float32, device=device)
    x.requires_grad_(True)
    s = head.canonical_sdf(x)
    n = torch.nn.functional.normalize(torch.autograd.grad(s.sum(), x)[0], dim=-1)
    with torch.no_grad():
        zeros = torch.zeros(len(x), head.cfg.n_expr, device=device)
        _, feats = head.deformation(x, zeros, torch.zeros(len(x), head.cfg.latent_dim, device=device))
        _, h = head.sdf(x, feats)
        colours = head.albedo(h, n).cpu().numpy()
    return TrackedMeshes(faces=np.asarray(faces, np.int64), canonical=np.asarray(verts, np.float32),
                         frames=np.stack(frames), colours=colours.astype(np.float32),
                         residual_mm=np.asarray(residual, np.float32), seconds_per_frame=per_frame)
