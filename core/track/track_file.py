"""The on-disk track format (.fftrack.npz): per-frame parameters, re-importable without re-tracking.

A numpy .npz read with allow_pickle=False (numbers and strings only, so loading cannot run code).

================== ============== =========================================================
key                shape          meaning
================== ============== =========================================================
format             ()             "faceforge-track"
format_version     ()             1
video_path         ()             the source clip (absolute path at tracking time)
fps                ()             frames per second of the clip
frame_start        ()             index of the first tracked frame in the clip
image_size         (2,)           height, width in pixels
model_name         ()             the model's name ("builtin", "FLAME", ...)
model_source       ()             its file, for re-loading
model_fingerprint  ()             sha1 of the template + triangles: refuses a different model
shape              (Ks,)          identity coefficients shared by every frame
expr               (T, Ke)        expression coefficients per frame
joint_pose         (T, J-1, 3)    axis-angle of the non-root joints (FLAME: neck, jaw, eyes)
rotation           (T, 3, 3)      model -> camera rotation (OpenCV camera axes)
translation        (T, 3)         model -> camera translation, metres
focal, cx, cy      ()             pinhole intrinsics in pixels (shared by the clip)
valid              (T,)  bool     a face was detected in this frame
visible            (T,)  bool     the head is shown (optional, all when absent): False in long gaps,
                                  the clip's faceless ends and frames of another person
confidence         (T,)  float32  0..1: detection and fit quality (0 where interpolated)
landmarks          (T, 478, 2)    the detector's points (pixels; NaN where none)
warnings_json      ()             JSON list of messages (e.g. long gaps)
pin_frame          (P,)  int64    artists' pins (optional): the frame each pin is on (0 = first tracked)
pin_face           (P,)  int64    the model triangle of the pinned surface point
pin_bary           (P, 3)         its barycentric coordinates in that triangle
pin_target         (P, 2)         the pixel it must be seen at in that frame
================== ============== =========================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, TopologyError

FORMAT = "faceforge-track"
VERSION = 1


@dataclass
class Track:
    video_path: str
    fps: float
    frame_start: int
    image_size: tuple
    model_name: str
    model_source: str
    model_fingerprint: str
    shape: np.ndarray
    expr: np.ndarray
    joint_pose: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    focal: float
    cx: float
    cy: float
    valid: np.ndarray
    confidence: np.ndarray
    landmarks: Optional[np.ndarray] = None
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    visible: Optional[np.ndarray] = None         # (T,) bool; None: every frame
    pins: list = field(default_factory=list)     # core.fit.pins.Pin, view = frame (keyframe corrections)

    @property
    def n_frames(self) -> int:
        return int(len(self.expr))


def model_fingerprint(model) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(model.v_template, np.float32).tobytes())
    h.update(np.ascontiguousarray(model.faces, np.int64).tobytes())
    return h.hexdigest()


def check_model(track: Track, model) -> None:
    """A track only animates the model it was made with."""
    if track.model_fingerprint != model_fingerprint(model):
        raise TopologyError(
            f"This track was made with model '{track.model_name}' ({track.model_source}); the selected model "
            f"'{model.name}' is different. Choose the same model to import it, or track the video again.")


def save_track(track: Track, path) -> str:
    path = Path(path)
    arrays = dict(
        format=np.array(FORMAT), format_version=np.array(VERSION), video_path=np.array(track.video_path),
        fps=np.array(track.fps, np.float64), frame_start=np.array(track.frame_start, np.int64),
        image_size=np.array(track.image_size, np.int64), model_name=np.array(track.model_name),
        model_source=np.array(track.model_source or ""), model_fingerprint=np.array(track.model_fingerprint),
        shape=track.shape.astype(np.float32), expr=track.expr.astype(np.float32),
        joint_pose=track.joint_pose.astype(np.float32), rotation=track.rotation.astype(np.float32),
        translation=track.translation.astype(np.float32), focal=np.array(track.focal, np.float64),
        cx=np.array(track.cx, np.float64), cy=np.array(track.cy, np.float64),
        valid=track.valid.astype(bool), confidence=track.confidence.astype(np.float32),
        warnings_json=np.array(json.dumps(track.warnings)),
    )
    if track.landmarks is not None:
        arrays["landmarks"] = track.landmarks.astype(np.float32)
    if track.visible is not None:
        arrays["visible"] = np.asarray(track.visible, bool)
    if track.pins:
        arrays.update(pin_frame=np.array([p.view for p in track.pins], np.int64),
                      pin_face=np.array([p.face for p in track.pins], np.int64),
                      pin_bary=np.array([p.bary for p in track.pins], np.float32).reshape(-1, 3),
                      pin_target=np.array([p.target for p in track.pins], np.float32).reshape(-1, 2))
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as fh:           # np.savez would append .npz to a bare name
        np.savez_compressed(fh, **arrays)
    tmp.replace(path)                     # never leave a half-written track behind
    return str(path)


def load_track(path) -> Track:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Track file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
    except Exception as exc:
        raise InputError(f"{path.name} is not a FaceForge track (.npz): {exc}") from exc
    if "format" not in keys or str(data["format"]) != FORMAT:
        raise InputError(f"{path.name} is not a FaceForge track file.")
    if int(data["format_version"]) > VERSION:
        raise InputError(f"{path.name} was written by a newer FaceForge (track format {int(data['format_version'])}).")
    try:
        t = Track(
            video_path=str(data["video_path"]), fps=float(data["fps"]), frame_start=int(data["frame_start"]),
            image_size=tuple(int(x) for x in data["image_size"]), model_name=str(data["model_name"]),
            model_source=str(data["model_source"]), model_fingerprint=str(data["model_fingerprint"]),
            shape=data["shape"], expr=data["expr"], joint_pose=data["joint_pose"], rotation=data["rotation"],
            translation=data["translation"], focal=float(data["focal"]), cx=float(data["cx"]), cy=float(data["cy"]),
            valid=data["valid"], confidence=data["confidence"],
            landmarks=data["landmarks"] if "landmarks" in keys else None,
            visible=data["visible"].astype(bool) if "visible" in keys else None,
            warnings=json.loads(str(data["warnings_json"])),
            pins=_load_pins(data) if "pin_frame" in keys else [],
        )
    except KeyError as exc:
        raise InputError(f"{path.name} is missing the track field {exc}.") from exc
    T = t.n_frames
    for name, arr, shape in (("rotation", t.rotation, (T, 3, 3)), ("translation", t.translation, (T, 3)),
                             ("valid", t.valid, (T,)), ("confidence", t.confidence, (T,))):
        if arr.shape != shape:
            raise InputError(f"{path.name}: '{name}' has shape {arr.shape}, expected {shape}.")
    if t.visible is not None and t.visible.shape != (T,):
        raise InputError(f"{path.name}: 'visible' has shape {t.visible.shape}, expected {(T,)}.")
    return t


def _load_pins(data) -> list:
    from ..fit.pins import Pin
    return [Pin(int(f), tuple(float(x) for x in b), tuple(float(x) for x in t), int(fr))
            for fr, f, b, t in zip(data["pin_frame"], data["pin_face"], data["pin_bary"], data["pin_target"])]
