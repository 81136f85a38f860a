"""Pinhole camera in OpenCV convention: x right, y down, z forward (visible points have z > 0).

Pixel (i, j) has its centre at (u, v) = (j + 0.5, i + 0.5), so the image spans u in [0, W], v in [0, H].
"""

from __future__ import annotations

import numpy as np
import torch


def batch_scalar(value, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) tensor as a (B, 1)-broadcastable tensor on ``like``'s device and dtype.

    Tensors keep their autograd graph (so focal / principal point can be optimised).
    """
    if not torch.is_tensor(value):
        return torch.tensor(float(value), device=like.device, dtype=like.dtype)
    value = value.to(device=like.device, dtype=like.dtype)
    if value.dim() == 0:
        return value
    return value.reshape(-1, 1)  # (B,) or (1,) -> broadcasts over the points of each batch item


def project(points_cam: torch.Tensor, focal, cx, cy) -> torch.Tensor:
    """(B, N, 3) camera-space points -> (B, N, 2) pixel coordinates u = f x / z + cx, v = f y / z + cy.

    ``focal``, ``cx``, ``cy``: floats or tensors of shape (B,) (or 0-d); differentiable.
    No clipping: points with z <= 0 give meaningless coordinates (the rasteriser skips them).
    """
    f = batch_scalar(focal, points_cam)
    inv_z = 1.0 / points_cam[..., 2]
    u = f * points_cam[..., 0] * inv_z + batch_scalar(cx, points_cam)
    v = f * points_cam[..., 1] * inv_z + batch_scalar(cy, points_cam)
    return torch.stack((u, v), dim=-1)


def camera_space(verts_model: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Model -> camera space: R @ v + t for (B, V, 3) vertices, (B, 3, 3) rotations, (B, 3) translations."""
    return verts_model @ rotation.transpose(-1, -2) + translation[..., None, :]


def head_turn_deg(rotation) -> np.ndarray:
    """How far a head is turned away from the camera (degrees; 0 = facing it), for model-to-camera
    rotations (..., 3, 3), numpy or torch: the angle between the face's +z axis and the way to the camera."""
    R = rotation.detach().cpu().numpy() if torch.is_tensor(rotation) else np.asarray(rotation)
    return np.degrees(np.arccos(np.clip(-R[..., 2, 2], -1.0, 1.0)))
