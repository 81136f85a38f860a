"""Synthetic ground truth: one random identity photographed from several views.

Renders the model with FaceForge's own renderer (a different pose, expression, SH light and
albedo per view) so fits can be scored against the true neutral shape. Used by the
multi-photo tests and benchmarks/bench_multi.py.
"""

from __future__ import annotations

import numpy as np
import torch


def render_views(model, shape: np.ndarray, yaws_deg, seed: int = 0, size: int = 384, expr_std: float = 0.5,
                 blur_view: int = -1, small_view: int = -1, landmark_noise: float = 0.01):
    """Images (uint8 RGB) of identity ``shape`` seen from each yaw (degrees), and for each the
    true landmarks as a FaceLandmarks with Gaussian noise of ``landmark_noise`` x face size
    (3x on the degraded views), which stands in for a detector of known accuracy.

    ``blur_view``/``small_view`` index a view rendered blurred / with a small face (degraded
    photos that should count less)."""
    import cv2

    from core.detect.landmarks import N_POINTS, FaceLandmarks
    from core.models.morphable import axis_angle_to_matrix
    from core.render import render
    from core.render.camera import project

    rng = np.random.default_rng(seed)
    layer = model.layer("cpu")
    images, landmarks = [], []
    for k, yaw in enumerate(yaws_deg):
        expr = torch.as_tensor(rng.normal(0, expr_std, (1, layer.n_expr)), dtype=torch.float32)
        with torch.no_grad():
            verts = layer(torch.as_tensor(shape[None], dtype=torch.float32), expr)
        pitch = rng.uniform(-8, 8)
        R = axis_angle_to_matrix(torch.tensor([[np.pi, 0.0, 0.0]])) @ axis_angle_to_matrix(
            torch.tensor([[np.radians(pitch), np.radians(yaw), 0.0]], dtype=torch.float32))
        focal = 0.5 * size / np.tan(np.radians(rng.uniform(20, 40)) / 2)
        span = 0.22 if k == small_view else 0.55                    # fraction of the image the face spans
        t = torch.tensor([[rng.normal(0, 0.005), rng.normal(0, 0.005), focal * 0.16 / (span * size)]],
                         dtype=torch.float32)
        cam = verts @ R.transpose(1, 2) + t[:, None]
        sh = torch.zeros(1, 9, 3)
        sh[:, 0] = rng.uniform(0.9, 1.2) / 0.886227
        sh[:, 1:4] = torch.as_tensor(rng.normal(0, 0.25, (3, 1)), dtype=torch.float32)   # a white key light
        albedo = layer.albedo(torch.as_tensor(rng.normal(0, 0.7, (1, layer.n_albedo)), dtype=torch.float32)
                              if layer.n_albedo else None)
        with torch.no_grad():
            out = render(cam, layer.faces, albedo, sh, focal, size / 2, size / 2, size, size)
        bg = torch.as_tensor(rng.uniform(0.2, 0.6, 3), dtype=torch.float32)
        img = (torch.where(out.mask[..., None], out.image, bg)[0].clamp(0, 1) * 255).byte().numpy()
        if k == blur_view:
            img = cv2.GaussianBlur(img, (0, 0), 4.0)
        images.append(np.ascontiguousarray(img))
        with torch.no_grad():
            lm_cam = layer.landmarks(cam)
            px = project(lm_cam, focal, size / 2, size / 2)[0].numpy()
            z = lm_cam[0, :, 2].numpy()
        face = float(np.ptp(px[:, 0]))
        noise = landmark_noise * face * (3.0 if k in (blur_view, small_view) else 1.0)
        pts = np.zeros((N_POINTS, 3), np.float32)
        idx = layer.lm_detector_index.numpy()
        pts[idx, :2] = px + rng.normal(0, noise, px.shape)
        pts[idx, 2] = focal * (z - z.mean()) / z.mean()
        xy = pts[idx, :2]
        landmarks.append(FaceLandmarks(points=pts, image_size=(size, size),
                                       bbox=(*xy.min(0).tolist(), *xy.max(0).tolist())))
    return images, landmarks


def random_identity(model, seed: int, std: float = 1.0) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(0, std, model.n_shape).astype(np.float32)


def neutral_error_mm(model, shape_true: np.ndarray, shape_est: np.ndarray) -> float:
    """Median distance (mm) from the estimated neutral's vertices to the true neutral surface."""
    from core.geometry import point_to_surface_distance

    layer = model.layer("cpu")
    with torch.no_grad():
        v_true = layer.shaped(torch.as_tensor(shape_true[None], dtype=torch.float32))[0].numpy()
        v_est = layer.shaped(torch.as_tensor(np.asarray(shape_est, np.float32)[None]))[0].numpy()
    return float(np.median(point_to_surface_distance(v_est, v_true, model.faces)) * 1000)
