"""Shots and segments of a clip: where a track must not be smoothed, interpolated or shown.

Edited footage has cuts, and faces leave the frame. A track that smooths across a cut drags the head
a face-width towards the next shot's face; one that interpolates across a long gap floats a head over
an empty background; one identity shared across a cut fits two people with one face. So the tracker
splits the clip into *segments*: runs of frames that belong to one shot, one person, with no gap
longer than ``max_gap`` frames. Segments are tracked, smoothed and filled independently; frames
outside every segment (long gaps, the clip's faceless ends, another person) are hidden.

A cut is seen two ways, each frame with a face against the last frame with a face (online, while
frames decode):
- the picture changes: the colour histograms of two thumbnails differ by more than
  ``HIST_CUT`` (half the L1 distance of normalised histograms: 0 = same colours, 1 = disjoint);
- the face jumps: its landmarks move more than ``JUMP_CUT`` face sizes in one frame (a cut between
  two shots of the same person in the same place keeps the histogram, not the face position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

HIST_CUT = 0.4        # a frame-to-frame colour change this large is a cut (fades and pans stay below)
JUMP_CUT = 0.5        # landmarks moving half a face size in one frame: another shot, not head motion
_BINS = 16


def frame_signature(frame_rgb: np.ndarray) -> np.ndarray:
    """A normalised colour histogram (3 x 16 bins) of a 64x36 thumbnail of the frame."""
    import cv2
    thumb = cv2.resize(np.ascontiguousarray(frame_rgb), (64, 36), interpolation=cv2.INTER_AREA)
    q = (thumb.reshape(-1, 3).astype(np.int64) * _BINS) // 256
    hist = np.stack([np.bincount(q[:, c], minlength=_BINS) for c in range(3)]).astype(np.float32)
    return hist / hist.sum(1, keepdims=True)


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """0 (same colours) .. 1 (no colour in common), averaged over the three channels."""
    return float(0.5 * np.abs(a - b).sum(1).mean())


def landmark_jump(prev_points: np.ndarray, points: np.ndarray, size: float) -> float:
    """Median landmark displacement between two frames, in face sizes."""
    d = np.linalg.norm(points[:, :2] - prev_points[:, :2], axis=1)
    return float(np.median(d) / max(size, 1.0))


@dataclass
class ShotDetector:
    """Fed every decoded frame in order; ``cut_before[t]`` says the face in frame t belongs to another
    shot than the face last seen. Frames without a face are never cuts themselves: the face before a
    faceless stretch is compared with the face after it, so a cutaway and back to the same shot is a
    gap (interpolated when short), while a different picture or face position is a cut."""
    hist_cut: float = HIST_CUT
    jump_cut: float = JUMP_CUT
    cut_before: list = field(default_factory=list)
    _signature: Optional[np.ndarray] = None             # the last frame with a face: its colours
    _points: Optional[np.ndarray] = None                # ... and its landmarks

    def add(self, frame_rgb: np.ndarray, points: Optional[np.ndarray], size: float) -> bool:
        cut = False
        if points is not None:
            sig = frame_signature(frame_rgb)
            if self._signature is not None:
                cut = (signature_distance(self._signature, sig) > self.hist_cut
                       or landmark_jump(self._points, points, size) > self.jump_cut)
            self._signature, self._points = sig, points
        self.cut_before.append(bool(cut))
        return bool(cut)


def segments(valid: np.ndarray, cut_before: np.ndarray, max_gap: int) -> list:
    """``[(start, end)]`` (end exclusive) runs of frames tracked together: each begins and ends on a
    frame with a face, holds no cut and no run of more than ``max_gap`` faceless frames."""
    valid = np.asarray(valid, bool)
    cut_before = np.asarray(cut_before, bool)
    out = []
    start = last = None
    for t in np.flatnonzero(valid):
        t = int(t)
        if start is not None and (t - last - 1 > max_gap or cut_before[last + 1:t + 1].any()):
            out.append((start, last + 1))
            start = None
        if start is None:
            start = t
        last = t
    if start is not None:
        out.append((start, last + 1))
    return out


def runs(mask: np.ndarray) -> list:
    """``[(start, end)]`` runs of True in a boolean array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(s), int(e)) for s, e in zip(edges[0::2], edges[1::2])]


def format_runs(spans, start: int = 0, most: int = 6) -> str:
    """'3-9, 40, 52-60 and 2 more' (clip frame numbers: ``start`` + index)."""
    texts = [f"{start + s}-{start + e - 1}" if e - s > 1 else str(start + s) for s, e in spans]
    return ", ".join(texts[:most]) + (f" and {len(texts) - most} more" if len(texts) > most else "")


def main_person(segs: list, descriptors: dict, threshold: float) -> tuple:
    """Which segments show the clip's main person (the one seen in the most frames).

    ``descriptors`` maps a segment index to its face's identity embedding (missing: unknown, kept).
    People are grouped greedily: a segment joins the first group whose first descriptor lies within
    ``threshold``. Returns (kept segment indices, dropped segment indices)."""
    groups = []            # [descriptor, [segment indices], frames]
    unknown = []
    for i, (s, e) in enumerate(segs):
        d = descriptors.get(i)
        if d is None:
            unknown.append(i)
            continue
        for g in groups:
            if float(np.linalg.norm(g[0] - d)) < threshold:
                g[1].append(i)
                g[2] += e - s
                break
        else:
            groups.append([d, [i], e - s])
    if len(groups) <= 1:
        return list(range(len(segs))), []
    main = max(groups, key=lambda g: g[2])
    kept = sorted(main[1] + unknown)
    dropped = sorted(i for g in groups if g is not main for i in g[1])
    return kept, dropped
