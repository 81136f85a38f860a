"""Multi-view photometric consistency: the same skin seen from several sides must have one colour.

Landmarks and outlines leave most of the face's surface unmeasured. Where two photos see the same
patch of skin, though, its colour is the same up to the lighting of each photo, so every skin vertex
gives a dense, shape-dependent measurement: if the identity is wrong, a vertex projects onto
different skin in different photos (stereo) and its normal makes the shading disagree (shading).
This stage
1. keeps one identity (shared), and per photo its pose, expression and SH light (core/render/shading.py);
2. gives each vertex of the face (the skin the detector's points cover: no ears, scalp or neck, where
   hair, specular highlights and the background dominate) one albedo shared by all photos, solved in
   closed form for the current shading: a_v = sum_i w_iv c_iv s_iv / sum_i w_iv s_iv^2 (per channel;
   w = visibility x foreshortening x a robust weight). Being the exact minimiser, its own gradient
   vanishes (variable projection), so it is recomputed, detached, at every evaluation;
3. samples each photo's colour c_iv where the vertex projects (bilinear, on a blurred copy: 4, 2, 1 px,
   coarse to fine, so that the first steps see far), compares it with a_v s_iv (s: SH irradiance of
   the vertex normal) and moves identity, poses and expressions by L-BFGS (parameters scaled to about
   a millimetre of motion each: pose and shape then have comparable curvatures);
4. keeps the landmark term, the priors and the outline term of the silhouette stage as regularisers;
   visibility (a z-buffer of the model at 1/4 resolution), the SH lights, the robust weights and the
   outline pairs are re-estimated a few times per blur level.
5. shares each vertex's albedo with its mirror image (symmetric_albedo; after Wu et al., *Unsupervised
   Learning of Probably Symmetric Deformable 3D Objects*, CVPR 2020): skin colour is close to
   left-right symmetric while the light on the two halves is not, so even ONE photo constrains the
   shape (refine_photo_fit, used by the single-photo pipeline). Without the pairing a single photo
   gives no constraint (its own albedo explains any colour). A coarse mesh (the 468-vertex built-in
   head) is left alone (min_vertices), and so is a model whose template is not symmetric.
6. first turns the head of each photo turned 40+ degrees from the camera over a grid of yaw and pitch
   offsets about its centre (search_poses) and keeps the turn whose colours best match the albedo of the
   OTHER photos and the mirror, when that is 10% better: the detector's points on a head turned 50 degrees
   describe a less turned face, and the landmark fits are 8-18 degrees off there, beyond the reach of the
   continuous refinement (likeness benchmark, 24 subjects, 5 photos: mean ratio to the mean face's error
   0.628 -> 0.606, worst subject 1.17 -> 0.92, medians unchanged). Nearer frontal the search did more harm
   than good (search_min_turn_deg). Pose is what bounds this stage: started from the true camera poses,
   it reaches 0.22x-0.44x on 6 subjects with 5 photos, against 0.37x-0.77x from the fitted ones.
7. can put a sparse (L1) prior on a blendshape model's expression weights (expr_l1, off by default): the
   landmark fits leave several blendshapes at 0.5-0.9 on a face that barely smiles, and the colours grow
   them to absorb each photo's pose and identity errors (started from the true poses, such expressions
   turned single photos 3-6 degrees away from them again; with the true expressions they stayed within
   1.5). The prior helps faces with mild expressions and hurts strong ones (figures at expr_l1).
8. models glossy skin (specular): each photo's colour is a * (diffuse SH of the normal) + a grey specular
   SH of the view's mirror direction about the normal, both solved in closed form. A highlight sits on
   different skin in every photo (and on one side of the face only); a diffuse-only model has to explain
   it with the shape. Likeness benchmark, 24 subjects, 3 / 5 photos: mean ratio 0.608 / 0.572 -> 0.560 /
   0.522; the glossy Blender light ("basic") 0.83 / 0.75 -> 0.71 / 0.61.
9. couples the photos' expressions (expr_coupling): a bounded penalty on each pair's blendshape differences
   pulls the spurious ones together and lets a real difference (a smile in one photo) stay. Likeness
   benchmark, 24 subjects, 3 / 5 photos: medians 0.63x / 0.55x -> 0.58x / 0.54x the mean face's error.
10. weighs each colour robustly with a scale loose enough (robust_scale) that skin a pose error puts on the
   wrong pixels still counts: tighter, those samples read as outliers and every photo stays where the
   landmarks put it (an iteratively-reweighted trap). Likeness benchmark, 24 subjects, 3 / 5 photos:
   medians 0.584x / 0.536x -> 0.552x / 0.505x (cached detections); a third re-estimation round per blur level
   (rounds) moves them further: mean ratio 0.540 / 0.491 -> 0.522 / 0.468.
On the likeness benchmark (8 Blender-rendered ICT heads, ratio of the median face error to the mean
face's, cached detections of the 8 subjects these settings were chosen on), after the outline stage:
3 photos 0.85x -> 0.62x without the mirror pairing, 0.54x with it (and the settings below); 5 photos
0.81x -> 0.64x -> 0.51x; one photo (after the photo fit) 0.98x -> 0.68x. On 8 unseen subjects (the
benchmark's full pipeline): 0.77x / 0.69x / 0.63x for 1 / 3 / 5 photos. A few seconds per photo on 2
CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..models.morphable import axis_angle_to_matrix
from ..render.camera import head_turn_deg
from ..render.rasterizer import rasterize
from ..render.shading import sh_basis, vertex_normals
from .silhouette import MaskBoundary, outline_candidates, outline_vertices, point_layer, stacked_views


@dataclass
class PhotoConsistencyConfig:
    blur_px: tuple = (4.0, 2.0, 1.0)    # image blur per level, coarse to fine
    # re-estimations (visibility, light, robust weights, outline pairs) per level: each lets the poses move further
    # from where the landmarks put them (likeness benchmark, 24 subjects, cached detections, 3 / 5 photos, mean
    # ratio to the mean face's error: 2 -> 0.540 / 0.491, 3 -> 0.522 / 0.468, 1.5x this stage's time; 2 rounds of
    # 45 iterations instead: 5 photos 0.477; 3 of 20: 0.481)
    rounds: int = 3
    iters: int = 30                     # L-BFGS iterations per round (likeness benchmark, 3 / 5 photos, with the
                                        # settings below: 15 -> 0.58x / 0.52x the mean face's error, 30 -> 0.52x / 0.50x
                                        # on 8 subjects; 45 with expr_l1 below, see there)
    weight: float = 1e5                 # each photo's colours count as this many independent points (likeness
                                        # benchmark, 3 / 5 photos: 1e4 2.21 / 2.34 mm, 3e4 2.07 / 2.08, 1e5 1.90 / 2.01)
    sigma: float = 0.05                 # expected colour noise (0..1)
    region_m: float = 0.015             # photometric vertices: face vertices within this of a landmark point
    min_cos: float = 0.15               # foreshortening: vertices seen more obliquely than this are left out
    depth_tol: float = 0.004            # a vertex is visible when within this (m) of the z-buffer
    zbuf_scale: float = 0.25            # z-buffer resolution, relative to the photo
    outline_weight: float = 1e3         # the outline term of the silhouette stage (0: none)
    outline_sigma: float = 0.01
    gate: float = 0.04
    landmark_sigma: float = 0.024       # the landmarks as a regulariser: twice the landmark fits' noise, since
                                        # mediapipe's points are biased (0.012: 3 / 5 photos 0.59x / 0.55x)
    depth_weight: float = 0.05
    shape_prior: float = 1.0
    expr_prior: float = 1.0
    # a sparse (L1) prior on a blendshape model's weights (0: none), as blendshape trackers use: 1.0 above is
    # nothing against 1e5 points of colour, and the colours pile spurious expressions (several blendshapes at
    # 0.5-0.9 on a face that barely smiles) onto each photo's pose and identity errors. NOT on by default: it
    # trades strong expressions for mild ones. Likeness benchmark, 3 / 5 photos, ratio to the mean face's
    # error: 1e3 with 45 iterations, 24 subjects with mild expressions (3 blendshapes at 0.1-0.4), medians
    # 0.63x / 0.60x -> 0.58x / 0.62x, mean ratio 0.61 / 0.59 -> 0.60 / 0.55; 8 subjects with strong ones
    # (0.6-1.0, --strong-expressions) 0.52x / 0.52x -> 0.58x / 0.50x, mean ratio 0.60 / 0.57 -> 0.66 / 0.60.
    # An L2 prior of 1e4 instead (cached detections, mean ratio): mild 0.61 / 0.59 -> 0.61 / 0.56, strong
    # (6 subjects, 3 photos) 0.70 -> 0.78: it pulls real expressions to zero. A clean smile at 0.8
    # (tests/test_multi.py::test_multi_photo_fit_keeps_a_real_smile) ends at 0.15 with 1e3, ~0.8 without
    expr_l1: float = 0.0
    # photos taken for one reconstruction mostly share an expression, and the colours grow spurious expressions
    # that differ from photo to photo: each pair of photos' weights is coupled by a bounded (Geman-McClure) penalty,
    # expr_coupling * c^2 d^2 / (d^2 + c^2) per blendshape (d: the two photos' weight difference, c:
    # expr_coupling_scale), which pulls small differences together like a quadratic of that strength and lets a
    # real one (a smile in one photo only: tests/test_multi.py) stay. Likeness benchmark (24 subjects, cached
    # detections), 3 / 5 photos: mean ratio to the mean face's error 0.560 / 0.522 -> 0.547 / 0.509 (paired
    # -0.013 +- 0.007 / -0.013 +- 0.006). A plain quadratic of 1e4 did better there (0.538 / 0.504; its subjects
    # keep one expression in every photo) but pulled a one-photo smile from 0.78 to 0.47 (0: none)
    expr_coupling: float = 1e4
    expr_coupling_scale: float = 0.25
    # the robust (Geman-McClure) weights' scale, in robust standard deviations of the colour residual. Too tight
    # and the skin that a pose error puts on the wrong pixels is down-weighted as an outlier, so the evidence that
    # would move the pose is discarded and each photo stays where the landmarks put it: started from the true
    # camera poses, the stage ends at a lower cost for 11 of 12 subjects than from the landmark poses. Likeness
    # benchmark (24 subjects, cached detections), 3 / 5 photos, mean ratio to the mean face's error: 2 (before)
    # 0.547 / 0.509, 3 0.540 / 0.491, 4 0.547 / 0.490; 5 photos with 5: 0.511, with a scale per photo: 0.492,
    # without robust weights: 0.573 against 0.482 (12 subjects); strong expressions (12 subjects) 0.552 / 0.534
    # -> 0.542 / 0.530. One photo keeps 2 (single_photo_config; not measured there)
    robust_scale: float = 3.0
    shape_norm_weight: float = 100.0   # wall on |identity|^2 beyond the typical set of N(0, I) (0: none)
    # before the first blur level, each photo's head is turned over this grid (degrees) and kept where its
    # colours best match the other photos' (and the mirror's) albedo, if that is search_margin better
    pose_search: bool = True
    search_yaw_deg: tuple = (-12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0)
    search_pitch_deg: tuple = (-8.0, -4.0, 0.0, 4.0, 8.0)
    search_margin: float = 0.1
    # only photos turned at least this far from the camera are searched: that is where the detector's points
    # mislead (mediapipe at 50 degrees: the camera's pitch and yaw 4-7 degrees off there even for a PnP with
    # the true 3D shape and lens, about 2 at 30 and at 0). Nearer frontal, the search's colour score (against
    # a shape fitted to those poses) is the less reliable cue: on the likeness benchmark's 24 subjects (cached
    # detections, 5 photos) it had turned 20 of the 48 +-30 degree photos and put 14 of them further from the
    # true pose (mean 3.9 -> 5.7 degrees), while it improved 22 of the 27 +-50 degree photos it turned (11.2 ->
    # 8.2). Limited to turns from 40 degrees, mean ratio to the mean face's error 0.612 / 0.592 -> 0.606 /
    # 0.573 for 3 / 5 photos (paired differences -0.006 +- 0.004 / -0.019 +- 0.011, standard errors)
    search_min_turn_deg: float = 40.0
    # a grey specular term per photo: 9 SH coefficients over the mirror direction of the view about the normal
    # (a broad highlight lobe is a smooth function of it; after Ramamoorthi & Hanrahan's frequency-space view of
    # glossy reflection), solved with the light in closed form. Without it, a highlight that sits on other skin
    # in every photo reads as shape. Likeness benchmark (24 subjects, cached detections, mean ratio to the mean
    # face's error): 3 / 5 photos 0.608 / 0.572 -> 0.560 / 0.522 (paired -0.048 +- 0.017 / -0.051 +- 0.018;
    # under Blender's glossy "basic" studio light 0.83 / 0.75 -> 0.71 / 0.61), strong expressions (12 subjects)
    # 0.661 / 0.613 -> 0.582 / 0.535. It costs a little on matte skin (tests/test_photo_consistency.py: 1.27 ->
    # 1.43 mm) and is off for one photo (single_photo_config)
    specular: bool = True
    expr_bound_weight: float = 1e6     # a stiff wall at a blendshape model's range (the colours outweigh 1e4)
    symmetric_albedo: bool = True       # mirror vertices share one albedo (left-right symmetric models only;
                                        # likeness benchmark, 3 / 5 photos: 0.62x / 0.64x -> 0.59x / 0.55x)
    min_vertices: int = 2000            # coarser meshes are left alone: a per-vertex albedo needs vertices a
                                        # few pixels apart (468-vertex built-in head, tests/test_multi.py: 0.64 mm
                                        # against 0.26 for the plain mean of the per-photo identities)


def photometric_vertices(layer, region_m: float) -> np.ndarray:
    """Face vertices (outline_candidates) within ``region_m`` of the model's landmark points: the skin
    the face detector covers (ICT: the narrow face area without ears and upper scalp)."""
    from scipy.spatial import cKDTree

    cand = outline_candidates(layer.model)
    with torch.no_grad():
        zeros = lambda k: torch.zeros(1, k, device=layer.device)            # noqa: E731
        lm = layer.landmark_layer()(zeros(layer.n_shape), zeros(layer.n_expr))[0].cpu().numpy()
    d, _ = cKDTree(lm).query(layer.model.v_template[cand])
    return cand[d < region_m]


def mirror_partners(model, vertices: np.ndarray, tol_m: float = 0.001):
    """For each of ``vertices``, the position in ``vertices`` of its left-right mirror image (x -> -x);
    None when the model's template is not symmetric that closely. A vertex on the mid-line is its own."""
    from scipy.spatial import cKDTree

    v = model.v_template[vertices]
    d, j = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    if np.median(d) > tol_m:
        return None
    return np.where(d < 2 * tol_m, j, np.arange(len(vertices)))


def _blurred(image: np.ndarray, sigma: float, device) -> torch.Tensor:
    import cv2

    im = image.astype(np.float32) / 255.0
    if sigma > 0:
        im = cv2.GaussianBlur(im, (0, 0), sigma)
    return torch.as_tensor(im, device=device).permute(2, 0, 1)[None].contiguous()


def _sample(image: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) image at (P, 2) pixel positions (pixel j's centre at j + 0.5) -> (P, 3)."""
    H, W = image.shape[-2:]
    g = torch.stack([px[:, 0] / W * 2 - 1, px[:, 1] / H * 2 - 1], -1)[None, None]
    return F.grid_sample(image, g, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def _albedo(c, s, w, mirror=None):
    """Shared albedo (P, 3) minimising sum_i w (c - a s)^2 for colours / shading (N, P, 3), weights (N, P).
    ``mirror`` (P,): each vertex's mirror partner; its albedo is then shared with it."""
    num = (w[..., None] * c * s).sum(0)
    den = (w[..., None] * s * s).sum(0)
    if mirror is not None:
        num, den = num + num[mirror], den + den[mirror]
    return num / den.clamp_min(1e-8)


def _turn(yaw_deg: float, pitch_deg: float, **kw) -> torch.Tensor:
    """Camera-space rotation turning a head by yaw (about the image's vertical axis) then pitch."""
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return torch.as_tensor(Rx @ Ry, **kw)


def _reflection_basis(p, nrm):
    """SH basis of each vertex's mirror direction of the view (a broad specular lobe is a smooth function of it)."""
    v = -F.normalize(p, dim=-1)
    return sh_basis(2 * (nrm * v).sum(-1, keepdim=True) * nrm - v)


def _light_spec(c, a, basis, rbasis, w):
    """One photo's diffuse SH light (9, 3) and grey specular SH (9,): c ~ a * (basis @ sh) + rbasis @ spec."""
    sw = w.sqrt()[:, None]
    P = len(c)
    A = torch.zeros(3 * P, 36, dtype=c.dtype, device=c.device)
    for ch in range(3):
        A[ch * P:(ch + 1) * P, ch * 9:(ch + 1) * 9] = basis * a[:, ch:ch + 1] * sw
        A[ch * P:(ch + 1) * P, 27:] = rbasis * sw
    y = (c * sw).T.reshape(-1, 1)
    M = A.T @ A + 1e-4 * torch.eye(36, dtype=A.dtype, device=A.device)
    x = torch.linalg.solve(M, A.T @ y)[:, 0]
    return x[:27].reshape(3, 9).T, x[27:]


def _light(c, a, basis, w):
    """One photo's SH light (9, 3): c ~ a * (basis @ sh), weighted least squares per channel."""
    sw = w.sqrt()[:, None]
    out = []
    for ch in range(3):
        A = basis * a[:, ch:ch + 1] * sw
        M = A.T @ A + 1e-4 * torch.eye(9, dtype=A.dtype, device=A.device)
        out.append(torch.linalg.solve(M, A.T @ (c[:, ch:ch + 1] * sw))[:, 0])
    return torch.stack(out, 1)


def refine_photo_consistency(layer, images: list, detections: list, masks: list, shape0, views: list,
                             config: Optional[PhotoConsistencyConfig] = None, item_weights=None) -> dict:
    """Identity (shared), pose and expression of every photo refined on multi-view colour consistency
    + landmarks + outlines. ``views``: per photo dict(R, t, focal, cx, cy, expr, joint_pose, sh);
    ``masks``: person masks or None (no outline term there). Returns dict(shape, views=[dict(R, t,
    expr, sh, specular (9,) or zeros)], vertices (P,) the photometric vertices, albedo (P, 3))."""
    cfg = config or PhotoConsistencyConfig()
    dev = layer.device
    f32 = dict(dtype=torch.float32, device=dev)
    N = len(images)
    st = stacked_views(layer, detections, views, item_weights)
    sqrt_w, targets, sizes, iw = st.sqrt_w, st.targets, st.sizes, st.iw
    R0, t0, foc, cx, cy, joints = st.R0, st.t0, st.focal, st.cx, st.cy, st.joints
    lm_scale = torch.sqrt(iw) / (cfg.landmark_sigma * sizes)
    lo_hi = layer.expr_range
    sh = torch.as_tensor(np.stack([np.asarray(v["sh"], np.float32) for v in views]), **f32)
    spec_sh = torch.zeros(N, 9, **f32)

    # photometric vertices, and the skin triangles around them (their normals)
    pv = photometric_vertices(layer, cfg.region_m)
    if len(pv) < cfg.min_vertices:
        return dict(shape=np.asarray(shape0, np.float32).reshape(-1), vertices=pv, albedo=None, skipped=True,
                    views=[dict(R=np.asarray(v["R"]), t=np.asarray(v["t"]), expr=np.asarray(v["expr"]),
                                sh=np.asarray(v["sh"])) for v in views])
    ff = layer.fit_faces.cpu().numpy()
    near = ff[np.isin(ff, pv).any(1)]
    sub = np.unique(near)
    remap = -np.ones(layer.model.n_vertices, np.int64)
    remap[sub] = np.arange(len(sub))
    sub_faces = torch.as_tensor(remap[near], device=dev)
    pv_local = torch.as_tensor(remap[pv], device=dev)
    sub_layer = point_layer(layer, sub)
    mirror = mirror_partners(layer.model, pv) if cfg.symmetric_albedo else None
    if mirror is not None:
        mirror = torch.as_tensor(mirror, device=dev)
    lm_layer = layer.landmark_layer()
    cand = outline_candidates(layer.model)
    bounds = [None if m is None or cfg.outline_weight <= 0 else MaskBoundary(m) for m in masks]

    # unknowns in scaled units (one unit ~ a millimetre of motion on the face): L-BFGS starts with a
    # unit metric, and unscaled poses have ~1e4 x the curvature of the shape coefficients
    EXPR_UNIT = 5.0
    shape = torch.as_tensor(np.asarray(shape0), **f32).reshape(1, -1).clone().requires_grad_(True)
    rot_u = torch.zeros(N, 3, **f32, requires_grad=True)
    trans_u = torch.zeros(N, 3, **f32, requires_grad=True)
    expr_u = (torch.as_tensor(np.stack([v["expr"] for v in views]), **f32) * EXPR_UNIT).requires_grad_(True)

    def pose():
        R = axis_angle_to_matrix(rot_u * 0.01) @ R0
        return R, t0 + trans_u * 0.001

    def expr():
        return expr_u / EXPR_UNIT

    def proj(c):
        return torch.stack([foc[:, None] * c[..., 0] / c[..., 2] + cx[:, None],
                            foc[:, None] * c[..., 1] / c[..., 2] + cy[:, None]], -1)

    def observe(level):
        R, t = pose()
        # the shared identity (1, K) broadcasts against the photos' expressions: its offsets once, not N times
        cam = sub_layer(shape, expr(), joints) @ R.transpose(1, 2) + t[:, None]
        nrm = vertex_normals(cam, sub_faces)[:, pv_local]
        p = cam[:, pv_local]
        px = proj(p)
        col = torch.stack([_sample(pyr[i][level], px[i]) for i in range(N)])
        return p, nrm, px, col

    def regulariser():
        R, t = pose()
        e = expr()
        lm = lm_layer(shape, e, joints) @ R.transpose(1, 2) + t[:, None]
        s = lm_scale[:, None, None]
        r = (proj(lm) - targets[..., :2]) * sqrt_w * s
        z = lm[..., 2]
        zm = z.mean(-1, keepdim=True)
        dz = foc[:, None] * (z - zm) / zm - (targets[..., 2] - targets[..., 2].mean(-1, keepdim=True))
        rd = dz * sqrt_w[..., 0] * s[..., 0]
        loss = 0.5 * ((r ** 2).sum() + cfg.depth_weight * (rd ** 2).sum())
        loss = loss + 0.5 * cfg.shape_prior * (shape ** 2).sum() + 0.5 * cfg.expr_prior * (e ** 2).sum()
        if cfg.expr_coupling > 0 and N > 1:           # over ordered pairs, so 1/4; /N: as strong as a pull to the mean
            d2 = (e[:, None] - e[None]) ** 2
            c2 = cfg.expr_coupling_scale ** 2
            loss = loss + 0.25 * cfg.expr_coupling / N * (c2 * d2 / (d2 + c2)).sum()
        if cfg.shape_norm_weight > 0:
            loss = loss + 0.5 * cfg.shape_norm_weight * torch.relu((shape ** 2).sum() - norm_limit) ** 2
        if lo_hi is not None:
            ev = e.reshape(-1)
            loss = loss + 0.5 * cfg.expr_bound_weight * ((torch.relu(lo_hi[0] - ev) + torch.relu(ev - lo_hi[1])) ** 2).sum()
            if cfg.expr_l1 > 0:                         # |e|, smoothed for L-BFGS
                loss = loss + cfg.expr_l1 * ((ev ** 2 + 1e-4).sqrt() - 1e-2).sum()
        return loss

    # |identity|^2 of N(0, I) identities concentrates at n +- sqrt(2n): beyond n + 3 sqrt(2n) is untypical
    norm_limit = shape.shape[1] + 3.0 * float(np.sqrt(2.0 * shape.shape[1]))
    faces_all = torch.as_tensor(layer.fit_faces, device=dev)
    albedo = None
    pyr = [[None] * len(cfg.blur_px) for _ in range(N)]         # [photo][level] blurred images

    def view_weights(i, verts_i, p_i, nrm_i, px_i):
        """Photo i's weight of each photometric vertex: visible (within depth_tol of the nearest surface
        around its pixel, on a coarse z-buffer) x foreshortening."""
        H, W = images[i].shape[:2]
        k = cfg.zbuf_scale
        Hs, Ws = max(int(H * k), 1), max(int(W * k), 1)
        zb = rasterize(verts_i[None], faces_all, foc[i] * k, cx[i] * k, cy[i] * k, Hs, Ws).depth[0]
        zmin = -F.max_pool2d(-zb[None, None], 3, 1, 1)[0, 0]
        x = (px_i[:, 0] * k).floor().long()
        y = (px_i[:, 1] * k).floor().long()
        inside = (x >= 0) & (x < Ws) & (y >= 0) & (y < Hs)
        zv = zmin[y.clamp(0, Hs - 1), x.clamp(0, Ws - 1)]
        vis = (inside & (p_i[:, 2] <= zv + cfg.depth_tol)).float()
        cos = (nrm_i * -F.normalize(p_i, dim=-1)).sum(-1)
        return vis * ((cos - cfg.min_cos) / (1 - cfg.min_cos)).clamp(0, 1) ** 2

    def search_poses(level):
        """The head of each photo turned search_min_turn_deg or more from the camera, turned about its centre
        over a grid of yaw and pitch offsets, keeping the turn whose colours best match the albedo the OTHER
        photos (and the mirror) give. The landmark fits can be 10+ degrees off on a turned head (the detector
        guesses a less turned face), beyond what the continuous refinement below recovers; the colours see it.
        Diffuse light only here: with the specular term in the candidates' light, the same result (5 photos,
        mean ratio 0.523 against 0.522)."""
        nonlocal R0, t0
        with torch.no_grad():
            R, t = pose()
            verts = layer(shape.expand(N, -1), expr(), joints) @ R.transpose(1, 2) + t[:, None]
            p, nrm, px, col = observe(level)
            wgt = torch.stack([view_weights(i, verts[i], p[i], nrm[i], px[i]) for i in range(N)])
            shade = torch.einsum("npk,nkc->npc", sh_basis(nrm), sh)
            R_new, t_new = R.clone(), t.clone()
            turned = head_turn_deg(R)
            for i in range(N):
                if turned[i] < cfg.search_min_turn_deg:
                    continue
                others = [j for j in range(N) if j != i]
                a = _albedo(col[others], shade[others], wgt[others], mirror)
                den = wgt[others].sum(0)
                known = ((den + den[mirror]) if mirror is not None else den) > 0
                centre = p[i].mean(0)
                costs = []
                for dyaw in cfg.search_yaw_deg:
                    for dpitch in cfg.search_pitch_deg:
                        D = _turn(dyaw, dpitch, **f32)
                        v_c = (verts[i] - centre) @ D.T + centre
                        p_c = (p[i] - centre) @ D.T + centre
                        n_c = nrm[i] @ D.T
                        px_c = torch.stack([foc[i] * p_c[:, 0] / p_c[:, 2] + cx[i],
                                            foc[i] * p_c[:, 1] / p_c[:, 2] + cy[i]], -1)
                        col_c = _sample(pyr[i][level], px_c)
                        w_c = view_weights(i, v_c, p_c, n_c, px_c) * known
                        m = w_c > 0
                        if int(m.sum()) < 50:
                            continue
                        basis_c = sh_basis(n_c)
                        light = _light(col_c[m], a[m], basis_c[m], w_c[m])
                        r2 = ((col_c - a * (basis_c @ light)) ** 2).sum(-1)
                        costs.append((dyaw, dpitch, D, r2, w_c))
                zero = [c for c in costs if c[0] == 0 and c[1] == 0]
                if not zero:
                    continue
                r0, w0 = zero[0][3], zero[0][4]
                # a robust cost (truncated at 3 robust sigmas of the current pose's residual), per unit of
                # weight; candidates that see much less of the face than the current pose are not compared
                tau2 = (3 * 1.4826 * r0[w0 > 0].sqrt().median()) ** 2
                score = lambda c: float((c[4] * c[3].clamp(max=tau2)).sum() / c[4].sum())      # noqa: E731
                fair = [c for c in costs if float(c[4].sum()) >= 0.5 * float(w0.sum())]
                best = min(fair, key=score)
                if score(best) < (1.0 - cfg.search_margin) * score(zero[0]):
                    D = best[2]
                    R_new[i] = D @ R[i]
                    t_new[i] = centre + D @ (t[i] - centre)
            R0, t0 = R_new, t_new
            rot_u.zero_()
            trans_u.zero_()

    for level, blur in enumerate(cfg.blur_px):
        for i in range(N):
            pyr[i][level] = _blurred(images[i], blur, dev)
        if level == 0 and cfg.pose_search and N >= 2:
            search_poses(level)
        for _ in range(cfg.rounds):
            with torch.no_grad():
                R, t = pose()
                verts = layer(shape.expand(N, -1), expr(), joints) @ R.transpose(1, 2) + t[:, None]
                p, nrm, px, col = observe(level)
                wgt = torch.stack([view_weights(i, verts[i], p[i], nrm[i], px[i]) for i in range(N)])
                seen = (wgt > 0).sum(0)
                if mirror is not None:                                      # its mirror's sightings count
                    seen = seen + seen[mirror] * (mirror != torch.arange(len(pv), device=dev))
                wgt = wgt * (seen >= 2).float()[None]                       # seen twice at least
                basis = sh_basis(nrm)
                rbasis = _reflection_basis(p, nrm) if cfg.specular else None
                for _ in range(3):                                          # light <-> albedo
                    spec = torch.einsum("npk,nk->np", rbasis, spec_sh)[..., None] if cfg.specular else 0.0
                    albedo = _albedo(col - spec, torch.einsum("npk,nkc->npc", basis, sh), wgt, mirror)
                    for i in range(N):
                        m = wgt[i] > 0
                        if int(m.sum()) > 50:
                            if cfg.specular:
                                sh[i], spec_sh[i] = _light_spec(col[i][m], albedo[m], basis[i][m], rbasis[i][m], wgt[i][m])
                            else:
                                sh[i] = _light(col[i][m], albedo[m], basis[i][m], wgt[i][m])
                shade = torch.einsum("npk,nkc->npc", basis, sh)
                spec = torch.einsum("npk,nk->np", rbasis, spec_sh)[..., None] if cfg.specular else 0.0
                res = (col - spec - _albedo(col - spec, shade, wgt, mirror) * shade).norm(dim=-1)
                if bool((wgt > 0).any()):
                    # robust (Geman-McClure) weights: specular highlights, shadows, hair, occluders
                    scale = cfg.robust_scale * 1.4826 * res[wgt > 0].median().clamp_min(1e-4)
                    wgt = wgt / (1 + (res / scale) ** 2) ** 2
                # every photo's colours count as cfg.weight points, however many vertices it sees (not scaled
                # by item_weights, the landmarks' quality: 5 photos 2.01 mm without, 2.12 with)
                vw = (cfg.weight / wgt.sum(1).clamp_min(1e-6))[:, None] / cfg.sigma ** 2
                outline = _outline_pairs(verts, proj, faces_all.cpu().numpy(), cand, bounds, sizes, iw, cfg, layer, N)

            opt = torch.optim.LBFGS([shape, rot_u, trans_u, expr_u], lr=1.0, max_iter=cfg.iters, history_size=10,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                p_, nrm, _, col = observe(level)
                shade = torch.einsum("npk,nkc->npc", sh_basis(nrm), sh)
                if cfg.specular:
                    col = col - torch.einsum("npk,nk->np", _reflection_basis(p_, nrm), spec_sh)[..., None]
                with torch.no_grad():
                    a = _albedo(col, shade, wgt, mirror)        # the exact minimiser: no gradient term of its own
                loss = 0.5 * (vw * wgt * ((col - a * shade) ** 2).sum(-1)).sum() + regulariser()
                if outline is not None:
                    pl, loc, own, q, n, sw = outline
                    R, t = pose()
                    c = torch.einsum("kij,kj->ki", R[own], pl(shape, expr(), joints)[own, loc]) + t[own]
                    pp = torch.stack([foc[own] * c[:, 0] / c[:, 2] + cx[own], foc[own] * c[:, 1] / c[:, 2] + cy[own]], -1)
                    loss = loss + 0.5 * (sw * ((pp - q) * n).sum(1) ** 2).sum()
                loss.backward()
                return loss

            opt.step(closure)
            if lo_hi is not None:           # and the weights are kept inside it (each round starts a new L-BFGS)
                with torch.no_grad():
                    expr_u.clamp_(lo_hi[0] * EXPR_UNIT, lo_hi[1] * EXPR_UNIT)

    with torch.no_grad():
        R, t = pose()
        e = expr()
    return dict(shape=shape.detach()[0].cpu().numpy(), vertices=pv, skipped=False,
                albedo=None if albedo is None else albedo.cpu().numpy(),
                views=[dict(R=R[i].cpu().numpy(), t=t[i].cpu().numpy(), expr=e[i].cpu().numpy(),
                            sh=sh[i].cpu().numpy(), specular=spec_sh[i].cpu().numpy()) for i in range(N)])


def _outline_pairs(verts, proj, faces, cand, bounds, sizes, iw, cfg, layer, N):
    """The silhouette stage's outline pairs for the current fit (None: no masks)."""
    if all(b is None or b.empty for b in bounds):
        return None
    px = proj(verts).cpu().numpy()
    ids, qs, ns, own = [], [], [], []
    for i in range(N):
        b = bounds[i]
        if b is None or b.empty:
            continue
        sel = outline_vertices(px[i], faces, cand, b.H, b.W)
        q, n = b.match(px[i][sel])
        keep = np.linalg.norm(px[i][sel] - q, axis=1) < cfg.gate * float(sizes[i])
        ids.append(sel[keep])
        qs.append(q[keep])
        ns.append(n[keep])
        own.append(np.full(int(keep.sum()), i))
    ids = np.concatenate(ids)
    if not len(ids):
        return None
    dev = verts.device
    uniq, loc = np.unique(ids, return_inverse=True)
    own = torch.as_tensor(np.concatenate(own), device=dev)
    count = torch.bincount(own, minlength=N).float().clamp_min(1)
    sw = cfg.outline_weight * iw[own] / count[own] / (cfg.outline_sigma * sizes[own]) ** 2
    return (point_layer(layer, uniq), torch.as_tensor(loc, device=dev), own,
            torch.as_tensor(np.concatenate(qs), dtype=torch.float32, device=dev),
            torch.as_tensor(np.concatenate(ns), dtype=torch.float32, device=dev), sw)


def single_photo_config() -> PhotoConsistencyConfig:
    """The stage on one photo (mirror-symmetric albedo): two blur levels, one round of 15 iterations each,
    to stay within the photo fit's time budget (likeness benchmark, 8 subjects: 0.69x the mean face's
    error against 0.68x with three levels and two rounds, in about half the time); the landmarks
    count fully (at twice their noise, as for several photos: 0.71x). An L2 expression prior of 1e4 was
    noise here (mean ratio 0.745 -> 0.736, 24 subjects). No specular term: on one photo it can mimic the
    left-right difference of the diffuse shading that the mirror-symmetric albedo reads the shape from
    (tests/test_photo_consistency.py, matte skin lit from the side: 2.27 -> 2.72 mm with it; the likeness
    benchmark, 24 subjects: 0.747 -> 0.726, within its noise)."""
    return PhotoConsistencyConfig(symmetric_albedo=True, blur_px=(2.0, 1.0), rounds=1, iters=15, landmark_sigma=0.012,
                                  specular=False, robust_scale=2.0)


def single_photo_applies(layer, config: Optional[PhotoConsistencyConfig] = None) -> bool:
    """Whether the one-photo stage can run on this model: a mirror-symmetric albedo needs a left-right
    symmetric template, and a per-vertex albedo a mesh fine enough (``min_vertices``)."""
    cfg = config or single_photo_config()
    cache = layer.__dict__.setdefault("_single_photo_applies", {})
    key = (cfg.region_m, cfg.min_vertices, cfg.symmetric_albedo)
    if key not in cache:
        pv = photometric_vertices(layer, cfg.region_m)
        cache[key] = bool(cfg.symmetric_albedo and len(pv) >= cfg.min_vertices
                          and mirror_partners(layer.model, pv) is not None)
    return cache[key]


def refine_photo_fit(layer, fit, image: np.ndarray, detection, mask=None,
                     config: Optional[PhotoConsistencyConfig] = None):
    """One photo fit's identity, pose and expression refined on its own colours, with the albedo of
    each vertex shared with its mirror image (after Wu et al., *Unsupervised Learning of Probably
    Symmetric Deformable 3D Objects*, CVPR 2020): the two halves of a face are seen under different
    light, so a wrong shape cannot explain both with one colour. ``mask``: the person mask for the
    outline term (None: none). Returns a new PhotoFit, or ``fit`` itself when the model is not
    left-right symmetric or too coarse for a per-vertex albedo."""
    import dataclasses

    from ..render.camera import project

    cfg = config or single_photo_config()
    if not single_photo_applies(layer, cfg):
        return fit
    P = fit.params
    view = dict(R=P["rotation"], t=P["translation"], focal=float(P["focal"]), cx=float(P["cx"]), cy=float(P["cy"]),
                expr=P["expr"], joint_pose=P["joint_pose"], sh=P["sh"])
    out = refine_photo_consistency(layer, [image], [detection], [mask], P["shape"], [view], cfg)
    if out.get("skipped"):
        return fit
    v = out["views"][0]
    dev = layer.device
    with torch.no_grad():
        shape = torch.as_tensor(out["shape"][None], dtype=torch.float32, device=dev)
        expr = torch.as_tensor(v["expr"][None], dtype=torch.float32, device=dev)
        joint = torch.as_tensor(P["joint_pose"][None], dtype=torch.float32, device=dev) if layer.n_pose_joints else None
        verts = layer(shape, expr, joint)
        R = torch.as_tensor(v["R"], dtype=torch.float32, device=dev)
        t = torch.as_tensor(v["t"], dtype=torch.float32, device=dev)
        cam = verts @ R.T + t
        lm_px = project(layer.landmarks(cam), float(P["focal"]), float(P["cx"]), float(P["cy"]))[0].cpu().numpy()
        neutral = layer.shaped(shape)[0].cpu().numpy()
    err = float(np.linalg.norm(lm_px - fit.landmarks_detected_px, axis=1).mean())
    params = dict(P, shape=out["shape"].astype(np.float32), expr=v["expr"].astype(np.float32),
                  rotation=v["R"].astype(np.float32), translation=v["t"].astype(np.float32))
    return dataclasses.replace(fit, params=params, vertices_neutral=neutral, vertices_model=verts[0].cpu().numpy(),
                               vertices_camera=cam[0].cpu().numpy(), landmarks_model_px=lm_px,
                               landmark_error_px=err, landmark_error_rel=err / float(detection.face_size))
