"""Plain arrays that describe a rigged head: what the Blender side turns into objects.

Nothing here knows about bpy. Coordinates are model space (metres, y-up, +z out of the
face); the Blender scene builder converts to Blender's z-up world in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class CameraSpec:
    """A pinhole camera that sees the head as in the photo (OpenCV axes: x right, y down, z forward)."""
    focal_px: float
    width: int
    height: int
    rotation: np.ndarray            # (3, 3) model -> camera
    translation: np.ndarray         # (3,)   model -> camera
    cx: Optional[float] = None      # principal point; None = image centre
    cy: Optional[float] = None
    image_path: Optional[str] = None  # shown as the camera background

    def center_in_model(self) -> np.ndarray:
        return -self.rotation.T @ self.translation


@dataclass
class BoneSpec:
    names: list                     # J names; joint 0 is the root
    parents: np.ndarray             # (J,) -1 for the root
    heads: np.ndarray               # (J, 3) rest positions in model space
    weights: np.ndarray             # (V, J) skinning weights
    pose: Optional[np.ndarray] = None  # (J-1, 3) axis-angle pose of the non-root joints


@dataclass
class HeadRig:
    name: str
    vertices: np.ndarray            # (V, 3) neutral identity (the mesh's basis shape)
    faces: np.ndarray               # (F, 3)
    shape_key_names: list           # K expression names
    shape_key_deltas: np.ndarray    # (K, V, 3) offset of each key at value 1
    shape_key_values: np.ndarray    # (K,) fitted values (may be negative)
    vertex_colors: Optional[np.ndarray] = None  # (V, 3) albedo in [0, 1], sRGB
    uv: Optional[np.ndarray] = None             # (V, 2)
    texture_path: Optional[str] = None
    bones: Optional[BoneSpec] = None
    camera: Optional[CameraSpec] = None
    metadata: dict = field(default_factory=dict)

    def slider_range(self) -> tuple:
        """Shape-key slider limits wide enough for every fitted value (coefficients are ~N(0,1))."""
        m = float(np.abs(self.shape_key_values).max()) if len(self.shape_key_values) else 0.0
        lim = max(3.0, np.ceil(m))
        return -lim, lim
