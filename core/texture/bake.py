"""Baking one albedo texture from several photos of a fitted head.

For every texel (the UV layout rasterised once), each photo contributes the colour it sees at
that surface point, if the point is visible there (z-buffer of that view) and facing the camera:
- lighting is removed by dividing by the view's fitted SH irradiance at the point's normal;
- each photo's colours are first brought to the best-seen photo's exposure and white balance
  (``match_exposure``), so their blend leaves no seam;
- contributions are weighted by the squared cosine between normal and view ray (grazing views
  are stretched and blurry) and dropped below ~75° (``grazing_weight``: streaks), by photo
  quality, and fade out near silhouettes;
- a view may carry a ``mask`` (H, W) weight in [0, 1]: only there is its colour skin (the
  detected face's outline: hair, collars and hands are not); the weight fades at its edge, where
  the fill below takes over smoothly;
- holes (seen by no photo) are filled from the mirror texel when the model is left-right
  symmetric (the texel whose surface point is nearest the hole's point mirrored in x, so any
  UV layout works, not only one symmetric in u), then from the fitted per-vertex albedo; a few texels are dilated past chart edges
  so texture filtering does not bleed background into the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..render import rasterize
from ..render.shading import sh_irradiance, vertex_normals


@dataclass
class BakeResult:
    texture: np.ndarray         # (S, S, 3) uint8 sRGB albedo
    coverage: np.ndarray        # (S, S) float: summed photo weight per texel (0 = filled)
    chart: np.ndarray           # (S, S) bool: texels inside the UV layout
    filled_from: dict           # texel counts: photos / mirror / model albedo


def _candidate_triangles(vc, faces, f, cx, cy, H, W, mask=None, margin: int = 8):
    """(F,) bool: triangles facing the camera with a corner inside the frame (and, given a mask,
    inside its bounding box plus a margin). A cheap superset of what the per-texel test keeps."""
    tri = vc[faces]                                                   # (F, 3, 3)
    normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    facing = (normal * tri.mean(1)).sum(-1) < 0                      # towards the camera at the origin
    z = tri[..., 2].clamp_min(1e-6)
    u = f * tri[..., 0] / z + cx
    v = f * tri[..., 1] / z + cy
    x0, y0, x1, y1 = -margin, -margin, W + margin, H + margin
    if mask is not None:
        ys, xs = np.nonzero(np.asarray(mask) > 0)
        if len(xs) == 0:
            return torch.zeros(len(faces), dtype=torch.bool, device=vc.device)
        x0, x1 = xs.min() - margin, xs.max() + margin
        y0, y1 = ys.min() - margin, ys.max() + margin
    inside = ((u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)).any(1)
    return facing & inside


def pull_push_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the texels outside ``known`` smoothly from the nearest known ones (pull-push: average the
    known texels down an image pyramid, then fill each level's holes from the coarser level). Linear
    in the texel count, where inpainting a large empty atlas area takes seconds."""
    import cv2

    img = image.astype(np.float32)
    w = known.astype(np.float32)
    levels = [(img * w[..., None], w)]
    while min(levels[-1][1].shape) > 1:
        c, m = levels[-1]
        h, wd = max(1, m.shape[0] // 2), max(1, m.shape[1] // 2)
        levels.append((cv2.resize(c, (wd, h), interpolation=cv2.INTER_AREA),
                       cv2.resize(m, (wd, h), interpolation=cv2.INTER_AREA)))
    colour = levels[-1][0] / np.maximum(levels[-1][1], 1e-6)[..., None]
    for c, m in reversed(levels[:-1]):
        up = cv2.resize(colour, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR)
        own = c / np.maximum(m, 1e-6)[..., None]
        a = np.clip(m, 0, 1)[..., None]
        colour = a * own + (1 - a) * up
    return np.where(known[..., None], image, np.clip(np.round(colour), 0, 255)).astype(image.dtype)


_UV_CACHE: dict = {}


def _uv_fragments(uv_corners: np.ndarray, size: int, device, tiles: int = 1):
    """Cached: a model's UV layout is rasterised once per texture size."""
    uv = np.ascontiguousarray(uv_corners, dtype=np.float32)
    key = (hash(uv.tobytes()), uv.shape, size, tiles, str(device))
    if key not in _UV_CACHE:
        if len(_UV_CACHE) > 4:
            _UV_CACHE.clear()
        _UV_CACHE[key] = _rasterise_uv(uv, size, device, tiles)
    return _UV_CACHE[key]


def _rasterise_uv(uv_corners: np.ndarray, size: int, device, tiles: int = 1):
    """Rasterise the UV layout: per texel, the triangle and its barycentrics. ``tiles`` unit UV
    tiles side by side (u in [0, tiles)) make a texture ``tiles * size`` wide."""
    F_ = len(uv_corners)
    uv = torch.as_tensor(uv_corners.reshape(-1, 2), dtype=torch.float32, device=device)
    # pinhole with focal 1 at z = 1: pixel x = u * size, row = (1 - v) * size
    pts = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones_like(uv[:, 0])], -1)[None]
    faces = torch.arange(3 * F_, device=device).reshape(F_, 3)
    frags = rasterize(pts, faces, 1.0, 0.0, 0.0, size, size * tiles)
    return frags.pix_to_face[0], frags.bary[0].detach()


def grazing_weight(cos: torch.Tensor, start: float = 0.25, full: float = 0.5) -> torch.Tensor:
    """How much a photo's colour counts at a surface point seen at angle acos(cos): cos² (foreshortened
    texels are blurry), and nothing below ``start`` (~75°), fading in up to ``full`` (60°): there a
    pixel smears over many texels and its colour streaks; the other photos or the fill do better."""
    c = cos.clamp(0, 1)
    t = ((c - start) / (full - start)).clamp(0, 1)
    return c ** 2 * t * t * (3 - 2 * t)


def match_exposure(A: torch.Tensor, Wt: torch.Tensor, min_weight: float = 0.1, min_texels: int = 200,
                   limits=(0.5, 2.0)) -> torch.Tensor:
    """(K, 3) colour gains that bring every photo to the exposure and white balance of the best-seen
    one (the largest total weight), from the texels both see well: the ratio of their median
    colours. Photos taken apart differ in exposure and white balance, which the per-photo lighting
    fit does not fully absorb; blended unmatched, they leave a colour seam where one photo's
    coverage gives way to another's. A photo sharing too few texels with the reference keeps 1."""
    K = A.shape[0]
    gains = torch.ones(K, 3, dtype=A.dtype, device=A.device)
    if K < 2:
        return gains
    ref = int(Wt.sum(1).argmax())
    for k in range(K):
        both = (Wt[ref] > min_weight) & (Wt[k] > min_weight)
        if k == ref or int(both.sum()) < min_texels:
            continue
        ratio = A[ref][both].median(0).values / A[k][both].median(0).values.clamp_min(1e-3)
        gains[k] = ratio.clamp(*limits)
    return gains


def bake_texture(faces: np.ndarray, uv_corners: np.ndarray, views: list, fallback_albedo: np.ndarray,
                 size: int = 512, symmetric: bool = True, model_vertices=None, device="cpu",
                 tiles: int = 1) -> BakeResult:
    """``views``: dicts with image (H,W,3 uint8), vertices_camera (V,3), focal, cx, cy, sh (9,3), weight,
    and optionally mask (H,W) float in [0, 1] (where the photo shows skin).

    ``faces`` may be a subset of the model's triangles (e.g. only its skin) with their corner UVs;
    the texture is ``size`` high and ``tiles * size`` wide (u in [0, tiles))."""
    dev = torch.device(device)
    faces_t = torch.as_tensor(faces, dtype=torch.long, device=dev)
    pix_to_face, bary = _uv_fragments(uv_corners, size, dev, tiles)
    chart = pix_to_face >= 0
    tf = pix_to_face[chart]                              # (N,) triangle of each chart texel
    tb = bary[chart]                                     # (N, 3)
    per_view = []                                        # (albedo (N, 3), weight (N,)) per photo
    for view in views:
        albedo = torch.zeros(len(tf), 3, device=dev)
        w = torch.zeros(len(tf), device=dev)
        vc = torch.as_tensor(view["vertices_camera"], dtype=torch.float32, device=dev)[None]
        img = torch.as_tensor(view["image"], dtype=torch.float32, device=dev) / 255.0
        H, W = img.shape[:2]
        f, cx, cy = float(view["focal"]), float(view["cx"]), float(view["cy"])
        mask = view.get("mask")
        # only texels on triangles this view can give colour to: facing it, in the frame and, with a
        # mask, near where it lets colour through (most of a full head's atlas is not in any photo)
        cand = _candidate_triangles(vc[0], faces_t, f, cx, cy, H, W, mask)[tf]
        sel = torch.nonzero(cand, as_tuple=True)[0]
        if len(sel):
            normals = vertex_normals(vc, faces_t)[0]
            tri = faces_t[tf[sel]]                                   # (n, 3)
            b = tb[sel]
            p = (vc[0][tri] * b[..., None]).sum(1)                   # texel points, camera space
            n = F.normalize((normals[tri] * b[..., None]).sum(1), dim=-1)
            px = f * p[:, 0] / p[:, 2] + cx
            py = f * p[:, 1] / p[:, 2] + cy
            cos = (n * F.normalize(-p, dim=-1)).sum(-1)
            # visibility: the texel's point must be the surface the view's z-buffer kept
            frags = rasterize(vc, faces_t, f, cx, cy, H, W)
            depth = frags.depth[0]
            xi, yi = px.round().long().clamp(0, W - 1), py.round().long().clamp(0, H - 1)
            inside = (px >= 0) & (px < W) & (py >= 0) & (py < H)
            visible = inside & (cos > 0.05) & (p[:, 2] <= depth[yi, xi] + 2e-3)
            grid = torch.stack([px / W * 2 - 1, py / H * 2 - 1], -1)[None, None]
            colour = F.grid_sample(img.permute(2, 0, 1)[None], grid, align_corners=False, mode="bilinear")[0, :, 0].T
            irradiance = sh_irradiance(n[None], torch.as_tensor(view["sh"], dtype=torch.float32, device=dev)[None])[0]
            albedo[sel] = (colour / irradiance.clamp_min(0.05)).clamp(0, 1)
            wv = visible.float() * grazing_weight(cos) * float(view.get("weight", 1.0))
            if mask is not None:
                m = torch.as_tensor(mask, dtype=torch.float32, device=dev)[None, None]
                wv = wv * F.grid_sample(m, grid, align_corners=False, mode="bilinear")[0, 0, 0]
            w[sel] = wv
        per_view.append((albedo, w))
    A = torch.stack([a for a, _ in per_view])            # (K, N, 3)
    Wt = torch.stack([w for _, w in per_view])           # (K, N)
    gains = match_exposure(A, Wt)
    A = (A * gains[:, None, :]).clamp(0, 1)
    wsum = Wt.sum(0)
    seen = wsum > 1e-3
    out = torch.zeros(len(tf), 3, device=dev)      # photo colour (meaningful where seen)
    out[seen] = (Wt[:, seen, None] * A[:, seen]).sum(0) / wsum[seen, None]
    if len(views) > 1:
        # robust second pass: a view that disagrees with the blend (a hand, hair, a highlight
        # only it sees) is down-weighted, so occluders do not ghost into the texture
        dev_ = torch.linalg.norm(A - out[None], dim=-1)              # (K, N)
        Wt = Wt * torch.exp(-(dev_ / 0.12) ** 2)
        wsum2 = Wt.sum(0)
        ok = seen & (wsum2 > 1e-4)
        out[ok] = (Wt[:, ok, None] * A[:, ok]).sum(0) / wsum2[ok, None]
    # how much each texel trusts the photos: full from a weight of FULL_WEIGHT up (a frontal,
    # unmasked view gives 1), fading to 0, where the mirror texel or the fill below takes over
    FULL_WEIGHT = 0.3
    alpha = (wsum / FULL_WEIGHT).clamp(0, 1)
    # what the photos do not give: the model's per-vertex albedo, toned so its median matches the
    # photos' median skin colour, so scalp and neck continue the face's colour
    fb = torch.as_tensor(fallback_albedo, dtype=torch.float32, device=dev)
    base = (fb[faces_t[tf]] * tb[..., None]).sum(1)
    well = alpha >= 1.0
    if bool(well.any()):
        ratio = (out[well].median(0).values / base.median(0).values.clamp_min(1e-3)).clamp(0.3, 3.0)
        base = (base * ratio).clamp(0, 1)
    mirrored = torch.zeros(len(tf), dtype=torch.bool, device=dev)
    # symmetric fill: a well-seen texel whose surface point is nearest this one's mirror image
    if symmetric and model_vertices is not None and bool((alpha < 1).any()) and bool(well.any()):
        from scipy.spatial import cKDTree

        mv = torch.as_tensor(model_vertices, dtype=torch.float32, device=dev)
        pts = (mv[faces_t[tf]] * tb[..., None]).sum(1).cpu().numpy()                 # (N, 3) template space
        well_np = well.cpu().numpy()
        donors = np.nonzero(well_np)[0]
        # a texel spans ~extent/size metres: farther than a few texels means no mirror partner, so
        # only texels whose mirror image falls near the photos' coverage are looked up
        extent = float(np.ptp(pts, 0).max())
        reach = 4.0 * extent / size
        mirror = pts * np.array([-1.0, 1.0, 1.0])
        lo, hi = pts[donors].min(0) - reach, pts[donors].max(0) + reach
        need = np.nonzero(~well_np & np.all((mirror >= lo) & (mirror <= hi), 1))[0]
        dist, k = cKDTree(pts[donors]).query(mirror[need])
        ok = dist < reach
        targets = torch.as_tensor(need[ok], device=dev)
        base[targets] = out[torch.as_tensor(donors[k[ok]], device=dev)]
        mirrored[targets] = True
    out = alpha[:, None] * out + (1 - alpha[:, None]) * base
    source = np.where((alpha >= 0.5).cpu().numpy(), 0, np.where(mirrored.cpu().numpy(), 1, 2)).astype(np.int8)
    tex = torch.zeros(size, size * tiles, 3, device=dev)
    tex[chart] = out
    cov = torch.zeros(size, size * tiles, device=dev)
    cov[chart] = wsum
    tex_np = (tex.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    chart_np = chart.cpu().numpy()
    # fill past the chart border (bilinear filtering and mip-maps read those texels)
    tex_np = pull_push_fill(tex_np, chart_np) if (~chart_np).any() else tex_np
    return BakeResult(texture=tex_np, coverage=cov.cpu().numpy(), chart=chart_np,
                      filled_from={"photos": int((source == 0).sum()), "mirror": int((source == 1).sum()),
                                   "model": int((source == 2).sum())})


def render_textured(vertices_camera, faces, uv_corners, texture: np.ndarray, sh, focal, cx, cy, height, width,
                    device="cpu", tiles: int = 1):
    """Render a textured, SH-lit mesh: (image (H,W,3) float, mask (H,W) bool)."""
    dev = torch.device(device)
    vc = torch.as_tensor(vertices_camera, dtype=torch.float32, device=dev)[None]
    faces_t = torch.as_tensor(faces, dtype=torch.long, device=dev)
    frags = rasterize(vc, faces_t, focal, cx, cy, height, width)
    pf, b = frags.pix_to_face[0], frags.bary[0].detach()
    m = pf >= 0
    uvc = torch.as_tensor(uv_corners, dtype=torch.float32, device=dev)[pf[m]]      # (N, 3, 2)
    uv = (uvc * b[m][..., None]).sum(1) * torch.tensor([1.0 / tiles, 1.0], device=dev)
    tex = torch.as_tensor(texture, dtype=torch.float32, device=dev).permute(2, 0, 1)[None] / 255.0
    grid = torch.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], -1)[None, None]
    albedo = F.grid_sample(tex, grid, align_corners=False, mode="bilinear")[0, :, 0].T
    normals = vertex_normals(vc, faces_t)[0]
    n = F.normalize((normals[faces_t[pf[m]]] * b[m][..., None]).sum(1), dim=-1)
    irr = sh_irradiance(n[None], torch.as_tensor(sh, dtype=torch.float32, device=dev)[None])[0]
    img = torch.zeros(height, width, 3, device=dev)
    img[m] = (albedo * irr).clamp(0, 1)
    return img.cpu().numpy(), m.cpu().numpy()
