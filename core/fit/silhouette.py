"""Silhouette refinement: the model's outline against the person's outline in the photos.

Landmarks see little of a person's shape (on the likeness benchmark even perfect ones recover under
a tenth of the identity), but where a face turns away from the camera its outline against the
background — forehead, nose, lips and chin in profile, the far cheek, the ears — is a direct,
dense measurement of its 3D shape. This stage
1. segments the person from the background (mediapipe's selfie segmentation);
2. finds, for the current fit, the model vertices that lie on the outer outline of the projected
   head (a vertex of the face region on the boundary of the rendered mask: a rim vertex, visible
   by construction) — the outline slides over the surface as the pose and shape change;
3. pairs each with the nearest boundary pixel of the person mask and measures the distance along
   that boundary's normal (point-to-line, so points slide along the outline); pairs farther than a
   gate apart are dropped: hair, a beard, a collar or a hand make the person's outline wider than
   the face there, and the face's own outline runs inside it;
4. solves identity (shared by all photos), per-photo pose and expression together with the
   landmark term and the priors by Levenberg-Marquardt, then re-pairs (ICP) a few times.
Works for every model: only the model's outer-skin triangles and its face region are used; joints
(FLAME's jaw) keep the pose the landmark fit gave them.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..models.morphable import LandmarkLayer, axis_angle_to_matrix
from .gauss_newton import levenberg_marquardt
from .photo_fit import FitConfig, landmark_weights


@dataclass
class SilhouetteConfig:
    rounds: int = 6                 # re-pairings of outline and mask boundary
    iters: int = 6                  # Levenberg-Marquardt iterations per pairing
    sigma: float = 0.01             # expected outline distance noise, as a fraction of the face size
    weight: float = 1e3             # the outline of each photo counts as this many independent points
                                    # (1e4 overfits: 0.97x/0.91x/0.92x on the likeness benchmark; 1e3: 0.92x/0.81x/0.78x)
    gate: float = 0.04              # pairs farther apart than this x the face size are not used
    landmark_sigma: float = 0.012
    depth_weight: float = 0.05
    shape_prior: float = 1.0
    expr_prior: float = 1.0
    expr_bound_weight: float = 1e4


def person_mask(image_rgb: np.ndarray) -> Optional[np.ndarray]:
    """(H, W) float in [0, 1]: the person (head, hair, body) against the background, or None when
    mediapipe's selfie segmentation is not available."""
    try:
        import mediapipe as mp
        seg_mod = mp.solutions.selfie_segmentation
    except (ImportError, AttributeError):
        return None
    with seg_mod.SelfieSegmentation(model_selection=0) as seg:
        out = seg.process(np.ascontiguousarray(image_rgb))
    if out.segmentation_mask is None:
        return None
    return out.segmentation_mask.astype(np.float32)


class MaskBoundary:
    """Nearest boundary pixel and outward normal of a soft (H, W) mask, for any pixel."""

    def __init__(self, mask: np.ndarray):
        import cv2
        from scipy import ndimage

        m = mask > 0.5
        boundary = m & ~ndimage.binary_erosion(m)
        _, self.nearest = ndimage.distance_transform_edt(~boundary, return_indices=True)
        smooth = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
        gy, gx = np.gradient(smooth)
        n = -np.stack([gx, gy], -1)
        self.normal = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        self.H, self.W = mask.shape
        self.empty = not boundary.any()

    def match(self, px: np.ndarray):
        x = np.clip(np.round(px[:, 0]).astype(int), 0, self.W - 1)
        y = np.clip(np.round(px[:, 1]).astype(int), 0, self.H - 1)
        qy, qx = self.nearest[0, y, x], self.nearest[1, y, x]
        return np.stack([qx, qy], 1).astype(np.float32), self.normal[qy, qx].astype(np.float32)


def outline_vertices(px: np.ndarray, faces: np.ndarray, candidates: np.ndarray, height: int, width: int,
                     tol: float = 1.0) -> np.ndarray:
    """The candidates (vertex ids) whose projection lies on the outer boundary of the projected mesh."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    for tri in np.round(px[faces] * 4).astype(np.int32):      # 2 bits of sub-pixel precision
        cv2.fillConvexPoly(mask, tri, 1, shift=2)
    inner = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    p = px[candidates]
    ok = (p[:, 0] >= 0) & (p[:, 0] < width) & (p[:, 1] >= 0) & (p[:, 1] < height)
    x = np.clip(np.round(p[:, 0]).astype(int), 0, width - 1)
    y = np.clip(np.round(p[:, 1]).astype(int), 0, height - 1)
    return candidates[ok & (inner[y, x] <= tol + 0.5)]


def outline_candidates(model) -> np.ndarray:
    """Vertices whose outline may be compared with a photo's: the face region (its ``face`` part;
    the outer skin for other part layouts; every vertex of a single-part model)."""
    if model.parts is not None and "face" in model.parts.names:
        return np.nonzero(model.parts.vertex_part == model.parts.names.index("face"))[0]
    return np.nonzero(model.skin_vertex_mask())[0]


def point_layer(layer, vertex_ids) -> LandmarkLayer:
    """A LandmarkLayer that evaluates the given vertices (each a point with barycentric (1, 0, 0))."""
    ids = torch.as_tensor(np.asarray(vertex_ids), dtype=torch.long, device=layer.device)
    proxy = types.SimpleNamespace(
        model=layer.model, n_shape=layer.n_shape, n_expr=layer.n_expr,
        lm_faces=ids[:, None].repeat(1, 3),
        lm_bary=torch.tensor([1.0, 0.0, 0.0], device=layer.device).repeat(len(ids), 1),
        v_template=layer.v_template, shape_basis=layer.shape_basis, expr_basis=layer.expr_basis)
    if layer.model.joints is not None:
        proxy.parents, proxy.j_regressor, proxy.lbs_weights = layer.parents, layer.j_regressor, layer.lbs_weights
        proxy.posedirs = layer.posedirs
    return LandmarkLayer(proxy)


def stacked_views(layer, detections: list, views: list, item_weights=None) -> types.SimpleNamespace:
    """What both multi-photo refinements (outlines here, colours in photo_consistency.py) start from,
    as tensors over the photos: the detector's landmark targets and weights, face sizes, photo
    weights, and the landmark fits' cameras (R0, t0, focal, cx, cy, joints, dist = t0's depth)."""
    f32 = dict(dtype=torch.float32, device=layer.device)
    lm_idx = layer.lm_detector_index.cpu().numpy()
    t0 = torch.as_tensor(np.stack([v["t"] for v in views]), **f32)
    joints = None
    if layer.n_pose_joints:
        joints = torch.as_tensor(np.stack([v["joint_pose"] for v in views]), **f32)
    return types.SimpleNamespace(
        lm_idx=lm_idx,
        sqrt_w=torch.sqrt(torch.as_tensor(landmark_weights(lm_idx, FitConfig()), **f32))[None, :, None],
        targets=torch.as_tensor(np.stack([d.points[lm_idx] for d in detections]), **f32),
        sizes=torch.as_tensor([float(d.face_size) for d in detections], **f32),
        iw=torch.ones(len(detections), **f32) if item_weights is None else torch.as_tensor(item_weights, **f32),
        R0=torch.as_tensor(np.stack([v["R"] for v in views]), **f32), t0=t0,
        focal=torch.as_tensor([float(v["focal"]) for v in views], **f32),
        cx=torch.as_tensor([float(v["cx"]) for v in views], **f32),
        cy=torch.as_tensor([float(v["cy"]) for v in views], **f32),
        joints=joints, dist=t0[:, 2].clone())


def refine_silhouette(layer, detections: list, masks: list, shape0, views: list,
                      config: Optional[SilhouetteConfig] = None, item_weights=None) -> dict:
    """Identity (shared), pose and expression of every photo refined on landmarks + outlines.

    ``views``: per photo dict(R, t, focal, cx, cy, expr, joint_pose) from the landmark fits (camera
    space is OpenCV). ``masks``: person masks (None for a photo without one: landmarks only there).
    Returns dict(shape, views=[dict(R, t, expr)], outline_points=[n per photo])."""
    cfg = config or SilhouetteConfig()
    dev = layer.device
    model = layer.model
    N = len(detections)
    ks, ke = layer.n_shape, layer.n_expr
    f32 = dict(dtype=torch.float32, device=dev)
    st = stacked_views(layer, detections, views, item_weights)
    sqrt_w, targets, sizes, iw = st.sqrt_w, st.targets, st.sizes, st.iw
    R0, t0, foc, cx, cy, joints, dist = st.R0, st.t0, st.focal, st.cx, st.cy, st.joints, st.dist
    lm_layer = layer.landmark_layer()
    cand = outline_candidates(model)
    faces = layer.fit_faces.cpu().numpy()
    bounds = [None if m is None else MaskBoundary(m) for m in masks]
    lo_hi = layer.expr_range
    sqrt_bound = float(np.sqrt(cfg.expr_bound_weight))
    lm_scale = 1.0 / (cfg.landmark_sigma * sizes)                      # (N,)

    theta = torch.cat([torch.as_tensor(shape0, **f32).reshape(-1),
                       torch.cat([torch.zeros(N, 6, **f32),
                                  torch.as_tensor(np.stack([v["expr"] for v in views]), **f32).reshape(N, ke)], 1).reshape(-1)])
    per = 6 + ke

    def unpack(th):
        shape = th[:ks][None]
        rest = th[ks:].reshape(N, per)
        return shape, rest[:, :3], rest[:, 3:6], rest[:, 6:]

    def to_camera(pts, rot, trans):
        R = axis_angle_to_matrix(rot) @ R0
        return pts @ R.transpose(1, 2) + (t0 + dist[:, None] * trans)[:, None]

    def proj(cam, i=None):
        if i is None:
            return torch.stack([foc[:, None] * cam[..., 0] / cam[..., 2] + cx[:, None],
                                foc[:, None] * cam[..., 1] / cam[..., 2] + cy[:, None]], -1)
        return torch.stack([foc[i] * cam[..., 0] / cam[..., 2] + cx[i], foc[i] * cam[..., 1] / cam[..., 2] + cy[i]], -1)

    n_points = [0] * N
    for _ in range(max(cfg.rounds, 1)):
        # ---- pair the model's outline with the person mask's boundary (no gradient) -------------
        with torch.no_grad():
            shape, rot, trans, expr = unpack(theta)
            cam = to_camera(layer(shape.expand(N, -1), expr, joints), rot, trans)
            px = proj(cam).cpu().numpy()
        ids, qs, ns, owners = [], [], [], []
        for i in range(N):
            if bounds[i] is None or bounds[i].empty:
                n_points[i] = 0
                continue
            H, W = bounds[i].H, bounds[i].W
            sel = outline_vertices(px[i], faces, cand, H, W)
            q, n = bounds[i].match(px[i][sel])
            keep = np.linalg.norm(px[i][sel] - q, axis=1) < cfg.gate * float(sizes[i])
            n_points[i] = int(keep.sum())
            ids.append(sel[keep])
            qs.append(q[keep])
            ns.append(n[keep])
            owners.append(np.full(int(keep.sum()), i))
        ids = np.concatenate(ids) if ids else np.zeros(0, int)
        uniq, local = np.unique(ids, return_inverse=True)
        pl = point_layer(layer, uniq) if len(uniq) else None
        owner = torch.as_tensor(np.concatenate(owners) if owners else np.zeros(0, int), device=dev)
        local = torch.as_tensor(local, device=dev)
        q_t = torch.as_tensor(np.concatenate(qs) if qs else np.zeros((0, 2)), **f32)
        n_t = torch.as_tensor(np.concatenate(ns) if ns else np.zeros((0, 2)), **f32)
        counts = torch.as_tensor(n_points, **f32).clamp_min(1)
        sil_scale = torch.sqrt(cfg.weight * iw[owner] / counts[owner]) / (cfg.sigma * sizes[owner])

        def residuals(th):
            shape, rot, trans, expr = unpack(th)
            lm = to_camera(lm_layer(shape.expand(N, -1), expr, joints), rot, trans)
            lm_px = proj(lm)
            s = (lm_scale * torch.sqrt(iw))[:, None, None]
            out = [((lm_px - targets[..., :2]) * sqrt_w * s).reshape(-1)]
            z = lm[..., 2]
            zm = z.mean(-1, keepdim=True)
            dz = foc[:, None] * (z - zm) / zm - (targets[..., 2] - targets[..., 2].mean(-1, keepdim=True))
            out.append((dz * sqrt_w[..., 0] * s[..., 0] * float(np.sqrt(cfg.depth_weight))).reshape(-1))
            if pl is not None:
                pts = pl(shape.expand(N, -1), expr, joints)                    # (N, P, 3)
                R = axis_angle_to_matrix(rot) @ R0
                c = torch.einsum("kij,kj->ki", R[owner], pts[owner, local]) + (t0 + dist[:, None] * trans)[owner]
                ppx = torch.stack([foc[owner] * c[:, 0] / c[:, 2] + cx[owner], foc[owner] * c[:, 1] / c[:, 2] + cy[owner]], -1)
                out.append(((ppx - q_t) * n_t).sum(1) * sil_scale)
            out.append(float(np.sqrt(cfg.shape_prior)) * shape.reshape(-1))
            out.append(float(np.sqrt(cfg.expr_prior)) * expr.reshape(-1))
            if lo_hi is not None:
                e = expr.reshape(-1)
                out.append(sqrt_bound * (torch.relu(lo_hi[0] - e) + torch.relu(e - lo_hi[1])))
            return torch.cat(out)

        with torch.no_grad():
            if layer.n_pose_joints or pl is None:
                theta, _, _ = levenberg_marquardt(residuals, theta, iters=cfg.iters)
            else:
                theta = _solve_analytic(theta, residuals, pl, local, owner, q_t, n_t, sil_scale, lm_layer, targets,
                                        sqrt_w[0, :, 0], lm_scale * torch.sqrt(iw), foc, cx, cy, R0, t0, dist, N, ks, ke,
                                        cfg, lo_hi, sqrt_bound)

    shape, rot, trans, expr = unpack(theta)
    R = (axis_angle_to_matrix(rot) @ R0).cpu().numpy()
    t = (t0 + dist[:, None] * trans).cpu().numpy()
    return dict(shape=shape[0].cpu().numpy(), outline_points=n_points,
                views=[dict(R=R[i], t=t[i], expr=expr[i].cpu().numpy()) for i in range(N)])


def _solve_analytic(theta, residuals, pl, local, owner, q_t, n_t, sil_scale, lm_layer, targets, sqrt_w, lm_w,
                    foc, cx, cy, R0, t0, dist, N, ks, ke, cfg, lo_hi, sqrt_bound):
    """The same least-squares problem with its Jacobian built by hand (models without joints): every
    point is linear in the coefficients, the camera enters by a perspective projection."""
    from .landmark_solve import _skew, landmark_bases

    T_l, B_l = landmark_bases(lm_layer)                        # (L, 3), (L, 3, Ks + Ke)
    T_s, B_s = landmark_bases(pl)                              # the outline points
    T_s, B_s = T_s[local], B_s[local]
    per = 6 + ke
    n_par = ks + N * per
    dev, dt = theta.device, theta.dtype

    def cam_jac(P, B, R, i):
        """Pixels (n, 2) of points P (n, 3) and their Jacobian (n, 2, 6 + Ks + Ke) in view i."""
        Y = P @ R.T
        X = Y + t0[i] + dist[i] * th_trans[i]
        f, Z = foc[i], X[:, 2]
        px = torch.stack([f * X[:, 0] / Z + cx[i], f * X[:, 1] / Z + cy[i]], 1)
        n = len(P)
        dpx = torch.zeros(n, 2, 3, dtype=dt, device=dev)
        dpx[:, 0, 0] = f / Z
        dpx[:, 0, 2] = -f * X[:, 0] / Z ** 2
        dpx[:, 1, 1] = f / Z
        dpx[:, 1, 2] = -f * X[:, 1] / Z ** 2
        dX = torch.empty(n, 3, 6 + B.shape[-1], dtype=dt, device=dev)
        dX[:, :, 0:3] = -_skew(Y)
        dX[:, :, 3:6] = dist[i] * torch.eye(3, dtype=dt, device=dev)
        dX[:, :, 6:] = R @ B
        return px, X, dpx @ dX, dX

    def scatter(Jv, i):
        """(rows, 6 + Ks + Ke) of view i -> (rows, n_par)."""
        J = torch.zeros(Jv.shape[0], n_par, dtype=dt, device=dev)
        J[:, :ks] = Jv[:, 6:6 + ks]
        o = ks + i * per
        J[:, o:o + 6] = Jv[:, :6]
        J[:, o + 6:o + per] = Jv[:, 6 + ks:]
        return J

    state = {}

    def unpack(th):
        rest = th[ks:].reshape(N, per)
        return th[:ks], rest[:, :3], rest[:, 3:6], rest[:, 6:]

    def jacobian(th):
        nonlocal th_trans
        shape, rot, trans, expr = unpack(th)
        th_trans = trans
        rows = []
        R_all = axis_angle_to_matrix(rot) @ R0
        for i in range(N):
            c = torch.cat([shape, expr[i]])
            P = T_l + B_l @ c
            px, X, J, dX = cam_jac(P, B_l, R_all[i], i)
            w = (sqrt_w * lm_w[i])[:, None, None]
            rows.append(scatter((J * w).reshape(-1, J.shape[-1]), i))
            Z = X[:, 2]
            Zm = Z.mean()
            dZ = dX[:, 2, :]
            wd = sqrt_w * lm_w[i] * float(np.sqrt(cfg.depth_weight))
            rows.append(scatter(foc[i] / Zm * (dZ - (Z / Zm)[:, None] * dZ.mean(0, keepdim=True)) * wd[:, None], i))
        for i in range(N):
            m = owner == i
            if not bool(m.any()):
                continue
            c = torch.cat([shape, expr[i]])
            P = T_s[m] + B_s[m] @ c
            _, _, J, _ = cam_jac(P, B_s[m], R_all[i], i)
            Jr = (n_t[m][:, :, None] * J).sum(1) * sil_scale[m][:, None]
            rows.append(scatter(Jr, i))
        Jp = torch.zeros(ks + N * ke, n_par, dtype=dt, device=dev)
        Jp[:ks, :ks] = torch.eye(ks, dtype=dt, device=dev) * float(np.sqrt(cfg.shape_prior))
        for i in range(N):
            o = ks + i * per + 6
            Jp[ks + i * ke:ks + (i + 1) * ke, o:o + ke] = torch.eye(ke, dtype=dt, device=dev) * float(np.sqrt(cfg.expr_prior))
        rows.append(Jp)
        if lo_hi is not None:
            e = expr.reshape(-1)
            slope = sqrt_bound * ((e > lo_hi[1]).to(dt) - (e < lo_hi[0]).to(dt))
            Jb = torch.zeros(N * ke, n_par, dtype=dt, device=dev)
            for i in range(N):
                o = ks + i * per + 6
                Jb[i * ke:(i + 1) * ke, o:o + ke] = torch.diag(slope[i * ke:(i + 1) * ke])
            rows.append(Jb)
        return torch.cat(rows)

    th_trans = None

    def step(th, d):
        # rotation deltas compose multiplicatively: the stored rotation vector is re-expressed so that
        # R = exp(rot) R0 becomes exp(d) exp(rot) R0
        shape, rot, trans, expr = unpack(th)
        dd = d[ks:].reshape(N, per)
        R_new = axis_angle_to_matrix(dd[:, :3]) @ axis_angle_to_matrix(rot)
        rot_new = _matrix_to_axis_angle(R_new)
        rest = torch.cat([rot_new, trans + dd[:, 3:6], expr + dd[:, 6:]], 1)
        return torch.cat([shape + d[:ks], rest.reshape(-1)])

    theta, _, _ = levenberg_marquardt(residuals, theta, iters=cfg.iters, jacobian=jacobian, step=step)
    return theta


def _matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    import cv2

    return torch.as_tensor(np.stack([cv2.Rodrigues(r.double().cpu().numpy())[0][:, 0] for r in R]),
                           dtype=R.dtype, device=R.device)
