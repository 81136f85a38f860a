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
