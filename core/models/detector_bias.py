"""How the face detector's points deviate from the true projections of their surface points, per
model, as a function of head pose — learned from renders of that model, corrected in every fit.

mediapipe's points are a learned guess, not the projections of fixed surface points: on a turned
head its eyelid, cheek and jaw points drift (a few pixels frontal, 10+ px at 50 degrees of yaw on a
300 px face), and a fit that trusts them bends the identity to follow the drift. Calibration renders
random people of the model (identity, a mild expression, head turns up to +-55 degrees yaw and
+-18 degrees pitch, varied light) with FaceForge's renderer, runs the detector, and fits, per point,
the offset (in units of the face size, image axes) as a linear function of a few pose features.
What remains after that correction is the point's noise: its standard deviation gives each point its
weight in the fits.

Every fit then subtracts ``offset(yaw, pitch)`` from the detections (the pose from the fit's PnP
start) and weights points by their calibrated noise. The default model ships its calibration in its
file; other models are calibrated on first use (about 20 s) and keep it for the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

FEATURES = ("1", "sin(yaw)", "|sin(yaw)|", "sin(pitch)", "sin(yaw)*|sin(yaw)|")


def pose_features(yaw: float, pitch: float) -> np.ndarray:
    s, p = np.sin(yaw), np.sin(pitch)
    return np.array([1.0, s, abs(s), p, s * abs(s)], np.float64)


def head_angles(R: np.ndarray) -> tuple:
    """(yaw, pitch) in radians of a model->camera rotation (OpenCV camera: x right, y down, z forward).

    The model's forward axis (+z, out of the face) seen in the camera: frontal = (0, 0, -1); positive
    yaw turns the face toward the image's right (the model's left), positive pitch tips it down."""
    fwd = np.asarray(R, np.float64)[:, 2]
    yaw = np.arctan2(fwd[0], -fwd[2])
    pitch = np.arctan2(fwd[1], np.hypot(fwd[0], fwd[2]))
    return float(yaw), float(pitch)


@dataclass
class DetectorBias:
    detector_index: np.ndarray          # (L,) detector points, in the order of the model's embedding
    coef: np.ndarray                    # (L, F, 2) offset per pose feature, face-size units, image axes
    sigma: np.ndarray                   # (L,) residual standard deviation after the correction
    samples: int = 0
    report: dict = field(default_factory=dict)

    def offset(self, yaw: float, pitch: float) -> np.ndarray:
        """(L, 2) expected detection minus true projection, in face-size units."""
        return np.einsum("f,lfc->lc", pose_features(yaw, pitch), self.coef)

    def correct(self, points: np.ndarray, face_size: float, R: np.ndarray) -> np.ndarray:
        """Detections (L, 2+) of this embedding's points with the expected bias for pose R removed."""
        yaw, pitch = head_angles(R)
        out = np.array(points, np.float32, copy=True)
        out[:, :2] -= face_size * self.offset(yaw, pitch)
        return out

    def weights(self, floor: float = 0.004, cap: float = 4.0) -> np.ndarray:
        """(L,) relative weights 1/sigma^2, normalised to a median of 1 (noise floor in face-size
        units so that a point the renders happen to find exactly is not trusted without bound)."""
        var = self.sigma.astype(np.float64) ** 2 + floor ** 2
        w = 1.0 / var
        return np.clip(w / np.median(w), 1.0 / cap, cap).astype(np.float32)

    def matches(self, detector_index: np.ndarray) -> bool:
        return np.array_equal(np.asarray(detector_index), self.detector_index)


def _random_view(rng, model, max_yaw=55.0, max_pitch=18.0):
    ks, ke = model.n_shape, model.n_expr
    shape = rng.normal(0, 0.8, ks)
    expr = np.zeros(ke)
    if ke:
        k = rng.choice(ke, size=min(3, ke), replace=False)
        expr[k] = rng.uniform(0.0, 0.35, len(k)) if model.expr_range else rng.normal(0, 0.3, len(k))
    yaw = np.radians(rng.uniform(-max_yaw, max_yaw))
    pitch = np.radians(rng.uniform(-max_pitch, max_pitch))
    roll = np.radians(rng.uniform(-6, 6))
    return shape, expr, yaw, pitch, roll


def _rotation(yaw, pitch, roll) -> np.ndarray:
    """Model -> OpenCV camera: turn the head (yaw about +y, pitch about x, roll about z), then flip y, z."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0, -1.0])
    return flip @ Rz @ Rx @ Ry


def calibrate(model, n_views: int = 48, size: int = 512, seed: int = 0, device="cpu") -> DetectorBias:
    """Render ``n_views`` random people of ``model``, detect, and fit the per-point bias model."""
    from ..detect.landmarks import LandmarkDetector
    from ..errors import NoFaceError
    from ..render import render
    from ..render.camera import project

    if model.landmarks is None:
        raise ValueError("calibrate the detector after the landmark correspondence is known")
    rng = np.random.default_rng(seed)
    layer = model.layer(device)
    lm_idx = model.landmarks.detector_index
    albedo0 = model.albedo_mean if model.albedo_mean is not None else np.full((model.n_vertices, 3), 0.7)
    feats, offsets, angles = [], [], []
    with LandmarkDetector(video=False, max_faces=1, min_confidence=0.3) as det:
        for _ in range(n_views):
            shape, expr, yaw, pitch, roll = _random_view(rng, model)
            R = _rotation(yaw, pitch, roll)
            with torch.no_grad():
                v = layer(torch.as_tensor(shape[None], dtype=torch.float32),
                          torch.as_tensor(expr[None], dtype=torch.float32))[0].numpy().astype(np.float64)
            # the face's landmarks fill ~40% of the image, centred
            lm_model = (layer.landmarks(torch.as_tensor(v[None], dtype=torch.float32))[0].numpy())
            extent = float(np.ptp(lm_model @ R.T, 0)[:2].max())
            focal = 2.0 * size
            dist = focal * extent / (0.4 * size)
            t = np.array([0.0, 0.0, dist]) - R @ lm_model.mean(0)
            cam = torch.as_tensor((v @ R.T + t)[None], dtype=torch.float32)
            tint = rng.uniform(0.8, 1.15, 3) * rng.uniform(0.6, 1.1)
            albedo = torch.as_tensor(np.clip(albedo0 * tint, 0, 1)[None], dtype=torch.float32)
            sh = torch.zeros(1, 9, 3)
            sh[:, 0] = rng.uniform(0.7, 1.0) / 0.886227
            sh[:, 1:4] = torch.as_tensor(rng.normal(0, 0.25, 3))[None, :, None]
            out = render(cam, torch.as_tensor(model.faces), albedo, sh, focal, size / 2, size / 2, size, size)
            bg = torch.tensor(rng.uniform(0.2, 0.8, 3), dtype=torch.float32)
            img = torch.where(out.mask[..., None], out.image, bg)[0].clamp(0, 1)
            img = (img.numpy() * 255).round().astype(np.uint8)
            try:
                found = det.detect(img, source="calibration render")
            except NoFaceError:
                continue
            with torch.no_grad():
                true_px = project(layer.landmarks(cam), focal, size / 2, size / 2)[0].numpy()
            d = (found.points[lm_idx, :2] - true_px) / found.face_size
            seen_yaw, seen_pitch = head_angles(R)          # the same angles a fit reads off its pose
            feats.append(pose_features(seen_yaw, seen_pitch))
            offsets.append(d)
            angles.append(np.degrees(seen_yaw))
    if len(feats) < 12:
        raise ValueError(f"only {len(feats)} of {n_views} calibration renders were detected")
    Phi = np.stack(feats)                                            # (N, F)
    D = np.stack(offsets)                                            # (N, L, 2)
    N, L = D.shape[:2]
    # ridge-regularised least squares, all points at once (the features are shared)
    A = Phi.T @ Phi + 1e-3 * np.eye(Phi.shape[1])
    coef = np.linalg.solve(A, Phi.T @ D.reshape(N, -1)).reshape(-1, L, 2).transpose(1, 0, 2)   # (L, F, 2)
    resid = D - np.einsum("nf,lfc->nlc", Phi, coef)
    dof = max(N - Phi.shape[1], 1)
    sigma = np.sqrt((resid ** 2).sum((0, 2)) / (2 * dof))
    report = _report(np.array(angles), D, resid)
    return DetectorBias(detector_index=np.asarray(lm_idx).copy(), coef=coef.astype(np.float32),
                        sigma=sigma.astype(np.float32), samples=N, report=report)


def _report(yaw_deg: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict:
    """Mean offset length per |yaw| bin (face-size %), before and after the correction."""
    out = {}
    for lo, hi in ((0, 15), (15, 35), (35, 60)):
        m = (np.abs(yaw_deg) >= lo) & (np.abs(yaw_deg) < hi)
        if m.any():
            out[f"|yaw| {lo}-{hi}"] = {
                "views": int(m.sum()),
                "before_pct": round(float(np.linalg.norm(before[m], axis=-1).mean() * 100), 2),
                "after_pct": round(float(np.linalg.norm(after[m], axis=-1).mean() * 100), 2)}
    return out


_session: dict = {}


def detector_bias(model, calibrate_missing: bool = True) -> Optional[DetectorBias]:
    """The model's calibration: from its file, else (once per session) computed now."""
    bias = getattr(model, "detector_bias", None)
    if bias is not None and model.landmarks is not None and bias.matches(model.landmarks.detector_index):
        return bias
    if not calibrate_missing or model.landmarks is None:
        return None
    key = id(model)
    if key not in _session:
        _session[key] = calibrate(model)
    model.detector_bias = _session[key]
    return model.detector_bias
