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
    """Sequential frame reader with the clip's fps and size.

    ``path`` is a video file, a folder of images (sorted by name), or a glob pattern
    such as ``shots/frame_*.png``. Image sequences get ``fps`` from the caller (default 25).

    A video's header can claim more (or fewer) frames than its data holds (a truncated or badly
    written file), so the header is only an estimate: frames are decoded one after another from
    the first (no seeking, which relies on the same index), and once a read runs into the end of
    the data ``decoded_frames`` holds the true count and ``n_frames`` follows it.
    """

    def __init__(self, path, fps: Optional[float] = None):
        import cv2

        self.path = str(path)
        p = Path(path)
        self._files: Optional[list] = None
        self.decoded_frames: Optional[int] = None
        if any(ch in self.path for ch in "*?[") or p.is_dir():
            pattern = str(p / "*") if p.is_dir() else self.path
            files = sorted(f for f in glob.glob(pattern) if Path(f).suffix.lower() in SUPPORTED_SUFFIXES)
            if not files:
                raise InputError(f"No images found for the image sequence '{self.path}'.")
            self._files = files
            first = load_image(files[0])
            self.height, self.width = first.shape[:2]
            self.fps = float(fps or 25.0)
            self.header_frames = self.decoded_frames = len(files)
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
            self.header_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))   # 0: the container does not say
            cap.release()
            self.kind = "video"
            if self.header_frames < 2:
                self._count_frames()    # the check below must not refuse a clip on its header's word
        if self.n_frames < 2:
            raise InputError(f"'{Path(self.path).name}' has only {self.n_frames} frame; tracking needs a "
                             "video. For a single image use Reconstruct from Photo.")

    @property
    def n_frames(self) -> int:
        """The frames known to decode once a read has reached the end, else the header's count."""
        return self.decoded_frames if self.decoded_frames is not None else self.header_frames

    def length_warning(self) -> str:
        """A message when the decoded count is known and differs from the header's ('' if not, or if
        the header gives none)."""
        if (self.kind != "video" or self.decoded_frames is None or not self.header_frames
                or self.decoded_frames == self.header_frames):
            return ""
        return f"The video's header says {self.header_frames} frames but {self.decoded_frames} decode"

    def _count_frames(self) -> None:
        import cv2
        cap = cv2.VideoCapture(self.path)
        n = 0
        while cap.grab():       # decodes without converting colours
            n += 1
        cap.release()
        self.decoded_frames = n

    def frames(self, start: int = 0, end: Optional[int] = None) -> Iterator[tuple]:
        """Yields (frame index, RGB uint8 array) for start <= index < end, in order; ``end=None``:
        until the data ends (a video may hold more or fewer frames than its header says)."""
        import cv2

        if self._files is not None:
            stop = len(self._files) if end is None else min(end, len(self._files))
            for i in range(start, stop):
                yield i, load_image(self._files[i])
            return
        cap = cv2.VideoCapture(self.path)
        try:
            i = 0
            while end is None or i < end:
                # grab() decodes without the colour conversion: skipping up to ``start`` stays exact
                if i < start:
                    ok = cap.grab()
                else:
                    ok, frame = cap.read()
                if not ok:
                    self.decoded_frames = i
                    return
                if i >= start:
                    yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            cap.release()

    def read(self, index: int) -> np.ndarray:
        for _, frame in self.frames(index, index + 1):
            return frame
        raise InputError(f"Frame {index} could not be read from {Path(self.path).name}: "
                         f"{self.length_warning() or 'the video has ' + str(self.n_frames) + ' frames'}.")


def open_frames(path, fps: Optional[float] = None) -> FrameSource:
    return FrameSource(path, fps)
