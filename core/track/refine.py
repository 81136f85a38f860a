"""Optional photometric refinement of a landmark track.

Per frame, a few Adam steps adjust expression and pose (small deltas around the landmark
solution) and the frame's SH light so the rendered face matches the frame's colours and
shading — the same PhotometricTarget as the photo fit — while the landmark term and a prior
on the deltas keep it anchored. Each frame starts from the previous frame's light.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ..device import resolve_device
from ..fit.losses import landmark_loss
from ..fit.photo_fit import FitConfig, landmark_weights
from ..fit.photometric import PhotometricTarget
from ..jobs import ensure_progress
from ..models.morphable import axis_angle_to_matrix
from ..render.camera import project
from ..rig.model_rig import key_values
from .smoothing import one_euro_zero_phase
from .track_file import Track, check_model
from .video import open_frames


def refine_photometric(track: Track, model, device="auto", progress=None, steps: int = 8, size: int = 128,
                       frames=None, delta_prior: float = 200.0, min_cutoff: float = 2.0, beta: float = 0.5) -> Track:
    """A refined copy of ``track`` (frames without a face are left as they were)."""
    check_model(track, model)
    progress = ensure_progress(progress)
    dev = resolve_device(device)
    layer = model.layer(dev)
    lm_layer = layer.landmark_layer()
    idx = layer.lm_detector_index.cpu().numpy()
    cfg = FitConfig()
    w = torch.as_tensor(landmark_weights(idx, cfg), device=dev)[None]
    lm_scale = 0.5 * float(w.sum()) / cfg.landmark_sigma ** 2
    src = open_frames(track.video_path, track.fps)
    todo = set(np.flatnonzero(track.valid) if frames is None else [int(f) for f in frames if track.valid[f]])
    expr, rot, trans = track.expr.copy(), track.rotation.copy(), track.translation.copy()
    # per-frame corrections, smoothed over time before they are applied
    T = track.n_frames
    d_e, d_r, d_t = np.zeros_like(expr), np.zeros((T, 3), np.float32), np.zeros((T, 3), np.float32)
    shape = torch.as_tensor(track.shape[None], device=dev)
    albedo = layer.albedo(None)
    sh_prev = None
    t0 = time.perf_counter()
    done = 0
    end = track.frame_start + track.n_frames
    for i, frame in src.frames(track.frame_start, end):
        t = i - track.frame_start
        if t not in todo:
            continue
        pts = track.landmarks[t]
        xy = pts[:468]
        bbox = (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())
        target = PhotometricTarget(frame, pts, bbox, size, dev)
        face_size = float(max(bbox[2] - bbox[0], bbox[3] - bbox[1]))
        tgt = torch.as_tensor(pts[idx], device=dev)[None]
        d_expr = torch.zeros(1, layer.n_expr, device=dev, requires_grad=True)
        d_rot = torch.zeros(1, 3, device=dev, requires_grad=True)
        d_trans = torch.zeros(1, 3, device=dev, requires_grad=True)
        if sh_prev is None:
            sh0 = torch.zeros(1, 9, 3, device=dev)
            sh0[:, 0] = target.mean_colour()[0] / albedo.mean((0, 1)).clamp_min(1e-3) / 0.886227
        else:
            sh0 = sh_prev
        sh = sh0.clone().requires_grad_(True)
        e0 = torch.as_tensor(expr[t][None], device=dev)
        R0 = torch.as_tensor(rot[t][None], device=dev)
        tr0 = torch.as_tensor(trans[t][None], device=dev)
        jp = torch.as_tensor(track.joint_pose[t][None], device=dev) if model.joints is not None else None
        # Adam moves each parameter by ~lr per step whatever its gradient: steps sized so that
        # 8 steps stay within ~0.3 degrees of rotation and ~0.2% of the camera distance
        opt = torch.optim.Adam([{"params": [d_expr], "lr": 0.01}, {"params": [d_rot], "lr": 0.0007},
                                {"params": [d_trans], "lr": 0.0003}, {"params": [sh], "lr": 0.05}])

        def pose():
            R = axis_angle_to_matrix(d_rot) @ R0
            return R, tr0 + d_trans * tr0[:, 2:3]

        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            R, tt = pose()
            e = e0 + d_expr
            cam = layer(shape, e, jp) @ R.transpose(1, 2) + tt[:, None]
            photo, grad = target.losses(cam, layer.fit_faces, albedo, sh, track.focal, track.cx, track.cy)
            lm = lm_layer(shape, e, jp) @ R.transpose(1, 2) + tt[:, None]
            lmk = landmark_loss(project(lm, track.focal, track.cx, track.cy), tgt, w, face_size)
            loss = (cfg.photo_weight * photo + cfg.gradient_weight * grad + lm_scale * lmk
                    + 0.5 * (e ** 2).sum() + delta_prior * ((d_expr ** 2).sum() + 100 * (d_rot ** 2).sum()
                                                            + 100 * (d_trans ** 2).sum()))
            loss.backward()
            opt.step()
        d_e[t], d_r[t] = d_expr[0].detach().cpu().numpy(), d_rot[0].detach().cpu().numpy()
        d_t[t] = (d_trans[0] * tr0[0, 2]).detach().cpu().numpy()
        sh_prev = sh.detach()
        done += 1
        progress.update("refining (photometric)", done / max(len(todo), 1))
    # frames are refined independently: filter the corrections so they add no jitter
    d_e = one_euro_zero_phase(d_e, track.fps, min_cutoff, beta)
    d_r = one_euro_zero_phase(d_r, track.fps, min_cutoff, beta)
    d_t = one_euro_zero_phase(d_t, track.fps, min_cutoff, beta)
    expr = key_values(model, expr + d_e)             # blendshape weights stay in their range
    rot = (axis_angle_to_matrix(torch.as_tensor(d_r, dtype=torch.float32)) @ torch.as_tensor(rot)).numpy()
    trans = (trans + d_t).astype(np.float32)
    elapsed = time.perf_counter() - t0
    timings = dict(track.timings, refine_s=elapsed, refine_s_per_frame=elapsed / max(done, 1))
    return dataclasses.replace(track, expr=expr, rotation=rot, translation=trans, timings=timings)
