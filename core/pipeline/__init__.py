"""End-to-end pipelines: what the Blender operators, the CLI and the demo call.

Each pipeline takes its inputs, a device and a ``progress`` (see core/jobs.py) and returns plain
data; it never touches Blender. The scene is built from the returned HeadRig afterwards.
One module per pipeline; this package re-exports them all.
"""

from .photo import PhotoReconstruction, fit_params_json, head_rig_from_fit, reconstruct_photo, save_outputs
from .photos import MultiPhotoReconstruction, photo_paths, reconstruct_photos, save_texture
from .video import VideoTrackResult, head_rig_from_track, rig_from_track_file, track_video_to_rig

__all__ = ["MultiPhotoReconstruction", "PhotoReconstruction", "VideoTrackResult", "fit_params_json",
           "head_rig_from_fit", "head_rig_from_track", "photo_paths", "reconstruct_photo", "reconstruct_photos",
           "rig_from_track_file", "save_outputs", "save_texture", "track_video_to_rig"]
