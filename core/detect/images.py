"""Reading user images into RGB uint8 arrays, with clear errors for anything unreadable.

OpenCV decodes first (it keeps 16-bit, float and alpha data as they are); Pillow decodes what
OpenCV cannot (TGA, and variants of the other formats OpenCV rejects) and reads the EXIF
orientation. Every result is an (H, W, 3) uint8 RGB array, converted like this:

- 8-bit: as is; 16-bit and other integers: scaled from their full range (65535 -> 255).
- Float data in a scene-linear format (EXR, Radiance HDR, PFM): an exposure that puts the 99th
  percentile of the brightest channel at white, clipped to [0, 1], then sRGB-encoded.
- Float TIFF (no colour-space convention): taken as display-referred; only scaled down when it
  exceeds 1 (e.g. floats saved in 0-255), never gamma-encoded. Reading a linear image this way
  only makes it darker, while the opposite mistake would wash a display image out.
- Alpha: composited on white (a cut-out portrait is usually shown on white; black would merge
  with dark hair). PNG/TIFF alpha is straight; EXR colour is premultiplied, as its format says.
- Grey: copied to R, G and B.
- EXIF orientation: applied exactly once. OpenCV's TIFF decoder applies the TIFF orientation tag
  itself (libtiff), even with IMREAD_UNCHANGED; for every other format IMREAD_UNCHANGED ignores
  it, so the tag read by Pillow is applied here; Pillow-decoded images use ImageOps.exif_transpose.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ImageReadError

# OpenCV reads EXR only when this is set; it reads it at the first EXR decode and then caches
# it, so it must be set before anything in the process touches an EXR. A user's own value wins.
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

# what OpenCV's imgcodecs reads (this build: JPEG, PNG, TIFF, WebP, JPEG 2000, OpenEXR, Radiance,
# PNM/PFM, Sun raster, BMP), plus TGA through Pillow (Blender reads it too)
SUPPORTED_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pxm", ".pfm", ".exr", ".hdr", ".pic", ".sr", ".ras", ".tga",
}
LINEAR_SUFFIXES = {".exr", ".hdr", ".pic", ".pfm"}   # float data that is scene-linear by definition
PREMULTIPLIED_SUFFIXES = {".exr"}

# EXIF orientation -> the array operation that shows the image upright (Pillow's exif_transpose
# table: 6 = ROTATE_270, i.e. a quarter turn clockwise)
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def image_file_glob() -> str:
    """The supported suffixes as a file-browser filter (``*.png;*.jpg;...``)."""
    return ";".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))


def load_image(path) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB array, upright (see the module notes for the conversions)."""
    p = Path(path)
    if p.is_dir():
        raise ImageReadError(f"'{p}' is a folder, not an image: choose an image file "
                             "(Reconstruct from Photos takes a folder of photos).")
    if not p.is_file():
        raise ImageReadError(f"Image not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ImageReadError(
            f"Unsupported image type '{p.suffix}' ({p.name}); save it as PNG or JPEG, or use one of: "
            + ", ".join(sorted(SUPPORTED_SUFFIXES)))
    # np.fromfile + imdecode also handles non-ASCII paths, which cv2.imread does not on every OS
    data = np.fromfile(str(p), dtype=np.uint8)
    if not data.size:
        raise ImageReadError(f"{p.name} is empty (0 bytes): choose another file or export the image again.")
    img = _decode_opencv(data, p)
    if img is not None:
        fmt, orientation = _pillow_header(p)
        if fmt == "TIFF":
            orientation = 1          # OpenCV's TIFF decoder has applied it already
    else:
        img, orientation = _decode_pillow(p), 1   # exif_transpose has applied it
    img = _to_rgb8(img, linear=suffix in LINEAR_SUFFIXES, premultiplied=suffix in PREMULTIPLIED_SUFFIXES)
    img = _ORIENT.get(orientation, lambda a: a)(img)
    if min(img.shape[:2]) < 32:
        raise ImageReadError(f"{p.name} is only {img.shape[1]}x{img.shape[0]} pixels; a face needs more.")
    return np.ascontiguousarray(img)


def _decode_opencv(data: np.ndarray, p: Path):
    """The image in RGB(A) order with its own sample type, or None if OpenCV cannot decode it."""
    import cv2  # lazy: keeps `import core` cheap for code that never reads images

    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        if p.suffix.lower() == ".exr":   # the codec was switched off before this module set the variable
            raise ImageReadError(
                f"Could not read {p.name}: OpenCV's EXR reader is switched off in this process "
                f"(OPENCV_IO_ENABLE_OPENEXR={os.environ.get('OPENCV_IO_ENABLE_OPENEXR', '')!r}). Set "
                "OPENCV_IO_ENABLE_OPENEXR=1 before starting, or save the image as 16-bit PNG or TIFF.") from e
        return None
    if img is not None and img.ndim == 3 and img.shape[2] >= 3:
        img = img[..., [2, 1, 0, *range(3, img.shape[2])]]   # BGR(A) -> RGB(A)
    return img


def _decode_pillow(p: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            if im.mode in ("I", "F"):
                return np.asarray(im)
            alpha = "A" in im.getbands() or "transparency" in im.info
            return np.asarray(im.convert("RGBA" if alpha else "RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"Could not decode {p.name}: the file is corrupt or not really a {p.suffix} "
                             "image. Open it in an image editor and save it again as PNG or JPEG.") from e


def _pillow_header(p: Path) -> tuple:
    """(Pillow's name for the format, EXIF orientation 1-8) from the file's header; ('', 1) if none."""
    from PIL import Image
    try:
        with Image.open(p) as im:
            if im.format == "PNG" and "exif" not in im.info and "Raw profile type exif" not in im.info:
                # EXIF belongs before the pixels; looking for it after them would decode the PNG again
                return im.format, 1
            return im.format or "", int(im.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError, Image.DecompressionBombError):
        return "", 1   # not a format Pillow knows (EXR, PFM, ...): no EXIF to apply


# the diagonal of a 35 mm film frame (36 x 24 mm): "35 mm equivalent" focal lengths are defined on it
FULL_FRAME_DIAGONAL_MM = float(np.hypot(36.0, 24.0))


def exif_focal_px(path, width: int, height: int) -> Optional[float]:
    """The photo's focal length in pixels from its EXIF FocalLengthIn35mmFilm (phones and most cameras
    write it), or None when there is none. A 35 mm equivalent is defined on the frame's diagonal, so it
    converts by the image's diagonal, which survives rotation and resizing but not cropping: when the
    EXIF pixel dimensions (if written) have another aspect ratio than the image, the photo was cropped
    and the tag is not used; a value outside 8-1200 mm is taken as garbage."""
    from PIL import Image
    try:
        with Image.open(Path(path)) as im:
            if im.format == "PNG" and "exif" not in im.info:
                return None                              # (looking after the pixels would decode them)
            exif = im.getexif().get_ifd(0x8769)          # the Exif sub-IFD
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, Image.DecompressionBombError):
        return None
    try:
        f35 = float(exif.get(0xA405, 0) or 0)            # FocalLengthIn35mmFilm (mm)
        wx, hx = float(exif.get(0xA002, 0) or 0), float(exif.get(0xA003, 0) or 0)   # PixelX/YDimension
    except (TypeError, ValueError):
        return None
    if not 8.0 <= f35 <= 1200.0:
        return None
    if wx > 0 and hx > 0:
        a, b = sorted((wx, hx)), sorted((float(width), float(height)))
        if abs(a[0] / a[1] - b[0] / b[1]) > 0.02:
            return None
    return f35 / FULL_FRAME_DIAGONAL_MM * float(np.hypot(width, height))


def _unit(x: np.ndarray) -> np.ndarray:
    """Integer samples -> float32 in [0, 1] from their type's full range; floats unchanged."""
    if np.issubdtype(x.dtype, np.integer):
        top = np.iinfo(x.dtype).max
        return np.clip(x, 0, top).astype(np.float32) / np.float32(top)
    return np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _srgb_encode(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def _to_rgb8(img: np.ndarray, linear: bool, premultiplied: bool) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[2]
    colour, alpha = (img[..., :1], None) if c == 1 else (img[..., :1], img[..., 1]) if c == 2 \
        else (img[..., :3], img[..., 3] if c >= 4 else None)
    colour = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour
    if img.dtype == np.uint8 and alpha is None:
        return colour
    x = _unit(colour)
    a = None if alpha is None else np.clip(_unit(alpha), 0.0, 1.0)[..., None]
    if np.issubdtype(img.dtype, np.floating):
        x = np.maximum(x, 0.0)
        lit = x.max(axis=2) if a is None else x.max(axis=2)[a[..., 0] > 0.5]
        peak = float(np.percentile(lit, 99)) if lit.size else 0.0
        if peak > 0 and (linear or peak > 1.0):
            x = x / np.float32(peak)
    if a is not None:
        x = x + (1.0 - a) if premultiplied else x * a + (1.0 - a)
    x = np.clip(x, 0.0, 1.0)
    if linear and np.issubdtype(img.dtype, np.floating):
        x = _srgb_encode(x)
    return np.round(x * 255.0).astype(np.uint8)
