"""Face landmarks from mediapipe FaceMesh: 478 points (468 surface points + 10 iris points),
measured on a crop around a face found first by the face detectors (faces.py).

Points are returned in pixels (x right, y down) with mediapipe's relative depth scaled to
pixels as well (z negative = nearer the camera), so the fitter and the model builder can use
them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from ..errors import FaceTurnedError
from .faces import (N_POINTS, N_SURFACE_POINTS, FaceBox, FaceFinder, box_iou, choose_face, landmark_points,
                    no_face_error, points_bbox)
from .reliability import check_pose

__all__ = ["N_POINTS", "N_SURFACE_POINTS", "FaceLandmarks", "LandmarkDetector", "detect_landmarks",
           "landmark_regions"]


@dataclass
class FaceLandmarks:
    points: np.ndarray          # (478, 3) float32: x, y in pixels, z relative depth in pixels
    image_size: tuple           # (height, width)
    bbox: tuple                 # (x0, y0, x1, y1) of the surface points, pixels
    n_faces: int = 1            # how many faces the detector saw
    warnings: list = field(default_factory=list)
    face_index: int = 0         # which face this is, counted from the left (0-based)
    face_boxes: list = field(default_factory=list)   # bbox of every face found, left to right
    score: float = 1.0          # the face detector's confidence
    yaw_deg: Optional[float] = None   # how far the head is turned (unsigned estimate; stills only)

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]

    @property
    def face_size(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return float(max(x1 - x0, y1 - y0))


# video: a face whose landmark box is smaller than 1/LARGE_FACE of the frame's short side is
# followed on a crop around its last position; a larger one by FaceMesh's tracking on the whole
# frame, as before (mediapipe finds large faces itself, and its tracking skips the detector)
LARGE_FACE = 3.0
TILE_EVERY = 8          # while no face is seen in a video, the slower tiled search runs on every 8th frame


class LandmarkDetector:
    """Faces found first (faces.py), landmarks by FaceMesh on a crop around the chosen one.

    Stills (``video=False``): every call searches the whole image. Video (``video=True``): the face
    is searched for on the first frame and again whenever it is lost; in between it is followed:
    a small face by FaceMesh on a crop around its last landmarks (static mode: a crop that moves
    with the face would leave tracking mode's region of interest behind), a large one by
    FaceMesh's tracking mode on the whole frame. ``max_faces`` caps ``detect_all``; ``detect``
    always chooses among every face found."""

    def __init__(self, video: bool = False, max_faces: int = 5, min_confidence: float = 0.5):
        self.video = video
        self.max_faces = max_faces
        self._min_confidence = min_confidence
        self._finder = FaceFinder(min_confidence)
        self._mesh = self._tracking_mesh() if video else None
        self._last = None        # video: the face followed (a FaceBox around its last landmarks)
        self._whole = False      # video: followed by tracking mode on the whole frame
        self._n_faces = 0        # video: faces seen when the face was last searched for
        self._misses = 0         # video: frames in a row without a face

    def _tracking_mesh(self):
        import mediapipe as mp  # lazy: heavy import, only needed when detecting

        return mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=self._min_confidence, min_tracking_confidence=self._min_confidence)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._finder is not None:
            self._finder.close()
            self._finder = None
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def detect(self, image_rgb: np.ndarray, source: str = "image", face: Optional[int] = None) -> FaceLandmarks:
        """Landmarks of one face: ``face`` (0-based, left to right) or the most confident plausible
        one. NoFaceError when there is none (FaceTurnedError for a profile); InputError for a
        ``face`` number the image does not have."""
        if self.video:
            return self._follow_or_search(image_rgb, source)
        h, w = image_rgb.shape[:2]
        search = self._finder.find(image_rgb)
        if not search.faces:
            raise no_face_error(search.missed, source)
        index, warnings = choose_face(search.faces, face, source)
        chosen = search.faces[index]
        pose = check_pose(chosen.layout, chosen.detection.keypoints, source)
        if pose.refuse:
            raise FaceTurnedError(pose.warning)
        if pose.warning:
            warnings.append(pose.warning)
        return FaceLandmarks(points=chosen.points, image_size=(h, w), bbox=chosen.bbox, n_faces=len(search.faces),
                             warnings=warnings, face_index=index, face_boxes=[f.bbox for f in search.faces],
                             score=chosen.detection.score, yaw_deg=pose.yaw_deg)

    def detect_all(self, image_rgb: np.ndarray) -> list:
        """Every face in the image (possibly none), largest first, at most ``max_faces``."""
        arrays = [f.points for f in self._finder.find(image_rgb).faces]
        arrays.sort(key=lambda a: -np.ptp(a[:N_SURFACE_POINTS, 0]) * np.ptp(a[:N_SURFACE_POINTS, 1]))
        return arrays[: self.max_faces]

    # -- video -------------------------------------------------------------------------------------
    def _follow_or_search(self, image, source) -> FaceLandmarks:
        h, w = image.shape[:2]
        if self._last is not None:
            pts = self._follow(image)
            if pts is not None:
                return FaceLandmarks(points=pts, image_size=(h, w), bbox=points_bbox(pts), n_faces=self._n_faces)
            self._last = None                   # lost: search the whole frame again, now
        search = self._finder.find(image, use_tiles=self._misses % TILE_EVERY == 0)
        if not search.faces:
            self._misses += 1
            raise no_face_error(search.missed, source)
        self._misses = 0
        index, _ = choose_face(search.faces, None, source)
        chosen = search.faces[index]
        self._n_faces = len(search.faces)
        self._remember(chosen.points, (h, w), chosen.detection.score)
        return FaceLandmarks(points=chosen.points, image_size=(h, w), bbox=chosen.bbox, n_faces=self._n_faces,
                             face_index=index, face_boxes=[f.bbox for f in search.faces],
                             score=chosen.detection.score)

    def _follow(self, image) -> Optional[np.ndarray]:
        """The followed face's points in this frame; None when it is lost."""
        pts = None
        if self._whole:
            found = self._mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
            pts = landmark_points(found[0], image.shape[1], image.shape[0]) if found else None
            if pts is not None and box_iou(points_bbox(pts), self._last.box) < 0.3:
                pts = None               # tracking mode took up another face: keep to this one
        if pts is None:
            pts = self._finder.landmarks_around(image, self._last)
        if pts is not None:
            self._remember(pts, image.shape[:2], self._last.score)
        return pts

    def _remember(self, points, image_size, score):
        self._last = FaceBox(np.array(points_bbox(points)), score, None)
        span = LARGE_FACE * self._last.side
        if self._whole:
            self._whole = span >= 0.8 * min(image_size)   # a margin, so a face near the limit does not flip
        elif span >= min(image_size):
            self._whole = True
            self._mesh.close()                # tracking mode's region of interest is from frames ago: forget it
            self._mesh = self._tracking_mesh()


def detect_landmarks(image_rgb: np.ndarray, source: str = "image", face: Optional[int] = None) -> FaceLandmarks:
    """One-shot detection on a still image (``face``: which one, 0-based from the left)."""
    with LandmarkDetector(video=False) as det:
        return det.detect(image_rgb, source, face)


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
