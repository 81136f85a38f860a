"""Small mesh utilities shared by the fitter, the model tools and the scene data."""

from __future__ import annotations

import numpy as np


def vertex_neighbours(faces: np.ndarray, n_vertices: int):
    """Padded one-ring neighbour table: (V, K) indices and a (V, K) validity mask."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(np.concatenate([edges, edges[:, ::-1]]), axis=1), axis=0)
    edges = np.concatenate([edges, edges[:, ::-1]])
    order = np.argsort(edges[:, 0], kind="stable")
    edges = edges[order]
    counts = np.bincount(edges[:, 0], minlength=n_vertices)
    K = max(int(counts.max()), 1)
    table = np.zeros((n_vertices, K), np.int64)
    mask = np.zeros((n_vertices, K), bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(edges)) - starts[edges[:, 0]]
    table[edges[:, 0], slot] = edges[:, 1]
    mask[edges[:, 0], slot] = True
    table[~mask] = np.arange(n_vertices).repeat(K).reshape(n_vertices, K)[~mask]
    return table, mask


def unique_edges(faces: np.ndarray) -> np.ndarray:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def loop_subdivide(vertices: np.ndarray, faces: np.ndarray, attributes=()):
    """One midpoint subdivision step (each triangle -> 4). Linear attributes are interpolated the
    same way, so a linear model subdivided this way is still exactly linear."""
    edges = unique_edges(faces)
    V = len(vertices)
    key = {tuple(e): V + i for i, e in enumerate(edges)}
    mid = lambda a: 0.5 * (a[edges[:, 0]] + a[edges[:, 1]])  # noqa: E731
    new_vertices = np.concatenate([vertices, mid(vertices)])
    new_attrs = [np.concatenate([a, mid(a)]) for a in attributes]
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    ab = np.array([key[tuple(sorted(p))] for p in zip(a, b)])
    bc = np.array([key[tuple(sorted(p))] for p in zip(b, c)])
    ca = np.array([key[tuple(sorted(p))] for p in zip(c, a)])
    new_faces = np.concatenate([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1),
                                np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)])
    return new_vertices, new_faces, new_attrs


def closest_points_on_triangles(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Closest point on triangle ``tri[i]`` (N, 3, 3) to ``points[i]`` (N, 3), vectorised
    (the region tests of Ericson, Real-Time Collision Detection, 5.1.5)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, points - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = points - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = points - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    denom = np.where(np.abs(denom) < 1e-30, 1e-30, denom)
    v, w = vb / denom, vc / denom
    out = a + ab * v[:, None] + ac * w[:, None]                      # interior
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ab = np.nan_to_num(d1 / (d1 - d3))
        t_ac = np.nan_to_num(d2 / (d2 - d6))
        t_bc = np.nan_to_num((d4 - d3) / ((d4 - d3) + (d5 - d6)))
    cases = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + (c - b) * t_bc[:, None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * t_ac[:, None]),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * t_ab[:, None]),
        ((d6 >= 0) & (d5 <= d6), c),
        ((d3 >= 0) & (d4 <= d3), b),
        ((d1 <= 0) & (d2 <= 0), a),
    ]
    for cond, value in cases:                                        # later cases take precedence
        out = np.where(cond[:, None], value, out)
    return out


def closest_surface_points(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, candidates: int = 16):
    """For each point: the closest point on the mesh (among the ``candidates`` triangles with the
    nearest centroids), as (triangle index (N,), barycentrics (N, 3), distance (N,))."""
    centroids = vertices[faces].mean(1)
    d2 = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    near = np.argsort(d2, 1)[:, :candidates]                         # (N, C)
    N, C = near.shape
    tri = vertices[faces[near.reshape(-1)]]                          # (N*C, 3, 3)
    q = np.repeat(points, C, axis=0)
    cp = closest_points_on_triangles(q, tri)
    dist = np.sqrt(((cp - q) ** 2).sum(1)).reshape(N, C)
    best = dist.argmin(1)
    rows = np.arange(N) * C + best
    face_index = near[np.arange(N), best]
    return face_index, barycentric(cp[rows], tri[rows]), dist[np.arange(N), best]


def barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) of points ``p`` (N, 3) lying on triangles ``tri`` (N, 3, 3)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    den = np.where(np.abs(d00 * d11 - d01 * d01) < 1e-30, 1e-30, d00 * d11 - d01 * d01)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    return np.clip(np.stack([1 - v - w, v, w], 1), 0, 1).astype(np.float32)


def point_to_surface_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                              candidates: int = 16) -> np.ndarray:
    """Distance from each point to the mesh surface (checks the ``candidates`` nearest triangles)."""
    return closest_surface_points(points, vertices, faces, candidates)[2]
