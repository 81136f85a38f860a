"""Shape-key weights that stay in [0, 1] when a head leaves FaceForge.

FBX and glTF readers (Blender's own importers among them) give every blend shape a 0..1 slider and
clamp what lies outside, so a fitted PCA coefficient of -0.85 or 2.2 comes back as 0 or 1 and the
re-imported head is millimetres off. A key whose weights leave [0, 1] is therefore exported as two
keys: ``<name>_pos`` with the offset ``s * delta`` and ``<name>_neg`` with ``-s * delta``, weighted
``max(w, 0) / s`` and ``max(-w, 0) / s``, where ``s`` is the largest ``|w|`` (at least 1). Both
weights lie in [0, 1] and their sum of offsets is exactly ``w * delta`` on every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITIVE_SUFFIX = "_pos"
NEGATIVE_SUFFIX = "_neg"


@dataclass
class SignedSplit:
    """How one shape key is exported: ``scale`` multiplies its offset, ``positive``/``negative`` are
    the two new keys' weights (same shape as the key's weights)."""
    scale: float
    positive: np.ndarray
    negative: np.ndarray


def needs_split(weights, tol: float = 1e-6) -> bool:
    """True when any weight lies outside [0, 1] (by more than ``tol``)."""
    w = np.asarray(weights, np.float64)
    return w.size > 0 and (float(w.min()) < -tol or float(w.max()) > 1.0 + tol)


def split_signed(weights) -> SignedSplit:
    """The ``_pos``/``_neg`` pair of a key with these weights (see the module docstring)."""
    w = np.asarray(weights, np.float64)
    scale = max(1.0, float(np.abs(w).max()) if w.size else 1.0)
    return SignedSplit(scale=scale, positive=np.clip(w, 0.0, None) / scale, negative=np.clip(-w, 0.0, None) / scale)


def split_names(name: str) -> tuple:
    return f"{name}{POSITIVE_SUFFIX}", f"{name}{NEGATIVE_SUFFIX}"
