from .images import load_image
from .landmarks import FaceLandmarks, LandmarkDetector, detect_landmarks

__all__ = ["FaceLandmarks", "LandmarkDetector", "detect_landmarks", "load_image"]
