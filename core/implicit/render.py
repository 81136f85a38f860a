"""NeuS-style volume rendering of the implicit head, only where the head can be.

A ray is cast in the camera (OpenCV axes), moved into the frame's model space with the tracked head
pose (x_model = R^T (x_cam - t)), clipped to the head's box, and sampled there. An occupancy grid
over the box (refreshed from the canonical SDF during training) says which samples are far from
the surface: those are not sent through the networks (outside: transparent; inside: opaque
already). Opacity from the SDF follows NeuS (Wang et al. 2021):

    alpha_i = max((Phi(s_i) - Phi(s_{i+1})) / Phi(s_i), 0),   Phi(s) = sigmoid(inv_s * s)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Box:
    lo: torch.Tensor   # (3,) model space
    hi: torch.Tensor

    def to(self, device) -> "Box":
        return Box(self.lo.to(device), self.hi.to(device))


def camera_rays(pixels: torch.Tensor, focal: float, cx: float, cy: float, R: torch.Tensor, t: torch.Tensor):
    """Pixel centres (N, 2) of a frame with pose R (3, 3), t (3,) (model -> camera) -> ray origins and
    unit directions (N, 3) in that frame's model space."""
    d_cam = torch.stack([(pixels[:, 0] + 0.5 - cx) / focal, (pixels[:, 1] + 0.5 - cy) / focal,
                         torch.ones_like(pixels[:, 0])], -1)
    d = torch.nn.functional.normalize(d_cam @ R, dim=-1)          # R^T d (rows)
    o = (-(R.T @ t)).expand_as(d)
    return o, d


def box_intersection(o: torch.Tensor, d: torch.Tensor, box: Box):
    """Slab test: (near, far, hit) per ray."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0 = (box.lo - o) * inv
    t1 = (box.hi - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, far > near


class OccupancyGrid:
    """A coarse grid over the box: 1 near the surface (render), 0 outside (empty), -1 inside (opaque)."""

    def __init__(self, box: Box, resolution: int = 32):
        self.box = box
        self.res = int(resolution)
        self.state = torch.ones((self.res,) * 3, dtype=torch.int8, device=box.lo.device)

    def cell_size(self) -> float:
        return float(((self.box.hi - self.box.lo) / self.res).max())

    @torch.no_grad()
    def update(self, sdf_fn, margin: float) -> float:
        """Re-classify the cells from the SDF at their centres; ``margin`` (metres) covers the deformation
        and the SDF's error. Returns the fraction of cells still rendered."""
        r = self.res
        idx = torch.stack(torch.meshgrid(*(torch.arange(r, device=self.box.lo.device),) * 3, indexing="ij"), -1)
        centres = self.box.lo + (idx.reshape(-1, 3).float() + 0.5) * (self.box.hi - self.box.lo) / r
        s = torch.cat([sdf_fn(c) for c in centres.split(16384)])
        reach = 0.5 * 1.7321 * self.cell_size() + margin
        state = torch.ones_like(s, dtype=torch.int8)
        state[s > reach] = 0
        state[s < -reach] = -1
        self.state = state.reshape(r, r, r)
        return float((self.state == 1).float().mean())

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        r = self.res
        ijk = ((x - self.box.lo) / (self.box.hi - self.box.lo) * r).long().clamp(0, r - 1)
        return self.state[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


@dataclass
class RenderResult:
    rgb: torch.Tensor          # (N, 3)
    opacity: torch.Tensor      # (N,)
    depth: torch.Tensor        # (N,) along the ray, model-space metres
    gradients: Optional[torch.Tensor]   # SDF gradients at the evaluated samples (eikonal)
    evaluated: int             # samples sent through the networks
    total: int


def render_rays(head, o: torch.Tensor, d: torch.Tensor, frame: int, expr: torch.Tensor, box: Box,
                n_samples: int = 64, grid: Optional[OccupancyGrid] = None, perturb: bool = True,
                with_normals: bool = True) -> RenderResult:
    """Render rays (N) of one frame. ``expr`` (Ke,) the frame's expression code."""
    N = o.shape[0]
    near, far, hit = box_intersection(o, d, box)
    far = torch.where(hit, far, near + 1e-3)
    steps = torch.linspace(0.0, 1.0, n_samples + 1, device=o.device)[:-1]
    u = torch.rand(N, n_samples, device=o.device) if perturb else torch.full((N, n_samples), 0.5, device=o.device)
    t = near[:, None] + (far - near)[:, None] * (steps[None] + u / n_samples)           # (N, S)
    x = o[:, None] + t[..., None] * d[:, None]                                          # (N, S, 3)
    flat = x.reshape(-1, 3)
    live = hit[:, None].expand(N, n_samples).reshape(-1)
    sdf = torch.full((flat.shape[0],), 1.0, device=o.device)
    if grid is not None:
        state = grid.lookup(flat)
        sdf = torch.where(state < 0, torch.full_like(sdf, -1.0), sdf)     # deep inside: opaque
        live = live & (state == 1)
    rgb = torch.zeros(flat.shape[0], 3, device=o.device)
    grads = None
    idx = torch.nonzero(live).squeeze(1)
    if len(idx):
        frames = torch.full((len(idx),), int(frame), dtype=torch.long, device=o.device)
        e = expr.reshape(1, -1).expand(len(idx), -1)
        s, h, n, g = head.observed(flat[idx], frames, e, with_normals=with_normals)
        sdf = sdf.index_put((idx,), s)
        if n is None:
            n = torch.zeros_like(flat[idx])
        rgb = rgb.index_put((idx,), head.colour(h, n, frames))
        grads = g
    sdf = sdf.reshape(N, n_samples)
    rgb = rgb.reshape(N, n_samples, 3)
    phi = torch.sigmoid(sdf * head.inv_s)
    # the next sample's Phi: beyond the last sample the ray leaves the box (outside: sdf > 0)
    phi_next = torch.cat([phi[:, 1:], torch.sigmoid(torch.full_like(phi[:, :1], 1.0) * head.inv_s)], 1)
    alpha = ((phi - phi_next) / (phi + 1e-6)).clamp(0.0, 1.0)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], 1), 1)[:, :-1]
    w = alpha * trans
    return RenderResult(rgb=(w[..., None] * rgb).sum(1), opacity=w.sum(1), depth=(w * t).sum(1), gradients=grads,
                        evaluated=int(len(idx)), total=N * n_samples)


@torch.no_grad()
def render_image(head, frame: int, expr: torch.Tensor, R: torch.Tensor, t: torch.Tensor, focal: float, cx: float,
                 cy: float, height: int, width: int, box: Box, grid: Optional[OccupancyGrid] = None,
                 n_samples: int = 64, chunk: int = 2048) -> tuple:
    """A whole frame from the learned head (what Preview shows): ``(rgb (H, W, 3), opacity (H, W))``.
    Shading uses the SDF's normals, so gradients are computed; nothing is kept for training."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float().to(box.lo.device)
    o, d = camera_rays(pix, focal, cx, cy, R, t)
    rgb, opacity = [], []
    for a, b in zip(o.split(chunk), d.split(chunk)):
        with torch.enable_grad():
            out = render_rays(head, a, b, frame, expr, box, n_samples=n_samples, grid=grid, perturb=False)
        rgb.append(out.rgb.detach())
        opacity.append(out.opacity.detach())
    return torch.cat(rgb).reshape(height, width, 3), torch.cat(opacity).reshape(height, width)


@torch.no_grad()
def render_surface(head, frame: int, expr: torch.Tensor, R: torch.Tensor, t: torch.Tensor, focal: float, cx: float,
                   cy: float, height: int, width: int, box: Box, grid: Optional[OccupancyGrid] = None,
                   n_samples: int = 64, refine_steps: int = 5, chunk: int = 65536, block: int = 8) -> tuple:
    """Fast direct rendering of the learned head (after MonoPort's real-time display): find where each ray
    first crosses the zero level (SDF only, no gradients, the occupancy grid skipping empty and solid
    space, a ray no longer evaluated once it is inside), sharpen it by a few secant steps, then shade
    that one point per pixel. Volume rendering shades every sample with gradients; this shades one.
    Returns ``(rgb (H, W, 3), alpha (H, W) of 0/1, depth (H, W) along the ray, inf where there is no
    head)``; only pixels whose rays meet the box are traced, ``chunk`` samples at a time."""
    dev = box.lo.device
    ys, xs = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()
    o_all, d_all = camera_rays(pix, focal, cx, cy, R.to(dev), t.to(dev))
    near_all, far_all, hit_all = box_intersection(o_all, d_all, box)
    rgb = torch.zeros(height * width, 3, device=dev)
    depth = torch.full((height * width,), float("inf"), device=dev)
    rays = torch.nonzero(hit_all).squeeze(1)
    e_row = expr.reshape(1, -1).to(dev)

    def sdf_at(x):
        frames = torch.full((x.shape[0],), int(frame), dtype=torch.long, device=dev)
        return head.observed(x, frames, e_row.expand(x.shape[0], -1), with_normals=False)[0]

    steps = (torch.arange(n_samples, device=dev).float() + 0.5) / n_samples
    for ids in rays.split(max(1, chunk // block)):
        o, d, near, far = o_all[ids], d_all[ids], near_all[ids], far_all[ids]
        ts = near[:, None] + (far - near)[:, None] * steps[None]                    # (N, S)
        s = torch.ones_like(ts)
        first = torch.full((len(ids),), -1, dtype=torch.long, device=dev)   # first sample past an outside one
        # march in blocks from the camera; a ray stops being evaluated once it has gone from outside to
        # inside. A ray that starts inside (the SDF is unconstrained at the box's faces, e.g. the neck cut)
        # has not met the surface yet: as in volume rendering, only an outside -> inside step is a surface.
        last = torch.full((len(ids),), -1.0, device=dev)                        # the sample before the block
        for b0 in range(0, n_samples, block):
            todo = torch.nonzero(first < 0).squeeze(1)
            if not len(todo):
                break
            tb = ts[todo, b0:b0 + block]
            x = (o[todo, None] + tb[..., None] * d[todo, None]).reshape(-1, 3)
            sb = torch.ones(x.shape[0], device=dev)
            live = torch.ones_like(sb, dtype=torch.bool)
            if grid is not None:
                state = grid.lookup(x)
                sb[state < 0] = -1.0
                live = state == 1
            if live.any():
                sb[live] = sdf_at(x[live])
            sb = sb.reshape(len(todo), -1)
            s[todo, b0:b0 + block] = sb
            seq = torch.cat([last[todo, None], sb], 1)
            entering = (seq[:, :-1] >= 0) & (seq[:, 1:] < 0)
            hit = entering.any(1)
            first[todo[hit]] = b0 + entering[hit].float().argmax(1)
            last[todo] = sb[:, -1]
        found = first > 0
        if not found.any():
            continue
        r = torch.nonzero(found).squeeze(1)
        k = first[r]
        a, b = ts[r, k - 1], ts[r, k]
        sa, sb = s[r, k - 1], s[r, k]
        for _ in range(refine_steps):                                              # secant, keeping the bracket
            m = a - sa * (b - a) / (sb - sa).clamp_max(-1e-9)
            sm = sdf_at(o[r] + m[:, None] * d[r])
            out = sm > 0
            a, sa = torch.where(out, m, a), torch.where(out, sm, sa)
            b, sb = torch.where(out, b, m), torch.where(out, sb, sm)
        hit_t = a - sa * (b - a) / (sb - sa).clamp_max(-1e-9)
        xs_hit = o[r] + hit_t[:, None] * d[r]
        frames = torch.full((len(r),), int(frame), dtype=torch.long, device=dev)
        with torch.enable_grad():
            _, h, n, _ = head.observed(xs_hit, frames, e_row.expand(len(r), -1), with_normals=True)
        rgb[ids[r]] = head.colour(h.detach(), n.detach(), frames).clamp(0.0, 1.0)
        depth[ids[r]] = hit_t
    alpha = torch.isfinite(depth).float()
    return rgb.reshape(height, width, 3), alpha.reshape(height, width), depth.reshape(height, width)
