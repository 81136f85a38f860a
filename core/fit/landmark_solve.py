"""The landmark stage of a photo fit as a Levenberg-Marquardt solve with an analytic Jacobian.

Given the camera, landmark positions are linear in the model's coefficients (P = T + B c); the camera
(rotation, translation, focal length) enters through a perspective projection. Each iteration builds
the exact Jacobian of every residual from a few small tensor products — reprojection (weighted, in
units of the expected detector noise), the detector's relative depth, the coefficients' Gaussian
priors and the expression range of blendshape models — and solves the damped normal equations.
Rotation is updated multiplicatively (R <- exp(w) R), so it never meets the singularity of an
accumulated axis-angle. Models with joints (FLAME's jaw, neck, eyes) use the generic
forward-mode-Jacobian solver in gauss_newton.py instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..models.morphable import axis_angle_to_matrix
from .gauss_newton import levenberg_marquardt


@dataclass
class LandmarkProblem:
    T: torch.Tensor                 # (L, 3) landmark positions of the template
    B: torch.Tensor                 # (L, 3, K) their change per unit coefficient (identity then expression)
    n_shape: int
    target: torch.Tensor            # (L, 3) detected x, y (pixels) and relative depth
    sqrt_w: torch.Tensor            # (L,) sqrt of the per-landmark weights
    scale: float                    # 1 / (noise sigma * face size): residuals in units of expected noise
    sqrt_depth: float               # sqrt of the depth term's weight
    prior: torch.Tensor             # (K,) precision of each coefficient's Gaussian prior
    focal_prior: float              # precision of log(focal / f0)
    expr_range: Optional[tuple]     # (lo, hi) for blendshape expressions
    bound: float                    # sqrt of the range penalty's weight
    cx: float
    cy: float


def landmark_bases(lm_layer) -> tuple:
    """(T (L, 3), B (L, 3, Ks + Ke)) from a LandmarkLayer: the landmarks as a linear function."""
    S = lm_layer.v_template.shape[0]
    basis = torch.cat([lm_layer.shape_basis, lm_layer.expr_basis], 1).reshape(S, 3, -1)
    tri = lm_layer.local_faces                                      # (L, 3)
    bary = lm_layer.lm_bary                                         # (L, 3)
    T = (lm_layer.v_template[tri] * bary[..., None]).sum(1)
    B = (basis[tri] * bary[..., None, None]).sum(1)
    return T, B


def _skew(v: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack([z, -v[..., 2], v[..., 1], v[..., 2], z, -v[..., 0], -v[..., 1], v[..., 0], z],
                       -1).reshape(v.shape[:-1] + (3, 3))


def _residuals_and_jacobian(pb: LandmarkProblem, R, t, log_f, f0, c, dist0, want_jacobian=True):
    P = pb.T + pb.B @ c                                             # (L, 3)
    Y = P @ R.T                                                     # rotated, before translation
    X = Y + t
    f = f0 * torch.exp(log_f)
    Z = X[:, 2]
    u = f * X[:, 0] / Z + pb.cx
    v = f * X[:, 1] / Z + pb.cy
    w = pb.sqrt_w * pb.scale
    r_xy = torch.stack([(u - pb.target[:, 0]) * w, (v - pb.target[:, 1]) * w], 1).reshape(-1)
    Zm = Z.mean()
    tz = pb.target[:, 2] - pb.target[:, 2].mean()
    dz = f * (Z - Zm) / Zm - tz
    wd = w * pb.sqrt_depth
    r_d = dz * wd
    r_prior = torch.sqrt(pb.prior) * c
    parts = [r_xy, r_d, r_prior]
    K = len(c)
    ke = K - pb.n_shape
    e = c[pb.n_shape:]
    if pb.expr_range is not None:
        lo, hi = pb.expr_range
        parts.append(pb.bound * (torch.relu(lo - e) + torch.relu(e - hi)))
    parts.append(torch.as_tensor([np.sqrt(pb.focal_prior)], dtype=c.dtype, device=c.device) * log_f.reshape(1))
    r = torch.cat(parts)
    if not want_jacobian:
        return r, None
    L = len(P)
    n = 3 + 3 + 1 + K                                               # rotation, translation, log f, coefficients
    # d(pixel)/dX: (L, 2, 3)
    dpx = torch.zeros(L, 2, 3, dtype=c.dtype, device=c.device)
    dpx[:, 0, 0] = f / Z
    dpx[:, 0, 2] = -f * X[:, 0] / Z ** 2
    dpx[:, 1, 1] = f / Z
    dpx[:, 1, 2] = -f * X[:, 1] / Z ** 2
    # dX/dtheta: (L, 3, n)
    dX = torch.zeros(L, 3, n, dtype=c.dtype, device=c.device)
    dX[:, :, 0:3] = -_skew(Y)                                       # R <- exp(w) R
    dX[:, :, 3:6] = dist0 * torch.eye(3, dtype=c.dtype, device=c.device)
    dX[:, :, 7:] = R @ pb.B                                         # (3,3) @ (L,3,K)
    J_xy = (dpx @ dX) * w[:, None, None]                            # (L, 2, n)
    J_xy[:, 0, 6] = (u - pb.cx) * w
    J_xy[:, 1, 6] = (v - pb.cy) * w
    dZ = dX[:, 2, :]                                                # (L, n)
    J_d = (f / Zm) * (dZ - (Z / Zm)[:, None] * dZ.mean(0, keepdim=True)) * wd[:, None]
    J_d[:, 6] = f * (Z - Zm) / Zm * wd
    rows = [J_xy.reshape(-1, n), J_d]
    J_p = torch.zeros(K, n, dtype=c.dtype, device=c.device)
    J_p[:, 7:] = torch.diag(torch.sqrt(pb.prior))
    rows.append(J_p)
    if pb.expr_range is not None:
        lo, hi = pb.expr_range
        slope = pb.bound * ((e > hi).to(c.dtype) - (e < lo).to(c.dtype))
        J_b = torch.zeros(ke, n, dtype=c.dtype, device=c.device)
        J_b[:, 7 + pb.n_shape:] = torch.diag(slope)
        rows.append(J_b)
    J_f = torch.zeros(1, n, dtype=c.dtype, device=c.device)
    J_f[0, 6] = np.sqrt(pb.focal_prior)
    rows.append(J_f)
    return r, torch.cat(rows)


def so3_left_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """J with exp(phi + d) = exp(J d) exp(phi) to first order in d: turns a gradient with respect to a
    left rotation increment into one with respect to the axis-angle ``phi`` itself."""
    theta = float(phi.norm())
    K = _skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device)
    if theta < 1e-4:                                                # series: 1/2, 1/6
        return eye + 0.5 * K + (K @ K) / 6.0
    a = (1.0 - np.cos(theta)) / theta ** 2
    b = (theta - np.sin(theta)) / theta ** 3
    return eye + a * K + b * (K @ K)


def objective_and_gradient(pb: LandmarkProblem, R0: torch.Tensor, t0: torch.Tensor, dist0: float, f0: float,
                           rot: torch.Tensor, trans: torch.Tensor, log_f: torch.Tensor, c: torch.Tensor):
    """The landmark objective 0.5 |r|^2 (r: _residuals_and_jacobian's residuals; the photo fit's L-BFGS loss,
    term for term) and its exact gradient for the L-BFGS path's parameters: R = exp(rot) R0,
    t = t0 + dist0 * trans, f = f0 exp(log_f), and the coefficients c. Returns (loss, g_rot, g_trans,
    g_log_f, g_c). Written out by hand (J^T r without forming J): the problem is tiny, so autograd's
    per-node overhead was most of its cost."""
    R = axis_angle_to_matrix(rot[None])[0] @ R0
    P = pb.T + pb.B @ c                                             # (L, 3)
    Y = P @ R.T
    X = Y + t0 + dist0 * trans
    f = f0 * torch.exp(log_f)
    Z = X[:, 2]
    centre = X.new_tensor([pb.cx, pb.cy])
    uv = f * X[:, :2] / Z[:, None] + centre
    w = pb.sqrt_w * pb.scale
    r_xy = (uv - pb.target[:, :2]) * w[:, None]                     # (L, 2)
    Zm = Z.mean()
    rel = (Z - Zm) / Zm
    wd = w * pb.sqrt_depth
    r_d = (f * rel - (pb.target[:, 2] - pb.target[:, 2].mean())) * wd
    r_f = np.sqrt(pb.focal_prior) * log_f
    loss = (r_xy * r_xy).sum() + (r_d * r_d).sum() + (pb.prior * c * c).sum() + r_f * r_f
    g_c = pb.prior * c
    if pb.expr_range is not None:
        lo, hi = pb.expr_range
        e = c[pb.n_shape:]
        over = torch.relu(e - hi) - torch.relu(lo - e)              # signed distance outside the range
        loss = loss + pb.bound ** 2 * (over * over).sum()
        g_c = g_c + torch.cat([torch.zeros_like(c[:pb.n_shape]), pb.bound ** 2 * over])
    # dL/dX per landmark: the projection's and the relative depth's
    a = r_xy * w[:, None]                                           # dL/d(u, v)
    q = r_d * wd                                                    # dL/d(dz)
    G = torch.zeros_like(X)
    G[:, :2] = a * (f / Z)[:, None]
    G[:, 2] = -(a * X[:, :2]).sum(1) * f / Z ** 2 + f / Zm * q - f / (len(Z) * Zm ** 2) * (q * Z).sum()
    g_log_f = (a * (uv - centre)).sum() + (q * f * rel).sum() + np.sqrt(pb.focal_prior) * r_f
    g_w = torch.linalg.cross(Y, G).sum(0)                           # R <- exp(w) R moves X by w x Y
    g_c = g_c + pb.B.reshape(-1, pb.B.shape[-1]).T @ (G @ R).reshape(-1)
    return 0.5 * loss, so3_left_jacobian(rot).T @ g_w, dist0 * G.sum(0), g_log_f, g_c


def solve_landmarks(pb: LandmarkProblem, R0: torch.Tensor, t: torch.Tensor, f0: float, dist0: float,
                    c0: torch.Tensor, log_f0: float = 0.0, rigid_iters: int = 6, iters: int = 15,
                    fit_focal: bool = True, tol: float = 1e-7) -> dict:
    """Rigid pose first, then everything. Returns {"R", "t", "log_f", "c", "cost", "iterations"}.

    ``t`` is the translation, ``dist0`` the scale the translation step is measured in (the initial
    distance), so every parameter is O(1) for the damping."""
    log_f = torch.as_tensor(float(log_f0), dtype=c0.dtype, device=c0.device)
    state = (R0.clone(), t.clone(), log_f, c0.clone())            # (R, t, log f, coefficients)

    def residuals(s):
        return _residuals_and_jacobian(pb, *s[:3], f0, s[3], dist0, want_jacobian=False)[0]

    def jacobian(s):
        return _residuals_and_jacobian(pb, *s[:3], f0, s[3], dist0)[1]

    def step(s, d):                                                 # d: rotation, translation, log f, c
        R, t_, lf, c = s
        return axis_angle_to_matrix(d[:3][None])[0] @ R, t_ + dist0 * d[3:6], lf + d[6], c + d[7:]

    K = len(c0)
    total, cost = 0, 0.0
    for stage_iters, free_coeffs in ((rigid_iters, False), (iters, True)):
        free = torch.zeros(7 + K, dtype=torch.bool, device=c0.device)
        free[:6] = True
        free[6] = fit_focal
        free[7:] = free_coeffs
        state, cost, n = levenberg_marquardt(residuals, state, stage_iters, free, tol=tol, jacobian=jacobian,
                                             step=step)
        total += n
    R, t, log_f, c = state
    return {"R": R, "t": t, "log_f": log_f, "c": c, "cost": cost, "iterations": total}
