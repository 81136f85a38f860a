"""UV layouts for models that have none (FLAME's .pkl carries no UVs; the built-in model neither).

A cylindrical unwrap around the head's vertical axis: u follows the angle around the head
(0 at the face's front, seam straight behind the head), v the height. UVs are stored per
triangle corner (F, 3, 2) so a triangle that straddles the seam gets its corners wrapped to
one side instead of a stripe across the whole texture. Both axes share one scale, so texels
are square on the surface; a face-only mesh uses just the angles it covers.
"""

from __future__ import annotations

import numpy as np


def cylindrical_uv(vertices: np.ndarray, faces: np.ndarray, margin: float = 0.02) -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    lo, hi = v.min(0), v.max(0)
    width = hi[0] - lo[0]
    # axis: centred left-right, half a head-width behind the front of the face
    cx, cz = 0.5 * (lo[0] + hi[0]), hi[2] - 0.5 * width
    theta = np.arctan2(v[:, 0] - cx, v[:, 2] - cz)                 # 0 = front, +-pi = back
    radius = np.median(np.hypot(v[:, 0] - cx, v[:, 2] - cz))
    corner_theta = theta[faces]                                     # (F, 3)
    # a triangle spanning more than pi in angle crosses the seam: wrap its negative corners
    crosses = corner_theta.max(1) - corner_theta.min(1) > np.pi
    corner_theta = np.where(crosses[:, None] & (corner_theta < 0), corner_theta + 2 * np.pi, corner_theta)
    arc = corner_theta * radius                                     # metres along the surface
    height = v[faces][..., 1]
    a_lo, a_hi = arc.min(), arc.max()
    h_lo, h_hi = height.min(), height.max()
    scale = (1 - 2 * margin) / max(a_hi - a_lo, h_hi - h_lo)
    u = margin + (arc - a_lo) * scale + 0.5 * ((1 - 2 * margin) - (a_hi - a_lo) * scale)
    w = margin + (height - h_lo) * scale + 0.5 * ((1 - 2 * margin) - (h_hi - h_lo) * scale)
    return np.stack([u, w], -1).astype(np.float32)
