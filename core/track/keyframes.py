"""Keyframe corrections of a track: pins on some frames, blended into their neighbours.

A frame with pins becomes a keyframe. Each keyframe is re-solved around its pins (core/fit/pins.py,
warm-started from the tracked frame, identity shared by the clip and locked by default); its
correction (a rotation about the head's origin, a translation of it, expression deltas) is then
spread over the neighbouring frames with smoothstep weights, as FaceTracker's keyframes do:
between two keyframes no more than ``bridge`` frames apart the two corrections are interpolated
(the weights sum to one, so a whole corrupted span between them moves with them); beyond the
outermost keyframes, or across longer gaps, a correction fades out over ``falloff`` frames.
Frames outside every keyframe's reach are left exactly as they were.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..fit.pins import HeadState, Pin, PinConfig, PinSolver, ViewState
from ..jobs import ensure_progress
from ..models.morphable import axis_angle_to_matrix
from .track_file import Track, check_model


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def keyframe_weights(keys: Sequence[int], T: int, falloff: int, bridge: int) -> np.ndarray:
    """(K, T) weight of each keyframe's correction at every frame (1 at its own frame)."""
    keys = sorted(int(k) for k in keys)
    t = np.arange(T, dtype=np.float64)
    W = np.zeros((len(keys), T))
    for i, k in enumerate(keys):
        left = keys[i] - keys[i - 1] if i > 0 and keys[i] - keys[i - 1] <= bridge else falloff
        right = keys[i + 1] - keys[i] if i + 1 < len(keys) and keys[i + 1] - keys[i] <= bridge else falloff
        d = t - k
        w = np.where(d < 0, 1 - (-d) / max(left, 1e-9), 1 - d / max(right, 1e-9))
        # a side that fades out (not bridged) reaches zero at ``falloff`` frames; the weight at the key
        # itself is 1 even with falloff 0
        W[i] = np.where(d == 0, 1.0, _smoothstep(w) * (w > 0))
    return W


def state_of_frame(track: Track, t: int, det_index: Optional[np.ndarray]) -> HeadState:
    lm, size = None, 0.0
    if track.landmarks is not None and det_index is not None and bool(track.valid[t]):
        lm = track.landmarks[t][det_index].astype(np.float32)
        pts = track.landmarks[t][:468]
        size = float(max(np.nanmax(pts[:, 0]) - np.nanmin(pts[:, 0]), np.nanmax(pts[:, 1]) - np.nanmin(pts[:, 1])))
    return HeadState(np.asarray(track.shape, np.float32), [ViewState(
        np.asarray(track.rotation[t], np.float32), np.asarray(track.translation[t], np.float32), float(track.focal),
        float(track.cx), float(track.cy), np.asarray(track.expr[t], np.float32),
        np.asarray(track.joint_pose[t], np.float32).reshape(-1, 3), lm, size)])


def refine_track_with_pins(track: Track, model, pins: Optional[Sequence[Pin]] = None,
                           config: Optional[PinConfig] = None, falloff: int = 12, bridge: int = 60,
                           progress=None, solver: Optional[PinSolver] = None) -> Track:
    """A corrected copy of ``track``: every frame with pins (``Pin.view`` = frame, 0 = the first
    tracked one) re-solved around them, the corrections blended into the neighbouring frames.
    ``pins`` defaults to the track's own (``track.pins``); the result carries the pins it used."""
    import cv2

    check_model(track, model)
    progress = ensure_progress(progress)
    pins = list(track.pins if pins is None else pins)
    cfg = config or PinConfig(lock_identity=True)
    T = track.n_frames
    bad = [p.view for p in pins if not 0 <= p.view < T]
    if bad:
        raise InputError(f"Pins on frames {sorted(set(bad))} lie outside the track's {T} frames.")
    t0 = time.perf_counter()
    solver = solver or PinSolver(model.layer("cpu"))
    det_index = model.landmarks.detector_index if model.landmarks is not None else None
    keys = sorted({p.view for p in pins})
    d_rot = np.zeros((len(keys), 3))
    d_trans = np.zeros((len(keys), 3))
    d_expr = np.zeros((len(keys), track.expr.shape[1]))
    shape = np.asarray(track.shape, np.float32)
    for i, k in enumerate(keys):
        progress.update(f"re-solving keyframe {track.frame_start + k}", i / max(len(keys), 1))
        ref = state_of_frame(track, k, det_index)
        out = solver.solve(ref, [dataclasses.replace(p, view=0) for p in pins if p.view == k], cfg)
        dR = out.views[0].rotation.astype(np.float64) @ ref.views[0].rotation.T.astype(np.float64)
        d_rot[i] = cv2.Rodrigues(dR)[0][:, 0]
        d_trans[i] = out.views[0].translation - ref.views[0].translation
        d_expr[i] = out.views[0].expr - ref.views[0].expr
        if not cfg.lock_identity:
            # one identity for the clip: the keyframes' changes are averaged
            shape = shape + (out.shape - ref.shape) / len(keys)
    progress.update("blending the corrections", 0.95)
    W = keyframe_weights(keys, T, falloff, bridge) if keys else np.zeros((0, T))
    c_rot, c_trans, c_expr = W.T @ d_rot, W.T @ d_trans, W.T @ d_expr
    rot = (axis_angle_to_matrix(torch.as_tensor(c_rot, dtype=torch.float32)).numpy()
           @ track.rotation.astype(np.float32))
    expr = track.expr + c_expr
    lo_hi = model.expr_range
    if lo_hi is not None:
        expr = np.clip(expr, lo_hi[0], lo_hi[1])
    touched = W.sum(0) > 0                                                 # untouched frames stay bit-identical
    rot = np.where(touched[:, None, None], rot, track.rotation)
    expr = np.where(touched[:, None], expr, track.expr)
    timings = dict(track.timings, keyframes=len(keys), refine_pins_s=time.perf_counter() - t0)
    progress.update("done", 1.0)
    return dataclasses.replace(track, shape=shape.astype(np.float32), rotation=rot.astype(np.float32),
                               translation=(track.translation + c_trans).astype(np.float32),
                               expr=expr.astype(np.float32), pins=list(pins), timings=timings)
