"""Vertex normals and 9-coefficient spherical-harmonics (SH) Lambertian shading.

SH basis order (index: function), constants as in Deng et al. 2019 / Deep3DFaceRecon with the
Lambertian convolution (a0 = pi, a1 = 2 pi / sqrt(3), a2 = 2 pi / sqrt(8)) folded in:

    0: a0 c0            1: a1 c1 y          2: a1 c1 z          3: a1 c1 x
    4: a2 c2 x y        5: a2 c2 y z        6: a2 c2 (3 z^2 - 1) * 0.5 / sqrt(3)
    7: a2 c2 x z        8: a2 c2 * 0.5 (x^2 - y^2)

with c0 = 1 / sqrt(4 pi), c1 = sqrt(3) / sqrt(4 pi), c2 = 3 sqrt(5) / sqrt(12 pi).
Signs are the plain real SH ones: Deep3DFaceRecon negates 1, 3, 5, 7 (Condon-Shortley phase);
flip those four coefficients to convert. Normals are in camera space (OpenCV: x right, y down,
z forward), so a light "from the camera" has a negative z coefficient (index 2).
Irradiance = sh_basis(n) @ sh, colour = albedo * irradiance.
"""

from __future__ import annotations

import math

import torch

A0 = math.pi
A1 = 2.0 * math.pi / math.sqrt(3.0)
A2 = 2.0 * math.pi / math.sqrt(8.0)
C0 = 1.0 / math.sqrt(4.0 * math.pi)
C1 = math.sqrt(3.0) / math.sqrt(4.0 * math.pi)
C2 = 3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi)
# Lambertian factor of each basis function (divide by it to get the orthonormal real SH)
BAND_FACTORS = (A0, A1, A1, A1, A2, A2, A2, A2, A2)


def vertex_normals(verts: torch.Tensor, faces) -> torch.Tensor:
    """(B, V, 3) unit normals, area-weighted (sum of unnormalised face normals), oriented by the winding."""
    faces = torch.as_tensor(faces, device=verts.device).long()
    # vertex-major (V, B, 3): each index then moves B*3 contiguous floats; CPU index_add along the
    # second dimension was ~2x slower, forward and backward (the colour stage's largest op)
    vt = verts.transpose(0, 1).contiguous()
    f0, f1, f2 = (faces[:, k].contiguous() for k in range(3))
    v0 = vt.index_select(0, f0)
    face_normals = torch.linalg.cross(vt.index_select(0, f1) - v0, vt.index_select(0, f2) - v0)   # |n| = 2 x area
    normals = torch.zeros_like(vt).index_add(0, f0, face_normals).index_add(0, f1, face_normals) \
        .index_add(0, f2, face_normals)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12).transpose(0, 1)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) SH basis values, order documented in the module docstring."""
    x, y, z = normals.unbind(-1)
    k1 = A1 * C1
    k2 = A2 * C2
    return torch.stack((
        torch.full_like(x, A0 * C0),
        k1 * y, k1 * z, k1 * x,
        k2 * x * y, k2 * y * z, k2 * (0.5 / math.sqrt(3.0)) * (3.0 * z * z - 1.0),
        k2 * x * z, k2 * 0.5 * (x * x - y * y),
    ), -1)


def sh_irradiance(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """(B, ..., 3) normals, (B, 9, 3) coefficients -> (B, ..., 3) irradiance (a batch of 1 broadcasts)."""
    basis = sh_basis(normals)
    batch = max(basis.shape[0], sh.shape[0])
    rest = basis.shape[1:-1]
    basis = basis.expand(batch, *rest, 9).reshape(batch, -1, 9)
    out = torch.bmm(basis, sh.to(basis.dtype).expand(batch, 9, 3))
    return out.reshape(batch, *rest, 3)


def sh_shade(albedo: torch.Tensor, normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """colour = albedo * (sh_basis(n) @ sh); albedo/normals (B, ..., 3), sh (B, 9, 3)."""
    return albedo * sh_irradiance(normals, sh)


def default_sh(batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, 9, 3) plain white ambient light of irradiance 1: a mid-grey albedo renders mid-grey."""
    sh = torch.zeros(batch, 9, 3, device=device, dtype=dtype)
    sh[:, 0] = 1.0 / (A0 * C0)
    return sh
