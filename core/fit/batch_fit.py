"""Landmark fitting of many images at once: the shared engine of video tracking (frames of one
clip) and multi-photo reconstruction (photos of one person).

Each item b has its own pose — a rotation delta over a reference rotation R_ref[b] and a
translation relative to t_ref[b] in units of that reference distance, so every parameter is
O(1) and well conditioned — its own expression and joint rotations; the identity is shared.
Focal length is shared (one camera), per item (several cameras) or fixed. Optional velocity
and acceleration priors couple consecutive items (video). Only landmark points are evaluated
(LandmarkLayer), and one L-BFGS run optimises the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..models.morphable import axis_angle_to_matrix
from ..render.camera import project
from .photo_fit import FitConfig, landmark_weights


@dataclass
class BatchPriors:
    landmark_sigma: float = 0.012      # detector noise as a fraction of the face size
    depth_weight: float = 0.05
    expr_prior: float = 1.0
    expr_bound_weight: float = 1e4     # blendshape models (weights in 0..1): a stiff wall at the range's ends
    shape_prior: float = 1.0
    joint_prior: float = 4.0
    focal_prior: float = 50.0          # on log(focal / initial focal)
    velocity_weight: float = 2.0       # temporal priors (only with temporal=True)
    acceleration_weight: float = 20.0


@dataclass
class BatchResult:
    shape: np.ndarray                  # (Ks,)
    expr: np.ndarray                   # (B, Ke)
    joint: np.ndarray                  # (B, J-1, 3)
    rot: np.ndarray                    # (B, 3) deltas over R_ref
    trans: np.ndarray                  # (B, 3) relative translations
    log_focal: np.ndarray              # (B,) (equal entries when shared)
    R: np.ndarray                      # (B, 3, 3) model -> camera
    t: np.ndarray                      # (B, 3)
    focal: np.ndarray                  # (B,)
    reproj_px: np.ndarray              # (B,) mean landmark distance


class BatchLandmarkFitter:
    def __init__(self, model, device, priors: Optional[BatchPriors] = None):
        self.model, self.device = model, device
        self.priors = priors or BatchPriors()
        self.layer = model.layer(device)
        self.lm = self.layer.landmark_layer()
        self.det_index = self.layer.lm_detector_index.cpu().numpy()
        self.weights = torch.as_tensor(landmark_weights(self.det_index, FitConfig()), device=device)
        self.lm_scale = 0.5 * float(self.weights.sum()) / self.priors.landmark_sigma ** 2

    @property
    def n_pose_joints(self) -> int:
        return self.lm.n_pose_joints

    def landmarks_model(self, shape: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.lm(torch.as_tensor(shape[None], dtype=torch.float32, device=self.device))[0].cpu().numpy()

    def pnp(self, shape, targets, focal, cx, cy, valid, warm_start: bool = True):
        """Per-item rigid pose by PnP on the landmarks; optionally each from the previous item's
        solution (consecutive video frames). Returns rvecs (B, 3), tvecs (B, 3)."""
        import cv2

        obj = self.landmarks_model(shape).astype(np.float64)
        B = len(targets)
        focal, cx, cy = (np.broadcast_to(np.asarray(a, np.float64), (B,)) for a in (focal, cx, cy))
        rvecs, tvecs = np.zeros((B, 3)), np.zeros((B, 3))
        prev = None
        for b in range(B):
            if not valid[b]:
                continue
            K = np.array([[focal[b], 0, cx[b]], [0, focal[b], cy[b]], [0, 0, 1]], np.float64)
            img = targets[b, :, :2].astype(np.float64)
            if prev is None or not warm_start:
                ok, r, tr = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_EPNP)
                ok, r, tr = cv2.solvePnP(obj, img, K, None, r, tr, True, flags=cv2.SOLVEPNP_ITERATIVE)
            else:
                ok, r, tr = cv2.solvePnP(obj, img, K, None, prev[0].copy(), prev[1].copy(), True,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
            if not ok or tr[2, 0] <= 0:
                frontal = (np.array([[np.pi], [0.0], [0.0]]), np.array([[0.0], [0.0], [0.5]]))
                r, tr = prev if prev is not None else frontal
            rvecs[b], tvecs[b] = r[:, 0], tr[:, 0]
            prev = (r, tr)
        return rvecs, tvecs

    def fit(self, targets, sizes, valid, cx, cy, f0, R_ref, t_ref, shape0, rot0, trans0, expr0, joint0=None,
            log_focal0=None, fit_identity: bool = False, focal_mode: str = "shared", temporal: bool = False,
            anchor: Optional[dict] = None, iters: int = 100, item_weights=None, progress=None,
            stage: str = "") -> BatchResult:
        """One L-BFGS run over the batch. Arrays are per item (B, ...) unless noted.

        focal_mode: "shared" (one focal for all items), "per_item", or "fixed" (f0 as given).
        item_weights: (B,) multiplies each item's landmark term (e.g. photo quality)."""
        pr, dev = self.priors, self.device
        B = len(targets)
        f32 = dict(dtype=torch.float32, device=dev)
        tgt = torch.as_tensor(np.nan_to_num(targets), **f32)
        size = torch.as_tensor(np.maximum(sizes, 1.0), **f32)
        vmask = torch.as_tensor(valid, **f32)
        if item_weights is not None:
            vmask = vmask * torch.as_tensor(item_weights, **f32)
        cx_t = torch.as_tensor(np.broadcast_to(cx, (B,)).copy(), **f32)
        cy_t = torch.as_tensor(np.broadcast_to(cy, (B,)).copy(), **f32)
        f0_t = torch.as_tensor(np.broadcast_to(f0, (B,)).copy(), **f32)
        Rr = torch.as_tensor(np.broadcast_to(R_ref, (B, 3, 3)).copy(), **f32)
        tr = torch.as_tensor(np.broadcast_to(t_ref, (B, 3)).copy(), **f32)
        dist = tr[:, 2:3]
        nj = self.n_pose_joints
        p = {
            "rot": torch.tensor(rot0, **f32).requires_grad_(True),
            "trans": torch.tensor(trans0, **f32).requires_grad_(True),
            "expr": torch.tensor(expr0, **f32).requires_grad_(True),
        }
        if nj:
            j0 = np.zeros((B, nj, 3), np.float32) if joint0 is None else joint0
            p["joint"] = torch.tensor(j0, **f32).requires_grad_(True)
        shape_t = torch.tensor(np.asarray(shape0)[None], **f32).requires_grad_(fit_identity)
        n_f = 1 if focal_mode == "shared" else B
        lf0 = np.zeros(n_f, np.float32) if log_focal0 is None else np.broadcast_to(log_focal0, (n_f,)).copy()
        logf = torch.tensor(lf0, **f32).requires_grad_(focal_mode != "fixed")
        params = list(p.values()) + ([shape_t] if fit_identity else []) + ([logf] if focal_mode != "fixed" else [])
        w = self.weights
        anchor_t = None if anchor is None else {k: torch.as_tensor(v, **f32) for k, v in anchor.items()}

        def geometry():
            lm = self.lm(shape_t, p["expr"], p.get("joint"))                       # (B, L, 3)
            R = axis_angle_to_matrix(p["rot"]) @ Rr
            t = tr + dist * p["trans"]
            cam = lm @ R.transpose(1, 2) + t[:, None]
            focal = (f0_t * torch.exp(logf)).expand(B)
            return cam, focal, R, t

        def temporal_terms():
            total = 0.0
            for k, scale in (("expr", 1.0), ("rot", 30.0), ("trans", 30.0), ("joint", 10.0)):
                if k not in p:
                    continue
                x = p[k].reshape(B, -1)
                if anchor_t is not None and k in anchor_t:
                    x = torch.cat([anchor_t[k].reshape(1, -1), x])
                if len(x) >= 2:
                    total = total + pr.velocity_weight * scale ** 2 * ((x[1:] - x[:-1]) ** 2).sum()
                if len(x) >= 3:
                    total = total + pr.acceleration_weight * scale ** 2 * ((x[2:] - 2 * x[1:-1] + x[:-2]) ** 2).sum()
            return total

        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)
        evals = [0]

        def closure():
            opt.zero_grad(set_to_none=True)
            cam, focal, _, _ = geometry()
            px = project(cam, focal, cx_t, cy_t)
            r = (px - tgt[..., :2]) / size[:, None, None]
            data = ((w * (r * r).sum(-1)).sum(-1) * vmask).sum() / w.sum()
            z = cam[..., 2]
            zm = z.mean(-1, keepdim=True)
            dz = (focal[:, None] * (z - zm) / zm - (tgt[..., 2] - tgt[..., 2].mean(-1, keepdim=True))) / size[:, None]
            depth = ((w * dz * dz).sum(-1) * vmask).sum() / w.sum()
            loss = self.lm_scale * (data + pr.depth_weight * depth) + 0.5 * pr.expr_prior * (p["expr"] ** 2).sum()
            loss = loss + pr.expr_bound_weight * self.layer.expr_bound_penalty(p["expr"])
            if nj:
                loss = loss + 0.5 * pr.joint_prior * 100 * (p["joint"] ** 2).sum()
            if fit_identity:
                loss = loss + 0.5 * pr.shape_prior * (shape_t ** 2).sum()
            if focal_mode != "fixed":
                loss = loss + pr.focal_prior * (logf ** 2).sum()
            if temporal:
                loss = loss + temporal_terms()
            loss.backward()
            evals[0] += 1
            if progress is not None and evals[0] % 10 == 0:
                progress.update(stage, min(evals[0] / (iters * 1.25), 1.0))
            return loss

        opt.step(closure)
        with torch.no_grad():
            cam, focal, R, t = geometry()
            px = project(cam, focal, cx_t, cy_t)
            reproj = torch.linalg.norm(px - tgt[..., :2], dim=-1).mean(-1)
            return BatchResult(
                shape=shape_t[0].cpu().numpy(), expr=p["expr"].cpu().numpy(),
                joint=p["joint"].cpu().numpy() if nj else np.zeros((B, 0, 3), np.float32),
                rot=p["rot"].cpu().numpy(), trans=p["trans"].cpu().numpy(),
                log_focal=np.broadcast_to(logf.cpu().numpy(), (B,)).copy(), R=R.cpu().numpy(), t=t.cpu().numpy(),
                focal=focal.cpu().numpy(), reproj_px=reproj.cpu().numpy())
