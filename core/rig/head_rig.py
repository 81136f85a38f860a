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
class HeadAnimation:
    """Per-frame motion of a HeadRig (a tracked video).

    The camera stays where ``HeadRig.camera`` puts it (the clip's reference frame); the head
    moves instead: frame t's vertices in model space are
        root_rotation[t] @ skinned(t) + root_translation[t]
    where ``skinned(t)`` is the mesh with ``shape_key_values[t]`` and ``joint_pose[t]``.
    The root bone carries that rigid motion; the other bones carry ``joint_pose``.
    """
    fps: float
    frame_start: int                # the clip frame of the first animation frame
    shape_key_values: np.ndarray    # (T, K)
    root_rotation: np.ndarray       # (T, 3, 3) model space
    root_translation: np.ndarray    # (T, 3)
    joint_pose: Optional[np.ndarray] = None  # (T, J-1, 3) axis-angle of the non-root joints
    valid: Optional[np.ndarray] = None       # (T,) a face was seen (others are interpolated)
    visible: Optional[np.ndarray] = None     # (T,) the head is shown (None: always); hidden in long gaps
    video_path: Optional[str] = None

    @property
    def n_frames(self) -> int:
        return int(len(self.shape_key_values))

    def root_matrices(self) -> np.ndarray:
        """(T, 4, 4) rigid transforms of the head in model space."""
        T = self.n_frames
        M = np.tile(np.eye(4, dtype=np.float64), (T, 1, 1))
        M[:, :3, :3] = self.root_rotation
        M[:, :3, 3] = self.root_translation
        return M


@dataclass
class MeshTopology:
    """The model's own polygons for Blender (quads, n-gons) with per-corner UVs and material slots.

    ``HeadRig.faces`` (triangles) stays the renderer's topology; when a rig has a MeshTopology the
    Blender mesh is built from these polygons instead, on the same vertices."""
    sizes: np.ndarray               # (P,) corners per polygon
    vertices: np.ndarray            # (N,) vertex of each corner, polygon by polygon
    uv: Optional[np.ndarray]        # (N, 2) per-corner UVs (skin: u / uv_tiles, matching the texture), or None
    material_index: np.ndarray      # (P,) slot of each polygon in material_names
    material_names: list            # slot names, e.g. ["skin", "eye", "teeth", "lashes", ...]
    uv_tiles: int = 1               # the model's skin UVs span u in [0, uv_tiles): one texture holds them side by side
    uv_model: Optional[np.ndarray] = None  # (N, 2) the model's own UVs, when they differ from ``uv``


@dataclass
class HeadRig:
    name: str
    vertices: np.ndarray            # (V, 3) neutral identity (the mesh's basis shape)
    faces: np.ndarray               # (F, 3)
    shape_key_names: list           # K expression names
    shape_key_deltas: np.ndarray    # (K, V, 3) offset of each key at value 1
    shape_key_values: np.ndarray    # (K,) fitted values (may be negative)
    vertex_colors: Optional[np.ndarray] = None  # (V, 3) albedo in [0, 1], sRGB
    uv: Optional[np.ndarray] = None             # (V, 2) per vertex, or (F, 3, 2) per triangle corner
    texture_path: Optional[str] = None
    bones: Optional[BoneSpec] = None
    camera: Optional[CameraSpec] = None
    views: list = field(default_factory=list)    # more CameraSpecs (one per photo of a multi-photo fit)
    animation: Optional[HeadAnimation] = None
    topology: Optional[MeshTopology] = None      # the model's polygons/UVs/material slots (else triangles)
    metadata: dict = field(default_factory=dict)

    def slider_range(self) -> tuple:
        """Shape-key slider limits wide enough for every fitted value (coefficients are ~N(0,1))."""
        m = float(np.abs(self.shape_key_values).max()) if len(self.shape_key_values) else 0.0
        lim = max(3.0, np.ceil(m))
        return -lim, lim
