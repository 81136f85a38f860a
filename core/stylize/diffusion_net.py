"""DiffusionNet (Sharp et al., "DiffusionNet: Discretization Agnostic Learning on Surfaces", TOG 2022).

A DiffusionNet learns on a mesh's surface without caring how it is triangulated: every block
spreads per-vertex features by heat diffusion for a learned time per channel (computed in the
Laplacian's eigenbasis), adds features from the diffused signal's spatial gradients (dot products
of the gradient with a learned rotation/scaling of itself, so they do not depend on the tangent
frames chosen) and mixes channels with a per-vertex MLP. Since diffusion and gradients come from
the Laplace-Beltrami operator of the surface, the same weights run on any triangulation of it.

``mesh_operators`` computes what a mesh needs (mass, eigenbasis, gradient matrices) once; the
blocks then take a batch of feature sets (B, V, C) on that mesh. Written from the paper; the
layout of the reference implementation (github nmwsharp/diffusion-net) was read for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..errors import FaceForgeError
from .remesh import torch_sparse


@dataclass
class MeshOperators:
    """Per-mesh operators as torch tensors (V vertices, K eigenpairs)."""
    mass: torch.Tensor        # (V,) lumped mass (vertex areas)
    evals: torch.Tensor       # (K,) Laplacian eigenvalues, ascending, >= 0
    evecs: torch.Tensor       # (V, K) mass-orthonormal eigenvectors
    grad_x: torch.Tensor      # (V, V) sparse: gradient along each vertex's tangent axis 1
    grad_y: torch.Tensor      # (V, V) sparse: gradient along each vertex's tangent axis 2

    @property
    def n_vertices(self) -> int:
        return int(self.mass.shape[0])

    def to(self, device) -> "MeshOperators":
        return MeshOperators(*(t.to(device) for t in (self.mass, self.evals, self.evecs, self.grad_x, self.grad_y)))


def vertex_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit; an isolated vertex gets +z)."""
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for c in range(3):
        np.add.at(n, f[:, c], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    bad = length[:, 0] < 1e-20
    n[bad] = (0.0, 0.0, 1.0)
    length[bad] = 1.0
    return n / length


def tangent_frames(normals: np.ndarray) -> tuple:
    """Two unit tangent axes per vertex, orthogonal to its normal."""
    ref = np.where(np.abs(normals[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    bx = ref - (ref * normals).sum(1, keepdims=True) * normals
    bx /= np.linalg.norm(bx, axis=1, keepdims=True)
    by = np.cross(normals, bx)
    return bx, by


def gradient_matrices(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> tuple:
    """Sparse (V, V) matrices giving a scalar field's gradient in each vertex's tangent frame.

    At vertex i the gradient g (2-vector) is the least-squares fit of ``e_ij . g = f_j - f_i`` over
    its one-ring edges e_ij projected into the tangent plane (a small ridge keeps it defined at
    vertices with collinear neighbours)."""
    V = len(verts)
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.concatenate([e, e[:, ::-1]]), axis=0)                    # directed, both ways
    e = e[e[:, 0] != e[:, 1]]
    i, j = e[:, 0], e[:, 1]
    bx, by = tangent_frames(normals)
    d = verts[j] - verts[i]
    ex = (d * bx[i]).sum(1)
    ey = (d * by[i]).sum(1)
    # per-vertex normal equations A = sum e e^T (+ ridge) and their 2x2 inverses
    a = np.bincount(i, ex * ex, V)
    b = np.bincount(i, ex * ey, V)
    c = np.bincount(i, ey * ey, V)
    mean_len2 = float(np.mean(ex * ex + ey * ey)) if len(e) else 1.0
    ridge = 1e-5 * mean_len2
    a, c = a + ridge, c + ridge
    det = a * c - b * b
    det = np.where(np.abs(det) < 1e-30, 1e-30, det)
    ia, ib, ic = c / det, -b / det, a / det
    wx = ia[i] * ex + ib[i] * ey                                               # weight of (f_j - f_i)
    wy = ib[i] * ex + ic[i] * ey
    rows = np.concatenate([i, i])
    cols = np.concatenate([j, i])
    gx = sp.coo_matrix((np.concatenate([wx, -wx]), (rows, cols)), shape=(V, V)).tocsr()
    gy = sp.coo_matrix((np.concatenate([wy, -wy]), (rows, cols)), shape=(V, V)).tocsr()
    return gx, gy


def laplacian_eigenbasis(verts: np.ndarray, faces: np.ndarray, k_eig: int):
    """(mass (V,), evals (K,), evecs (V, K)) of the robust (tufted) cotan Laplacian, via shift-invert
    Lanczos. ``robust_laplacian`` handles non-manifold and poorly shaped triangles."""
    import robust_laplacian
    import scipy.sparse.linalg as sla

    L, M = robust_laplacian.mesh_laplacian(np.ascontiguousarray(verts, np.float64),
                                           np.ascontiguousarray(faces, np.int64), 1e-5)
    mass = np.asarray(M.diagonal(), np.float64)
    if not np.isfinite(mass).all() or mass.sum() <= 0:
        raise FaceForgeError("The mesh has no surface area (all of its triangles are degenerate).")
    V = len(verts)
    k = int(min(k_eig, V - 2))
    shift = 1e-6
    last = None
    for _ in range(4):
        try:   # shift-invert about -shift: factors L + shift*M, positive definite even with several components
            evals, evecs = sla.eigsh(L.tocsc(), k=k, M=M.tocsc(), sigma=-shift, tol=1e-6)
            break
        except (RuntimeError, sla.ArpackError, sla.ArpackNoConvergence) as exc:
            last = exc
            shift *= 100.0
    else:
        raise FaceForgeError(f"The mesh's Laplacian eigenbasis could not be computed ({last}); the mesh is "
                             "probably broken (degenerate or disconnected triangles).")
    order = np.argsort(evals)
    evals = np.clip(evals[order], 0.0, None)
    evecs = evecs[:, order]
    return mass, evals, evecs


def mesh_operators(verts, faces, k_eig: int = 64) -> MeshOperators:
    """Mass, Laplacian eigenbasis (``k_eig`` pairs) and tangent gradient matrices of a triangle mesh."""
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
        raise FaceForgeError(f"A mesh needs (V >= 4, 3) vertices, got {v.shape}.")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise FaceForgeError(f"A mesh needs (F, 3) triangles, got {f.shape}.")
    mass, evals, evecs = laplacian_eigenbasis(v, f, k_eig)
    gx, gy = gradient_matrices(v, f, vertex_normals_np(v, f))
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return MeshOperators(mass=t(mass), evals=t(evals), evecs=t(evecs), grad_x=torch_sparse(gx),
                         grad_y=torch_sparse(gy))


# ----------------------------------------------------------------------------- blocks
def _sparse_apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(V, V) sparse times (B, V, C) -> (B, V, C)."""
    B, V, C = x.shape
    y = torch.sparse.mm(m, x.permute(1, 0, 2).reshape(V, B * C))
    return y.reshape(V, B, C).permute(1, 0, 2)


class LearnedTimeDiffusion(nn.Module):
    """Heat diffusion of each channel for its own learned time, in the truncated eigenbasis:
    x_t = Phi exp(-lambda t) Phi^T M x."""

    def __init__(self, channels: int):
        super().__init__()
        self.time = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, ops: MeshOperators) -> torch.Tensor:
        t = self.time.clamp_min(1e-8)
        spec = torch.einsum("vk,bvc->bkc", ops.evecs, x * ops.mass[None, :, None])
        coefs = torch.exp(-ops.evals[:, None] * t[None, :])                    # (K, C)
        return torch.einsum("vk,bkc->bvc", ops.evecs, spec * coefs[None])


class SpatialGradientFeatures(nn.Module):
    """tanh(<g, A g>) per channel, g the tangent gradient (a complex number per vertex) and A a
    learned complex-linear map across channels: invariant to each vertex's choice of tangent axes."""

    def __init__(self, channels: int):
        super().__init__()
        self.a_re = nn.Linear(channels, channels, bias=False)
        self.a_im = nn.Linear(channels, channels, bias=False)

    def forward(self, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        bre = self.a_re(gx) - self.a_im(gy)
        bim = self.a_re(gy) + self.a_im(gx)
        return torch.tanh(gx * bre + gy * bim)


class DiffusionNetBlock(nn.Module):
    """diffusion -> gradient features -> per-vertex MLP on [x, diffused, gradient features], residual."""

    def __init__(self, width: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or width
        self.diffusion = LearnedTimeDiffusion(width)
        self.gradient_features = SpatialGradientFeatures(width)
        self.mlp = nn.Sequential(nn.Linear(3 * width, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, ops: MeshOperators) -> torch.Tensor:
        xd = self.diffusion(x, ops)
        g = self.gradient_features(_sparse_apply(ops.grad_x, xd), _sparse_apply(ops.grad_y, xd))
        return x + self.mlp(torch.cat([x, xd, g], -1))


class DiffusionNet(nn.Module):
    """in_channels -> width -> ``blocks`` DiffusionNet blocks -> out_channels, per vertex."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 128, blocks: int = 4):
        super().__init__()
        self.first = nn.Linear(in_channels, width)
        self.blocks = nn.ModuleList([DiffusionNetBlock(width) for _ in range(blocks)])
        self.last = nn.Linear(width, out_channels)

    def forward(self, x: torch.Tensor, ops: MeshOperators) -> torch.Tensor:
        x = self.first(x)
        for block in self.blocks:
            x = block(x, ops)
        return self.last(x)


def mass_weighted_mean(x: torch.Tensor, ops: MeshOperators) -> torch.Tensor:
    """(B, V, C) -> (B, C): surface-area-weighted average (independent of how densely it is meshed)."""
    w = ops.mass / ops.mass.sum()
    return torch.einsum("v,bvc->bc", w, x)
