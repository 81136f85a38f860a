"""Temporal filtering of parameter sequences.

The One-Euro filter (Casiez et al., CHI 2012) adapts its cut-off to the signal's speed: strong
smoothing when still (kills jitter), little when moving fast (keeps motion). Being causal it
lags slightly, so for offline tracks it is run forwards and backwards and the two averaged:
the lags cancel (zero phase) while jitter is still removed.
"""

from __future__ import annotations

import numpy as np


def _alpha(cutoff, dt):
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray, fps: float, min_cutoff: float = 1.5, beta: float = 0.3, d_cutoff: float = 1.0) -> np.ndarray:
    """Causal One-Euro filter over axis 0 of ``x`` (T, ...), per channel."""
    x = np.asarray(x, np.float64)
    dt = 1.0 / fps
    out = np.empty_like(x)
    out[0] = x[0]
    dx_prev = np.zeros_like(x[0])
    a_d = _alpha(d_cutoff, dt)
    for t in range(1, len(x)):
        dx = (x[t] - out[t - 1]) / dt
        dx_hat = a_d * dx + (1 - a_d) * dx_prev
        cutoff = min_cutoff + beta * np.abs(dx_hat)
        a = _alpha(cutoff, dt)
        out[t] = a * x[t] + (1 - a) * out[t - 1]
        dx_prev = dx_hat
    return out


def one_euro_zero_phase(x: np.ndarray, fps: float, min_cutoff: float = 1.5, beta: float = 0.3) -> np.ndarray:
    """Forward-backward One-Euro: no lag, jitter removed. ``x`` is (T, ...)."""
    if len(x) < 3:
        return np.asarray(x, np.float64).copy()
    fwd = one_euro(x, fps, min_cutoff, beta)
    bwd = one_euro(np.asarray(x)[::-1], fps, min_cutoff, beta)[::-1]
    return 0.5 * (fwd + bwd)


def fill_gaps(values: np.ndarray, valid: np.ndarray, max_gap: int):
    """Linear interpolation across runs of invalid frames no longer than ``max_gap``; longer runs
    and the clip's ends hold the nearest valid value. Returns (filled, held [(start, end)]): every
    run that was held rather than interpolated, whatever its length, so reports can say which."""
    values = np.array(values, np.float64, copy=True)
    valid = np.asarray(valid, bool)
    T = len(valid)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        return values, [(0, T)]
    held = []
    t = 0
    while t < T:
        if valid[t]:
            t += 1
            continue
        s = t
        while t < T and not valid[t]:
            t += 1
        e = t                                   # gap is [s, e)
        if s == 0:
            values[s:e] = values[e]
        elif e == T:
            values[s:e] = values[s - 1]
        elif e - s <= max_gap:
            w = (np.arange(s, e) - (s - 1)) / (e - (s - 1))
            w = w.reshape((-1,) + (1,) * (values.ndim - 1))
            values[s:e] = (1 - w) * values[s - 1] + w * values[e]
        else:
            values[s:e] = values[s - 1]
        if s == 0 or e == T or e - s > max_gap:
            held.append((s, e))
    return values, held
