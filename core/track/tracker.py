"""Monocular video tracking with a shared identity (landmark-driven, temporally smooth).

1. Landmarks: mediapipe FaceMesh in video mode on every frame (frames with no face are marked).
2. Identity: a few well-spread, near-frontal frames are fitted jointly: one identity and focal
   length, per-frame pose and expression.
3. Every frame, in chunks: pose (a rotation delta over a reference, translation relative to
   the reference distance), expression and joint rotations (FLAME: neck, jaw, eyes), with
   the identity fixed. Each frame starts from PnP warm-started with the previous frame's pose,
   each chunk from the previous chunk's last expression; velocity and acceleration priors
   inside the optimisation couple neighbouring frames (and the previous chunk's last frame).
4. Gaps: short runs of missing faces are interpolated, long ones (and the clip's ends) held;
   both reported.
5. A zero-phase One-Euro filter removes what jitter is left without adding lag.
Only the landmark points are evaluated (LandmarkLayer), so the cost barely depends on the mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..detect.landmarks import N_POINTS, LandmarkDetector
from ..device import resolve_device
from ..errors import InputError, NoFaceError
from ..fit.batch_fit import BatchLandmarkFitter, BatchPriors
from ..jobs import ensure_progress
from ..models import load_model
from ..models.morphable import axis_angle_to_matrix
from ..render.camera import project
from ..rig.model_rig import key_values
from .smoothing import fill_gaps, one_euro_zero_phase
from .track_file import Track, model_fingerprint
from .video import open_frames


@dataclass
class TrackConfig:
    identity_frames: int = 8           # frames fitted jointly for the shared identity
    chunk: int = 120                   # frames optimised together
    lbfgs_iters: int = 150             # per chunk (60 leaves ~1 px of unconverged error)
    identity_iters: int = 120
    smooth_min_cutoff: float = 2.0     # One-Euro: Hz at rest; 0 disables the post-filter
    smooth_beta: float = 0.5
    max_gap: int = 12                  # frames without a face that are interpolated
    initial_fov_deg: float = 30.0
    priors: BatchPriors = field(default_factory=BatchPriors)   # landmark noise, coefficient and temporal priors


def detect_sequence(source, start: int, end: Optional[int], progress, fraction=(0.0, 0.4)):
    """Landmarks of every frame that decodes in [start, end) (``end=None``: to the end of the data):
    (T, 478, 3) with NaN where no face, face sizes (T,), and how many frames showed several faces.
    T is what decoded, which can be less (or more) than the video's header says."""
    expected = max(1, (source.n_frames if end is None else min(end, source.n_frames or end)) - start)
    pts, sizes = [], []
    multi = 0
    with LandmarkDetector(video=True, max_faces=2) as det:
        for i, frame in source.frames(start, end):
            k = i - start
            points, size = np.full((N_POINTS, 3), np.nan, np.float32), 0.0
            try:
                lm = det.detect(frame)
                points, size = lm.points, lm.face_size
                multi += lm.n_faces > 1
            except NoFaceError:
                pass
            pts.append(points)
            sizes.append(size)
            if k % 5 == 0:   # the header's count is only an estimate of how far along this is
                progress.update("detecting landmarks", fraction[0] + (fraction[1] - fraction[0]) * min(1.0, k / expected))
    if not pts:
        return np.zeros((0, N_POINTS, 3), np.float32), np.zeros(0, np.float32), multi
    return np.stack(pts).astype(np.float32), np.asarray(sizes, np.float32), multi


def _n_frames(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def gap_warnings(valid: np.ndarray, held: list, start: int, max_gap: int) -> list:
    """One message per kind of gap, counted on the same frames (together: every frame without a face):
    short gaps between faces are interpolated, long ones and the clip's ends held (see fill_gaps)."""
    missing = int((~valid).sum())
    n_held = sum(e - s for s, e in held)
    out = []
    if missing > n_held:
        out.append(f"No face in {_n_frames(missing - n_held)} in short gaps (at most {max_gap} frames each): "
                   "the pose is interpolated there.")
    if held:
        runs = [f"{start + s}-{start + e - 1}" if e - s > 1 else str(start + s) for s, e in held]
        listed = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
        out.append(f"No face in frames {listed} ({_n_frames(n_held)}): the pose is held from the nearest "
                   "frame with a face.")
    return out


def _log_rotation(R: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.Rodrigues(R.astype(np.float64))[0][:, 0]


def track_video(video, model=None, device="auto", progress=None, config: Optional[TrackConfig] = None,
                frame_range: Optional[tuple] = None, fps: Optional[float] = None) -> Track:
    """Track a video (or image sequence) -> Track. ``frame_range`` is (start, end) with end exclusive."""
    cfg = config or TrackConfig()
    progress = ensure_progress(progress)
    dev = resolve_device(device)
    t_start = time.perf_counter()
    progress.update("opening video", 0.0)
    src = open_frames(video, fps)
    name = Path(str(video)).name
    start, end = (int(frame_range[0]), int(frame_range[1])) if frame_range else (0, None)
    start = max(0, start)
    if end is not None and end - start < 2:
        raise InputError(f"The frame range {start}-{end} of {name} has fewer than 2 frames.")
    mm = load_model(model)
    progress.update("detecting landmarks", 0.02)
    # every frame is decoded in order: T is what the file holds, not what its header claims
    pts, sizes, multi = detect_sequence(src, start, end, progress, (0.02, 0.45))
    T = len(pts)
    length_note = src.length_warning()
    if T < 2:
        # only when the data ended early: a range of 2+ frames inside the data would hold them
        decoded = src.n_frames
        raise InputError(f"{name} has {decoded} decodable frame{'s' if decoded != 1 else ''}"
                         + (f" (its header says {src.header_frames})" if length_note else "")
                         + (f", so the frame range {start}-{end} holds {T or 'none'}" if frame_range else "")
                         + "; tracking needs 2 or more.")
    valid = ~np.isnan(pts[:, 0, 0])
    warnings = []
    if length_note:
        warnings.append(f"{length_note}; tracking {T}" + (f" (frames {start}-{start + T - 1})." if start else "."))
    if valid.sum() == 0:
        raise NoFaceError(f"No face was found in any of the {T} frames of {name}.")
    if valid.sum() < 2:
        raise NoFaceError(f"A face was found in only one frame of {name}; tracking needs more.")
    if multi:
        warnings.append(f"Several faces were seen in {multi} frames; the most confident plausible one was tracked "
                        "(the face found when tracking started or was last lost).")
    t_detect = time.perf_counter()

    fitter = BatchLandmarkFitter(mm, dev, cfg.priors)
    targets = pts[:, fitter.det_index]
    zero_shape = np.zeros(fitter.lm.n_shape, np.float32)
    nj = fitter.n_pose_joints
    cx, cy = src.width / 2.0, src.height / 2.0
    f0 = 0.5 * max(src.height, src.width) / np.tan(np.radians(cfg.initial_fov_deg) / 2)

    # -- identity on a few good frames ---------------------------------------------------------
    progress.update("fitting identity", 0.46)
    rvec0, tvec0 = fitter.pnp(zero_shape, targets, f0, cx, cy, valid)
    idx_valid = np.flatnonzero(valid)
    frontal = np.array([abs(_yaw_pitch(rvec0[i])) for i in idx_valid])
    # spread over the clip, preferring near-frontal frames within each stretch
    picks = [int(part[np.argmin(frontal[np.searchsorted(idx_valid, part)])])
             for part in np.array_split(idx_valid, min(cfg.identity_frames, len(idx_valid)))]
    ref = picks[0]
    R_ref = _rodrigues(rvec0[ref]).astype(np.float32)
    t_ref = tvec0[ref].astype(np.float32)

    def deltas(ids, rv, tv):
        rot = np.stack([_log_rotation(_rodrigues(rv[i]) @ R_ref.T) for i in ids]).astype(np.float32)
        trans = ((tv[ids] - t_ref) / t_ref[2]).astype(np.float32)
        return rot, trans

    rot0, trans0 = deltas(picks, rvec0, tvec0)
    n = len(picks)
    ident = fitter.fit(targets[picks], sizes[picks], np.ones(n, bool), cx, cy, f0, R_ref, t_ref, zero_shape,
                       rot0, trans0, np.zeros((n, fitter.lm.n_expr), np.float32), fit_identity=True,
                       focal_mode="shared", iters=cfg.identity_iters, progress=progress.sub(0.46, 0.52),
                       stage="fitting identity")
    shape, log_focal = ident.shape, float(ident.log_focal[0])
    focal = float(ident.focal[0])
    t_ident = time.perf_counter()

    # -- every frame, chunk by chunk ------------------------------------------------------------
    rvec, tvec = fitter.pnp(shape, targets, focal, cx, cy, valid, warm_start=True)
    rot_all, trans_all = deltas(range(T), rvec, tvec)
    # frames without a face start from their neighbours (filled below as well)
    rot_all, _ = fill_gaps(rot_all, valid, T)
    trans_all, _ = fill_gaps(trans_all, valid, T)
    expr_all = np.zeros((T, fitter.lm.n_expr), np.float32)
    joint_all = np.zeros((T, nj, 3), np.float32)
    reproj = np.zeros(T, np.float32)
    last_expr = ident.expr.mean(0)
    anchor = None
    chunks = list(range(0, T, cfg.chunk))
    for ci, s in enumerate(chunks):
        e = min(T, s + cfg.chunk)
        n = e - s
        sub = progress.sub(0.52 + 0.43 * ci / len(chunks), 0.52 + 0.43 * (ci + 1) / len(chunks))
        out = fitter.fit(targets[s:e], sizes[s:e], valid[s:e], cx, cy, f0, R_ref, t_ref, shape,
                         rot_all[s:e], trans_all[s:e], np.tile(last_expr, (n, 1)), log_focal0=log_focal,
                         focal_mode="fixed", temporal=True, anchor=anchor, iters=cfg.lbfgs_iters,
                         progress=sub, stage=f"tracking frames {start + s}-{start + e - 1}")
        rot_all[s:e], trans_all[s:e], expr_all[s:e] = out.rot, out.trans, out.expr
        if nj:
            joint_all[s:e] = out.joint
        reproj[s:e] = out.reproj_px
        last_expr = out.expr[-1]
        anchor = {"rot": out.rot[-1], "trans": out.trans[-1], "expr": out.expr[-1]}
        if nj:
            anchor["joint"] = out.joint[-1]
    t_fit = time.perf_counter()

    # -- gaps and smoothing ---------------------------------------------------------------------
    held = []
    filled = []
    for arr in (rot_all, trans_all, expr_all, joint_all.reshape(T, -1)):
        f, held = fill_gaps(arr, valid, cfg.max_gap)
        filled.append(f)
    rot_all, trans_all, expr_all = filled[0], filled[1], filled[2]
    joint_all = filled[3].reshape(T, nj, 3)
    warnings += gap_warnings(valid, held, start, cfg.max_gap)
    if cfg.smooth_min_cutoff > 0:
        rot_all = one_euro_zero_phase(rot_all, src.fps, cfg.smooth_min_cutoff, cfg.smooth_beta)
        trans_all = one_euro_zero_phase(trans_all, src.fps, cfg.smooth_min_cutoff, cfg.smooth_beta)
        expr_all = one_euro_zero_phase(expr_all, src.fps, cfg.smooth_min_cutoff, cfg.smooth_beta)
        if nj:
            joint_all = one_euro_zero_phase(joint_all.reshape(T, -1), src.fps, cfg.smooth_min_cutoff,
                                            cfg.smooth_beta).reshape(T, nj, 3)
    R_all = (axis_angle_to_matrix(torch.as_tensor(rot_all, dtype=torch.float32)) @ torch.as_tensor(R_ref)).numpy()
    t_all = t_ref[None] + t_ref[2] * trans_all
    rel = reproj / np.maximum(sizes, 1.0)
    confidence = np.where(valid, np.exp(-rel / 0.02), 0.0).astype(np.float32)
    landmarks2d = pts[..., :2]
    progress.update("done", 1.0)
    t_end = time.perf_counter()
    return Track(
        video_path=str(Path(str(video)).resolve()) if src.kind == "video" else str(video), fps=src.fps,
        frame_start=start, image_size=(src.height, src.width), model_name=mm.name, model_source=mm.source,
        model_fingerprint=model_fingerprint(mm), shape=shape.astype(np.float32), expr=key_values(mm, expr_all),
        joint_pose=joint_all.astype(np.float32), rotation=R_all.astype(np.float32),
        translation=t_all.astype(np.float32), focal=float(focal), cx=cx, cy=cy, valid=valid,
        confidence=confidence, landmarks=landmarks2d.astype(np.float32), warnings=warnings,
        timings={"detect_s": t_detect - t_start, "identity_s": t_ident - t_detect, "track_s": t_fit - t_ident,
                 "total_s": t_end - t_start, "frames": T,
                 "mean_reprojection_px": float(reproj[valid].mean())},
    )


def _rodrigues(rvec) -> np.ndarray:
    import cv2
    return cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))[0]


def _yaw_pitch(rvec) -> float:
    """How far from frontal a PnP pose is (radians; 0 = facing the camera)."""
    R = _rodrigues(rvec)
    forward = R @ np.array([0.0, 0.0, 1.0])         # the face's +z axis in camera space
    return float(np.arccos(np.clip(-forward[2], -1, 1)))


def track_vertices(track: Track, model, frames=None, device="cpu", camera_space: bool = True):
    """Posed vertices (N, V, 3) of tracked frames, in camera space (or model space)."""
    frames = np.arange(track.n_frames) if frames is None else np.asarray(frames)
    layer = model.layer(device)
    with torch.no_grad():
        shape = torch.as_tensor(track.shape[None], device=layer.device)
        expr = torch.as_tensor(track.expr[frames], device=layer.device)
        joint = torch.as_tensor(track.joint_pose[frames], device=layer.device) if model.joints is not None else None
        v = layer(shape.expand(len(frames), -1), expr, joint)
        if camera_space:
            R = torch.as_tensor(track.rotation[frames], device=layer.device)
            t = torch.as_tensor(track.translation[frames], device=layer.device)
            v = v @ R.transpose(1, 2) + t[:, None]
    return v.cpu().numpy()


def track_landmarks_px(track: Track, model, device="cpu") -> np.ndarray:
    """The tracked model's landmarks projected into every frame: (T, L, 2) pixels."""
    layer = model.layer(device)
    lm = layer.landmark_layer()
    with torch.no_grad():
        shape = torch.as_tensor(track.shape[None], device=layer.device)
        joint = torch.as_tensor(track.joint_pose, device=layer.device) if model.joints is not None else None
        pts = lm(shape, torch.as_tensor(track.expr, device=layer.device), joint)
        R = torch.as_tensor(track.rotation, device=layer.device)
        t = torch.as_tensor(track.translation, device=layer.device)
        cam = pts @ R.transpose(1, 2) + t[:, None]
        return project(cam, track.focal, track.cx, track.cy).cpu().numpy()


def jitter(points: np.ndarray, valid=None) -> float:
    """Mean frame-to-frame acceleration magnitude of (T, L, 2) points over runs of valid frames."""
    acc = points[2:] - 2 * points[1:-1] + points[:-2]
    mag = np.linalg.norm(acc, axis=-1).mean(-1)
    if valid is not None:
        ok = valid[2:] & valid[1:-1] & valid[:-2]
        mag = mag[ok]
    return float(np.nanmean(mag))
