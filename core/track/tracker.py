"""Monocular video tracking with a shared identity (landmark-driven, temporally smooth).

1. Landmarks: mediapipe FaceMesh in video mode on every frame (frames with no face are marked).
2. Identity: a few well-spread, near-frontal frames are fitted jointly: one identity and focal
   length, per-frame pose and expression.
3. Every frame, in chunks: pose (a rotation delta over a reference, translation relative to
   the reference distance), expression and joint rotations (FLAME: neck, jaw, eyes), with
   the identity fixed. Each frame starts from PnP warm-started with the previous frame's pose,
   each chunk from the previous chunk's last expression; velocity and acceleration priors
   inside the optimisation couple neighbouring frames (and the previous chunk's last frame).
4. Gaps: short runs of missing faces are interpolated, long ones held and reported.
5. A zero-phase One-Euro filter removes what jitter is left without adding lag.
Only the landmark points are evaluated (LandmarkLayer), so the cost barely depends on the mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..detect.landmarks import N_POINTS, LandmarkDetector, landmark_regions
from ..device import resolve_device
from ..errors import NoFaceError
from ..fit.losses import depth_loss, landmark_loss
from ..fit.photo_fit import FitConfig, landmark_weights
from ..jobs import ensure_progress
from ..models import load_model
from ..models.morphable import axis_angle_to_matrix
from ..render.camera import project
from .smoothing import fill_gaps, one_euro_zero_phase
from .track_file import Track, model_fingerprint
from .video import open_frames


@dataclass
class TrackConfig:
    identity_frames: int = 8           # frames fitted jointly for the shared identity
    chunk: int = 120                   # frames optimised together
    lbfgs_iters: int = 150             # per chunk (60 leaves ~1 px of unconverged error)
    identity_iters: int = 120
    velocity_weight: float = 2.0       # temporal priors (in units of the per-frame coefficient prior)
    acceleration_weight: float = 20.0
    smooth_min_cutoff: float = 2.0     # One-Euro: Hz at rest; 0 disables the post-filter
    smooth_beta: float = 0.5
    max_gap: int = 12                  # frames without a face that are interpolated
    initial_fov_deg: float = 30.0
    landmark_sigma: float = 0.012
    depth_weight: float = 0.05
    expr_prior: float = 1.0
    shape_prior: float = 1.0
    joint_prior: float = 4.0


def detect_sequence(source, start: int, end: int, progress, fraction=(0.0, 0.4)):
    """Landmarks of every frame: (T, 478, 3) with NaN where no face, plus face sizes."""
    T = end - start
    pts = np.full((T, N_POINTS, 3), np.nan, np.float32)
    sizes = np.zeros(T, np.float32)
    multi = 0
    with LandmarkDetector(video=True, max_faces=2) as det:
        for i, frame in source.frames(start, end):
            k = i - start
            try:
                lm = det.detect(frame)
                pts[k], sizes[k] = lm.points, lm.face_size
                multi += lm.n_faces > 1
            except NoFaceError:
                pass
            if k % 5 == 0:
                progress.update("detecting landmarks", fraction[0] + (fraction[1] - fraction[0]) * k / T)
    return pts, sizes, multi


class SequenceFitter:
    """Batched landmark fitting of many frames with a shared identity."""

    def __init__(self, model, device, cfg: TrackConfig, image_size):
        self.model, self.device, self.cfg = model, device, cfg
        self.layer = model.layer(device)
        self.lm = self.layer.landmark_layer()
        self.det_index = self.layer.lm_detector_index.cpu().numpy()
        fc = FitConfig()
        self.weights = torch.as_tensor(landmark_weights(self.det_index, fc), device=device)
        H, W = image_size
        self.cx, self.cy = W / 2.0, H / 2.0
        self.f0 = 0.5 * max(H, W) / np.tan(np.radians(cfg.initial_fov_deg) / 2)
        self.lm_scale = 0.5 * float(self.weights.sum()) / cfg.landmark_sigma ** 2

    def pnp(self, shape: np.ndarray, targets: np.ndarray, focal: float, valid: np.ndarray):
        """Per-frame rigid pose, each frame starting from the previous frame's solution."""
        import cv2

        with torch.no_grad():
            obj = self.lm(torch.as_tensor(shape[None], device=self.device))[0].cpu().numpy().astype(np.float64)
        K = np.array([[focal, 0, self.cx], [0, focal, self.cy], [0, 0, 1]], np.float64)
        T = len(targets)
        rvecs, tvecs = np.zeros((T, 3)), np.zeros((T, 3))
        prev = None
        for t in range(T):
            if not valid[t]:
                continue
            img = targets[t, :, :2].astype(np.float64)
            if prev is None:
                ok, r, tr = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_EPNP)
                ok, r, tr = cv2.solvePnP(obj, img, K, None, r, tr, True, flags=cv2.SOLVEPNP_ITERATIVE)
            else:
                ok, r, tr = cv2.solvePnP(obj, img, K, None, prev[0].copy(), prev[1].copy(), True,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
            if not ok or tr[2, 0] <= 0:
                r, tr = (prev if prev is not None else (np.array([[np.pi], [0.0], [0.0]]), np.array([[0.0], [0.0], [0.5]])))
            rvecs[t], tvecs[t] = r[:, 0], tr[:, 0]
            prev = (r, tr)
        return rvecs, tvecs

    def fit(self, targets, sizes, valid, shape, log_focal, R_ref, t_ref, rot0, trans0, expr0, joint0,
            fit_identity: bool, iters: int, temporal: bool, anchor=None, progress=None, stage=""):
        """L-BFGS over a batch of frames. Per-frame tensors are (T, ...); returns optimised copies."""
        cfg, dev = self.cfg, self.device
        T = len(targets)
        tgt = torch.as_tensor(np.nan_to_num(targets), dtype=torch.float32, device=dev)
        size = torch.as_tensor(np.maximum(sizes, 1.0), dtype=torch.float32, device=dev)
        vmask = torch.as_tensor(valid, dtype=torch.float32, device=dev)
        dist0 = float(t_ref[2])
        Rr = torch.as_tensor(R_ref, dtype=torch.float32, device=dev)
        tr = torch.as_tensor(t_ref, dtype=torch.float32, device=dev)
        p = {
            "rot": torch.tensor(rot0, dtype=torch.float32, device=dev, requires_grad=True),
            "trans": torch.tensor(trans0, dtype=torch.float32, device=dev, requires_grad=True),
            "expr": torch.tensor(expr0, dtype=torch.float32, device=dev, requires_grad=True),
        }
        shape_t = torch.tensor(shape[None], dtype=torch.float32, device=dev, requires_grad=fit_identity)
        logf = torch.tensor([log_focal], dtype=torch.float32, device=dev, requires_grad=fit_identity)
        joints = self.lm.n_pose_joints > 0
        if joints:
            p["joint"] = torch.tensor(joint0, dtype=torch.float32, device=dev, requires_grad=True)
        params = list(p.values()) + ([shape_t, logf] if fit_identity else [])
        w = self.weights
        anchor_t = None if anchor is None else {k: torch.as_tensor(v, dtype=torch.float32, device=dev)[None]
                                                 for k, v in anchor.items()}

        def temporal_terms():
            total = 0.0
            for k, scale in (("expr", 1.0), ("rot", 30.0), ("trans", 30.0), ("joint", 10.0)):
                if k not in p:
                    continue
                x = p[k].reshape(T, -1)
                if anchor_t is not None and k in anchor_t:
                    x = torch.cat([anchor_t[k].reshape(1, -1), x])
                if len(x) < 2:
                    continue
                v = x[1:] - x[:-1]
                total = total + cfg.velocity_weight * scale ** 2 * (v ** 2).sum()
                if len(x) >= 3:
                    a = x[2:] - 2 * x[1:-1] + x[:-2]
                    total = total + cfg.acceleration_weight * scale ** 2 * (a ** 2).sum()
            return total

        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)
        evals = [0]

        def closure():
            opt.zero_grad(set_to_none=True)
            lm = self.lm(shape_t, p["expr"], p.get("joint"))                        # (T, L, 3)
            R = axis_angle_to_matrix(p["rot"]) @ Rr
            cam = lm @ R.transpose(1, 2) + (tr + dist0 * p["trans"])[:, None]
            focal = self.f0 * torch.exp(logf)
            px = project(cam, focal, self.cx, self.cy)
            r = (px - tgt[..., :2]) / size[:, None, None]
            data = ((w * (r * r).sum(-1)).sum(-1) * vmask).sum() / w.sum()
            z = cam[..., 2]
            zm = z.mean(-1, keepdim=True)
            dz = (focal * (z - zm) / zm - (tgt[..., 2] - tgt[..., 2].mean(-1, keepdim=True))) / size[:, None]
            depth = ((w * dz * dz).sum(-1) * vmask).sum() / w.sum()
            loss = self.lm_scale * (data + cfg.depth_weight * depth)
            loss = loss + 0.5 * cfg.expr_prior * (p["expr"] ** 2).sum()
            if joints:
                loss = loss + 0.5 * cfg.joint_prior * 100 * (p["joint"] ** 2).sum()
            if fit_identity:
                loss = loss + 0.5 * cfg.shape_prior * (shape_t ** 2).sum() + 50 * (logf ** 2).sum()
            if temporal:
                loss = loss + temporal_terms()
            loss.backward()
            evals[0] += 1
            if progress is not None and evals[0] % 10 == 0:
                progress.update(stage, min(evals[0] / (iters * 1.25), 1.0))
            return loss

        opt.step(closure)
        with torch.no_grad():
            out = {k: v.detach().cpu().numpy() for k, v in p.items()}
            out["shape"] = shape_t.detach()[0].cpu().numpy()
            out["log_focal"] = float(logf.detach())
            lm = self.lm(shape_t, p["expr"], p.get("joint"))
            R = axis_angle_to_matrix(p["rot"]) @ Rr
            cam = lm @ R.transpose(1, 2) + (tr + dist0 * p["trans"])[:, None]
            px = project(cam, self.f0 * torch.exp(logf), self.cx, self.cy)
            out["reproj_px"] = torch.linalg.norm(px - tgt[..., :2], dim=-1).mean(-1).cpu().numpy()
            out["R"] = R.cpu().numpy()
            out["t"] = (tr + dist0 * p["trans"]).cpu().numpy()
        return out


def _log_rotation(R: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.Rodrigues(R.astype(np.float64))[0][:, 0]


def track_video(video, model="builtin", device="auto", progress=None, config: Optional[TrackConfig] = None,
                frame_range: Optional[tuple] = None, fps: Optional[float] = None) -> Track:
    """Track a video (or image sequence) -> Track. ``frame_range`` is (start, end) with end exclusive."""
    cfg = config or TrackConfig()
    progress = ensure_progress(progress)
    dev = resolve_device(device)
    t_start = time.perf_counter()
    progress.update("opening video", 0.0)
    src = open_frames(video, fps)
    start, end = frame_range if frame_range else (0, src.n_frames)
    start, end = max(0, int(start)), min(src.n_frames, int(end))
    if end - start < 2:
        raise NoFaceError(f"The frame range {start}-{end} of {Path(str(video)).name} has fewer than 2 frames.")
    mm = load_model(model)
    progress.update("detecting landmarks", 0.02)
    pts, sizes, multi = detect_sequence(src, start, end, progress, (0.02, 0.45))
    T = len(pts)
    valid = ~np.isnan(pts[:, 0, 0])
    warnings = []
    if valid.sum() == 0:
        raise NoFaceError(f"No face was found in any of the {T} frames of {Path(str(video)).name}.")
    if valid.sum() < 2:
        raise NoFaceError(f"A face was found in only one frame of {Path(str(video)).name}; tracking needs more.")
    if multi:
        warnings.append(f"Several faces were seen in {multi} frames; the largest was tracked.")
    t_detect = time.perf_counter()

    sf = SequenceFitter(mm, dev, cfg, (src.height, src.width))
    targets = pts[:, sf.det_index]
    zero_shape = np.zeros(sf.lm.n_shape, np.float32)
    nj = sf.lm.n_pose_joints

    # -- identity on a few good frames ---------------------------------------------------------
    progress.update("fitting identity", 0.46)
    rvec0, tvec0 = sf.pnp(zero_shape, targets, sf.f0, valid)
    idx_valid = np.flatnonzero(valid)
    frontal = np.array([abs(_yaw_pitch(rvec0[i])) for i in idx_valid])
    # spread over the clip, preferring near-frontal frames within each stretch
    picks = [int(part[np.argmin(frontal[np.searchsorted(idx_valid, part)])])
             for part in np.array_split(idx_valid, min(cfg.identity_frames, len(idx_valid)))]
    ref = picks[0]
    R_ref = axis_angle_to_matrix(torch.tensor(rvec0[ref][None], dtype=torch.float32))[0].numpy()
    t_ref = tvec0[ref].astype(np.float32)

    def deltas(ids, rv, tv):
        rot = np.stack([_log_rotation(_rodrigues(rv[i]) @ R_ref.T) for i in ids]).astype(np.float32)
        trans = ((tv[ids] - t_ref) / t_ref[2]).astype(np.float32)
        return rot, trans

    rot0, trans0 = deltas(picks, rvec0, tvec0)
    ident = sf.fit(targets[picks], sizes[picks], np.ones(len(picks), bool), zero_shape, 0.0, R_ref, t_ref,
                   rot0, trans0, np.zeros((len(picks), sf.lm.n_expr), np.float32),
                   np.zeros((len(picks), nj, 3), np.float32), fit_identity=True, iters=cfg.identity_iters,
                   temporal=False, progress=progress.sub(0.46, 0.52), stage="fitting identity")
    shape, log_focal = ident["shape"], ident["log_focal"]
    focal = sf.f0 * float(np.exp(log_focal))
    t_ident = time.perf_counter()

    # -- every frame, chunk by chunk ------------------------------------------------------------
    rvec, tvec = sf.pnp(shape, targets, focal, valid)
    rot_all, trans_all = deltas(range(T), rvec, tvec)
    # frames without a face start from their neighbours (filled below as well)
    rot_all, _ = fill_gaps(rot_all, valid, T)
    trans_all, _ = fill_gaps(trans_all, valid, T)
    expr_all = np.zeros((T, sf.lm.n_expr), np.float32)
    joint_all = np.zeros((T, nj, 3), np.float32)
    reproj = np.zeros(T, np.float32)
    R_all = np.zeros((T, 3, 3), np.float32)
    t_all = np.zeros((T, 3), np.float32)
    last_expr = ident["expr"].mean(0)
    anchor = None
    chunks = list(range(0, T, cfg.chunk))
    for ci, s in enumerate(chunks):
        e = min(T, s + cfg.chunk)
        n = e - s
        sub = progress.sub(0.52 + 0.43 * ci / len(chunks), 0.52 + 0.43 * (ci + 1) / len(chunks))
        out = sf.fit(targets[s:e], sizes[s:e], valid[s:e], shape, log_focal, R_ref, t_ref,
                     rot_all[s:e], trans_all[s:e], np.tile(last_expr, (n, 1)), np.zeros((n, nj, 3), np.float32),
                     fit_identity=False, iters=cfg.lbfgs_iters, temporal=True, anchor=anchor,
                     progress=sub, stage=f"tracking frames {start + s}-{start + e - 1}")
        rot_all[s:e], trans_all[s:e], expr_all[s:e] = out["rot"], out["trans"], out["expr"]
        if nj:
            joint_all[s:e] = out["joint"]
        reproj[s:e] = out["reproj_px"]
        last_expr = out["expr"][-1]
        anchor = {"rot": out["rot"][-1], "trans": out["trans"][-1], "expr": out["expr"][-1]}
        if nj:
            anchor["joint"] = out["joint"][-1]
    t_fit = time.perf_counter()

    # -- gaps and smoothing ---------------------------------------------------------------------
    long_gaps = []
    filled = []
    for arr in (rot_all, trans_all, expr_all, joint_all.reshape(T, -1)):
        f, gaps = fill_gaps(arr, valid, cfg.max_gap)
        filled.append(f)
        long_gaps = gaps
    rot_all, trans_all, expr_all = filled[0], filled[1], filled[2]
    joint_all = filled[3].reshape(T, nj, 3)
    for s, e in long_gaps:
        warnings.append(f"No face in frames {start + s}-{start + e - 1} ({e - s} frames): the pose is held there.")
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
        model_fingerprint=model_fingerprint(mm), shape=shape.astype(np.float32), expr=expr_all.astype(np.float32),
        joint_pose=joint_all.astype(np.float32), rotation=R_all.astype(np.float32),
        translation=t_all.astype(np.float32), focal=float(focal), cx=sf.cx, cy=sf.cy, valid=valid,
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
