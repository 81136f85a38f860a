"""Hard z-buffer rasteriser and soft (SoftRas-style) silhouette in pure torch.

Both avoid the pixels x faces product: each face only visits the pixels of its (clipped)
bounding box. The hard rasteriser enumerates flat (face, pixel) pairs with repeat_interleave,
decides visibility without autograd (one scatter_reduce 'amin' z-buffer), then recomputes
barycentrics with autograd only for the winning face of each covered pixel, so gradients reach
vertex positions and the camera (focal, principal point) through the projection. The soft
silhouette lays its pairs out as dense row grids with a hand-written backward (see below).

Conventions: OpenCV camera space (x right, y down, z forward), pixel (i, j) centred at
(u, v) = (j + 0.5, i + 0.5); verts (B, V, 3), faces (F, 3) shared by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .camera import project

MIN_DEPTH = 1e-6          # faces with a vertex at z <= this are skipped (behind / on the camera plane)
MIN_AREA_PX2 = 1e-10      # twice the screen area below which a face is degenerate
BACKGROUND_DEPTH = 1e10   # finite so that depth * mask stays NaN-free
EDGE_SLACK = 1e-6         # barycentric tolerance of the coverage test (watertight shared edges)
_NO_FACE_KEY = torch.iinfo(torch.int64).max
_PAIR_CHUNK = 1 << 18     # soft-silhouette pairs processed at once (bounds temporary memory)


@dataclass
class Fragments:
    pix_to_face: torch.Tensor   # (B, H, W) long, face index into ``faces``, -1 = background
    bary: torch.Tensor          # (B, H, W, 3) perspective-correct barycentrics (zeros on background)
    depth: torch.Tensor         # (B, H, W) camera z of the visible surface, BACKGROUND_DEPTH elsewhere
    mask: torch.Tensor          # (B, H, W) bool, pix_to_face >= 0


def _detached(value):
    return value.detach() if torch.is_tensor(value) else value


def _as_faces(faces, device) -> torch.Tensor:
    return torch.as_tensor(faces, device=device).long()


def _prepare_faces(verts_cam, faces, focal, cx, cy, cull_backfaces):
    """Screen-space triangles (no autograd) and which faces can be drawn at all.

    Returns tri_uv (B*F, 3, 2), tri_z (B*F, 3), area2 (B*F,) signed doubled area in pixels,
    drawable (B*F,) bool.
    """
    with torch.no_grad():
        verts = verts_cam.detach()
        tri_xyz = verts[:, faces]                                   # (B, F, 3, 3)
        tri_z = tri_xyz[..., 2]
        drawable = (tri_z > MIN_DEPTH).all(-1)
        # clamp z only so that skipped faces do not produce inf/NaN downstream
        safe = torch.cat((tri_xyz[..., :2], tri_z.clamp_min(MIN_DEPTH)[..., None]), -1)
        tri_uv = project(safe.flatten(1, 2), _detached(focal), _detached(cx), _detached(cy))
        tri_uv = tri_uv.reshape(-1, 3, 2)
        e1 = tri_uv[:, 1] - tri_uv[:, 0]
        e2 = tri_uv[:, 2] - tri_uv[:, 0]
        area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        drawable = drawable.reshape(-1) & torch.isfinite(area2) & (area2.abs() > MIN_AREA_PX2)
        if cull_backfaces:
            # front-facing decided in 3D: the winding normal points toward the camera (dot(n, -p0) > 0)
            normal = torch.linalg.cross(tri_xyz[..., 1, :] - tri_xyz[..., 0, :],
                                        tri_xyz[..., 2, :] - tri_xyz[..., 0, :])
            drawable &= ((normal * tri_xyz[..., 0, :]).sum(-1) < 0).reshape(-1)
        tri_uv = torch.where(drawable[:, None, None], tri_uv, torch.zeros_like(tri_uv))
        return tri_uv, tri_z.reshape(-1, 3), area2, drawable


def _enumerate_pairs(tri_uv, drawable, height, width, margin):
    """All (triangle, pixel) pairs whose pixel centre lies in the triangle's bounding box grown by
    ``margin`` pixels, clipped to the image.

    Returns sel (S,) indices of triangles with at least one pixel, owner (P,) index into sel,
    py (P,), px (P,).
    """
    device = tri_uv.device
    lo = tri_uv.amin(1)
    hi = tri_uv.amax(1)
    # pixel j is a candidate when lo - margin <= j + 0.5 <= hi + margin
    col0 = torch.ceil(lo[:, 0] - margin - 0.5).clamp(0, width)
    col1 = torch.floor(hi[:, 0] + margin - 0.5).clamp(-1, width - 1)
    row0 = torch.ceil(lo[:, 1] - margin - 0.5).clamp(0, height)
    row1 = torch.floor(hi[:, 1] + margin - 0.5).clamp(-1, height - 1)
    ncol = (col1 - col0 + 1).clamp_min(0).long()
    nrow = (row1 - row0 + 1).clamp_min(0).long()
    count = ncol * nrow * drawable
    sel = count.nonzero().squeeze(1)
    count = count[sel]
    total = int(count.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return sel, empty, empty, empty
    owner = torch.repeat_interleave(torch.arange(sel.numel(), device=device), count, output_size=total)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(total, device=device) - start.index_select(0, owner)
    ncol_p = ncol[sel].index_select(0, owner)
    r = torch.div(local, ncol_p, rounding_mode="floor")
    py = row0[sel].long().index_select(0, owner) + r
    px = col0[sel].long().index_select(0, owner) + (local - r * ncol_p)
    return sel, owner, py, px


def rasterize(verts_cam, faces, focal, cx, cy, height: int, width: int, cull_backfaces: bool = False) -> Fragments:
    """Hard z-buffer rasterisation of (B, V, 3) camera-space vertices.

    Faces with a vertex at z <= MIN_DEPTH, degenerate or off-screen faces are skipped.
    ``bary`` and ``depth`` are differentiable w.r.t. verts_cam, focal, cx, cy; visibility is not.
    """
    B, V, _ = verts_cam.shape
    H, W = int(height), int(width)
    device, dtype = verts_cam.device, verts_cam.dtype
    faces = _as_faces(faces, device)
    F = faces.shape[0]

    with torch.no_grad():
        tri_uv, tri_z, area2, drawable = _prepare_faces(verts_cam, faces, focal, cx, cy, cull_backfaces)
        sel, owner, py, px = _enumerate_pairs(tri_uv, drawable, H, W, 0.0)
        # per-triangle affine maps pixel -> (w1, w2) and -> 1/z (screen-linear), relative to vertex 0
        p0 = tri_uv[sel, 0]
        e1 = tri_uv[sel, 1] - p0
        e2 = tri_uv[sel, 2] - p0
        inv_area = 1.0 / area2[sel]
        inv_z = 1.0 / tri_z[sel]
        coef = torch.stack((
            p0[:, 0], p0[:, 1],
            e2[:, 1] * inv_area, -e2[:, 0] * inv_area,
            -e1[:, 1] * inv_area, e1[:, 0] * inv_area,
            inv_z[:, 0], inv_z[:, 1] - inv_z[:, 0], inv_z[:, 2] - inv_z[:, 0],
        ), 1).index_select(0, owner)
        dx = px.to(dtype) + (0.5 - coef[:, 0])
        dy = py.to(dtype) + (0.5 - coef[:, 1])
        w1 = coef[:, 2] * dx + coef[:, 3] * dy
        w2 = coef[:, 4] * dx + coef[:, 5] * dy
        # a little slack so that pixel centres on a shared edge are not lost to rounding on both sides
        inside = (w1 >= -EDGE_SLACK) & (w2 >= -EDGE_SLACK) & (w1 + w2 <= 1.0 + EDGE_SLACK)
        inv_depth = coef[:, 6] + w1 * coef[:, 7] + w2 * coef[:, 8]
        hit = (inside & (inv_depth > 0)).nonzero().squeeze(1)
        tri = sel[owner[hit]]
        pix = torch.div(tri, F, rounding_mode="floor") * (H * W) + py[hit] * W + px[hit]
        # one int64 key per candidate: float32 depth bits (monotonic for positive floats) then the
        # face index, so amin picks the nearest face and breaks exact ties by the lowest index
        depth32 = (1.0 / inv_depth[hit]).float()
        key = (depth32.view(torch.int32).long() << 32) | (tri % F)
        zbuf = torch.full((B * H * W,), _NO_FACE_KEY, dtype=torch.long, device=device)
        zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
        covered = (zbuf != _NO_FACE_KEY).nonzero().squeeze(1)
        face_of = zbuf[covered] & 0xFFFFFFFF
        pix_to_face = torch.full((B * H * W,), -1, dtype=torch.long, device=device)
        pix_to_face[covered] = face_of

    bary, depth = _bary_at(verts_cam, faces, focal, cx, cy, covered, face_of, H, W)
    bary_full = torch.zeros(B * H * W, 3, device=device, dtype=bary.dtype).index_copy(0, covered, bary)
    depth_full = torch.full((B * H * W,), BACKGROUND_DEPTH, device=device, dtype=depth.dtype)
    depth_full = depth_full.index_copy(0, covered, depth)
    pix_to_face = pix_to_face.reshape(B, H, W)
    return Fragments(pix_to_face, bary_full.reshape(B, H, W, 3), depth_full.reshape(B, H, W), pix_to_face >= 0)


def _bary_at(verts_cam, faces, focal, cx, cy, pix, face_of, H, W):
    """Perspective-correct barycentrics and depth (with autograd) of face ``face_of`` at flat pixels ``pix``."""
    B, V, _ = verts_cam.shape
    b = torch.div(pix, H * W, rounding_mode="floor")
    rem = pix - b * (H * W)
    py = torch.div(rem, W, rounding_mode="floor")
    px = rem - py * W
    vid = faces[face_of] + (b * V)[:, None]                              # (P, 3) rows of the flat vertex arrays
    uv = project(verts_cam, focal, cx, cy).reshape(B * V, 2)
    z = verts_cam[..., 2].reshape(B * V)
    p0, p1, p2 = (uv.index_select(0, vid[:, k]) for k in range(3))
    e1 = p1 - p0
    e2 = p2 - p0
    dx = (px.to(uv.dtype) + 0.5) - p0[:, 0]
    dy = (py.to(uv.dtype) + 0.5) - p0[:, 1]
    inv_area = 1.0 / (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    w1 = (e2[:, 1] * dx - e2[:, 0] * dy) * inv_area
    w2 = (e1[:, 0] * dy - e1[:, 1] * dx) * inv_area
    w = torch.stack((1.0 - w1 - w2, w1, w2), 1)
    w_over_z = w / z[vid]
    inv_depth = w_over_z.sum(1)
    return w_over_z / inv_depth[:, None], 1.0 / inv_depth


def covered_pixels(fragments: Fragments):
    """Flat indices (into B*H*W) of the covered pixels and their face indices."""
    flat = fragments.pix_to_face.reshape(-1)
    pix = (flat >= 0).nonzero().squeeze(1)
    return pix, flat[pix]


def interpolate_at(attrs, faces, fragments: Fragments, pix, face_of):
    """(P, C) barycentric interpolation of (B, V, C) vertex attributes at flat pixels ``pix``."""
    B, V, C = attrs.shape
    H, W = fragments.pix_to_face.shape[1:]
    faces = _as_faces(faces, attrs.device)
    b = torch.div(pix, H * W, rounding_mode="floor")
    vid = faces[face_of] + (b * V)[:, None]
    flat = attrs.reshape(B * V, C)
    bary = fragments.bary.reshape(-1, 3).index_select(0, pix).to(attrs.dtype)
    out = flat.index_select(0, vid[:, 0]) * bary[:, 0:1]
    out = out + flat.index_select(0, vid[:, 1]) * bary[:, 1:2]
    return out + flat.index_select(0, vid[:, 2]) * bary[:, 2:3]


def interpolate(attrs, faces, fragments: Fragments) -> torch.Tensor:
    """(B, V, C) vertex attributes -> (B, H, W, C) per pixel; zeros on background.

    Differentiable w.r.t. ``attrs`` and, through ``fragments.bary``, the geometry.
    """
    B, H, W = fragments.pix_to_face.shape
    pix, face_of = covered_pixels(fragments)
    values = interpolate_at(attrs, faces, fragments, pix, face_of)
    out = torch.zeros(B * H * W, attrs.shape[-1], device=attrs.device, dtype=values.dtype)
    return out.index_copy(0, pix, values).reshape(B, H, W, -1)


# --------------------------------------------------------------------------------------------
# Soft silhouette
#
# Pairs are laid out as dense (rows, width) grids: every triangle contributes the rows of its
# grown bounding box, rows of similar width are batched together (padded to a bucket width), and
# along a row the line distances and edge parameters are affine in the column offset j. So per
# pair there is no gather, only broadcast arithmetic on per-row parameters, which derive from
# per-triangle parameters (computed with autograd from the projected vertices).
# --------------------------------------------------------------------------------------------

def _bucket_width(width: torch.Tensor) -> torch.Tensor:
    """Round row widths up to 4 steps per octave (exact up to 8) so that few grid shapes occur."""
    step = torch.pow(2, (torch.log2(width.clamp_min(1).double()).floor() - 2).clamp_min(0)).long()
    return (width + step - 1) // step * step


def _soft_rows(tri_uv, drawable, height, width, margin):
    """Pixel rows within ``margin`` of each drawable triangle's bounding box.

    Returns tris (S,) triangle indices into B*F, their bounding-box corner tri_x0 / tri_y0 (S,),
    row_owner (R,) index into tris, row_offset (R,) row within the box, row_ncol (R,) valid columns,
    and groups [(first_row, end_row, grid_width)]: rows are sorted so that each group shares one
    padded grid width.
    """
    device = tri_uv.device
    lo = tri_uv.amin(1)
    hi = tri_uv.amax(1)
    col0 = torch.ceil(lo[:, 0] - margin - 0.5).clamp(0, width)
    col1 = torch.floor(hi[:, 0] + margin - 0.5).clamp(-1, width - 1)
    row0 = torch.ceil(lo[:, 1] - margin - 0.5).clamp(0, height)
    row1 = torch.floor(hi[:, 1] + margin - 0.5).clamp(-1, height - 1)
    ncol = (col1 - col0 + 1).clamp_min(0).long()
    nrow = (row1 - row0 + 1).clamp_min(0).long() * drawable
    sel = (ncol * nrow).nonzero().squeeze(1)
    grid, order = torch.sort(_bucket_width(ncol[sel]), stable=True)
    tris = sel[order]
    nrow_t = nrow[tris]
    n_rows = int(nrow_t.sum())
    row_owner = torch.repeat_interleave(torch.arange(tris.numel(), device=device), nrow_t, output_size=n_rows)
    first_row = torch.cumsum(nrow_t, 0) - nrow_t
    row_offset = torch.arange(n_rows, device=device) - first_row[row_owner]
    widths, tris_per_width = torch.unique_consecutive(grid, return_counts=True)
    group_end = torch.cumsum(nrow_t, 0)[torch.cumsum(tris_per_width, 0) - 1]
    groups, start = [], 0
    for w, end in zip(widths.tolist(), group_end.tolist()):
        groups.append((start, end, w))
        start = end
    return tris, col0.long()[tris], row0.long()[tris], row_owner, row_offset, ncol[tris][row_owner], groups


def _triangle_parameters(tri_xy, x0, y0):
    """Per triangle and edge k (v_k -> v_k+1), at the pixel centre (x0 + 0.5, y0 + 0.5): signed line
    distance s (positive on the triangle's side whatever the winding) and its x / y slopes, edge
    parameter t (0..1 along the edge) and its slopes, and the edge length: (S, 3, 7) =
    [s, ds/dx, ds/dy, t, dt/dx, dt/dy, length]. Differentiable (autograd) w.r.t. tri_xy (S, 3, 2).
    """
    e = tri_xy.roll(-1, dims=1) - tri_xy
    length2 = (e * e).sum(-1)
    length = length2.sqrt()
    with torch.no_grad():
        orient = torch.sign(e[:, 0, 1] * e[:, 2, 0] - e[:, 0, 0] * e[:, 2, 1])   # sign of the signed area
    scale = orient[:, None] / length
    normal_x, normal_y = -e[..., 1] * scale, e[..., 0] * scale
    tangent_x, tangent_y = e[..., 0] / length2, e[..., 1] / length2
    dx = (x0.to(tri_xy.dtype) + 0.5)[:, None] - tri_xy[..., 0]
    dy = (y0.to(tri_xy.dtype) + 0.5)[:, None] - tri_xy[..., 1]
    s = normal_x * dx + normal_y * dy
    t = tangent_x * dx + tangent_y * dy
    return torch.stack((s, normal_x, normal_y, t, tangent_x, tangent_y, length), -1)


def _row_parameters(tri_params, owner, offset):
    """(R, 3, 5) per row and edge: [s at the row's first pixel, ds/dj, t at it, dt/dj, length]."""
    p = tri_params.index_select(0, owner)
    r = offset.to(p.dtype)[:, None]
    return torch.stack((torch.addcmul(p[..., 0], p[..., 2], r), p[..., 1],
                        torch.addcmul(p[..., 3], p[..., 5], r), p[..., 4], p[..., 6]), -1)


def _row_chunks(groups):
    for first, end, w in groups:
        rows = max(1, _PAIR_CHUNK // w)
        for r0 in range(first, end, rows):
            yield r0, min(end, r0 + rows), w


class _SoftCoverage(torch.autograd.Function):
    """Per pixel sum over nearby faces of log(1 - sigmoid(sd / sigma)), sd the signed distance.

    Forward and backward are written by hand on the dense row grids, with masks as arithmetic
    (no per-pair autograd graph, no per-pair gathers): the backward turns per-pair weights into
    j-moments per row and edge, then into gradients of the per-triangle parameters, from which
    autograd takes over.
    """

    @staticmethod
    def forward(ctx, tri_params, row_owner, row_offset, row_pix, row_ncol, groups, n_pixels, sigma, cutoff):
        dtype, device = tri_params.dtype, tri_params.device
        keep_for_backward = ctx.needs_input_grad[0]
        log_empty = torch.zeros(n_pixels, device=device, dtype=dtype)
        sds, coefs, edges = [], [], []
        for r0, r1, w in _row_chunks(groups):
            j_long = torch.arange(w, device=device)
            params = _row_parameters(tri_params, row_owner[r0:r1], row_offset[r0:r1])
            sd, edge = _distance_grid(params, j_long.to(dtype))
            ncol = row_ncol[r0:r1, None]
            use = ((j_long < ncol) & (sd > -cutoff * sigma)).to(dtype)
            empty = torch.sigmoid(sd * (-1.0 / sigma))                  # 1 - p
            # the clamp keeps deep-inside pixels finite (their silhouette is 1 either way)
            log_term = torch.log(empty.clamp_min(1e-30)) * use
            pix = row_pix[r0:r1, None] + torch.minimum(j_long, ncol - 1)
            log_empty.index_add_(0, pix.reshape(-1), log_term.reshape(-1))
            if keep_for_backward:
                sds.append(sd)
                coefs.append((empty - 1.0) * use * (1.0 / sigma))        # d log(1 - p) / d sd
                edges.append(edge)
        ctx.save_for_backward(tri_params, row_owner, row_offset, row_pix, row_ncol, *sds, *coefs, *edges)
        ctx.groups = groups
        return log_empty

    @staticmethod
    def backward(ctx, grad_log):
        tri_params, row_owner, row_offset, row_pix, row_ncol, *saved = ctx.saved_tensors
        n = len(saved) // 3
        grad_tri = torch.zeros_like(tri_params)
        grad_log = grad_log.contiguous()
        chunks = zip(_row_chunks(ctx.groups), saved[:n], saved[n:2 * n], saved[2 * n:])
        for (r0, r1, w), sd, coef, edge in chunks:
            owner, offset = row_owner[r0:r1], row_offset[r0:r1]
            p = _row_parameters(tri_params, owner, offset)
            rows = r1 - r0
            dtype, device = p.dtype, p.device
            j_long = torch.arange(w, device=device)
            j = j_long.to(dtype)
            pix = row_pix[r0:r1, None] + torch.minimum(j_long, row_ncol[r0:r1, None] - 1)
            g = grad_log.index_select(0, pix.reshape(-1)).reshape(sd.shape) * coef
            # inside: sd = s (line distance); outside: sd = -sqrt(s^2 + b^2), b = excess * length,
            # so d sd / d s = s / sd and d sd / d b = b / sd there
            g_in = g * (sd >= 0).to(dtype)
            g_out = (g - g_in) / sd.clamp_max(-1e-12)
            grad_rows = torch.empty(rows, 3, 5, device=device, dtype=dtype)
            j2 = j * j
            for k in range(3):
                on_edge = (edge == k).to(dtype)
                w_in = g_in * on_edge
                w_out = g_out * on_edge
                t = torch.addcmul(p[:, k, 2, None], p[:, k, 3, None], j)
                excess = t - t.clamp(0.0, 1.0)
                w_b = w_out * excess * p[:, k, 4, None]                                  # d loss / d b
                out0, out1 = w_out.sum(1), (w_out * j).sum(1)
                s0, slope, length = p[:, k, 0], p[:, k, 1], p[:, k, 4]
                # s = s0 + slope * j, so sums of the weights times j^0, j^1, j^2 are all that is needed
                grad_rows[:, k, 0] = w_in.sum(1) + s0 * out0 + slope * out1
                grad_rows[:, k, 1] = (w_in * j).sum(1) + s0 * out1 + slope * (w_out * j2).sum(1)
                grad_rows[:, k, 2] = length * w_b.sum(1)
                grad_rows[:, k, 3] = length * (w_b * j).sum(1)
                grad_rows[:, k, 4] = (w_b * excess).sum(1)
            # back through _row_parameters: s_row = s + r ds/dy, t_row = t + r dt/dy
            r = offset.to(dtype)[:, None]
            g_s, g_t = grad_rows[..., 0], grad_rows[..., 2]
            grad_tri.index_add_(0, owner, torch.stack(
                (g_s, grad_rows[..., 1], g_s * r, g_t, grad_rows[..., 3], g_t * r, grad_rows[..., 4]), -1))
        return grad_tri, None, None, None, None, None, None, None, None


def _distance_grid(p, j):
    """Signed distance (positive inside) of every pixel of each row grid to the row's triangle, and the
    index (uint8) of the edge it is measured to. p (R, 3, 5) row parameters, j (w,) column offsets."""
    s, d2 = [], []
    for k in range(3):
        s_k = torch.addcmul(p[:, k, 0, None], p[:, k, 1, None], j)          # signed line distance
        t = torch.addcmul(p[:, k, 2, None], p[:, k, 3, None], j)            # position along the edge
        beyond = (t - t.clamp(0.0, 1.0)) * p[:, k, 4, None]                 # distance past its end points
        s.append(s_k)
        d2.append(torch.addcmul(s_k * s_k, beyond, beyond))                  # squared distance to the segment
    s_min, inside_edge = _min3(s)
    d2_min, outside_edge = _min3(d2)
    # inside a convex polygon the distance to the boundary is the smallest line distance;
    # outside it is the distance to the nearest segment
    inside = s_min >= 0
    dist = d2_min.clamp_min(1e-20).sqrt()
    inside_f = inside.to(s_min.dtype)
    sd = inside_f * (s_min + dist) - dist
    edge = outside_edge + inside.to(torch.uint8) * (inside_edge - outside_edge)   # uint8 wrap-around is exact
    return sd, edge


def _min3(values):
    """Elementwise minimum of three tensors and the index (uint8) of the first one attaining it."""
    a, b, c = values
    b_less = b < a
    ab = torch.minimum(a, b)
    c_less = c < ab
    index = torch.maximum(b_less.to(torch.uint8), c_less.to(torch.uint8) * 2)
    return torch.minimum(ab, c), index


def soft_silhouette(verts_cam, faces, focal, cx, cy, height: int, width: int, sigma: float = 1.0,
                    cutoff: float = 3.0, cull_backfaces: bool = False) -> torch.Tensor:
    """Differentiable coverage in [0, 1], (B, H, W).

    Each face within ``cutoff * sigma`` pixels of a pixel centre covers it with probability
    sigmoid(signed_distance_px / sigma) (positive inside, distance to the triangle's boundary);
    per pixel 1 - prod(1 - p), accumulated as a sum of log(1 - p). Gradients reach vertex
    positions and focal / principal point, so silhouette losses can move the geometry.
    ``cutoff`` trades speed against the step at the truncation (sigmoid(-3) = 0.047).
    """
    B, V, _ = verts_cam.shape
    H, W = int(height), int(width)
    faces = _as_faces(faces, verts_cam.device)
    F = faces.shape[0]
    with torch.no_grad():
        tri_uv, _, _, drawable = _prepare_faces(verts_cam, faces, focal, cx, cy, cull_backfaces)
        tris, tri_x0, tri_y0, row_owner, row_offset, row_ncol, groups = _soft_rows(
            tri_uv, drawable, H, W, cutoff * sigma)
        image = torch.div(tris, F, rounding_mode="floor")
        tri_vid = faces.index_select(0, tris - image * F) + (image * V)[:, None]       # (S, 3)
        tri_pix = image * (H * W) + tri_y0 * W + tri_x0
        row_pix = tri_pix[row_owner] + row_offset * W
    uv_flat = project(verts_cam, focal, cx, cy).reshape(B * V, 2)
    tri_xy = uv_flat.index_select(0, tri_vid.reshape(-1)).reshape(-1, 3, 2)
    tri_params = _triangle_parameters(tri_xy, tri_x0, tri_y0)
    log_empty = _SoftCoverage.apply(tri_params, row_owner, row_offset, row_pix, row_ncol, groups,
                                    B * H * W, float(sigma), float(cutoff))
    return (1.0 - torch.exp(log_empty)).reshape(B, H, W)
