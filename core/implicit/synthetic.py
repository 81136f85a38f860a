"""A synthetic talking head with hair-like geometry and known truth, for tests and benchmarks.

The default model's head with one identity, a "hair" volume the morphable model cannot express (the
scalp pushed out by up to ``hair_mm`` plus a bun at the back: a separate sphere), moving through
expressions and head poses, rendered with FaceForge's rasterizer (SH light, vertex colours). The
truth is every frame's mesh and the canonical (neutral) head with its hair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..models.morphable import MorphableModel


@dataclass
class SyntheticClip:
    images: np.ndarray          # (T, H, W, 3) float32 in [0, 1]
    masks: np.ndarray           # (T, H, W) bool
    rotation: np.ndarray        # (T, 3, 3) model -> camera
    translation: np.ndarray     # (T, 3)
    expr: np.ndarray            # (T, Ke)
    shape: np.ndarray           # (Ks,) identity
    focal: float
    cx: float
    cy: float
    canonical_verts: np.ndarray  # (V', 3) the neutral head with its hair (truth), model space
    canonical_faces: np.ndarray
    frame_verts: np.ndarray     # (T, V', 3) every frame's truth, model space


def _sphere(radius: float, centre, n: int = 12):
    u, v = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
    pts = np.stack([np.sin(u) * np.cos(v), np.cos(u), np.sin(u) * np.sin(v)], -1).reshape(-1, 3)
    pts = pts[n * 0:]
    # unique poles
    top, bottom = np.array([[0, 1.0, 0]]), np.array([[0, -1.0, 0]])
    rings = pts.reshape(n, 2 * n, 3)[1:-1].reshape(-1, 3)
    verts = np.concatenate([top, rings, bottom])
    faces = []
    m = 2 * n
    for j in range(m):
        faces.append([0, 1 + (j + 1) % m, 1 + j])
    for i in range(n - 3):
        for j in range(m):
            a, b = 1 + i * m + j, 1 + i * m + (j + 1) % m
            c, d = a + m, b + m
            faces += [[a, b, d], [a, d, c]]
    last = len(verts) - 1
    base = 1 + (n - 3) * m
    for j in range(m):
        faces.append([last, base + j, base + (j + 1) % m])
    return verts * radius + np.asarray(centre), np.asarray(faces, np.int64)


def hair_offsets(model: MorphableModel, neutral: np.ndarray, hair_mm: float) -> np.ndarray:
    """Per-vertex offsets pushing the scalp out along its normals (0 on the face, the neck, the ears)."""
    from ..render.shading import vertex_normals
    n = vertex_normals(torch.as_tensor(neutral, dtype=torch.float32)[None], model.faces)[0].numpy()
    skin = model.skin_vertex_mask()
    lo, hi = neutral[skin].min(0), neutral[skin].max(0)
    height = (neutral[:, 1] - lo[1]) / (hi[1] - lo[1])
    depth = (hi[2] - neutral[:, 2]) / (hi[2] - lo[2])
    # the scalp: the top of the head, and further back lower down
    w = np.clip((height - 0.62) / 0.12, 0, 1) * np.clip((depth - 0.12) / 0.15, 0, 1)
    w = np.maximum(w, np.clip((height - 0.45) / 0.15, 0, 1) * np.clip((depth - 0.55) / 0.15, 0, 1))
    w *= skin
    return (hair_mm / 1000.0) * w[:, None] * n


def clip_light() -> torch.Tensor:
    """The synthetic clip's SH light (9, 3): ambient, a key from above and the front."""
    from ..render.shading import A0, A1, C0, C1
    sh = torch.zeros(9, 3)
    sh[0] = 0.8 / (A0 * C0)
    sh[2] = -0.5 / (A1 * C1)
    sh[1] = -0.2 / (A1 * C1)
    return sh


def make_clip(model: MorphableModel, n_frames: int = 24, size: int = 64, seed: int = 0, hair_mm: float = 15.0,
              bun: bool = True) -> SyntheticClip:
    from ..render import render
    rng = np.random.default_rng(seed)
    shape = (rng.standard_normal(model.n_shape) * 0.6).astype(np.float32)
    neutral = model.v_template + np.einsum("vck,k->vc", model.shape_basis, shape)
    hair = hair_offsets(model, neutral, hair_mm)
    skin = model.skin_vertex_mask()
    faces = model.faces[model.skin_faces()]
    parts = [faces]
    verts_extra = np.zeros((0, 3))
    if bun:
        lo, hi = neutral[skin].min(0), neutral[skin].max(0)
        centre = [0.5 * (lo[0] + hi[0]), lo[1] + 0.78 * (hi[1] - lo[1]), lo[2] + 0.02]
        verts_extra, bun_faces = _sphere(0.04, centre)
        parts.append(bun_faces + model.n_vertices)
    all_faces = np.concatenate(parts)
    # expressions: a few ARKit shapes moving smoothly
    names = ["jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L"]
    idx = [model.expr_names.index(nm) for nm in names if nm in model.expr_names]
    T = n_frames
    expr = np.zeros((T, model.n_expr), np.float32)
    ph = rng.random(len(idx)) * 2 * np.pi
    for k, i in enumerate(idx):
        expr[:, i] = np.clip(0.5 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, T) * (1 + k % 2) + ph[k]), 0, 1) * 0.8
    yaw = np.radians(25.0) * np.sin(np.linspace(0, 2 * np.pi, T))
    pitch = np.radians(8.0) * np.sin(np.linspace(0, 4 * np.pi, T) + 0.5)
    flip = np.diag([1.0, -1.0, -1.0])
    centre = 0.5 * (neutral[skin].min(0) + neutral[skin].max(0))
    dist = 0.75
    focal = size * dist / 0.40
    Rs, ts = [], []
    for y, p in zip(yaw, pitch):
        ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
        rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        R = flip @ ry @ rx
        Rs.append(R)
        ts.append(np.array([0.0, 0.0, dist]) - R @ centre)
    Rs, ts = np.stack(Rs), np.stack(ts)
    albedo = np.concatenate([model.albedo_mean if model.albedo_mean is not None
                             else np.full((model.n_vertices, 3), 0.7), np.zeros((len(verts_extra), 3))])
    hair_w = np.linalg.norm(hair, axis=1) / (hair_mm / 1000.0)
    hair_col = np.array([0.25, 0.16, 0.1])
    albedo[: model.n_vertices] = albedo[: model.n_vertices] * (1 - hair_w[:, None]) + hair_col * hair_w[:, None]
    albedo[model.n_vertices:] = hair_col
    sh = clip_light()[None]
    images, masks, frames = [], [], []
    for f in range(T):
        v = neutral + np.einsum("vck,k->vc", model.expr_basis, expr[f]) + hair
        full = np.concatenate([v, verts_extra])
        frames.append(full.astype(np.float32))
        cam = torch.as_tensor(full @ Rs[f].T + ts[f], dtype=torch.float32)[None]
        out = render(cam, torch.as_tensor(all_faces), torch.as_tensor(albedo, dtype=torch.float32)[None], sh,
                     focal, size / 2, size / 2, size, size, cull_backfaces=False)
        images.append(out.image[0].clamp(0, 1).numpy())
        masks.append(out.mask[0].numpy())
    canonical = np.concatenate([neutral + hair, verts_extra]).astype(np.float32)
    return SyntheticClip(images=np.stack(images).astype(np.float32), masks=np.stack(masks), rotation=Rs.astype(np.float32),
                         translation=ts.astype(np.float32), expr=expr, shape=shape, focal=float(focal),
                         cx=size / 2, cy=size / 2, canonical_verts=canonical, canonical_faces=all_faces,
                         frame_verts=np.stack(frames))
