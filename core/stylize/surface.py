"""Points on a model's template surface: vertices plus random points inside triangles.

The surface deformation network is trained and fine-tuned on these rather than on vertices alone
(LeGO: "densely sampled surface points"), so it learns a field over the surface instead of a
lookup table of vertices. A point is (triangle, barycentric weights); its template position and
its ground-truth displacement under the morphable model are barycentric blends of the corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SurfacePoints:
    """N points on a triangle mesh: ``corners`` (N, 3) vertex indices, ``bary`` (N, 3) weights."""
    corners: torch.Tensor   # long
    bary: torch.Tensor      # float32, rows sum to 1

    def __len__(self) -> int:
        return int(self.corners.shape[0])

    def blend(self, per_vertex: torch.Tensor) -> torch.Tensor:
        """(..., V, C) per-vertex values -> (..., N, C) at the points."""
        gathered = per_vertex[..., self.corners, :]                      # (..., N, 3, C)
        return (gathered * self.bary[..., None]).sum(-2)

    def to(self, device) -> "SurfacePoints":
        return SurfacePoints(self.corners.to(device), self.bary.to(device))


def vertex_points(n_vertices: int, device="cpu") -> SurfacePoints:
    """Every vertex as a surface point (weight 1 on itself): what evaluating a mesh needs."""
    idx = torch.arange(n_vertices, device=device)
    corners = idx[:, None].repeat(1, 3)
    bary = torch.zeros(n_vertices, 3, device=device)
    bary[:, 0] = 1.0
    return SurfacePoints(corners, bary)


def triangle_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64)
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, generator: np.random.Generator,
                   weights: np.ndarray = None) -> SurfacePoints:
    """``n`` points uniform over the surface area (optionally times a per-triangle weight)."""
    p = triangle_areas(verts, faces)
    if weights is not None:
        p = p * np.asarray(weights, np.float64)
    p = p / p.sum()
    tri = generator.choice(len(faces), size=n, p=p)
    u, v = generator.random(n), generator.random(n)
    flip = u + v > 1.0                       # fold the unit square onto the triangle
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    bary = np.stack([1.0 - u - v, u, v], 1).astype(np.float32)
    corners = np.asarray(faces, np.int64)[tri]
    return SurfacePoints(torch.as_tensor(corners), torch.as_tensor(bary))


def mixed_points(verts: np.ndarray, faces: np.ndarray, n_vertices: int, n_inside: int,
                 generator: np.random.Generator) -> SurfacePoints:
    """A training batch: ``n_vertices`` random vertices and ``n_inside`` points inside triangles."""
    vi = torch.as_tensor(generator.choice(len(verts), size=min(n_vertices, len(verts)), replace=False))
    at_vertices = SurfacePoints(vi[:, None].repeat(1, 3), torch.tensor([1.0, 0.0, 0.0]).repeat(len(vi), 1))
    inside = sample_surface(verts, faces, n_inside, generator)
    return SurfacePoints(torch.cat([at_vertices.corners, inside.corners]), torch.cat([at_vertices.bary, inside.bary]))
