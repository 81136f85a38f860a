"""Monocular video tracking with a shared identity (landmark-driven, temporally smooth).

1. Landmarks: mediapipe FaceMesh in video mode on every frame (frames with no face are marked),
   shot cuts (colour change, landmark jump) and who each shot shows (``shots``).
2. Segments: the clip splits at cuts and at gaps longer than ``max_gap``; with ``one_person``,
   segments showing someone other than the person seen longest are dropped. Frames outside every
   segment are hidden (``Track.visible``): no head floats over an empty background.
3. Identity: a few well-spread, near-frontal frames are fitted jointly: one identity and focal
   length, per-frame pose and expression.
4. Every frame of each segment, in chunks: pose (a rotation delta over a reference, translation
   relative to the reference distance), expression and joint rotations (FLAME: neck, jaw, eyes),
   with the identity fixed. Each frame starts from PnP warm-started with the previous frame's pose,
   each chunk from the previous chunk's last expression; velocity and acceleration priors inside the
   optimisation couple neighbouring frames (and the previous chunk's last frame), never across a
   segment's ends.
5. Short gaps inside a segment are interpolated, and a zero-phase One-Euro filter removes what
   jitter is left without adding lag, segment by segment; all of it reported.
Only the landmark points are evaluated (LandmarkLayer), so the cost barely depends on the mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..detect.identity import SAME_PERSON_DISTANCE, face_descriptor
from ..detect.landmarks import N_POINTS, LandmarkDetector
from ..device import resolve_device
from ..errors import InputError, NoFaceError
from ..fit.batch_fit import BatchLandmarkFitter, BatchPriors
from ..jobs import ensure_progress
from ..models import load_model
from ..models.morphable import axis_angle_to_matrix
from ..render.camera import project
from ..rig.model_rig import key_values
from .shots import ShotDetector, format_runs, main_person, runs, segments
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
    max_gap: int = 12                  # frames without a face that are interpolated; longer gaps are hidden
    one_person: bool = True            # after a cut, frames showing someone else are not tracked (hidden)
    same_person_distance: float = SAME_PERSON_DISTANCE   # dlib embedding distance for "same person"
    initial_fov_deg: float = 30.0
    priors: BatchPriors = field(default_factory=BatchPriors)   # landmark noise, coefficient and temporal priors


def detect_sequence(source, start: int, end: Optional[int], progress, fraction=(0.0, 0.4), max_gap: int = 12,
                    identify: bool = True) -> "Detections":
    """Landmarks of every frame that decodes in [start, end) (``end=None``: to the end of the data),
    with what splitting the clip into segments needs: shot cuts (``shots.ShotDetector``) and the face's
    identity embedding at the first frame of every would-be segment (dlib; skipped when absent).
    T is what decoded, which can be less (or more) than the video's header says."""
    expected = max(1, (source.n_frames if end is None else min(end, source.n_frames or end)) - start)
    pts, sizes = [], []
    multi = 0
    shots = ShotDetector()
    descriptors = {}
    last_face = None          # index of the last frame with a face
    with LandmarkDetector(video=True, max_faces=2) as det:
        for i, frame in source.frames(start, end):
            k = i - start
            points, size, lm = np.full((N_POINTS, 3), np.nan, np.float32), 0.0, None
            try:
                lm = det.detect(frame)
                points, size = lm.points, lm.face_size
                multi += lm.n_faces > 1
            except NoFaceError:
                pass
            cut = shots.add(frame, None if lm is None else points, size)
            if lm is not None:
                # a segment starts here (see shots.segments): remember who it shows
                if identify and (last_face is None or cut or k - last_face - 1 > max_gap):
                    d = face_descriptor(frame, lm)
                    if d is not None:
                        descriptors[k] = d
                last_face = k
            pts.append(points)
            sizes.append(size)
            if k % 5 == 0:   # the header's count is only an estimate of how far along this is
                progress.update("detecting landmarks", fraction[0] + (fraction[1] - fraction[0]) * min(1.0, k / expected))
    if not pts:
        return Detections(np.zeros((0, N_POINTS, 3), np.float32), np.zeros(0, np.float32), multi,
                          np.zeros(0, bool), {})
    return Detections(np.stack(pts).astype(np.float32), np.asarray(sizes, np.float32), multi,
                      np.asarray(shots.cut_before, bool), descriptors)


@dataclass
class Detections:
    points: np.ndarray          # (T, 478, 3), NaN where no face
    sizes: np.ndarray           # (T,) face sizes in pixels (0 where none)
    multi: int                  # frames that showed several faces
    cut_before: np.ndarray      # (T,) bool: a shot cut right before this frame
    descriptors: dict           # frame index -> identity embedding, at would-be segment starts


def _n_frames(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def gap_warnings(valid: np.ndarray, hidden: list, start: int, max_gap: int) -> list:
    """One message per kind of gap, counted on the same frames (together: every frame without a face):
    short gaps inside a shot are interpolated; long ones, the clip's faceless ends (``hidden`` runs)
    show no head at all."""
    missing = int((~valid).sum())
    n_hidden = sum(e - s for s, e in hidden)
    out = []
    if missing > n_hidden:
        out.append(f"No face in {_n_frames(missing - n_hidden)} in short gaps (at most {max_gap} frames each): "
                   "the pose is interpolated there.")
    if hidden:
        out.append(f"No face in frames {format_runs(hidden, start)} ({_n_frames(n_hidden)}): the head is hidden "
                   "there (keyed visibility): a gap this long is never bridged.")
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
    dets = detect_sequence(src, start, end, progress, (0.02, 0.45), max_gap=cfg.max_gap,
                           identify=cfg.one_person)
    pts, sizes, multi = dets.points, dets.sizes, dets.multi
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

    # -- segments: shots, long gaps, and the one person tracked ---------------------------------------
    segs = segments(valid, dets.cut_before, cfg.max_gap)
    cuts = [t for t in np.flatnonzero(dets.cut_before) if 0 < t < T]
    if cuts:
        shown = ", ".join(str(start + int(t)) for t in cuts[:8]) + (f" and {len(cuts) - 8} more" if len(cuts) > 8 else "")
        warnings.append(f"Shot cut{'s' if len(cuts) > 1 else ''} before frame{'s' if len(cuts) > 1 else ''} {shown}: "
                        "each shot is tracked on its own, never smoothed across a cut.")
    others = []
    if cfg.one_person and len(segs) > 1:
        kept, dropped = main_person(segs, {i: dets.descriptors[s] for i, (s, _) in enumerate(segs)
                                           if s in dets.descriptors}, cfg.same_person_distance)
        if dropped:
            others = [segs[i] for i in dropped]
            segs = [segs[i] for i in kept]
            for s_, e_ in others:
                valid[s_:e_] = False
            warnings.append(f"Frames {format_runs(others, start)} show a different person: not tracked, the head is "
                            f"hidden there (FaceForge follows the person seen longest, in frames "
                            f"{format_runs(segs, start)}). Track those frames separately with a frame range.")
    if valid.sum() < 2:
        raise NoFaceError(f"The person tracked is seen in fewer than 2 frames of {name}.")
    visible = np.zeros(T, bool)
    for s_, e_ in segs:
        visible[s_:e_] = True
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

    # -- every frame, chunk by chunk, segment by segment: nothing couples two segments ---------------
    rot_all = np.zeros((T, 3), np.float32)
    trans_all = np.zeros((T, 3), np.float32)
    expr_all = np.zeros((T, fitter.lm.n_expr), np.float32)
    joint_all = np.zeros((T, nj, 3), np.float32)
    reproj = np.zeros(T, np.float32)
    total, done = sum(e - s for s, e in segs), 0
    for s0, e0 in segs:
        # PnP warm-starts from the previous frame: only inside a shot
        rvec, tvec = fitter.pnp(shape, targets[s0:e0], focal, cx, cy, valid[s0:e0], warm_start=True)
        rot_seg, trans_seg = deltas(range(e0 - s0), rvec, tvec)
        # frames without a face start from their neighbours (filled below as well)
        rot_all[s0:e0] = fill_gaps(rot_seg, valid[s0:e0], T)[0]
        trans_all[s0:e0] = fill_gaps(trans_seg, valid[s0:e0], T)[0]
        last_expr = ident.expr.mean(0)
        anchor = None
        for s in range(s0, e0, cfg.chunk):
            e = min(e0, s + cfg.chunk)
            n = e - s
            sub = progress.sub(0.52 + 0.43 * done / total, 0.52 + 0.43 * (done + n) / total)
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
            done += n
    t_fit = time.perf_counter()

    # -- gaps and smoothing, inside each segment; hidden frames hold their neighbours' values -------------
    series = [rot_all, trans_all, expr_all, joint_all.reshape(T, -1)]
    for s0, e0 in segs:
        for arr in series:
            seg = fill_gaps(arr[s0:e0], valid[s0:e0], cfg.max_gap)[0]
            if cfg.smooth_min_cutoff > 0:
                seg = one_euro_zero_phase(seg, src.fps, cfg.smooth_min_cutoff, cfg.smooth_beta)
            arr[s0:e0] = seg
    rot_all, trans_all, expr_all, joint_flat = (fill_gaps(arr, visible, 0)[0] for arr in series)
    joint_all = joint_flat.reshape(T, nj, 3)
    other_person = np.zeros(T, bool)
    for s_, e_ in others:
        other_person[s_:e_] = True
    warnings += gap_warnings(valid | other_person, runs(~visible & ~other_person), start, cfg.max_gap)
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
        translation=t_all.astype(np.float32), focal=float(focal), cx=cx, cy=cy, valid=valid, visible=visible,
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
