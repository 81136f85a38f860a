"""Several photos of one person -> one identity (after Deng et al.'s multi-image aggregation).

1. Each photo is fitted on its own (its own pose, expression, focal length and SH light; a focal length
   the photo's EXIF gives is held, not fitted).
2. Each fit's confidence in the identity is its posterior precision: the Gauss-Newton Hessian
   of the landmark objective at the optimum, with pose, expression and focal marginalised out
   (Schur complement), plus the unit prior. Deng et al. learn this confidence (C-Net); the
   Hessian gives it without training, and it is per coefficient *and* per direction: a profile
   photo constrains depth-related coefficients that a frontal one cannot. Blurry, tiny or
   extreme-pose faces get a larger landmark noise (precision divided by its square).
3. Identities are fused as a product of Gaussians (precision-weighted mean). Before that, a
   face-recognition embedding (dlib's ResNet, core/detect/identity.py) checks the photos show
   one person: a morphable model's identity space (the built-in one especially) is too coarse
   to tell people apart reliably, a recognition network is made for it.
4. Joint refinement: all photos are fitted together with one shared identity, starting from
   the fused estimate (BatchLandmarkFitter, per-photo focal lengths).
5. Silhouette refinement (core/fit/silhouette.py): with two or more photos, the model's outline is
   fitted to the person's outline (mediapipe's selfie segmentation) in every photo, together with
   the landmarks; on the likeness benchmark this is what makes more photos give a better face.
6. Photometric consistency (core/fit/photo_consistency.py): with two or more photos, the skin every
   photo sees must have one colour (a per-vertex albedo shared by the photos and by each vertex's
   mirror image, each photo with its own SH light), so identity, poses and expressions are refined on
   the colours of every face vertex, with the landmarks and outlines kept as regularisers (likeness
   benchmark, cached detections, 3 / 5 photos: 0.85x / 0.81x the mean face's error after the outlines,
   0.54x / 0.51x after the colours; a few seconds per photo). It starts by re-turning the head of each
   photo turned 40+ degrees where its colours disagree with the others' (the landmark fits of a 50-degree
   turn are 8-18 degrees off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..detect.identity import SAME_PERSON_DISTANCE, face_descriptor
from ..detect.landmarks import FaceLandmarks
from ..errors import FaceForgeError
from ..jobs import ensure_progress
from ..models.morphable import MorphableLayer, axis_angle_to_matrix
from ..render.camera import head_turn_deg, project
from .batch_fit import BatchLandmarkFitter, BatchPriors
from .photo_consistency import PhotoConsistencyConfig, refine_photo_consistency
from .photo_fit import FitConfig, PhotoFit, PhotoFitter, landmark_weights
from .silhouette import SilhouetteConfig, person_mask, refine_silhouette


class DifferentPeopleError(FaceForgeError):
    """The photos do not show one person."""


@dataclass
class MultiFitConfig:
    # each photo's own photometric stage only has to give its light and colours (the joint landmark
    # refinement that follows re-solves the geometry), so it runs half the single-photo steps
    photo: FitConfig = field(default_factory=lambda: FitConfig(photo_steps=15))
    joint_iters: int = 100
    check_people: bool = True
    same_person_distance: float = SAME_PERSON_DISTANCE   # face-embedding distance (dlib's threshold)
    # outline refinement against the person masks (None: landmarks only); a few seconds per photo
    silhouette: Optional[SilhouetteConfig] = field(default_factory=SilhouetteConfig)
    # multi-view colour consistency after the outlines (None: off); ~2-3 s per photo
    photo_consistency: Optional[PhotoConsistencyConfig] = field(default_factory=PhotoConsistencyConfig)


@dataclass
class PhotoQuality:
    face_px: float
    sharpness: float                    # variance of the Laplacian of a 128 px face crop
    yaw_deg: float
    noise_scale: float                  # landmark noise multiplier (1 = a good photo)


@dataclass
class MultiPhotoFit:
    fits: list                          # per-photo PhotoFit (own identity; own pose, light, ...)
    quality: list                       # per-photo PhotoQuality
    precision: np.ndarray               # (N, Ks, Ks) identity precision per photo (quality-scaled)
    shape_single: np.ndarray            # (N, Ks) per-photo identities
    shape_mean: np.ndarray              # (Ks,) plain average
    shape_fused: np.ndarray             # (Ks,) confidence-weighted (precision) fusion
    shape: np.ndarray                   # (Ks,) final: joint refinement (+ outlines, + colours) with the shared identity
    views: list                         # per-photo dict: R, t, focal, cx, cy, expr, joint_pose, sh, reproj_px
    vertices_neutral: np.ndarray        # (V, 3) final identity, model space
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    shape_joint: Optional[np.ndarray] = None    # (Ks,) the joint landmark refinement, before the outlines
    outline_points: Optional[list] = None       # outline points paired per photo (None: no outline stage)

    def best_single(self) -> int:
        """The photo whose own identity is most certain (largest precision determinant)."""
        return int(np.argmax([np.linalg.slogdet(P)[1] for P in self.precision]))


def photo_quality(image: np.ndarray, det: FaceLandmarks, rotation: np.ndarray) -> PhotoQuality:
    import cv2

    x0, y0, x1, y1 = det.bbox
    side = max(x1 - x0, y1 - y0)
    c = ((x0 + x1) / 2, (y0 + y1) / 2)
    s = 128.0 / max(side, 1.0)
    M = np.array([[s, 0, 64 - c[0] * s], [0, s, 64 - c[1] * s]], np.float32)
    crop = cv2.warpAffine(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), M, (128, 128), flags=cv2.INTER_AREA)
    sharp = float(cv2.Laplacian(crop.astype(np.float32), cv2.CV_32F).var())
    yaw = float(head_turn_deg(rotation))
    # each factor ~1 for a good photo, growing as the detector's landmarks get less reliable
    k_size = max(1.0, 100.0 / max(side, 1.0))                # under ~100 px the detector degrades
    k_blur = 1.0 + max(0.0, (40.0 - sharp) / 40.0) * 2.0     # a 128 px crop of a sharp face: >~60
    k_pose = 1.0 + (max(0.0, yaw - 35.0) / 25.0) ** 2        # beyond ~35 degrees mediapipe drifts
    return PhotoQuality(face_px=float(side), sharpness=sharp, yaw_deg=yaw, noise_scale=k_size * k_blur * k_pose)


def identity_precision(layer: MorphableLayer, fit: PhotoFit, det: FaceLandmarks, cfg: FitConfig) -> np.ndarray:
    """Posterior precision of the identity coefficients of one photo fit (Ks, Ks).

    Gauss-Newton Hessian of the (MAP-scaled) landmark objective over every parameter of the
    fit, then the Schur complement onto the identity block: pose, expression, focal and joints
    are marginalised, so coefficients the photo cannot separate from them get little weight."""
    dev = layer.device
    lm_layer = layer.landmark_layer()
    P = fit.params
    idx = fit.landmark_detector_index
    w = torch.as_tensor(landmark_weights(idx, cfg), device=dev)
    tgt = torch.as_tensor(det.points[idx], dtype=torch.float32, device=dev)
    size = float(det.face_size)
    R0 = torch.as_tensor(P["rotation"], dtype=torch.float32, device=dev)
    t0 = torch.as_tensor(P["translation"], dtype=torch.float32, device=dev)
    f0, cx, cy = float(P["focal"]), float(P["cx"]), float(P["cy"])
    ks, ke, nj = layer.n_shape, layer.n_expr, layer.n_pose_joints
    theta0 = torch.cat([torch.as_tensor(P["shape"]), torch.as_tensor(P["expr"]), torch.zeros(7),
                        torch.as_tensor(P["joint_pose"]).reshape(-1)]).float().to(dev)
    scale = torch.sqrt(w / w.sum() * 2 * (0.5 * w.sum() / cfg.landmark_sigma ** 2)) / size   # MAP residual scale
    sqrt_dw = np.sqrt(cfg.depth_weight)

    def residuals(theta):
        shape = theta[:ks][None]
        expr = theta[ks:ks + ke][None]
        rot, trans, lf = theta[ks + ke:ks + ke + 3], theta[ks + ke + 3:ks + ke + 6], theta[ks + ke + 6]
        joint = theta[ks + ke + 7:].reshape(1, nj, 3) if nj else None
        lm = lm_layer(shape, expr, joint)[0]
        R = axis_angle_to_matrix(rot[None])[0] @ R0
        cam = lm @ R.T + t0 + t0[2] * trans
        focal = f0 * torch.exp(lf)
        px = project(cam[None], focal, cx, cy)[0]
        r_xy = ((px - tgt[:, :2]) * scale[:, None]).reshape(-1)
        z = cam[:, 2]
        dz = focal * (z - z.mean()) / z.mean() - (tgt[:, 2] - tgt[:, 2].mean())
        return torch.cat([r_xy, dz * scale * sqrt_dw])

    J = torch.func.jacfwd(residuals)(theta0)                  # (n_res, n_params)
    H = (J.T @ J).double().cpu().numpy()
    prior = np.concatenate([np.full(ks, cfg.shape_prior), np.full(ke, cfg.expr_prior), np.zeros(6),
                            [cfg.focal_prior * 200], np.full(3 * nj, cfg.joint_prior * 100)])
    H += np.diag(prior)
    H[ks + ke:ks + ke + 6, ks + ke:ks + ke + 6] += np.eye(6) * 1e-6     # pose has no prior: keep invertible
    Hss, Hso, Hoo = H[:ks, :ks], H[:ks, ks:], H[ks:, ks:]
    return Hss - Hso @ np.linalg.solve(Hoo, Hso.T)


def fuse_identities(shapes: np.ndarray, precisions: np.ndarray, prior_precision: np.ndarray):
    """Combine per-photo posteriors N(shape_i, precision_i^-1) into one: (mean, precision).

    Each posterior already contains the N(0, prior^-1) prior, so their plain product would
    count it N times and shrink the identity towards the mean face; it is counted once."""
    N = len(shapes)
    Lam = precisions.sum(0) - (N - 1) * prior_precision
    mean = np.linalg.solve(Lam, np.einsum("nij,nj->i", precisions, shapes))
    return mean, Lam


def different_people(descriptors: list, threshold: float) -> tuple:
    """Photos whose face-recognition embedding is far from the others'.

    With two photos: both, if they are more than ``threshold`` apart. With more: each photo's
    median distance to the rest, so one stranger among several photos is singled out."""
    N = len(descriptors)
    D = np.array([[np.linalg.norm(a - b) for b in descriptors] for a in descriptors])
    if N == 2:
        return ([0, 1] if D[0, 1] > threshold else []), D
    med = np.array([np.median(np.delete(D[i], i)) for i in range(N)])
    return [int(i) for i in np.flatnonzero(med > threshold)], D


def check_same_person(images, detections, names, threshold, warnings) -> None:
    """Raise DifferentPeopleError when the photos show different people (needs dlib)."""
    descriptors = [face_descriptor(img, det) for img, det in zip(images, detections)]
    if any(d is None for d in descriptors):
        warnings.append("Could not check that the photos show one person (dlib is not installed).")
        return
    bad, D = different_people(descriptors, threshold)
    if not bad:
        return
    if len(names) == 2:
        listed = f"{names[0]} and {names[1]} (identity distance {D[0, 1]:.2f})"
    else:
        listed = ", ".join(f"{names[i]} (median distance {np.median(np.delete(D[i], i)):.2f})" for i in bad)
    raise DifferentPeopleError(
        f"These photos do not seem to show the same person: {listed}; photos of one person are under "
        f"{threshold:.2f} apart. Remove the photo(s) of someone else, or reconstruct them separately.")


def fit_photos(images: list, detections: list, layer: MorphableLayer, config: Optional[MultiFitConfig] = None,
               progress=None, names: Optional[list] = None, focal_px: Optional[list] = None) -> MultiPhotoFit:
    """``focal_px``: per photo, its known focal length in pixels (from its EXIF) or None (fitted). Known
    ones are held by the per-photo fits; the joint refinement holds them all when every photo has one."""
    cfg = config or MultiFitConfig()
    progress = ensure_progress(progress)
    N = len(images)
    names = names or [f"photo {i + 1}" for i in range(N)]
    t0 = time.perf_counter()
    fitter = PhotoFitter(layer, cfg.photo)
    focal_px = list(focal_px) if focal_px is not None else [None] * N
    fits, quality, precisions = [], [], []
    for i, (img, det) in enumerate(zip(images, detections)):
        fit = fitter.fit(img, det, progress.sub(0.6 * i / N, 0.6 * (i + 1) / N), focal_px=focal_px[i])
        q = photo_quality(img, det, fit.params["rotation"])
        Lam = identity_precision(layer, fit, det, cfg.photo)
        # quality scales the data part only: precision = prior + data / k^2
        prior = np.eye(layer.n_shape) * cfg.photo.shape_prior
        precisions.append(prior + (Lam - prior) / q.noise_scale ** 2)
        fits.append(fit)
        quality.append(q)
    t1 = time.perf_counter()
    shapes = np.stack([f.params["shape"] for f in fits]).astype(np.float64)
    precisions = np.stack(precisions)
    warnings = [w for f in fits for w in f.warnings]
    for n, q in zip(names, quality):
        if q.noise_scale > 2:
            warnings.append(f"{n}: counts less (face {q.face_px:.0f} px, sharpness {q.sharpness:.0f}, "
                            f"turned {q.yaw_deg:.0f} degrees).")
    if cfg.check_people and N >= 2:
        check_same_person(images, detections, names, cfg.same_person_distance, warnings)
    mean = shapes.mean(0)
    fused, _ = fuse_identities(shapes, precisions, np.eye(layer.n_shape) * cfg.photo.shape_prior)
    progress.update("joint refinement", 0.62)

    # joint refinement with the shared identity, each photo keeping its camera
    batch = BatchLandmarkFitter(layer.model, layer.device, BatchPriors(landmark_sigma=cfg.photo.landmark_sigma))
    idx = batch.det_index
    targets = np.stack([d.points[idx] for d in detections])
    sizes = np.array([d.face_size for d in detections], np.float32)
    R_ref = np.stack([f.params["rotation"] for f in fits]).astype(np.float32)
    t_ref = np.stack([f.params["translation"] for f in fits]).astype(np.float32)
    f_fit = np.array([float(f.params["focal"]) for f in fits], np.float32)
    cx = np.array([float(f.params["cx"]) for f in fits], np.float32)
    cy = np.array([float(f.params["cy"]) for f in fits], np.float32)
    res = batch.fit(targets, sizes, np.ones(N, bool), cx, cy, f_fit, R_ref, t_ref, fused.astype(np.float32),
                    np.zeros((N, 3), np.float32), np.zeros((N, 3), np.float32),
                    np.stack([f.params["expr"] for f in fits]).astype(np.float32),
                    joint0=np.stack([f.params["joint_pose"] for f in fits]).astype(np.float32)
                    if layer.n_pose_joints else None,
                    fit_identity=True, iters=cfg.joint_iters,
                    focal_mode="fixed" if all(f for f in focal_px) else "per_item",
                    item_weights=1.0 / np.array([q.noise_scale for q in quality]) ** 2,
                    progress=progress.sub(0.62, 0.98), stage="joint refinement")
    t2 = time.perf_counter()
    views = [dict(R=res.R[i], t=res.t[i], focal=float(res.focal[i]), cx=float(cx[i]), cy=float(cy[i]),
                  expr=res.expr[i], joint_pose=res.joint[i], sh=fits[i].params["sh"],
                  reproj_px=float(res.reproj_px[i]), image_size=fits[i].image_size) for i in range(N)]
    shape_final = res.shape
    outline_points = None
    item_weights = 1.0 / np.array([q.noise_scale for q in quality]) ** 2
    masks = [None] * N
    if N >= 2 and (cfg.silhouette is not None or cfg.photo_consistency is not None):
        masks = [person_mask(img) for img in images]
    if cfg.silhouette is not None and N >= 2:
        progress.update("fitting the outlines", 0.98)
        if any(m is not None for m in masks):
            sil = refine_silhouette(layer, detections, masks, res.shape, views, cfg.silhouette,
                                    item_weights=item_weights)
            shape_final = sil["shape"].astype(np.float32)
            outline_points = sil["outline_points"]
            for v, s in zip(views, sil["views"]):
                v.update(R=s["R"].astype(np.float32), t=s["t"].astype(np.float32), expr=s["expr"].astype(np.float32))
    t3 = time.perf_counter()
    if cfg.photo_consistency is not None and N >= 2:
        progress.update("matching the photos' colours", 0.985)
        pc = refine_photo_consistency(layer, images, detections, masks, shape_final, views, cfg.photo_consistency,
                                      item_weights=item_weights)
        shape_final = pc["shape"].astype(np.float32)
        # the lights stay the per-photo fits' (the texture bake divides by them; the shared albedo's
        # scale is arbitrary)
        for v, s in zip(views, pc["views"]):
            v.update(R=s["R"].astype(np.float32), t=s["t"].astype(np.float32), expr=s["expr"].astype(np.float32))
    t4 = time.perf_counter()
    with torch.no_grad():
        neutral = layer.shaped(torch.as_tensor(shape_final[None], device=layer.device))[0].cpu().numpy()
    progress.update("identity done", 1.0)
    return MultiPhotoFit(fits=fits, quality=quality, precision=precisions, shape_single=shapes, shape_mean=mean,
                         shape_fused=fused, shape=shape_final, views=views, vertices_neutral=neutral,
                         shape_joint=res.shape, outline_points=outline_points,
                         warnings=warnings, timings={"per_photo_s": t1 - t0, "joint_s": t2 - t1,
                                                     "silhouette_s": t3 - t2, "photo_consistency_s": t4 - t3,
                                                     "total_s": t4 - t0})
