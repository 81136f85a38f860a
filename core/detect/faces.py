"""Finding the faces in a photo or video frame, and choosing one.

FaceMesh on its own looks for faces with mediapipe's short-range detector on the whole image
shrunk to 128 pixels, so a face that is small in a large frame (186 px tall in 1920x1080) is
missed although the same face is found once cropped. Here faces are found first: mediapipe's
full-range detector (``model_selection=1``) and the short-range one (better on close-ups) on the
whole image and, on large images, the full-range one on overlapping tiles. FaceMesh then runs on a
square crop around each face, and its points are mapped back to the full image.

Faces are listed left to right (by the centre of their landmarks); ``face=N`` counts in that
order from 0. Without a choice, the most confident plausible face is taken, not the largest:
a round shape behind a person can pass for a big face (reliability.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import FaceTurnedError, InputError, NoFaceError
from .reliability import N_SURFACE_POINTS, PROFILE_MISS_YAW_DEG, LayoutFit, fit_layout, keypoint_yaw_deg

N_POINTS = 478           # FaceMesh with refine_landmarks=True (468 surface points + 10 iris points)
CROP_MARGIN = 2.2        # landmark crop side over the detector box's larger side
TILE_MIN_SIDE = 320      # tiles smaller than this add little: the detector sees 192 px


@dataclass
class FaceBox:
    """One face detector hit, in pixels of the full image."""
    box: np.ndarray          # (4,) x0, y0, x1, y1
    score: float
    keypoints: Optional[np.ndarray]   # (6, 2) the person's right eye, left eye, nose tip, mouth, right and left
                                      # ear; None for a box made from landmarks (video following)

    @property
    def side(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


@dataclass
class Face:
    """A face found in the image: its landmarks and how much to trust them."""
    points: np.ndarray       # (478, 3) x, y pixels of the full image; z relative depth in pixels
    detection: FaceBox       # the detector hit it was found from
    layout: LayoutFit

    @property
    def bbox(self) -> tuple:
        return points_bbox(self.points)

    @property
    def confidence(self) -> float:
        """Detector score times landmark plausibility (0..1): what the default choice maximises."""
        return self.detection.score * self.layout.plausibility


def landmark_points(face_landmarks, width: int, height: int, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """mediapipe's normalised landmarks of an image (or crop) of ``width`` x ``height`` at (x0, y0)
    -> (478, 3) pixels of the full image (z scaled like x, as mediapipe defines it)."""
    pts = np.array([(p.x, p.y, p.z) for p in face_landmarks.landmark], np.float32)
    return pts * np.array([width, height, width], np.float32) + np.array([x0, y0, 0.0], np.float32)


def square_crop(image: np.ndarray, centre, side: float):
    """A ``side`` x ``side`` crop centred at ``centre`` (padded with black outside the image)
    and the full-image position of its top-left corner."""
    import cv2

    h, w = image.shape[:2]
    side = max(int(round(side)), 16)
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    x1, y1 = x0 + side, y0 + side
    crop = image[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=0)
    return np.ascontiguousarray(crop), (x0, y0)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-9)


def _overlap(a, b) -> float:
    """Intersection over the smaller box: a face cut by a tile edge is still the same face."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(small, 1e-9)


def tiles(height: int, width: int) -> list:
    """Overlapping square tiles (x0, y0, side) for finding faces too small for the whole-image pass:
    sides of the short edge and half of it, each shifted by half a side."""
    out = []
    short = min(height, width)
    for side in (short, short // 2):
        if side < TILE_MIN_SIDE or (side == short and height == width):
            continue
        step = side // 2
        ys = sorted({*range(0, height - side + 1, step), height - side})
        xs = sorted({*range(0, width - side + 1, step), width - side})
        out += [(x, y, side) for y in ys for x in xs]
    return out


class FaceFinder:
    """Reusable face detectors + a static FaceMesh for the crops (close it, or use ``with``)."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp  # lazy: heavy import, only needed when detecting

        fd = mp.solutions.face_detection
        self._full = fd.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        self._short = fd.FaceDetection(model_selection=0, min_detection_confidence=min_confidence)
        # a crop may hold a neighbour's face as well: look for two, keep the one at the centre
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=2, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for name in ("_full", "_short", "_mesh"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.close()
                setattr(self, name, None)

    # -- detection -------------------------------------------------------------------------------
    @staticmethod
    def _hits(detector, image, x0=0.0, y0=0.0) -> list:
        h, w = image.shape[:2]
        out = []
        for d in detector.process(np.ascontiguousarray(image)).detections or []:
            bb = d.location_data.relative_bounding_box
            box = np.array([bb.xmin * w + x0, bb.ymin * h + y0, (bb.xmin + bb.width) * w + x0,
                            (bb.ymin + bb.height) * h + y0])
            kp = np.array([(k.x * w + x0, k.y * h + y0) for k in d.location_data.relative_keypoints])
            out.append(FaceBox(box, float(d.score[0]), kp))
        return out

    def boxes(self, image: np.ndarray, use_tiles: bool = True) -> list:
        """Detector hits on the whole image (both detectors) and on tiles, duplicates merged,
        most confident first."""
        hits = self._hits(self._full, image) + self._hits(self._short, image)
        if use_tiles:
            for x, y, side in tiles(*image.shape[:2]):
                hits += self._hits(self._full, image[y:y + side, x:x + side], x, y)
        hits.sort(key=lambda b: -b.score)
        kept = []
        for b in hits:
            if all(_overlap(b.box, k.box) < 0.5 for k in kept):
                kept.append(b)
        return kept

    # -- landmarks on a crop -----------------------------------------------------------------------
    def landmarks_around(self, image: np.ndarray, box: FaceBox) -> Optional[np.ndarray]:
        """(478, 3) full-image points of the face in a crop around ``box``; None if FaceMesh sees none."""
        crop, (x0, y0) = square_crop(image, box.centre, CROP_MARGIN * box.side)
        side = crop.shape[0]
        found = self._mesh.process(crop).multi_face_landmarks or []
        if not found:
            return None
        arrays = [landmark_points(f, side, side, x0, y0) for f in found]
        # the face whose landmark box the detector box overlaps most (not a neighbour in the margin)
        return max(arrays, key=lambda a: box_iou(box.box, points_bbox(a)))

    def find(self, image: np.ndarray, use_tiles: bool = True) -> "FaceSearch":
        """Every face, left to right, and the detector hits FaceMesh found no face in."""
        faces, missed = [], []
        for box in self.boxes(image, use_tiles):
            pts = self.landmarks_around(image, box)
            if pts is None:
                missed.append(box)
            elif all(box_iou(points_bbox(pts), f.bbox) <= 0.5 for f in faces):   # not one face reached twice
                faces.append(Face(pts, box, fit_layout(pts)))
        faces.sort(key=lambda f: (f.bbox[0] + f.bbox[2]) / 2)
        return FaceSearch(faces, missed)


@dataclass
class FaceSearch:
    faces: list              # Face, left to right
    missed: list             # FaceBox where the detector saw a face but FaceMesh placed no points


def points_bbox(points: np.ndarray) -> tuple:
    """(x0, y0, x1, y1) of the surface points."""
    s = points[:N_SURFACE_POINTS]
    return (float(s[:, 0].min()), float(s[:, 1].min()), float(s[:, 0].max()), float(s[:, 1].max()))


def no_face_error(missed: list, source: str = "image") -> NoFaceError:
    """The error for an image without landmarks, saying what the detectors did see."""
    if not missed:
        return NoFaceError(
            f"No face found in {source}. Use a photo where a face is visible and lit, not covered by hands, hair "
            "or glare, and turned less than ~45 degrees from the camera.")
    best = max(missed, key=lambda b: b.score)
    yaw = keypoint_yaw_deg(best.keypoints)
    if yaw >= PROFILE_MISS_YAW_DEG:
        return FaceTurnedError(
            f"The face in {source} is turned too far from the camera (~{yaw:.0f} degrees or more by the face "
            "detector's keypoints, nearly a profile): the landmark detector cannot place its points. Use a photo "
            "that shows both eyes.")
    return NoFaceError(
        f"A face was detected in {source} (confidence {best.score:.2f}) but its landmarks could not be placed: "
        "it may be blurred, covered or turned away. Use a sharper, more frontal photo.")


def choose_face(faces: list, face: Optional[int] = None, source: str = "image") -> tuple:
    """(index into ``faces``, warnings). ``face`` picks one (0-based, left to right); by default
    the most confident plausible face. Raises InputError for a ``face`` the image does not have."""
    n = len(faces)
    if face is not None:
        if not 0 <= int(face) < n:
            raise InputError(f"Face {face} was asked for, but {source} has {n} face{'s' if n > 1 else ''} "
                             f"(numbered 0-{n - 1} from left to right).")
        index = int(face)
    else:
        index = int(np.argmax([f.confidence for f in faces]))
    warnings = []
    if n > 1:
        how = "as asked" if face is not None else "the most confident"
        warnings.append(f"{n} faces found in {source}; using face {index} of 0-{n - 1} (counted from the left, "
                        f"{how}). Choose another with the Face setting (--face N on the command line).")
    if faces[index].layout.plausibility < 0.5:
        warnings.append(f"The face chosen in {source} does not look like a human face to the landmark check "
                        f"(layout misfit {faces[index].layout.residual:.2f}); the result may be wrong.")
    return index, warnings


def draw_face_numbers(image_rgb: np.ndarray, boxes: list, chosen: int) -> np.ndarray:
    """The photo with every face's box and number (the ``face=N`` to pass), the chosen one in green."""
    import cv2

    out = np.ascontiguousarray(image_rgb.copy())
    thick = max(2, round(max(out.shape[:2]) / 400))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = (40, 220, 60) if i == chosen else (255, 200, 40)
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), colour, thick)
        scale = max(0.6, (y1 - y0) / 90)
        (tw, th), _ = cv2.getTextSize(str(i), cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        org = (int(x0), max(th + 2, int(y0) - 4))
        cv2.rectangle(out, (org[0], org[1] - th - 2), (org[0] + tw + 4, org[1] + 2), colour, -1)
        cv2.putText(out, str(i), (org[0] + 2, org[1]), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick)
    return out
