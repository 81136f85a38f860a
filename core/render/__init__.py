"""Differentiable renderer in pure torch (device-agnostic), with an optional pytorch3d rasteriser.

Camera space is OpenCV (x right, y down, z forward); see ``camera`` for the pixel convention.
``render`` = hard z-buffer rasterisation + per-pixel SH Lambertian shading of interpolated
vertex albedo and normals (+ an optional soft silhouette for silhouette losses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import FaceForgeError
from . import pytorch3d_backend
from .camera import camera_space, project
from .rasterizer import (BACKGROUND_DEPTH, Fragments, covered_pixels, interpolate, interpolate_at, rasterize,
                         soft_silhouette)
from .shading import default_sh, sh_basis, sh_irradiance, sh_shade, vertex_normals

__all__ = [
    "BACKGROUND_DEPTH", "Fragments", "RenderOutput", "camera_space", "default_sh", "interpolate", "project",
    "rasterize", "render", "resolve_backend", "sh_basis", "sh_irradiance", "sh_shade", "soft_silhouette",
    "vertex_normals",
]

BACKEND_ENV = "FACEFORGE_RENDER_BACKEND"


@dataclass
class RenderOutput:
    image: torch.Tensor                  # (B, H, W, 3) shaded colour, zeros on background
    mask: torch.Tensor                   # (B, H, W) bool, hard coverage
    silhouette: Optional[torch.Tensor]   # (B, H, W) soft coverage in [0, 1], or None
    fragments: Fragments
    normals: torch.Tensor                # (B, V, 3) unit vertex normals in camera space


def resolve_backend(backend: str = "auto") -> str:
    """'auto' -> 'torch' (faster on the CPU) unless FACEFORGE_RENDER_BACKEND=pytorch3d and it imports."""
    name = (backend or "auto").lower()
    if name == "auto":
        wanted = os.environ.get(BACKEND_ENV, "").strip().lower()
        return "pytorch3d" if wanted == "pytorch3d" and pytorch3d_backend.available() else "torch"
    if name == "pytorch3d" and not pytorch3d_backend.available():
        raise FaceForgeError("The pytorch3d render backend was requested but pytorch3d does not import here; "
                             "use backend='torch' (or 'auto').")
    if name not in ("torch", "pytorch3d"):
        raise ValueError(f"Unknown render backend {backend!r}: use 'auto', 'torch' or 'pytorch3d'.")
    return name


def render(verts_cam, faces, vertex_albedo, sh, focal, cx, cy, height: int, width: int, backend: str = "auto",
           cull_backfaces: bool = False, with_silhouette: bool = False, sigma: float = 1.0) -> RenderOutput:
    """Render (B, V, 3) camera-space vertices with (B, V, 3) albedo under (B, 9, 3) SH light.

    Per-pixel shading: albedo and vertex normals are interpolated, the normal renormalised, then
    colour = albedo * (sh_basis(n) @ sh). Differentiable w.r.t. geometry, focal/cx/cy, albedo and sh
    (visibility itself is not; use ``with_silhouette`` for a coverage term that moves the outline).
    """
    faces = torch.as_tensor(faces, device=verts_cam.device).long()
    normals = vertex_normals(verts_cam, faces)
    raster = pytorch3d_backend.rasterize if resolve_backend(backend) == "pytorch3d" else rasterize
    fragments = raster(verts_cam, faces, focal, cx, cy, height, width, cull_backfaces=cull_backfaces)
    B, H, W = fragments.pix_to_face.shape

    pix, face_of = covered_pixels(fragments)
    attrs = torch.cat((vertex_albedo.to(verts_cam.dtype).expand(B, -1, -1), normals), -1)
    values = interpolate_at(attrs, faces, fragments, pix, face_of)
    albedo_px = values[:, :3]
    normal_px = torch.nn.functional.normalize(values[:, 3:], dim=-1, eps=1e-12)
    # covered pixels are sorted by flat index, so each image's pixels form one contiguous run
    per_image = torch.bincount(torch.div(pix, H * W, rounding_mode="floor"), minlength=B).tolist()
    sh = sh.to(values.dtype).expand(B, 9, 3)
    basis = sh_basis(normal_px)
    irradiance = torch.cat([part @ sh[b] for b, part in enumerate(basis.split(per_image))])
    colour = albedo_px * irradiance
    image = torch.zeros(B * H * W, 3, device=colour.device, dtype=colour.dtype).index_copy(0, pix, colour)

    silhouette = None
    if with_silhouette:
        silhouette = soft_silhouette(verts_cam, faces, focal, cx, cy, H, W, sigma=sigma, cull_backfaces=cull_backfaces)
    return RenderOutput(image.reshape(B, H, W, 3), fragments.mask, silhouette, fragments, normals)
