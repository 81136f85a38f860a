"""Surface extraction from a signed distance function: octree-style localisation, then marching cubes.

After "Monocular Real-Time Volumetric Performance Capture" (MonoPort, Li et al. 2020): evaluate the
SDF on a coarse grid, then repeatedly subdivide only the cells that may contain the surface, up to
the target resolution, and run marching cubes (scikit-image) on the final grid. Everything far from
the zero level is filled by trilinear interpolation of the coarser levels (same sign, never a
surface), so the SDF is queried only in a thin shell around the surface.

Grid convention (shared by :func:`extract_surface` and :func:`dense_surface`): ``resolution`` is the
number of *cells* per axis; grid point ``i`` (``0 <= i <= resolution``) on an axis lies at
``bounds_min + i * h`` with ``h = (bounds_max - bounds_min) / resolution``. A "dense 256^3 grid" is
therefore 257^3 SDF queries, and both functions evaluate exactly the same points there.

The band and its guarantee
--------------------------
At every level each cell that may hold the surface is split into its 8 children. A child is
*proven empty* when some corner ``c`` of its parent has ``|f(c)| > band * maxdist(c, child)``
(``maxdist``: the distance from ``c`` to the child's farthest point); otherwise the child's corners are
evaluated and it is examined again at the next level. Proven children keep the proving corner's sign
(their new grid points take its value); cells never split are filled by trilinear interpolation of
their corners.

If the SDF is L-Lipschitz (``|f(p) - f(q)| <= L |p - q|``; a true signed distance has L = 1, and so
does its truncation or clamping), ``|f(c)| > L * maxdist`` means f cannot reach zero anywhere in the
child, so **with ``band >= L`` no cell that the surface touches is ever skipped**: every final cell
the surface passes through has its 8 corners evaluated exactly, every other grid point carries the
true sign, and marching cubes gives the *same mesh* as on the dense grid (same triangles; vertex
positions equal up to the float rounding of the SDF itself). A feature thinner than a coarse cell (a
thin shell, a strand) is found too, because the proof does not rely on any corner seeing a sign
change. Children of cells whose corners change sign are only skipped when proven with the factor
``max(band, 1)``, so a small band (even 0: a naive octree that refines sign changes only) still
handles the cells that visibly hold the surface soundly, but can miss features smaller than a cell.
Learned SDFs are only roughly 1-Lipschitz (the eikonal loss keeps ``|grad f|`` near 1), hence the
default safety factor 1.5.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from ..jobs import ensure_progress

SdfFn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CHUNK = 1 << 18


# ----------------------------------------------------------------------------- SDF queries
class _Queries:
    """Evaluates ``sdf_fn`` at integer grid points in chunks and counts every query."""

    def __init__(self, sdf_fn: SdfFn, lo: np.ndarray, h: np.ndarray, chunk: int, device, clamp: float):
        self.sdf_fn, self.lo, self.h = sdf_fn, lo, h
        self.chunk = max(1, int(chunk))
        self.device = device
        self.clamp = float(clamp)
        self.count = 0

    def points(self, idx: np.ndarray) -> np.ndarray:
        return (self.lo + idx * self.h).astype(np.float32)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """(M, 3) integer grid indices -> (M,) float32 SDF values (clamped to +-clamp)."""
        idx = np.asarray(idx).reshape(-1, 3)
        out = np.empty(len(idx), dtype=np.float32)
        for s in range(0, len(idx), self.chunk):
            out[s:s + self.chunk] = self._eval(self.points(idx[s:s + self.chunk]))
        return out

    def flat(self, shape: tuple, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Values at the flat (C-order) indices [start, stop) of a lattice of ``shape`` points spaced
        ``step`` grid steps apart."""
        idx = np.stack(np.unravel_index(np.arange(start, stop), shape), 1)
        return self(idx * step)

    def _eval(self, pts: np.ndarray) -> np.ndarray:
        p = torch.from_numpy(pts)
        if self.device is not None:
            p = p.to(self.device)
        with torch.no_grad():
            d = self.sdf_fn(p)
        d = torch.as_tensor(d).detach().reshape(-1).float().cpu().numpy()
        if d.shape[0] != len(pts):
            raise ValueError(f"sdf_fn returned {d.shape[0]} values for {len(pts)} points (want one per point)")
        if np.isnan(d).any():
            raise ValueError("sdf_fn returned NaN signed distances")
        self.count += len(pts)
        return np.clip(d, -self.clamp, self.clamp)


def _grid_setup(bounds_min, bounds_max, resolution):
    lo = np.asarray(bounds_min, dtype=np.float64).reshape(3)
    hi = np.asarray(bounds_max, dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
        raise ValueError(f"bounds must be finite with bounds_max > bounds_min, got {lo} .. {hi}")
    res = np.broadcast_to(np.asarray(resolution, dtype=np.int64), (3,)).copy()
    if res.min() < 2:
        raise ValueError(f"resolution must be >= 2 cells per axis, got {resolution}")
    h = (hi - lo) / res
    return lo, hi, res, h


def _marching_cubes(vol: np.ndarray, lo: np.ndarray, h: np.ndarray):
    from skimage import measure
    if not (vol.min() < 0.0 < vol.max()):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.0, spacing=tuple(float(x) for x in h),
                                                gradient_direction="descent")
    return (verts + lo).astype(np.float32), faces.astype(np.int64)


# ----------------------------------------------------------------------------- dense reference
def dense_surface(sdf_fn: SdfFn, bounds_min, bounds_max, resolution: int = 256, chunk: int = DEFAULT_CHUNK,
                  progress=None, device=None):
    """Marching cubes on the full grid (``(resolution + 1)^3`` SDF queries), for comparison.

    Returns ``(verts (N, 3) float32, faces (F, 3) int64, stats)``; faces wind counter-clockwise seen
    from outside (normals point toward positive SDF)."""
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    lo, hi, res, h = _grid_setup(bounds_min, bounds_max, resolution)
    shape = tuple(int(r) + 1 for r in res)
    q = _Queries(sdf_fn, lo, h, chunk, device, clamp=float(np.linalg.norm(hi - lo)))
    total = int(np.prod(shape))
    vol = np.empty(total, dtype=np.float32)
    step = max(q.chunk, 1 << 16)
    for s in range(0, total, step):
        vol[s:s + step] = q.flat(shape, s, min(total, s + step))
        progress.update("evaluating the dense grid", (s + step) / total)
    t1 = time.perf_counter()
    verts, faces = _marching_cubes(vol.reshape(shape), lo, h)
    t2 = time.perf_counter()
    stats = {"queries": q.count, "dense_queries": total, "query_ratio": 1.0, "resolution": res.tolist(),
             "evaluate_s": t1 - t0, "marching_cubes_s": t2 - t1, "total_s": t2 - t0}
    return verts, faces, stats


# ----------------------------------------------------------------------------- octree extraction
def _upsample(a: np.ndarray) -> np.ndarray:
    """(n0+1, n1+1, n2+1) lattice values -> (2n0+1, 2n1+1, 2n2+1): trilinear at the new points."""
    for axis in range(3):
        a = np.moveaxis(a, axis, 0)
        out = np.empty((2 * a.shape[0] - 1,) + a.shape[1:], dtype=a.dtype)
        out[0::2] = a
        out[1::2] = 0.5 * (a[:-1] + a[1:])
        a = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(a)


_CORNERS = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)])   # corner / child order


def _refine(lat: np.ndarray, parent: np.ndarray, s: int, h: np.ndarray, band: float, q: "_Queries"):
    """One level: the cells of ``lat`` (size ``s`` grid steps) in ``parent`` are split into 8 children;
    a child is skipped when some parent corner proves it free of the surface, the others get their
    corners evaluated. Returns (the finer lattice, the children to split next, parents refined).

    Proof: a corner c with ``|f(c)| > band * maxdist(c, child)`` (the child's farthest point from c)
    keeps f's sign over the whole child if f is band-Lipschitz. Children of cells whose corners change
    sign are also proven with the factor max(band, 1) only (so band < 1 still refines sign changes
    soundly for a true SDF). New points of proven children take that corner's value (its sign is the
    true one there), points of cells outside ``parent`` are interpolated (their cell has one sign)."""
    finer = _upsample(lat)                             # new points: interpolated, then overwritten below
    cells = np.argwhere(parent)
    child_mask = np.zeros(tuple(2 * n for n in parent.shape), dtype=bool)
    if len(cells) == 0:
        return finer, child_mask, 0
    cv = np.stack([lat[cells[:, 0] + a, cells[:, 1] + b, cells[:, 2] + c] for a, b, c in _CORNERS], 1)   # (M, 8)
    straddle = (cv.min(1) <= 0.0) & (cv.max(1) >= 0.0)
    # farthest distance from parent corner i to child j: per axis half the cell if on the same side, else all of it
    m = np.where(_CORNERS[:, None, :] == _CORNERS[None, :, :], 1.0, 2.0)                  # (8 corners, 8 children, 3)
    maxdist = 0.5 * s * np.linalg.norm(m * h, axis=-1)                                     # (8, 8)
    ratio = np.abs(cv)[:, :, None] / maxdist[None]                                         # (M, 8, 8)
    best = ratio.max(1)                                                                    # (M, 8 children)
    anchor = ratio.argmax(1)
    proven = best > band
    proven_strict = best > max(band, 1.0)
    possible = ~proven | (straddle[:, None] & ~proven_strict)                             # (M, 8)
    # proven children: their new points take the proving corner's value
    rows, kids = np.nonzero(~possible)
    if len(rows):
        value = cv[rows, anchor[rows, kids]]
        base = 2 * cells[rows] + _CORNERS[kids]
        for d in _CORNERS:
            p = base + d
            new = (p % 2).any(1)                       # never overwrite a known (even, even, even) point
            finer[p[new, 0], p[new, 1], p[new, 2]] = value[new]
    # possible children: all their corners evaluated
    rows, kids = np.nonzero(possible)
    if len(rows):
        base = 2 * cells[rows] + _CORNERS[kids]
        child_mask[base[:, 0], base[:, 1], base[:, 2]] = True
        need = np.zeros(finer.shape, dtype=bool)
        for d in _CORNERS:
            p = base + d
            need[p[:, 0], p[:, 1], p[:, 2]] = True
        need[::2, ::2, ::2] = False
        idx = np.argwhere(need)
        if len(idx):
            finer[need] = q(idx * (s // 2))
    return finer, child_mask, int(possible.any(1).sum())


def extract_surface(sdf_fn: SdfFn, bounds_min, bounds_max, resolution: int = 256, coarse: int = 32,
                    band: float = 1.5, chunk: int = DEFAULT_CHUNK, progress=None, device=None):
    """The zero level of ``sdf_fn`` inside the box, as a triangle mesh, querying only near the surface.

    ``sdf_fn`` maps an (M, 3) float32 tensor of points (on ``device``, default CPU) to (M,) signed
    distances, negative inside; it is called under ``torch.no_grad()`` with at most ``chunk`` points.
    ``resolution``: cells per axis of the final grid (an int, or one per axis); ``coarse``: cells per
    axis of the first grid (the number of refinement levels is ``ceil(log2(resolution / coarse))``;
    a resolution that is not ``coarse * 2^levels`` is reached by padding the grid past
    ``bounds_max`` and cropping). ``band``: the Lipschitz bound assumed when skipping cells; with
    ``band >= L`` for an L-Lipschitz SDF the mesh is the same as :func:`dense_surface`'s at the same
    resolution (see the module docstring).

    Returns ``(verts (N, 3) float32, faces (F, 3) int64, stats)`` with stats: ``queries`` (SDF
    evaluations), ``dense_queries`` ((resolution + 1)^3), ``query_ratio`` (dense / octree),
    ``levels`` (per level: the new cell step, cells split, points queried, seconds), ``marching_cubes_s``,
    ``total_s``.
    """
    progress = ensure_progress(progress)
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    t_start = time.perf_counter()
    lo, hi, res, h = _grid_setup(bounds_min, bounds_max, resolution)
    coarse = max(1, int(coarse))
    n_levels = max(0, int(math.ceil(math.log2(res.max() / coarse))) if res.max() > coarse else 0)
    step0 = 1 << n_levels
    n_cells = -(-res // step0)                        # coarse cells per axis (ceil)
    q = _Queries(sdf_fn, lo, h, chunk, device, clamp=float(np.linalg.norm(hi - lo)))

    levels = []
    t0 = time.perf_counter()
    progress.update("extracting the surface: coarse grid", 0.0)
    shape = tuple(int(n) + 1 for n in n_cells)
    lat = q.flat(shape, 0, int(np.prod(shape)), step0).reshape(shape)      # values at step0 spacing
    parent = np.ones(tuple(int(n) for n in n_cells), dtype=bool)    # cells that may be refined
    levels.append({"step": step0, "refined_cells": 0, "points": q.count, "seconds": time.perf_counter() - t0})

    for level in range(n_levels):
        t0 = time.perf_counter()
        s = step0 >> level                            # cell size of ``lat`` in final grid steps
        before = q.count
        lat, parent, refined = _refine(lat, parent, s, h, float(band), q)
        levels.append({"step": s // 2, "refined_cells": refined, "points": q.count - before,
                       "seconds": time.perf_counter() - t0})
        progress.update("extracting the surface: refining", (level + 1) / (n_levels + 1))

    vol = lat[:res[0] + 1, :res[1] + 1, :res[2] + 1]
    t0 = time.perf_counter()
    verts, faces = _marching_cubes(np.ascontiguousarray(vol), lo, h)
    t1 = time.perf_counter()
    progress.update("extracting the surface: done", 1.0)
    dense = int(np.prod(res + 1))
    stats = {"queries": q.count, "dense_queries": dense, "query_ratio": dense / max(q.count, 1),
             "resolution": res.tolist(), "coarse_cells": n_cells.tolist(), "padded_cells": (n_cells * step0).tolist(),
             "band": float(band), "levels": levels, "marching_cubes_s": t1 - t0, "total_s": t1 - t_start}
    return verts, faces, stats


# ----------------------------------------------------------------------------- comparing meshes
def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points spread uniformly (by area) over a triangle mesh."""
    v = np.asarray(verts, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if len(tri) == 0 or area.sum() <= 0:
        return v.copy()
    rng = np.random.default_rng(seed)
    f = rng.choice(len(tri), size=int(n), p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(int(n))), rng.random(int(n))
    w = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)
    return np.einsum("nk,nkd->nd", w, tri[f])


def point_to_surface(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, candidates: int = 8) -> np.ndarray:
    """Distance from each point to a triangle mesh: the closest of the ``candidates`` triangles whose
    centroids are nearest (exact for meshes of even, small triangles such as marching cubes output)."""
    from scipy.spatial import cKDTree

    from ..geometry import closest_points_on_triangles
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tri = np.asarray(verts, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    k = int(min(candidates, len(tri)))
    _, idx = cKDTree(tri.mean(1)).query(p, k=k, workers=-1)
    idx = idx.reshape(len(p), k)
    out = np.empty(len(p))
    step = max(1, (1 << 18) // k)
    for s in range(0, len(p), step):
        q = np.repeat(p[s:s + step], k, axis=0)
        c = closest_points_on_triangles(q, tri[idx[s:s + step].ravel()])
        out[s:s + step] = np.linalg.norm(c - q, axis=1).reshape(-1, k).min(1)
    return out


def chamfer_distance(verts_a: np.ndarray, verts_b: np.ndarray, faces_a=None, faces_b=None,
                     samples: int = 0, seed: int = 0) -> float:
    """Symmetric Chamfer distance: the mean of the two mean closest-point distances
    ``0.5 * (mean_a d(a, B) + mean_b d(b, A))`` (same units as the input).

    Between the vertex sets by default (d = distance to the nearest vertex). With both meshes' faces
    and ``samples > 0``: ``samples`` points spread by area over each mesh, each measured to the other
    mesh's *surface* (:func:`point_to_surface`), so two identical meshes give 0 and meshes of different
    density are compared fairly."""
    from scipy.spatial import cKDTree
    pa = np.asarray(verts_a, dtype=np.float64).reshape(-1, 3)
    pb = np.asarray(verts_b, dtype=np.float64).reshape(-1, 3)
    if len(pa) == 0 or len(pb) == 0:
        return 0.0 if len(pa) == len(pb) else float("inf")
    if samples and faces_a is not None and faces_b is not None and len(faces_a) and len(faces_b):
        sa = sample_surface(pa, faces_a, samples, seed)
        sb = sample_surface(pb, faces_b, samples, seed + 1)
        return float(0.5 * (point_to_surface(sa, pb, faces_b).mean() + point_to_surface(sb, pa, faces_a).mean()))
    da = cKDTree(pb).query(pa, workers=-1)[0]
    db = cKDTree(pa).query(pb, workers=-1)[0]
    return float(0.5 * (da.mean() + db.mean()))
