"""Reading user images into RGB uint8 arrays, with clear errors for anything unreadable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError

SUPPORTED_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_image(path) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB array. Alpha is dropped, greyscale expanded."""
    import cv2  # lazy: keeps `import core` cheap for code that never reads images

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"Image not found: {p}")
    if p.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ImageReadError(
            f"Unsupported image type '{p.suffix}' ({p.name}); use one of: "
            + ", ".join(sorted(SUPPORTED_SUFFIXES)))
    # np.fromfile + imdecode also handles non-ASCII paths, which cv2.imread does not on every OS
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageReadError(f"Could not decode {p.name}: the file is corrupt or not really a {p.suffix} image.")
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if min(img.shape[:2]) < 32:
        raise ImageReadError(f"{p.name} is only {img.shape[1]}x{img.shape[0]} pixels; a face needs more.")
    return np.ascontiguousarray(img)
