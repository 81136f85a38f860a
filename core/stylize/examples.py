"""A procedural "sculpt" for demos, tests and benchmarks: a bigger nose and pointed ears.

It stands in for an artist's sculpt where none is at hand: a known displacement field whose
transfer to other identities can be measured. Works on any model in the usual frame (metres,
y up, +z out of the face): the nose tip is the skin's frontmost point, the ears its widest points.
"""

from __future__ import annotations

import numpy as np

from ..models.morphable import MorphableModel


def goblin_sculpt(model: MorphableModel, verts: np.ndarray, nose_gain: float = 0.5, ear_lift: float = 0.025,
                  nose_radius: float = 0.025) -> np.ndarray:
    """``verts`` (V, 3) of a head of ``model`` with the nose scaled up about its base and the tops of
    the ears pulled up and back. Returns new (V, 3) vertices (same topology)."""
    v = np.asarray(verts, np.float64)
    skin = model.skin_vertex_mask()
    face = v[skin]
    tip = face[np.argmax(face[:, 2])]
    base = tip - np.array([0.0, 0.0, 0.03])
    w = np.exp(-(np.linalg.norm(v - tip, axis=1) / nose_radius) ** 2) * skin
    out = v + nose_gain * w[:, None] * (v - base)
    x = v[:, 0]
    half = float(np.abs(x[skin]).max())
    for side in (-1.0, 1.0):
        sel = skin & (side * x > 0.72 * half)
        if not sel.any():
            continue
        centre_y = float(np.median(v[sel, 1]))
        up = np.clip((v[:, 1] - centre_y) / 0.03, 0.0, None) * sel
        outward = np.clip((side * x - 0.72 * half) / (0.28 * half), 0.0, 1.0)
        lift = ear_lift * (up * outward) ** 2
        out[:, 1] += lift
        out[:, 2] -= 0.5 * lift
    return out
