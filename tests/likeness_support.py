"""Helpers shared by the multi-photo likeness tests (outline and colour stages): camera rotations of a
head turned by a yaw, and the shape error the tests bound."""

import numpy as np


def rotation(yaw):
    """Model (y up, z out) -> OpenCV camera, the head turned by ``yaw`` degrees."""
    y = np.radians(yaw)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    return np.diag([1.0, -1.0, -1.0]) @ Ry


def error_mm(model, shape_true, shape_est, idx):
    """Median distance (mm) between two identities' neutral heads over ``idx``, centred (unaligned)."""
    a = model.v_template + model.shape_basis @ shape_est
    b = model.v_template + model.shape_basis @ shape_true
    a, b = a[idx] - a[idx].mean(0), b[idx] - b[idx].mean(0)
    return float(np.median(np.linalg.norm(a - b, axis=1)) * 1000)
