"""Losses of the photo fit (after Deng et al. 2019), each normalised so weights transfer across
image sizes and models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def landmark_loss(pred_xy, target_xy, weights, face_size):
    """Weighted mean squared 2D distance in units of the face size. (B, L, 2) each."""
    r = (pred_xy - target_xy) / face_size
    return (weights * (r * r).sum(-1)).sum(-1).mean() / weights.sum()


def depth_loss(pred_cam, target_z, weights, focal, face_size):
    """Relative depth of landmarks vs the detector's own depth estimate (weak perspective, pixels)."""
    z = pred_cam[..., 2]
    zm = z.mean(-1, keepdim=True)
    pred = focal * (z - zm) / zm
    tgt = target_z - target_z.mean(-1, keepdim=True)
    r = (pred - tgt) / face_size
    return (weights * r * r).sum(-1).mean() / weights.sum()


def photometric_loss(rendered, image, mask):
    """Robust L2,1 colour distance (Deng et al.): per-pixel Euclidean norm, averaged on the mask."""
    d = torch.sqrt(((rendered - image) ** 2).sum(-1) + 1e-8)
    return (d * mask).sum() / mask.sum().clamp_min(1.0)


def _image_gradients(img):
    dx = img[:, :, 1:, :] - img[:, :, :-1, :]
    dy = img[:, 1:, :, :] - img[:, :-1, :, :]
    return dx, dy


def gradient_loss(rendered, image, mask):
    """Perceptual-style structure term: L1 distance of image gradients at two scales, on the mask.

    Deng et al. use a face-recognition network's features; no such pretrained network can be
    shipped or downloaded here, so this compares local structure (edges, shading gradients),
    which is what such features are most sensitive to at this scale.
    """
    total = 0.0
    r, i, m = rendered, image, mask
    for _ in range(2):
        rdx, rdy = _image_gradients(r)
        idx, idy = _image_gradients(i)
        mx = (m[:, :, 1:] * m[:, :, :-1])[..., None]
        my = (m[:, 1:, :] * m[:, :-1, :])[..., None]
        total = total + ((rdx - idx).abs() * mx).sum() / mx.sum().clamp_min(1.0) \
                      + ((rdy - idy).abs() * my).sum() / my.sum().clamp_min(1.0)
        # next scale: 2x box-downsample
        r = F.avg_pool2d(r.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        i = F.avg_pool2d(i.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        m = (F.avg_pool2d(m[:, None], 2)[:, 0] > 0.99).float()
    return total


def laplacian_smoothness(values, neighbours, neighbour_mask):
    """Mean squared difference between each vertex value and the mean of its neighbours."""
    nb = values[:, neighbours]                              # (B, V, K, C)
    w = neighbour_mask[None, :, :, None]
    mean = (nb * w).sum(2) / w.sum(2).clamp_min(1.0)
    return ((values - mean) ** 2).sum(-1).mean()
