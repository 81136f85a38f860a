"""A video -> Track (optionally refined and saved) -> animated HeadRig; or a saved track -> rig."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..jobs import ensure_progress
from ..models import MorphableModel, embedded_name, load_model
from ..models.arkit import expand_key_values
from ..rig import BoneSpec, CameraSpec, HeadAnimation, HeadRig
from ..rig.model_rig import expression_shape_keys, key_values, model_topology


@dataclass
class VideoTrackResult:
    track: "object"          # core.track.Track
    rig: HeadRig
    model: MorphableModel
    warnings: list = field(default_factory=list)


def track_video_to_rig(video, model=None, device="auto", progress=None, frame_range=None,
                       refine: bool = False, track_path=None, config=None) -> VideoTrackResult:
    """Video -> Track (saved to ``track_path`` when given) -> animated HeadRig."""
    from ..track.refine import refine_photometric
    from ..track.track_file import save_track
    from ..track.tracker import track_video

    progress = ensure_progress(progress)
    mm = load_model(model)
    track = track_video(video, mm, device, progress.sub(0.0, 0.8 if refine else 0.98), config, frame_range)
    if refine:
        track = refine_photometric(track, mm, device, progress.sub(0.8, 0.98))
    if track_path:
        save_track(track, track_path)
    rig = head_rig_from_track(mm, track)
    progress.update("done", 1.0)
    return VideoTrackResult(track=track, rig=rig, model=mm, warnings=list(track.warnings))


def rig_from_track_file(track_path, model=None) -> VideoTrackResult:
    """Re-import a saved track without re-tracking (the model is the track's unless given)."""
    from ..track.track_file import check_model, load_track

    track = load_track(track_path)
    # an embedded model is found by its name (its file moves with the add-on), others by their file
    mm = load_model(model if model else (track.model_name if embedded_name(track.model_name) else track.model_source))
    check_model(track, mm)
    return VideoTrackResult(track=track, rig=head_rig_from_track(mm, track), model=mm, warnings=list(track.warnings))


def head_rig_from_track(model: MorphableModel, track) -> HeadRig:
    """The tracked identity as the mesh, a root bone carrying the head's rigid motion (plus the
    model's own joints), expression shape keys animated per frame, and the camera of the
    clip's first face frame (with the video as its background)."""
    T = track.n_frames
    ref = int(np.flatnonzero(track.valid)[0]) if track.valid.any() else 0
    R0 = track.rotation[ref].astype(np.float64)
    t0 = track.translation[ref].astype(np.float64)
    # head motion relative to the reference: the camera stays put, the head moves
    root_R = np.einsum("ji,tjk->tik", R0, track.rotation.astype(np.float64))          # R0^T R_t
    root_t = np.einsum("ji,tj->ti", R0, track.translation.astype(np.float64) - t0)    # R0^T (t_t - t0)
    layer = model.layer("cpu")
    import torch
    with torch.no_grad():
        neutral = layer.shaped(torch.as_tensor(track.shape[None]))[0].numpy()
    if model.joints is not None:
        j = model.joints
        bones = BoneSpec(names=list(j.names), parents=j.parents.copy(),
                         heads=(j.regressor @ neutral).astype(np.float32), weights=j.weights.astype(np.float32),
                         pose=track.joint_pose[ref].astype(np.float32))
    else:
        # the built-in model has no joints: one root bone moves the whole face
        bones = BoneSpec(names=["root"], parents=np.array([-1]), heads=neutral.mean(0, keepdims=True).astype(np.float32),
                         weights=np.ones((model.n_vertices, 1), np.float32), pose=np.zeros((0, 3), np.float32))
    H, W = track.image_size
    camera = CameraSpec(focal_px=float(track.focal), width=int(W), height=int(H), rotation=R0, translation=t0,
                        cx=float(track.cx), cy=float(track.cy), image_path=track.video_path)
    values = np.zeros((T, model.n_expr), np.float32)
    values[:, : track.expr.shape[1]] = key_values(model, track.expr)
    key_names, deltas, _ = expression_shape_keys(model)
    values = expand_key_values(values, len(key_names))      # combined ARKit keys stay at 0
    anim = HeadAnimation(fps=float(track.fps), frame_start=int(track.frame_start), shape_key_values=values,
                         root_rotation=root_R.astype(np.float32), root_translation=root_t.astype(np.float32),
                         joint_pose=track.joint_pose.astype(np.float32) if model.joints is not None else None,
                         valid=track.valid.copy(), video_path=track.video_path,
                         visible=None if track.visible is None else track.visible.copy())
    return HeadRig(name=Path(str(track.video_path)).stem or "tracked_head", vertices=neutral.astype(np.float32),
                   faces=model.faces.copy(), shape_key_names=key_names, shape_key_deltas=deltas,
                   shape_key_values=values[ref].copy(), vertex_colors=(model.albedo_mean.copy()
                                                                        if model.albedo_mean is not None else None),
                   uv=model.uv, bones=bones, camera=camera, animation=anim, topology=model_topology(model),
                   metadata={"model": model.name, "model_source": model.source, "frames": T,
                             "fps": float(track.fps)})
