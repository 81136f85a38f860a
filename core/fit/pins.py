"""Artist corrections: pins on the model's surface, dragged to where they belong in a photo or frame.

A pin is a point of the surface (a triangle and barycentric coordinates, so it follows every
identity, expression and pose) and the pixel it must project to in one view (photo or video frame).
Re-solving warm-starts from an existing solution (a photo fit, a multi-photo fit, a tracked frame)
and minimises, by Levenberg-Marquardt with the analytic Jacobian of landmark_solve.py:

- the pins' reprojection error, in units of ``pin_sigma_px`` (small: pins are strong constraints);
- optionally the landmarks, weighted as in the photo fit: held where the previous solution put them
  (default), or pulled to the detector's points with the photo fit's N(0, 1) priors;
- a prior that keeps every parameter near the previous solution (identity, each view's expression
  and pose), so a pin changes only what it demands;
- the expression weights' range (0..1 for blendshape models): a wall, steps clipped at it and an
  active set of weights held on it (gauss_newton.py's bounds hooks).
The pose is solved first, then everything free (as the photo fit does). The detector's relative
depth is left out: the prior on the previous solution already holds what it contributed.

Locks freeze identity, expression or pose. Several views share the identity, so a pin in one
photo updates all of them. Only the rows of the bases under the pinned and landmark points are
touched (as LandmarkLayer does), so a re-solve costs the same whatever the mesh size. Joints
(FLAME's jaw, neck, eyes) are held at the previous solution: with the joint rotations fixed, the
posed points are still exactly affine in the coefficients, so the same solver applies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..models.morphable import LandmarkLayer, MorphableLayer, axis_angle_to_matrix
from .gauss_newton import levenberg_marquardt
from .landmark_solve import LandmarkProblem, _residuals_and_jacobian, landmark_bases


@dataclass
class Pin:
    face: int                      # triangle index into model.faces
    bary: tuple                    # barycentric coordinates of the point in that triangle (sum 1)
    target: tuple                  # (u, v) pixels where the point must be seen
    view: int = 0                  # photo (multi-photo head) or frame (track) it belongs to

    def to_dict(self) -> dict:
        return {"face": int(self.face), "bary": [float(b) for b in self.bary],
                "target": [float(x) for x in self.target], "view": int(self.view)}

    @staticmethod
    def from_dict(d: dict) -> "Pin":
        return Pin(int(d["face"]), tuple(float(b) for b in d["bary"]), tuple(float(x) for x in d["target"]),
                   int(d.get("view", 0)))


@dataclass
class ViewState:
    """One photo / frame: its camera (OpenCV, model -> camera) and the head's expression there."""
    rotation: np.ndarray           # (3, 3)
    translation: np.ndarray        # (3,)
    focal: float
    cx: float
    cy: float
    expr: np.ndarray               # (Ke,)
    joint_pose: np.ndarray         # (J-1, 3) (empty for models without joints)
    landmarks: Optional[np.ndarray] = None   # (L, 2) detector points of the model's landmarks (NaN: none)
    face_size: float = 0.0         # pixels; scales the landmarks' noise


@dataclass
class HeadState:
    shape: np.ndarray              # (Ks,) identity shared by the views
    views: list                    # ViewState per photo / frame

    def copy(self) -> "HeadState":
        return HeadState(self.shape.copy(), [dataclasses.replace(v, rotation=v.rotation.copy(),
                                                                 translation=v.translation.copy(),
                                                                 expr=v.expr.copy()) for v in self.views])

    def to_dict(self) -> dict:
        """Plain JSON-able numbers (Blender custom properties, files)."""
        return {"shape": self.shape.tolist(), "views": [
            {"rotation": v.rotation.tolist(), "translation": v.translation.tolist(), "focal": float(v.focal),
             "cx": float(v.cx), "cy": float(v.cy), "expr": v.expr.tolist(), "joint_pose": v.joint_pose.tolist(),
             "face_size": float(v.face_size),
             "landmarks": None if v.landmarks is None else np.nan_to_num(v.landmarks, nan=-1e9).tolist()}
            for v in self.views]}

    @staticmethod
    def from_dict(d: dict) -> "HeadState":
        views = []
        for v in d["views"]:
            lm = v.get("landmarks")
            if lm is not None:
                lm = np.asarray(lm, np.float32)
                lm[lm < -1e8] = np.nan
            views.append(ViewState(np.asarray(v["rotation"], np.float32), np.asarray(v["translation"], np.float32),
                                   float(v["focal"]), float(v["cx"]), float(v["cy"]), np.asarray(v["expr"], np.float32),
                                   np.asarray(v["joint_pose"], np.float32).reshape(-1, 3), lm,
                                   float(v.get("face_size", 0.0))))
        return HeadState(np.asarray(d["shape"], np.float32), views)


@dataclass
class PinConfig:
    pin_sigma_px: float = 0.1         # how closely a pin is followed (pixels, one standard deviation)
    use_landmarks: bool = True        # the detector's points too (where the view has them)
    # "fit": the landmarks hold where the previous solution put them (re-solving without pins changes
    # nothing); "detector": they pull to the detections, with the photo fit's N(0, 1) priors (the
    # re-solve also finishes an automatic fit that stopped short of the detector's optimum)
    landmark_targets: str = "fit"
    landmark_sigma: float = 0.012     # their noise as a fraction of the face size (as the photo fit)
    # how far a parameter may move from the previous solution for about the cost of one pixel of pin
    # error at pin_sigma_px: identity and expression in coefficient units, rotation in degrees,
    # translation as a fraction of the camera distance
    identity_sigma: float = 0.7
    expression_sigma: float = 0.35
    rotation_sigma_deg: float = 20.0  # weak: one or two pins move the whole head first, as artists expect
    translation_sigma: float = 0.1
    landmark_release_m: float = 0.02   # landmarks this close to a pin (model space) fade out (0: never)
    lock_identity: bool = False
    lock_expression: bool = False
    lock_pose: bool = False
    # blendshape models: a wall at the range's ends (stiffer than the photo fit's 1e4, since pins are
    # stiffer than landmarks; stiffer still slows the damped steps for no visible gain)
    expr_bound_weight: float = 1e5
    rigid_iters: int = 4              # LM iterations on the pose alone, then
    iters: int = 12                   # on everything free (a drag warm-starts from the last solution)
    tol: float = 1e-3                 # stop once an iteration gains less than this fraction of the cost


def state_from_photo_fit(fit, detection=None) -> HeadState:
    """A HeadState from a PhotoFit (core/fit/photo_fit.py); its detected landmarks come along."""
    P = fit.params
    lm = np.asarray(fit.landmarks_detected_px, np.float32) if fit.landmarks_detected_px is not None else None
    size = float(detection.face_size) if detection is not None else \
        (float(np.ptp(lm[:, 0])) if lm is not None else 0.0)
    return HeadState(np.asarray(P["shape"], np.float32), [ViewState(
        np.asarray(P["rotation"], np.float32), np.asarray(P["translation"], np.float32), float(P["focal"]),
        float(P["cx"]), float(P["cy"]), np.asarray(P["expr"], np.float32),
        np.asarray(P["joint_pose"], np.float32).reshape(-1, 3), lm, size)])


def state_from_multi_fit(multi, detections=None, landmark_index=None) -> HeadState:
    """A HeadState from a MultiPhotoFit (core/fit/multi_fit.py): shared identity, a view per photo.
    ``detections`` with the model's ``landmark_index`` (its detector indices) add the landmarks."""
    views = []
    for i, v in enumerate(multi.views):
        lm, size = None, 0.0
        if detections is not None and landmark_index is not None:
            lm = np.asarray(detections[i].points[landmark_index, :2], np.float32)
            size = float(detections[i].face_size)
        views.append(ViewState(np.asarray(v["R"], np.float32), np.asarray(v["t"], np.float32), float(v["focal"]),
                               float(v["cx"]), float(v["cy"]), np.asarray(v["expr"], np.float32),
                               np.asarray(v["joint_pose"], np.float32).reshape(-1, 3), lm, size))
    return HeadState(np.asarray(multi.shape, np.float32), views)


def _log_so3(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle of a rotation matrix (angles below pi)."""
    cos = ((R.diagonal().sum() - 1) / 2).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.arccos(cos)
    w = torch.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    s = torch.sin(theta)
    return w * (0.5 if float(s) < 1e-6 else float(theta / (2 * s)))


class PinSolver:
    """Re-solves a head around pins. Keep one per model (it caches the landmark bases)."""

    def __init__(self, layer: MorphableLayer):
        self.layer = layer
        self.model = layer.model
        self.ks, self.ke = layer.n_shape, layer.n_expr
        self.has_joints = self.model.joints is not None
        # the solve runs in double precision: near the optimum float32 noise hides real decreases and
        # the damping grows for nothing (a drag step is one or two iterations from the optimum)
        self.dtype = torch.float64
        self._faces = torch.as_tensor(self.model.faces, dtype=torch.long)
        self._lm_bases = None
        if self.model.landmarks is not None and not self.has_joints:
            self._lm_bases = landmark_bases(layer.landmark_layer())
        self._joint_cache = {}
        self.last_iterations = 0        # of the latest solve (benchmarks, tests)
        self.last_cost = 0.0            # its final objective (comparing solves from different starts)
        # landmark weights as in the photo fit (nose and inner mouth count more)
        self._lm_weights = None
        if self.model.landmarks is not None:
            from .photo_fit import FitConfig, landmark_weights
            self._lm_weights = torch.as_tensor(landmark_weights(self.model.landmarks.detector_index, FitConfig()))

    # ------------------------------------------------------------------ surface points as affine maps
    def _pin_bases(self, pins: Sequence[Pin]) -> tuple:
        """(T (P, 3), B (P, 3, K)) of pinned points of a model without joints: the three corners'
        rows of the bases only."""
        tri = self._faces[[p.face for p in pins]]                                  # (P, 3)
        bary = torch.as_tensor(np.array([p.bary for p in pins], np.float32))       # (P, 3)
        rows = (tri[..., None] * 3 + torch.arange(3)).reshape(-1)                   # (P*3*3,)
        P = len(pins)
        basis = torch.cat([self.layer.shape_basis[rows], self.layer.expr_basis[rows]], 1).reshape(P, 3, 3, -1)
        T = (self.layer.v_template[tri] * bary[..., None]).sum(1)
        B = (basis * bary[:, :, None, None]).sum(1)
        return T, B

    def _joint_bases(self, faces: torch.Tensor, bary: torch.Tensor, joint_pose: np.ndarray) -> tuple:
        """Models with joints: the points' affine map in the coefficients with the joints held at
        ``joint_pose`` (evaluated at zero and at each unit coefficient, on those points only)."""
        key = (faces.numpy().tobytes(), bary.numpy().tobytes(), np.asarray(joint_pose, np.float32).tobytes())
        hit = self._joint_cache.get(key)
        if hit is not None:
            return hit
        ll = LandmarkLayer(self.layer, faces.to(self.layer.device), bary.to(self.layer.device))
        K = self.ks + self.ke
        coeffs = torch.cat([torch.zeros(1, K), torch.eye(K)]).to(self.layer.device)
        jp = torch.as_tensor(np.asarray(joint_pose, np.float32)[None], device=self.layer.device).expand(K + 1, -1, -1)
        with torch.no_grad():
            out = ll(coeffs[:, :self.ks], coeffs[:, self.ks:], jp)                   # (K+1, P, 3)
        T = out[0]
        B = (out[1:] - out[0]).permute(1, 2, 0).contiguous()
        if len(self._joint_cache) > 64:
            self._joint_cache.clear()
        self._joint_cache[key] = (T, B)
        return T, B

    def view_points(self, state: HeadState, view: int, pins: Sequence[Pin], with_landmarks: bool) -> tuple:
        """(T, B, n_landmarks) of one view's points: its landmarks (if used) then its pins."""
        v = state.views[view]
        if not self.has_joints:
            parts = []
            n_lm = 0
            if with_landmarks and self._lm_bases is not None:
                parts.append(self._lm_bases)
                n_lm = len(self._lm_bases[0])
            if pins:
                parts.append(self._pin_bases(pins))
            if not parts:
                return None, None, 0
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), n_lm
        faces, bary = [], []
        n_lm = 0
        if with_landmarks and self.model.landmarks is not None:
            faces.append(self.layer.lm_faces.cpu())
            bary.append(self.layer.lm_bary.cpu())
            n_lm = len(faces[0])
        if pins:
            faces.append(self._faces[[p.face for p in pins]])
            bary.append(torch.as_tensor(np.array([p.bary for p in pins], np.float32)))
        if not faces:
            return None, None, 0
        T, B = self._joint_bases(torch.cat(faces), torch.cat(bary), v.joint_pose)
        return T, B, n_lm

    # ------------------------------------------------------------------ the solve
    def solve(self, reference: HeadState, pins: Sequence[Pin], config: Optional[PinConfig] = None,
              start: Optional[HeadState] = None) -> HeadState:
        """The head re-solved around ``pins``, near ``reference`` (the solution before the edits);
        ``start`` (e.g. the last drag's solution) only warm-starts the iterations."""
        cfg = config or PinConfig()
        cold = start is None or start is reference
        start = start or reference
        ks, ke = self.ks, self.ke
        N = len(reference.views)
        dt = self.dtype
        problems, kept_rows = [], []
        any_lm = False
        n01_shape, n01_expr = 0.0, [0.0] * N
        for i, v in enumerate(reference.views):
            vp = [p for p in pins if p.view == i]
            lm_ok = cfg.use_landmarks and v.landmarks is not None and v.face_size > 0
            T, B, n_lm = self.view_points(reference, i, vp, lm_ok)
            any_lm = any_lm or n_lm > 0
            if T is None:
                problems.append(None)
                kept_rows.append(None)
                continue
            T, B = T.to(dt), B.to(dt)
            target = torch.zeros(len(T), 3, dtype=dt)
            scale = 1.0 / (cfg.landmark_sigma * v.face_size) if lm_ok else 1.0 / cfg.pin_sigma_px
            sqrt_w = torch.ones(len(T), dtype=dt)
            if n_lm:
                lm = torch.as_tensor(v.landmarks, dtype=dt)
                seen = torch.isfinite(lm).all(1)
                if cfg.landmark_targets == "fit":
                    # where the previous solution put them: without pins nothing moves (an automatic fit
                    # that stopped short of the detector's optimum is not re-fitted by the first pin)
                    c_ref = torch.as_tensor(np.concatenate([reference.shape, v.expr]), dtype=dt)
                    target[:n_lm, :2] = torch.as_tensor(self._project(
                        (T[:n_lm] + B[:n_lm] @ c_ref).float(), v), dtype=dt)
                else:
                    target[:n_lm, :2] = torch.nan_to_num(lm)
                sqrt_w[:n_lm] = torch.sqrt(self._lm_weights.to(dt)) * seen
            if vp:
                target[n_lm:, :2] = torch.as_tensor(np.array([p.target for p in vp], np.float32))
                sqrt_w[n_lm:] = 1.0 / (cfg.pin_sigma_px * scale)       # in px units of pin_sigma_px
                if n_lm and cfg.landmark_release_m > 0:
                    # an artist's pin overrides the detector where they disagree: landmarks near a pin
                    # fade out (on the surface as it was, so the weights do not change while dragging)
                    X = T + B @ torch.as_tensor(np.concatenate([reference.shape, v.expr]), dtype=dt)
                    d = torch.cdist(X[:n_lm], X[n_lm:]).min(1).values
                    sqrt_w[:n_lm] *= (d / cfg.landmark_release_m).clamp(max=1.0)
            # with landmarks the N(0, 1) priors complete the photo fit's objective (identity counted
            # once over the views); without them the prior on the previous solution stands in. They
            # are merged with that prior below (one row per coefficient), so the problem's own prior
            # rows stay zero and are dropped with its (unused) depth and focal rows
            if n_lm and cfg.landmark_targets == "detector":
                n01_shape += 1.0 / N
                n01_expr[i] = 1.0
            L = len(T)
            keep = [torch.arange(2 * L)]
            if self.layer.expr_range is not None:
                keep.append(torch.arange(3 * L + ks + ke, 3 * L + ks + 2 * ke))
            kept_rows.append(torch.cat(keep))
            problems.append(LandmarkProblem(
                T=T, B=B, n_shape=ks, target=target, sqrt_w=sqrt_w, scale=scale, sqrt_depth=0.0,
                prior=torch.zeros(ks + ke, dtype=dt), focal_prior=0.0, expr_range=self.layer.expr_range,
                bound=float(np.sqrt(cfg.expr_bound_weight)), cx=float(v.cx), cy=float(v.cy)))

        ref = self._pack(reference)
        n_view = 6 + ke
        n = ks + N * n_view
        free = torch.ones(n, dtype=torch.bool)
        if cfg.lock_identity:
            free[:ks] = False
        for i in range(N):
            o = ks + i * n_view
            if cfg.lock_pose or problems[i] is None:
                free[o:o + 6] = False
            if cfg.lock_expression or problems[i] is None:
                free[o + 6:o + n_view] = False
        if not bool(free.any()) or all(p is None for p in problems):
            return reference.copy()
        dists = [float(np.linalg.norm(v.translation)) or 1.0 for v in reference.views]
        focals = [float(v.focal) for v in reference.views]
        rot_w = 1.0 / np.radians(cfg.rotation_sigma_deg)
        tr_w = 1.0 / cfg.translation_sigma
        # a^2 c^2 + b^2 (c - c0)^2 = (a^2 + b^2) (c - b^2 c0 / (a^2 + b^2))^2 + const: one row each
        id_w = float(np.sqrt(n01_shape + cfg.identity_sigma ** -2))
        id_c = ref[0] * (cfg.identity_sigma ** -2 / id_w ** 2)
        ex_ws = [float(np.sqrt(a + cfg.expression_sigma ** -2)) for a in n01_expr]
        ex_cs = [ref[3][i] * (cfg.expression_sigma ** -2 / ex_ws[i] ** 2) for i in range(N)]

        def rows(state, want_jacobian):
            shape, Rs, ts, exprs = state
            rs, Js = [], []
            for i, pb in enumerate(problems):
                if pb is None:
                    continue
                c = torch.cat([shape, exprs[i]])
                r, J = _residuals_and_jacobian(pb, Rs[i], ts[i], torch.zeros((), dtype=dt), focals[i], c, dists[i],
                                               want_jacobian)
                r = r[kept_rows[i]]
                rs.append(r)
                if want_jacobian:
                    J = J[kept_rows[i]]
                    full = torch.zeros(len(r), n, dtype=dt)
                    o = ks + i * n_view
                    full[:, o:o + 6] = J[:, :6]
                    full[:, :ks] = J[:, 7:7 + ks]
                    full[:, o + 6:o + n_view] = J[:, 7 + ks:]
                    Js.append(full)
            # the prior on the previous solution (rotation: the log of the relative rotation, whose
            # derivative under R <- exp(w) R is the identity to first order)
            r_id = id_w * (shape - id_c)
            rs.append(r_id)
            r_pose, r_ex = [], []
            for i in range(N):
                r_pose.append(rot_w * _log_so3(Rs[i] @ ref[1][i].T))
                r_pose.append(tr_w * (ts[i] - ref[2][i]) / dists[i])
                r_ex.append(ex_ws[i] * (exprs[i] - ex_cs[i]))
            rs += r_pose + r_ex
            r = torch.cat(rs)
            if not want_jacobian:
                return r, None
            Jp = torch.zeros(ks + N * 6 + N * ke, n, dtype=dt)
            Jp[:ks, :ks] = torch.eye(ks, dtype=dt) * id_w
            for i in range(N):
                o = ks + i * n_view
                Jp[ks + 6 * i:ks + 6 * i + 3, o:o + 3] = torch.eye(3, dtype=dt) * rot_w
                Jp[ks + 6 * i + 3:ks + 6 * i + 6, o + 3:o + 6] = torch.eye(3, dtype=dt) * tr_w
                e0 = ks + 6 * N + ke * i
                Jp[e0:e0 + ke, o + 6:o + n_view] = torch.eye(ke, dtype=dt) * ex_ws[i]
            return r, torch.cat(Js + [Jp])

        def step(state, d):
            shape, Rs, ts, exprs = state
            Rs2, ts2, ex2 = [], [], []
            for i in range(N):
                o = ks + i * n_view
                Rs2.append(axis_angle_to_matrix(d[o:o + 3][None])[0] @ Rs[i])
                ts2.append(ts[i] + dists[i] * d[o + 3:o + 6])
                ex2.append(exprs[i] + d[o + 6:o + n_view])
            return shape + d[:ks], Rs2, ts2, ex2

        lo_hi = self.layer.expr_range
        expr_cols = torch.zeros(n, dtype=torch.bool)
        for i in range(N):
            expr_cols[ks + i * n_view + 6:ks + (i + 1) * n_view] = True

        def at_the_wall(state, g):
            """Expression weights on (or past) the range's ends that the objective pushes outwards:
            held for the iteration, where the wall has no slope yet and a free step would cross it."""
            if lo_hi is None:
                return torch.zeros(n, dtype=torch.bool)
            e = torch.zeros(n, dtype=dt)
            for i in range(N):
                e[ks + i * n_view + 6:ks + (i + 1) * n_view] = state[3][i]
            return expr_cols & (((e <= lo_hi[0] + 1e-9) & (g > 0)) | ((e >= lo_hi[1] - 1e-9) & (g < 0)))

        def clip(state, d):
            """Steps end on the range's ends rather than past them."""
            if lo_hi is None:
                return d
            d = d.clone()
            for i in range(N):
                sl = slice(ks + i * n_view + 6, ks + (i + 1) * n_view)
                d[sl] = (state[3][i] + d[sl]).clamp(lo_hi[0], lo_hi[1]) - state[3][i]
            return d

        # a drag step starts next to its answer: with landmarks holding the face, the pose-only stage is
        # for solves from the reference; with pins alone the pose does most of the moving, and a few
        # pose-only iterations first converge faster than everything at once (FLAME-sized, one pin:
        # ~15 ms against ~60 ms a step)
        rigid_iters = cfg.rigid_iters if cold or not any_lm else 0
        rigid = free.clone()
        rigid[:ks] = False
        for i in range(N):
            rigid[ks + i * n_view + 6:ks + (i + 1) * n_view] = False
        threads = torch.get_num_threads()
        torch.set_num_threads(1)        # a few hundred small rows: threads only add overhead (and contention)
        try:
            state, it = self._pack(start), 0
            # as the photo fit: the pose first (a head turned the wrong way is not bent into place by
            # expressions), then everything that is free
            for stage_free, stage_iters in ((rigid, rigid_iters), (free, cfg.iters)):
                if not bool(stage_free.any()) or stage_iters <= 0:
                    continue
                with torch.no_grad():
                    state, cost, n_it = levenberg_marquardt(lambda s: rows(s, False)[0], state, stage_iters,
                                                            stage_free, tol=cfg.tol, jacobian=lambda s: rows(s, True)[1],
                                                            step=step, held=at_the_wall, project=clip)
                it += n_it
        finally:
            torch.set_num_threads(threads)
        self.last_iterations = it
        self.last_cost = float(cost) if it else 0.0
        if lo_hi is not None:
            # a pin pulled past what the expressions can do leaves them a little over the wall: onto it
            state = state[:3] + ([e.clamp(lo_hi[0], lo_hi[1]) for e in state[3]],)
        return self._unpack(state, reference)

    def _pack(self, state: HeadState) -> tuple:
        f = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
        return (f(state.shape), [f(v.rotation) for v in state.views], [f(v.translation) for v in state.views],
                [f(v.expr) for v in state.views])

    @staticmethod
    def _unpack(state, like: HeadState) -> HeadState:
        shape, Rs, ts, exprs = state
        views = [dataclasses.replace(v, rotation=R.numpy().astype(np.float32), translation=t.numpy().astype(np.float32),
                                     expr=e.numpy().astype(np.float32))
                 for v, R, t, e in zip(like.views, Rs, ts, exprs)]
        return HeadState(shape.numpy().astype(np.float32), views)

    # ------------------------------------------------------------------ where things are
    def pin_pixels(self, state: HeadState, pins: Sequence[Pin]) -> np.ndarray:
        """(P, 2) where each pin's surface point is seen now, in its own view."""
        out = np.zeros((len(pins), 2), np.float32)
        for i, v in enumerate(state.views):
            sel = [k for k, p in enumerate(pins) if p.view == i]
            if not sel:
                continue
            T, B, _ = self.view_points(state, i, [pins[k] for k in sel], False)
            out[sel] = self._project(T + B @ self._coeffs(state, i), v)
        return out

    def landmark_pixels(self, state: HeadState, view: int = 0) -> np.ndarray:
        """(L, 2) the model's landmarks as seen in a view."""
        T, B, _ = self.view_points(state, view, [], True)
        return self._project(T + B @ self._coeffs(state, view), state.views[view])

    def _coeffs(self, state, i):
        return torch.as_tensor(np.concatenate([state.shape, state.views[i].expr]).astype(np.float32))

    @staticmethod
    def _project(P: torch.Tensor, v: ViewState) -> np.ndarray:
        X = P.numpy() @ np.asarray(v.rotation, np.float32).T + np.asarray(v.translation, np.float32)
        return np.stack([v.focal * X[:, 0] / X[:, 2] + v.cx, v.focal * X[:, 1] / X[:, 2] + v.cy], 1)

    def vertices(self, state: HeadState, view: int = 0, camera_space: bool = True) -> np.ndarray:
        """(V, 3) the whole mesh in a view (camera space, or model space)."""
        v = state.views[view]
        with torch.no_grad():
            jp = torch.as_tensor(v.joint_pose[None]) if self.has_joints else None
            verts = self.layer(torch.as_tensor(state.shape[None]), torch.as_tensor(v.expr[None]), jp)[0].cpu().numpy()
        if camera_space:
            verts = verts @ v.rotation.T + v.translation
        return verts

    def pick(self, state: HeadState, view: int, u: float, v: float, skin_only: bool = True) -> Optional[Pin]:
        """The surface point seen at pixel (u, v) of a view (the nearest hit of its ray), as a Pin
        whose target is that pixel; None when the ray misses the head."""
        vs = state.views[view]
        X = self.vertices(state, view).astype(np.float64)
        faces = self.model.faces
        ids = self.model.skin_faces() if skin_only else np.arange(len(faces))
        hit = ray_triangles(np.zeros(3), np.array([(u - vs.cx) / vs.focal, (v - vs.cy) / vs.focal, 1.0]),
                            X[faces[ids]])
        if hit is None:
            return None
        k, b = hit
        return Pin(int(ids[k]), tuple(float(x) for x in b), (float(u), float(v)), view)


def ray_triangles(origin: np.ndarray, direction: np.ndarray, tris: np.ndarray):
    """Nearest hit of a ray on (F, 3, 3) triangles (Moller-Trumbore, vectorised):
    (triangle index, barycentric (3,)) or None."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    e1, e2 = b - a, c - a
    p = np.cross(direction, e2)
    det = (e1 * p).sum(1)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - a
    u = (s * p).sum(1) * inv
    q = np.cross(s, e1)
    v = (q * direction).sum(1) * inv
    t = (e2 * q).sum(1) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    if not hit.any():
        return None
    k = int(np.flatnonzero(hit)[np.argmin(t[hit])])
    return k, np.array([1 - u[k] - v[k], u[k], v[k]])


# ---------------------------------------------------------------------------- fits in, fits out
def photo_fit_with_pins(solver: PinSolver, fit, pins: Sequence[Pin], detection=None,
                        config: Optional[PinConfig] = None):
    """A PhotoFit (core/fit/photo_fit.py) re-solved around ``pins`` (all in view 0): parameters,
    vertices and landmark figures updated; colours and light kept."""
    state = solver.solve(state_from_photo_fit(fit, detection), pins, config)
    v = state.views[0]
    params = dict(fit.params, shape=state.shape.copy(), expr=v.expr.copy(), rotation=v.rotation.copy(),
                  translation=v.translation.copy())
    lm_px = solver.landmark_pixels(state) if solver.model.landmarks is not None else fit.landmarks_model_px
    err = float(np.linalg.norm(lm_px - fit.landmarks_detected_px, axis=1).mean())
    if detection is not None:
        size = float(detection.face_size)
    elif fit.landmark_error_rel > 0:
        size = fit.landmark_error_px / fit.landmark_error_rel
    else:
        size = float(max(np.ptp(fit.landmarks_detected_px[:, 0]), 1.0))
    with torch.no_grad():
        neutral = solver.layer.shaped(torch.as_tensor(state.shape[None]))[0].cpu().numpy()
    return dataclasses.replace(fit, params=params, vertices_neutral=neutral,
                               vertices_model=solver.vertices(state, 0, camera_space=False),
                               vertices_camera=solver.vertices(state, 0), landmarks_model_px=lm_px,
                               landmark_error_px=err, landmark_error_rel=err / size)


def multi_fit_with_pins(solver: PinSolver, multi, pins: Sequence[Pin], detections=None,
                        config: Optional[PinConfig] = None):
    """A MultiPhotoFit (core/fit/multi_fit.py) re-solved around ``pins`` (``Pin.view`` = photo index):
    the shared identity, every photo's pose and expression, the neutral vertices."""
    idx = solver.model.landmarks.detector_index if solver.model.landmarks is not None else None
    state = solver.solve(state_from_multi_fit(multi, detections, idx), pins, config)
    views = [dict(v, R=s.rotation.copy(), t=s.translation.copy(), expr=s.expr.copy())
             for v, s in zip(multi.views, state.views)]
    with torch.no_grad():
        neutral = solver.layer.shaped(torch.as_tensor(state.shape[None]))[0].cpu().numpy()
    return dataclasses.replace(multi, shape=state.shape.copy(), views=views, vertices_neutral=neutral)
