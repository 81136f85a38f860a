"""Video tracking: frames -> landmarks -> per-frame model parameters (shared identity)."""

from .track_file import Track, load_track, save_track
from .video import FrameSource, open_frames

__all__ = ["FrameSource", "Track", "load_track", "open_frames", "save_track"]
