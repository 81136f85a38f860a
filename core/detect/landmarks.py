"""Face landmarks from mediapipe FaceMesh: 478 points (468 surface points + 10 iris points).

Points are returned in pixels (x right, y down) with mediapipe's relative depth scaled to
pixels as well (z negative = nearer the camera), so the fitter and the model builder can use
them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import NoFaceError

N_POINTS = 478          # with refine_landmarks=True (iris)
N_SURFACE_POINTS = 468  # the points that lie on mediapipe's face mesh


@dataclass
class FaceLandmarks:
    points: np.ndarray          # (478, 3) float32: x, y in pixels, z relative depth in pixels
    image_size: tuple           # (height, width)
    bbox: tuple                 # (x0, y0, x1, y1) of the surface points, pixels
    n_faces: int = 1            # how many faces the detector saw
    warnings: list = field(default_factory=list)

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]

    @property
    def face_size(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return float(max(x1 - x0, y1 - y0))


def _to_pixels(face, width: int, height: int) -> np.ndarray:
    pts = np.array([(p.x * width, p.y * height, p.z * width) for p in face.landmark], np.float32)
    return pts


def _pick_largest(faces, width, height):
    arrays = [_to_pixels(f, width, height) for f in faces]
    areas = [np.ptp(a[:N_SURFACE_POINTS, 0]) * np.ptp(a[:N_SURFACE_POINTS, 1]) for a in arrays]
    return arrays[int(np.argmax(areas))]


class LandmarkDetector:
    """Reusable FaceMesh. ``video=True`` lets mediapipe track between frames (faster, steadier)."""

    def __init__(self, video: bool = False, max_faces: int = 5, min_confidence: float = 0.5):
        import mediapipe as mp  # lazy: heavy import, only needed when detecting

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def detect(self, image_rgb: np.ndarray, source: str = "image") -> FaceLandmarks:
        """Landmarks of the largest face; NoFaceError when there is none."""
        h, w = image_rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(image_rgb))
        faces = result.multi_face_landmarks or []
        if not faces:
            raise NoFaceError(
                f"No face found in {source}. Use a photo where one face is clearly visible, "
                "roughly frontal and at least ~100 pixels tall.")
        pts = _pick_largest(faces, w, h)
        warnings = []
        if len(faces) > 1:
            warnings.append(f"{len(faces)} faces found in {source}; using the largest one.")
        surf = pts[:N_SURFACE_POINTS]
        bbox = (float(surf[:, 0].min()), float(surf[:, 1].min()), float(surf[:, 0].max()), float(surf[:, 1].max()))
        return FaceLandmarks(points=pts, image_size=(h, w), bbox=bbox, n_faces=len(faces), warnings=warnings)

    def detect_all(self, image_rgb: np.ndarray) -> list:
        """Every face in the image (possibly none), largest first."""
        h, w = image_rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(image_rgb))
        arrays = [_to_pixels(f, w, h) for f in (result.multi_face_landmarks or [])]
        arrays.sort(key=lambda a: -np.ptp(a[:N_SURFACE_POINTS, 0]) * np.ptp(a[:N_SURFACE_POINTS, 1]))
        return arrays


def detect_landmarks(image_rgb: np.ndarray, source: str = "image") -> FaceLandmarks:
    """One-shot detection on a still image."""
    with LandmarkDetector(video=False) as det:
        return det.detect(image_rgb, source)


@lru_cache(maxsize=1)
def landmark_regions() -> dict:
    """Detector point indices per facial region, from mediapipe's own connection sets."""
    from mediapipe.python.solutions import face_mesh_connections as c

    def idx(conns):
        return sorted({i for edge in conns for i in edge})

    lips = idx(c.FACEMESH_LIPS)
    # inner lip contour: the lip points closest to the mouth centre line (13 upper, 14 lower)
    inner_lips = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415]
    return {
        "lips": lips,
        "inner_lips": inner_lips,
        "nose": idx(c.FACEMESH_NOSE),
        "left_eye": idx(c.FACEMESH_LEFT_EYE),
        "right_eye": idx(c.FACEMESH_RIGHT_EYE),
        "left_eyebrow": idx(c.FACEMESH_LEFT_EYEBROW),
        "right_eyebrow": idx(c.FACEMESH_RIGHT_EYEBROW),
        "face_oval": idx(c.FACEMESH_FACE_OVAL),
        "left_iris": idx(c.FACEMESH_LEFT_IRIS),
        "right_iris": idx(c.FACEMESH_RIGHT_IRIS),
    }
