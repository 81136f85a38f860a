"""Reading videos (mp4/mov/avi/... via OpenCV) and image sequences as RGB frames."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..detect.images import SUPPORTED_SUFFIXES, load_image
from ..errors import InputError

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"}


class FrameSource:
    """Random-access-ish frame reader with the clip's fps and size.

    ``path`` is a video file, a folder of images (sorted by name), or a glob pattern
    such as ``shots/frame_*.png``. Image sequences get ``fps`` from the caller (default 25).
    """

    def __init__(self, path, fps: Optional[float] = None):
        import cv2

        self.path = str(path)
        p = Path(path)
        self._files: Optional[list] = None
        if any(ch in self.path for ch in "*?[") or p.is_dir():
            pattern = str(p / "*") if p.is_dir() else self.path
            files = sorted(f for f in glob.glob(pattern) if Path(f).suffix.lower() in SUPPORTED_SUFFIXES)
            if not files:
                raise InputError(f"No images found for the image sequence '{self.path}'.")
            self._files = files
            first = load_image(files[0])
            self.height, self.width = first.shape[:2]
            self.fps = float(fps or 25.0)
            self.n_frames = len(files)
            self.kind = "images"
        else:
            if not p.is_file():
                raise InputError(f"Video not found: {p}")
            if p.suffix.lower() not in VIDEO_SUFFIXES:
                raise InputError(f"Unsupported video type '{p.suffix}' ({p.name}); use one of: "
                                 + ", ".join(sorted(VIDEO_SUFFIXES)) + ", or a folder of images.")
            cap = cv2.VideoCapture(str(p))
            ok, frame = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                cap.release()
                raise InputError(f"Could not read any frame from {p.name}: the file is corrupt or its codec "
                                 "is not supported by OpenCV.")
            self.height, self.width = frame.shape[:2]
            self.fps = float(fps or cap.get(cv2.CAP_PROP_FPS) or 25.0)
            reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
            # containers sometimes misreport their length: trust it only when positive
            self.n_frames = reported if reported > 0 else self._count_frames()
            self.kind = "video"
        if self.n_frames < 2:
            raise InputError(f"'{Path(self.path).name}' has only {self.n_frames} frame; tracking needs a "
                             "video. For a single image use Reconstruct from Photo.")

    def _count_frames(self) -> int:
        import cv2
        cap = cv2.VideoCapture(self.path)
        n = 0
        while cap.grab():
            n += 1
        cap.release()
        return n

    def frames(self, start: int = 0, end: Optional[int] = None) -> Iterator[tuple]:
        """Yields (frame index, RGB uint8 array) for start <= index < end, in order."""
        import cv2

        end = self.n_frames if end is None else min(end, self.n_frames)
        if self._files is not None:
            for i in range(start, end):
                yield i, load_image(self._files[i])
            return
        cap = cv2.VideoCapture(self.path)
        try:
            if start:
                cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            for i in range(start, end):
                ok, frame = cap.read()
                if not ok:
                    break          # a truncated file ends the clip early; the caller sees fewer frames
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    def read(self, index: int) -> np.ndarray:
        for _, frame in self.frames(index, index + 1):
            return frame
        raise InputError(f"Frame {index} could not be read from {Path(self.path).name}.")


def open_frames(path, fps: Optional[float] = None) -> FrameSource:
    return FrameSource(path, fps)
