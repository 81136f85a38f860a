"""Fitting a morphable model to one photo (after Deng et al., CVPR-W 2019).

Coarse to fine:
1. rigid pose from PnP on the template's landmarks (OpenCV), then
2. landmarks: pose, focal length, identity, expression (and jaw/neck/eyes when the model has
   joints), with the detector's relative depth as a weak extra cue, then
3. photometric: a face crop is rendered with SH lighting and per-vertex albedo and compared
   with a robust L2,1 colour loss plus a gradient-domain structure term on the skin mask,
   while the landmark term keeps the geometry anchored.
Every coefficient has a Gaussian prior (bases are unit-variance, so a plain squared norm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..detect.landmarks import FaceLandmarks, landmark_regions
from ..geometry import vertex_neighbours
from ..jobs import ensure_progress
from ..models.detector_bias import detector_bias
from ..models.morphable import MorphableLayer, axis_angle_to_matrix
from ..render.camera import project
from . import losses
from .gauss_newton import levenberg_marquardt
from .landmark_solve import LandmarkProblem, landmark_bases, objective_and_gradient, solve_landmarks
from .photometric import PhotometricTarget


@dataclass
class FitConfig:
    # subtract the detector's calibrated pose-dependent drift and weight points by its noise: off by
    # default, since on the likeness benchmark it did not help (see README, Likeness)
    correct_detector_bias: bool = False
    landmark_solver: str = "lbfgs"     # "lbfgs" (stops early: regularises) or "lm": Levenberg-Marquardt to convergence
    lm_rigid_iters: int = 6            # LM iterations on the rigid pose, then on everything
    lm_iters: int = 15
    landmark_steps: int = 100          # L-BFGS iterations on landmarks only (landmark_solver="lbfgs")
    photo_steps: int = 30              # Adam steps of the photometric stage (0 disables it)
    photo_size: int = 128              # side of the square face crop rendered in that stage
    geometry_lr_photo: float = 0.002   # Adam step of the geometry in the photometric stage: a nudge,
                                       # since Adam moves every parameter by ~lr per step
    landmark_sigma: float = 0.012      # expected detector noise, as a fraction of the face size
    inner_mouth_weight: float = 8.0    # Deng et al. weight nose and inner mouth more heavily
    nose_weight: float = 4.0
    depth_weight: float = 0.05         # the detector's depth is a learned guess: trust it little
    photo_weight: float = 400.0        # scaled so that at convergence colour and landmarks pull alike
    gradient_weight: float = 200.0
    light_colour_prior: float = 20.0   # light is near white: penalise SH differences between channels
    shape_prior: float = 1.0           # weights of the N(0,1) coefficient priors
    expr_prior: float = 1.0
    expr_bound_weight: float = 1e4    # blendshape models (weights in 0..1): a stiff wall at the range's ends
    albedo_prior: float = 1.0
    albedo_residual_prior: float = 40.0
    albedo_smoothness: float = 20.0
    joint_prior: float = 4.0
    focal_prior: float = 0.5           # prior on log(focal / initial focal)
    # initial field of view across the photo's long side: a 50 mm full-frame 'normal' lens (40 degrees; phones'
    # main cameras are wider still). The landmarks barely constrain the focal length of a frontal photo, and
    # from 30 degrees (a 67 mm lens) the fits put the head 15-30% too far away, flattening the perspective
    # the identity then absorbs (likeness benchmark, 24 subjects, 35-50 mm lenses: 1 / 3 / 5 photos
    # 0.795x / 0.661x / 0.618x -> 0.749x / 0.627x / 0.602x the mean face's error)
    initial_fov_deg: float = 40.0
    fit_focal: bool = True
    # the photo pipelines hold the focal length the photo's EXIF gives (FocalLengthIn35mmFilm): close up
    # with a wide lens the landmarks drag a fitted one to 1.3-2.4x the truth (benchmarks/bench_focal.py,
    # 26 mm at 27 cm: 1.37x the mean face's error fitted, 0.90x held)
    exif_focal: bool = True
    # single-photo pipeline only (core/pipeline/photo.py): after the photometric stage, refine the
    # shape on the photo's colours with a mirror-symmetric albedo (photo_consistency.refine_photo_fit;
    # likeness benchmark: 0.98x -> 0.69x the mean face's error, ~1-2 s)
    symmetric_shading: bool = True
    n_shape: Optional[int] = None      # truncate bases (None = all)
    n_expr: Optional[int] = None


@dataclass
class PhotoFit:
    params: dict                       # numpy arrays: shape, expr, joint_pose, rotation, translation, focal, cx, cy, sh, albedo_coeffs
    vertices_neutral: np.ndarray       # (V, 3) identity only, model space
    vertices_model: np.ndarray         # (V, 3) with expression and joints, model space
    vertices_camera: np.ndarray        # (V, 3) OpenCV camera space
    vertex_albedo: np.ndarray          # (V, 3) in [0, 1]
    landmarks_model_px: np.ndarray     # (L, 2) projected model landmarks
    landmarks_detected_px: np.ndarray  # (L, 2) the detections they were fitted to
    landmark_detector_index: np.ndarray  # (L,) which detector point each landmark is
    landmark_error_px: float           # mean 2D distance
    landmark_error_rel: float          # the same, divided by the face size (bbox)
    photometric_error: Optional[float]  # mean L2 colour distance on the skin mask (0..sqrt(3))
    image_size: tuple                  # (H, W)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def landmark_weights(detector_index: np.ndarray, config: FitConfig) -> np.ndarray:
    regions = landmark_regions()
    w = np.ones(len(detector_index), np.float32)
    w[np.isin(detector_index, regions["nose"])] = config.nose_weight
    w[np.isin(detector_index, regions["inner_lips"])] = config.inner_mouth_weight
    return w


def initial_pose(layer: MorphableLayer, lm2d: np.ndarray, focal: float, cx: float, cy: float):
    """Rigid pose of the mean face from PnP; falls back to a frontal guess if PnP fails."""
    import cv2

    with torch.no_grad():
        v = layer.v_template[None]
        obj = layer.landmarks(v)[0].cpu().numpy().astype(np.float64)
    K = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, lm2d.astype(np.float64), K, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, tvec = cv2.solvePnP(obj, lm2d.astype(np.float64), K, None, rvec, tvec, True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        # frontal: model y-up/z-out -> camera y-down/z-forward is a 180-degree turn about x
        rvec = np.array([[np.pi], [0.0], [0.0]])
        size = np.ptp(obj[:, 0])
        tvec = np.array([[0.0], [0.0], [focal * size / max(np.ptp(lm2d[:, 0]), 1.0)]])
    return rvec[:, 0].astype(np.float32), tvec[:, 0].astype(np.float32)


class PhotoFitter:
    """Holds a model layer and fits photos with it (reuse it to fit many photos)."""

    def __init__(self, layer: MorphableLayer, config: Optional[FitConfig] = None):
        self.layer = layer
        self.config = config or FitConfig()
        self.device = layer.device
        self._lm_layer = layer.landmark_layer()
        self._lm_bases = None           # the landmarks as a linear function (built on first use)
        # the albedo is refined only where the photo can see it: the skin's vertices (all of a
        # single-part model; ~11k of ICT-FaceKit's 27k, whose teeth and eyes keep the model's colours)
        fit_faces = layer.fit_faces.cpu().numpy()
        skin_ids, local = np.unique(fit_faces, return_inverse=True)
        self._skin_ids = torch.as_tensor(skin_ids, device=self.device)
        nb, nbm = vertex_neighbours(local.reshape(-1, 3), len(skin_ids))
        self._nb = torch.as_tensor(nb, device=self.device)
        self._nbm = torch.as_tensor(nbm, dtype=torch.float32, device=self.device)

    def _solve_landmarks_lm(self, p, R0, t0, dist0, f0, cx, cy, target, weights, face_size, fit_focal) -> None:
        """The landmark stage as one least-squares problem solved by Levenberg-Marquardt (same
        objective as the L-BFGS path: weighted reprojection, the detector's relative depth, Gaussian
        priors, expression bounds), rigid pose first. Writes the solution into ``p``."""
        cfg, layer = self.config, self.layer
        lm_layer = self._lm_layer
        if "joint_pose" not in p:
            return self._solve_landmarks_analytic(p, R0, t0, dist0, f0, cx, cy, target, weights, face_size, fit_focal)
        keys = ["rot", "trans", "log_focal", "shape", "expr"] + (["joint_pose"] if "joint_pose" in p else [])
        shapes = [p[k].shape for k in keys]
        sizes = [p[k].numel() for k in keys]
        theta0 = torch.cat([p[k].detach().reshape(-1) for k in keys])
        sqrt_w = torch.sqrt(weights[0])[:, None]
        scale = 1.0 / (cfg.landmark_sigma * face_size)
        sqrt_dw = float(np.sqrt(cfg.depth_weight))
        tz = target[0, :, 2] - target[0, :, 2].mean()
        lo_hi = layer.expr_range
        bound = float(np.sqrt(cfg.expr_bound_weight))

        def unpack(theta):
            parts = torch.split(theta, sizes)
            return {k: v.reshape(sh) for k, v, sh in zip(keys, parts, shapes)}

        def residuals(theta):
            q = unpack(theta)
            lm = lm_layer(q["shape"], q["expr"], q.get("joint_pose"))
            R = axis_angle_to_matrix(q["rot"]) @ R0
            cam = (lm @ R.transpose(1, 2) + (t0 + dist0 * q["trans"])[:, None])[0]
            focal = f0 * torch.exp(q["log_focal"][0])
            px = torch.stack([focal * cam[:, 0] / cam[:, 2] + cx, focal * cam[:, 1] / cam[:, 2] + cy], -1)
            out = [(sqrt_w * (px - target[0, :, :2]) * scale).reshape(-1)]
            z = cam[:, 2]
            dz = focal * (z - z.mean()) / z.mean() - tz
            out.append(sqrt_w[:, 0] * sqrt_dw * dz * scale)
            out.append(np.sqrt(cfg.shape_prior) * q["shape"].reshape(-1))
            out.append(np.sqrt(cfg.expr_prior) * q["expr"].reshape(-1))
            if lo_hi is not None:
                e = q["expr"].reshape(-1)
                out.append(bound * (torch.relu(lo_hi[0] - e) + torch.relu(e - lo_hi[1])))
            if "joint_pose" in q:
                out.append(np.sqrt(cfg.joint_prior * 100) * q["joint_pose"].reshape(-1))
            out.append(np.sqrt(cfg.focal_prior * 100) * q["log_focal"].reshape(-1))
            return torch.cat(out)

        rigid = torch.zeros(len(theta0), dtype=torch.bool, device=theta0.device)
        rigid[: sizes[0] + sizes[1] + (sizes[2] if fit_focal else 0)] = True
        with torch.no_grad():
            theta, _, _ = levenberg_marquardt(residuals, theta0, iters=cfg.lm_rigid_iters, free=rigid)
            free = torch.ones_like(rigid)
            if not fit_focal:
                free[sizes[0] + sizes[1]] = False
            theta, _, _ = levenberg_marquardt(residuals, theta, iters=cfg.lm_iters, free=free)
            for k, v in unpack(theta).items():
                p[k].data.copy_(v)

    def _landmark_problem(self, target, weights, face_size, cx, cy) -> LandmarkProblem:
        """The landmark stage's objective for a model without joints, as residuals with an exact
        Jacobian (core/fit/landmark_solve.py)."""
        cfg, layer = self.config, self.layer
        if self._lm_bases is None:
            self._lm_bases = landmark_bases(self._lm_layer)
        T, B = self._lm_bases
        ks = layer.n_shape
        prior = torch.cat([torch.full((ks,), cfg.shape_prior), torch.full((layer.n_expr,), cfg.expr_prior)]).to(T)
        return LandmarkProblem(T=T, B=B, n_shape=ks, target=target[0], sqrt_w=torch.sqrt(weights[0]),
                               scale=1.0 / (cfg.landmark_sigma * face_size),
                               sqrt_depth=float(np.sqrt(cfg.depth_weight)), prior=prior,
                               focal_prior=cfg.focal_prior * 100, expr_range=layer.expr_range,
                               bound=float(np.sqrt(cfg.expr_bound_weight)), cx=float(cx), cy=float(cy))

    def _solve_landmarks_analytic(self, p, R0, t0, dist0, f0, cx, cy, target, weights, face_size, fit_focal) -> None:
        """Models without joints: the same objective, with the exact Jacobian built by hand
        (core/fit/landmark_solve.py), several times faster than forward-mode autodiff."""
        import cv2

        cfg = self.config
        ks = self.layer.n_shape
        pb = self._landmark_problem(target, weights, face_size, cx, cy)
        with torch.no_grad():
            R_start = axis_angle_to_matrix(p["rot"].detach())[0] @ R0[0]
            t_start = (t0 + dist0 * p["trans"].detach())[0]
            c0 = torch.cat([p["shape"].detach()[0], p["expr"].detach()[0]])
            out = solve_landmarks(pb, R_start, t_start, f0, dist0, c0, float(p["log_focal"].detach()[0]),
                                  cfg.lm_rigid_iters, cfg.lm_iters, fit_focal)
            delta = (out["R"] @ R0[0].T).double().cpu().numpy()
            p["rot"].data.copy_(torch.as_tensor(cv2.Rodrigues(delta)[0].reshape(1, 3), dtype=torch.float32))
            p["trans"].data.copy_(((out["t"] - t0[0]) / dist0)[None])
            p["log_focal"].data.fill_(float(out["log_f"]))
            p["shape"].data.copy_(out["c"][:ks][None])
            p["expr"].data.copy_(out["c"][ks:][None])

    def fit(self, image_rgb: np.ndarray, detection: FaceLandmarks, progress=None,
            focal_px: Optional[float] = None) -> PhotoFit:
        """``focal_px``: the photo's focal length in pixels when it is known (e.g. from its EXIF,
        core/detect/images.exif_focal_px); it is then held, not fitted."""
        cfg, layer, dev = self.config, self.layer, self.device
        fit_focal = cfg.fit_focal and focal_px is None
        progress = ensure_progress(progress)
        t0 = time.perf_counter()
        H, W = image_rgb.shape[:2]
        lm_idx = layer.lm_detector_index.cpu().numpy()
        target = torch.as_tensor(detection.points[lm_idx], dtype=torch.float32, device=dev)[None]
        weights = torch.as_tensor(landmark_weights(lm_idx, cfg), device=dev)[None]
        face_size = float(detection.face_size)
        cx, cy = W / 2.0, H / 2.0
        f0 = float(focal_px) if focal_px else 0.5 * max(H, W) / np.tan(np.radians(cfg.initial_fov_deg) / 2)
        rvec, tvec = initial_pose(layer, detection.points[lm_idx, :2], f0, cx, cy)
        bias = detector_bias(layer.model) if cfg.correct_detector_bias else None
        if bias is not None:
            # the detector's expected drift for this head pose is removed, and each point counts by
            # its calibrated noise (core/models/detector_bias.py)
            import cv2
            R_pnp = cv2.Rodrigues(rvec.astype(np.float64))[0]
            pts = bias.correct(detection.points[lm_idx], face_size, R_pnp)
            target = torch.as_tensor(pts, dtype=torch.float32, device=dev)[None]
            weights = weights * torch.as_tensor(bias.weights(), device=dev)[None]

        p = {
            "shape": torch.zeros(1, layer.n_shape, device=dev, requires_grad=True),
            "expr": torch.zeros(1, layer.n_expr, device=dev, requires_grad=True),
            # rotation = exp(delta) @ R_pnp: the PnP rotation is near 180 degrees, where a plain
            # axis-angle parameterisation is badly conditioned; a small delta is not
            "rot": torch.zeros(1, 3, device=dev, requires_grad=True),
            # translation in units of the initial distance, so all parameters are O(1)
            "trans": torch.zeros(1, 3, device=dev, requires_grad=True),
            "log_focal": torch.zeros(1, device=dev, requires_grad=fit_focal),
        }
        if layer.n_pose_joints:
            p["joint_pose"] = torch.zeros(1, layer.n_pose_joints, 3, device=dev, requires_grad=True)

        R0 = axis_angle_to_matrix(torch.tensor(rvec[None], device=dev))
        t0_vec = torch.tensor(tvec[None], device=dev)
        dist0 = float(tvec[2])

        def rotation():
            return axis_angle_to_matrix(p["rot"]) @ R0

        def translation():
            return t0_vec + dist0 * p["trans"]

        def geometry():
            verts = layer(p["shape"], p["expr"], p.get("joint_pose"))
            cam = verts @ rotation().transpose(1, 2) + translation()[:, None]
            focal = f0 * torch.exp(p["log_focal"])
            return verts, cam, focal

        def landmark_geometry():
            """Only the landmarks (the landmark stage never needs the whole mesh)."""
            lm = self._lm_layer(p["shape"], p["expr"], p.get("joint_pose"))
            return lm @ rotation().transpose(1, 2) + translation()[:, None], f0 * torch.exp(p["log_focal"])

        def prior_terms():
            reg = cfg.shape_prior * (p["shape"] ** 2).sum() + cfg.expr_prior * (p["expr"] ** 2).sum()
            reg = reg + cfg.expr_bound_weight * layer.expr_bound_penalty(p["expr"])
            if "joint_pose" in p:
                reg = reg + cfg.joint_prior * (p["joint_pose"] ** 2).sum() * 100
            reg = reg + cfg.focal_prior * (p["log_focal"] ** 2).sum() * 100
            return reg

        # MAP scaling: data terms in units of the expected noise, priors as squared norms
        lm_scale = 0.5 * weights.sum().item() / cfg.landmark_sigma ** 2

        def landmark_terms(cam, focal, lm_cam=None):
            lm_cam = layer.landmarks(cam) if lm_cam is None else lm_cam
            lm_px = project(lm_cam, focal, cx, cy)
            e = losses.landmark_loss(lm_px, target[..., :2], weights, face_size)
            d = losses.depth_loss(lm_cam, target[..., 2], weights, focal, face_size)
            return lm_scale * (e + cfg.depth_weight * d), lm_px

        # ---- stage 1: landmarks -------------------------------------------------------------
        # a small least-squares problem: L-BFGS with a line search converges in a few dozen
        # evaluations where Adam needs hundreds. Rigid pose first, then everything.
        rigid = [p["rot"], p["trans"]] + ([p["log_focal"]] if fit_focal else [])
        full = rigid + [p["shape"], p["expr"]] + ([p["joint_pose"]] if "joint_pose" in p else [])
        evals = [0]
        total_evals = cfg.landmark_steps
        # models without joints: the same loss with its gradient from the exact Jacobian, ~5x faster
        # than autograd on this small problem (the optimiser's steps are the same)
        problem = self._landmark_problem(target, weights, face_size, cx, cy) if "joint_pose" not in p else None

        def analytic_loss():
            with torch.no_grad():
                c = torch.cat([p["shape"][0], p["expr"][0]])
                loss, g_rot, g_trans, g_log_f, g_c = objective_and_gradient(
                    problem, R0[0], t0_vec[0], dist0, f0, p["rot"][0], p["trans"][0], p["log_focal"][0], c)
            p["rot"].grad, p["trans"].grad = g_rot[None], g_trans[None]
            if p["log_focal"].requires_grad:
                p["log_focal"].grad = g_log_f.reshape(1)
            p["shape"].grad, p["expr"].grad = g_c[None, :layer.n_shape], g_c[None, layer.n_shape:]
            return loss

        def run_lbfgs(params, max_iter):
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

            def closure():
                opt.zero_grad(set_to_none=True)
                if problem is not None:
                    loss = analytic_loss()
                else:
                    lm_cam, focal = landmark_geometry()
                    data, _ = landmark_terms(None, focal, lm_cam)
                    loss = data + 0.5 * prior_terms()
                    loss.backward()
                evals[0] += 1
                if evals[0] % 10 == 0:
                    frac = min(evals[0] / total_evals, 1.0)
                    progress.update("fitting landmarks", 0.7 * frac if cfg.photo_steps else frac)
                return loss

            opt.step(closure)

        if cfg.landmark_solver == "lbfgs":
            run_lbfgs(rigid, max(cfg.landmark_steps // 6, 5))
            run_lbfgs(full, cfg.landmark_steps)
        else:
            progress.update("fitting landmarks", 0.0)
            self._solve_landmarks_lm(p, R0, t0_vec, dist0, f0, cx, cy, target, weights, face_size, fit_focal)
        t1 = time.perf_counter()

        # ---- stage 2: photometric on a face crop ----------------------------------------------
        V = layer.model.n_vertices
        albedo_coeffs = torch.zeros(1, layer.n_albedo, device=dev, requires_grad=True)
        S = len(self._skin_ids)
        albedo_res = torch.zeros(1, S, 3, device=dev, requires_grad=True)

        def albedo():
            base = layer.albedo(albedo_coeffs if layer.n_albedo else None).expand(1, V, 3)
            return base.index_add(1, self._skin_ids, albedo_res).clamp(0, 1)

        sh = torch.zeros(1, 9, 3, device=dev)
        sh[:, 0] = 1.0 / 0.886227   # ambient light of irradiance ~1 (pi * c0)
        sh.requires_grad_(True)
        photo_err = None
        if cfg.photo_steps > 0:
            photo_target = PhotometricTarget(image_rgb, detection.points, detection.bbox, cfg.photo_size, dev)
            mean_colour = photo_target.mean_colour()
            with torch.no_grad():   # start the albedo's brightness from the photo
                base = layer.albedo(None).mean((0, 1))
                sh[:, 0] = sh[:, 0] * (mean_colour[0] / base.clamp_min(1e-3))
            opt2 = torch.optim.Adam([
                {"params": [sh, albedo_coeffs, albedo_res], "lr": 0.05},
                {"params": [p["shape"], p["expr"], p["rot"], p["trans"]]
                 + ([p["joint_pose"]] if "joint_pose" in p else []), "lr": cfg.geometry_lr_photo},
            ])
            n2 = cfg.photo_steps
            for it in range(n2):
                opt2.zero_grad(set_to_none=True)
                verts, cam, focal = geometry()
                data, _ = landmark_terms(cam, focal)
                alb = albedo()
                photo, grad = photo_target.losses(cam, layer.fit_faces, alb, sh, focal, cx, cy)
                reg_alb = cfg.albedo_prior * (albedo_coeffs ** 2).sum() \
                    + cfg.albedo_residual_prior * (albedo_res ** 2).sum(-1).mean() * S \
                    + cfg.albedo_smoothness * losses.laplacian_smoothness(albedo_res, self._nb, self._nbm) * S
                chroma = ((sh - sh.mean(-1, keepdim=True)) ** 2).sum() / (sh[:, 0] ** 2).mean().detach()
                loss = data + 0.5 * prior_terms() + 0.5 * reg_alb + cfg.light_colour_prior * chroma \
                    + cfg.photo_weight * photo + cfg.gradient_weight * grad
                loss.backward()
                opt2.step()
                photo_err = float(photo.detach())
                if it % 5 == 0:
                    progress.update("fitting colour and light", 0.7 + 0.3 * it / n2)
        t2 = time.perf_counter()

        # ---- results ---------------------------------------------------------------------------
        with torch.no_grad():
            verts, cam, focal = geometry()
            neutral = layer.shaped(p["shape"])
            _, lm_px = landmark_terms(cam, focal)
            alb = albedo()
            R = rotation()[0]
        lm_px = lm_px[0].cpu().numpy()
        det_px = target[0, :, :2].cpu().numpy()
        err = float(np.linalg.norm(lm_px - det_px, axis=1).mean())
        params = {
            "shape": p["shape"][0].detach().cpu().numpy(),
            "expr": p["expr"][0].detach().cpu().numpy(),
            "joint_pose": p["joint_pose"][0].detach().cpu().numpy() if "joint_pose" in p else np.zeros((0, 3), np.float32),
            "rotation": R.cpu().numpy(),
            "translation": translation()[0].detach().cpu().numpy(),
            "focal": np.float32(focal.item()),
            "cx": np.float32(cx),
            "cy": np.float32(cy),
            "sh": sh[0].detach().cpu().numpy(),
            "albedo_coeffs": albedo_coeffs[0].detach().cpu().numpy(),
        }
        progress.update("fit done", 1.0)
        return PhotoFit(
            params=params,
            vertices_neutral=neutral[0].cpu().numpy(),
            vertices_model=verts[0].cpu().numpy(),
            vertices_camera=cam[0].cpu().numpy(),
            vertex_albedo=alb[0].cpu().numpy(),
            landmarks_model_px=lm_px,
            landmarks_detected_px=det_px,
            landmark_detector_index=lm_idx,
            landmark_error_px=err,
            landmark_error_rel=err / face_size,
            photometric_error=photo_err,
            image_size=(H, W),
            timings={"landmarks_s": t1 - t0, "photometric_s": t2 - t1, "total_s": time.perf_counter() - t0},
            warnings=list(detection.warnings),
        )
