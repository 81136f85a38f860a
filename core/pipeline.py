"""End-to-end pipelines: what the Blender operators, the CLI and the demo call.

Each pipeline takes its inputs, a device and a ``progress`` (see jobs.py) and returns plain
data; it never touches Blender. The scene is built from the returned HeadRig afterwards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from .detect import detect_landmarks, load_image
from .device import resolve_device
from .fit import FitConfig, PhotoFit, PhotoFitter
from .jobs import ensure_progress
from .models import MorphableModel, load_model
from .rig import BoneSpec, CameraSpec, HeadAnimation, HeadRig


@dataclass
class PhotoReconstruction:
    fit: PhotoFit
    rig: HeadRig
    model: MorphableModel
    image: np.ndarray
    image_path: str
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def reconstruct_photo(image_path, model="builtin", device="auto", progress=None,
                      config: Optional[FitConfig] = None) -> PhotoReconstruction:
    """Photo file -> fitted model -> HeadRig. Raises FaceForgeError subclasses on bad input."""
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    progress.update("reading photo", 0.0)
    image = load_image(image_path)
    progress.update("loading model", 0.03)
    mm = load_model(model)
    progress.update("detecting face", 0.08)
    det = detect_landmarks(image, source=Path(image_path).name)
    t1 = time.perf_counter()
    fitter = PhotoFitter(mm.layer(dev), config)
    fit = fitter.fit(image, det, progress=progress.sub(0.12, 0.97))
    rig = head_rig_from_fit(mm, fit, name=Path(image_path).stem, image_path=str(Path(image_path).resolve()))
    progress.update("done", 1.0)
    return PhotoReconstruction(fit=fit, rig=rig, model=mm, image=image, image_path=str(image_path),
                               warnings=list(fit.warnings),
                               timings={"detect_s": t1 - t0, **fit.timings, "total_s": time.perf_counter() - t0})


def head_rig_from_fit(model: MorphableModel, fit: PhotoFit, name="head", image_path=None) -> HeadRig:
    """The fitted identity as the mesh, expression components as shape keys at their fitted values."""
    P = fit.params
    deltas = np.transpose(model.expr_basis, (2, 0, 1)).astype(np.float32)     # (K, V, 3)
    values = np.zeros(model.n_expr, np.float32)
    values[: len(P["expr"])] = P["expr"]
    bones = None
    if model.joints is not None:
        j = model.joints
        heads = j.regressor @ fit.vertices_neutral
        bones = BoneSpec(names=list(j.names), parents=j.parents.copy(), heads=heads.astype(np.float32),
                         weights=j.weights.astype(np.float32), pose=P["joint_pose"].astype(np.float32))
    H, W = fit.image_size
    camera = CameraSpec(focal_px=float(P["focal"]), width=W, height=H, rotation=P["rotation"].astype(np.float64),
                        translation=P["translation"].astype(np.float64), cx=float(P["cx"]), cy=float(P["cy"]),
                        image_path=image_path)
    return HeadRig(name=name, vertices=fit.vertices_neutral.astype(np.float32), faces=model.faces.copy(),
                   shape_key_names=list(model.expr_names), shape_key_deltas=deltas, shape_key_values=values,
                   vertex_colors=fit.vertex_albedo.astype(np.float32), uv=model.uv, bones=bones, camera=camera,
                   metadata={"model": model.name, "model_source": model.source,
                             "landmark_error_px": round(fit.landmark_error_px, 3)})


def fit_params_json(rec: PhotoReconstruction) -> dict:
    fit = rec.fit
    return {
        "faceforge_version": __version__,
        "photo": str(rec.image_path),
        "image_size": {"height": fit.image_size[0], "width": fit.image_size[1]},
        "model": {"name": rec.model.name, "source": rec.model.source, **rec.model.summary()},
        "params": {k: np.asarray(v).tolist() for k, v in fit.params.items()},
        "expression": dict(zip(rec.model.expr_names, np.asarray(fit.params["expr"]).round(4).tolist())),
        "landmark_error_px": round(fit.landmark_error_px, 3),
        "landmark_error_relative": round(fit.landmark_error_rel, 5),
        "photometric_error": None if fit.photometric_error is None else round(fit.photometric_error, 5),
        "timings_s": {k: round(v, 3) for k, v in rec.timings.items()},
        "warnings": rec.warnings,
        "conventions": "model space: metres, y up, +z out of the face; camera: OpenCV (x right, y down, z forward); "
                       "rotation/translation map model to camera",
    }


def save_outputs(rec: PhotoReconstruction, out_dir) -> dict:
    """params.json and overlay.png for a reconstruction. Never overwrites anything but these two."""
    import cv2

    from .fit.overlay import draw_overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params_path = out / "params.json"
    params_path.write_text(json.dumps(fit_params_json(rec), indent=1))
    overlay = draw_overlay(rec.image, rec.fit, rec.model.faces)
    overlay_path = out / "overlay.png"
    cv2.imwrite(str(overlay_path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return {"params": str(params_path), "overlay": str(overlay_path)}


# ----------------------------------------------------------------------------- video tracking
@dataclass
class VideoTrackResult:
    track: "object"          # core.track.Track
    rig: HeadRig
    model: MorphableModel
    warnings: list = field(default_factory=list)


def track_video_to_rig(video, model="builtin", device="auto", progress=None, frame_range=None,
                       refine: bool = False, track_path=None, config=None) -> VideoTrackResult:
    """Video -> Track (saved to ``track_path`` when given) -> animated HeadRig."""
    from .track.refine import refine_photometric
    from .track.track_file import save_track
    from .track.tracker import track_video

    progress = ensure_progress(progress)
    mm = load_model(model)
    track = track_video(video, mm, device, progress.sub(0.0, 0.8 if refine else 0.98), config, frame_range)
    if refine:
        track = refine_photometric(track, mm, device, progress.sub(0.8, 0.98))
    if track_path:
        save_track(track, track_path)
    rig = head_rig_from_track(mm, track)
    progress.update("done", 1.0)
    return VideoTrackResult(track=track, rig=rig, model=mm, warnings=list(track.warnings))


def rig_from_track_file(track_path, model=None) -> VideoTrackResult:
    """Re-import a saved track without re-tracking (the model is the track's unless given)."""
    from .track.track_file import check_model, load_track

    track = load_track(track_path)
    mm = load_model(model if model else ("builtin" if track.model_name == "builtin" else track.model_source))
    check_model(track, mm)
    return VideoTrackResult(track=track, rig=head_rig_from_track(mm, track), model=mm, warnings=list(track.warnings))


def head_rig_from_track(model: MorphableModel, track) -> HeadRig:
    """The tracked identity as the mesh, a root bone carrying the head's rigid motion (plus the
    model's own joints), expression shape keys animated per frame, and the camera of the
    clip's first face frame (with the video as its background)."""
    T = track.n_frames
    ref = int(np.flatnonzero(track.valid)[0]) if track.valid.any() else 0
    R0 = track.rotation[ref].astype(np.float64)
    t0 = track.translation[ref].astype(np.float64)
    # head motion relative to the reference: the camera stays put, the head moves
    root_R = np.einsum("ji,tjk->tik", R0, track.rotation.astype(np.float64))          # R0^T R_t
    root_t = np.einsum("ji,tj->ti", R0, track.translation.astype(np.float64) - t0)    # R0^T (t_t - t0)
    layer = model.layer("cpu")
    import torch
    with torch.no_grad():
        neutral = layer.shaped(torch.as_tensor(track.shape[None]))[0].numpy()
    if model.joints is not None:
        j = model.joints
        bones = BoneSpec(names=list(j.names), parents=j.parents.copy(),
                         heads=(j.regressor @ neutral).astype(np.float32), weights=j.weights.astype(np.float32),
                         pose=track.joint_pose[ref].astype(np.float32))
    else:
        # the built-in model has no joints: one root bone moves the whole face
        bones = BoneSpec(names=["root"], parents=np.array([-1]), heads=neutral.mean(0, keepdims=True).astype(np.float32),
                         weights=np.ones((model.n_vertices, 1), np.float32), pose=np.zeros((0, 3), np.float32))
    H, W = track.image_size
    camera = CameraSpec(focal_px=float(track.focal), width=int(W), height=int(H), rotation=R0, translation=t0,
                        cx=float(track.cx), cy=float(track.cy), image_path=track.video_path)
    values = np.zeros((T, model.n_expr), np.float32)
    values[:, : track.expr.shape[1]] = track.expr
    anim = HeadAnimation(fps=float(track.fps), frame_start=int(track.frame_start), shape_key_values=values,
                         root_rotation=root_R.astype(np.float32), root_translation=root_t.astype(np.float32),
                         joint_pose=track.joint_pose.astype(np.float32) if model.joints is not None else None,
                         valid=track.valid.copy(), video_path=track.video_path)
    return HeadRig(name=Path(str(track.video_path)).stem or "tracked_head", vertices=neutral.astype(np.float32),
                   faces=model.faces.copy(), shape_key_names=list(model.expr_names),
                   shape_key_deltas=np.transpose(model.expr_basis, (2, 0, 1)).astype(np.float32),
                   shape_key_values=values[ref].copy(), vertex_colors=(model.albedo_mean.copy()
                                                                        if model.albedo_mean is not None else None),
                   uv=model.uv, bones=bones, camera=camera, animation=anim,
                   metadata={"model": model.name, "model_source": model.source, "frames": T,
                             "fps": float(track.fps)})


# ----------------------------------------------------------------------------- several photos
@dataclass
class MultiPhotoReconstruction:
    multi: "object"                  # core.fit.multi_fit.MultiPhotoFit
    rig: HeadRig
    model: MorphableModel
    texture: np.ndarray              # (S, S, 3) uint8 albedo
    bake: "object"                   # core.texture.BakeResult
    uv: np.ndarray                   # (F, 3, 2)
    images: list
    image_paths: list
    primary: int                     # the photo whose camera is the scene camera
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def photo_paths(inputs) -> list:
    """Files and folders -> sorted list of image files (a folder contributes its images)."""
    from .detect.images import SUPPORTED_SUFFIXES
    from .errors import InputError

    out = []
    for item in ([inputs] if isinstance(inputs, (str, Path)) else inputs):
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.iterdir() if f.suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            out.append(str(p))
    if not out:
        raise InputError("No photos were given (an empty folder?). Choose one or more photos of one person.")
    return out


def reconstruct_photos(inputs, model="builtin", device="auto", progress=None, texture_size: int = 1024,
                       config=None) -> MultiPhotoReconstruction:
    """Photos of one person (files or a folder) -> one identity, textured head, a camera per photo."""
    from .fit.multi_fit import fit_photos
    from .texture import bake_texture, cylindrical_uv

    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    paths = photo_paths(inputs)
    mm = load_model(model)
    images, dets, names = [], [], []
    for i, path in enumerate(paths):
        progress.update(f"reading and detecting {Path(path).name}", 0.1 * i / len(paths))
        img = load_image(path)
        images.append(img)
        dets.append(detect_landmarks(img, source=Path(path).name))
        names.append(Path(path).name)
    layer = mm.layer(dev)
    multi = fit_photos(images, dets, layer, config, progress.sub(0.1, 0.8), names=names)
    progress.update("baking the texture", 0.8)
    import torch
    views, cams = [], []
    with torch.no_grad():
        shape = torch.as_tensor(multi.shape[None], device=dev)
        for img, v, q, path in zip(images, multi.views, multi.quality, paths):
            joint = torch.as_tensor(v["joint_pose"][None], device=dev) if mm.joints is not None else None
            verts = layer(shape, torch.as_tensor(v["expr"][None], device=dev), joint)[0].cpu().numpy()
            cam_v = verts @ v["R"].T + v["t"]
            views.append(dict(image=img, vertices_camera=cam_v, focal=v["focal"], cx=v["cx"], cy=v["cy"],
                              sh=v["sh"], weight=1.0 / q.noise_scale ** 2))
            H, W = v["image_size"]
            cams.append(CameraSpec(focal_px=v["focal"], width=W, height=H, rotation=v["R"].astype(np.float64),
                                   translation=v["t"].astype(np.float64), cx=v["cx"], cy=v["cy"],
                                   image_path=str(Path(path).resolve())))
    uv = cylindrical_uv(mm.v_template, mm.faces)
    fallback = np.mean([f.vertex_albedo for f in multi.fits], 0)
    symmetric = _is_symmetric(mm)
    bake = bake_texture(mm.faces, uv, views, fallback, size=texture_size, symmetric=symmetric,
                        model_vertices=mm.v_template, device=dev)
    primary = int(np.argmin([abs(q.yaw_deg) for q in multi.quality]))     # the most frontal photo
    expr = multi.views[primary]["expr"]
    values = np.zeros(mm.n_expr, np.float32)
    values[: len(expr)] = expr
    bones = None
    if mm.joints is not None:
        j = mm.joints
        bones = BoneSpec(names=list(j.names), parents=j.parents.copy(),
                         heads=(j.regressor @ multi.vertices_neutral).astype(np.float32),
                         weights=j.weights.astype(np.float32),
                         pose=multi.views[primary]["joint_pose"].astype(np.float32))
    rig = HeadRig(name=Path(paths[primary]).stem + "_multi", vertices=multi.vertices_neutral.astype(np.float32),
                  faces=mm.faces.copy(), shape_key_names=list(mm.expr_names),
                  shape_key_deltas=np.transpose(mm.expr_basis, (2, 0, 1)).astype(np.float32),
                  shape_key_values=values, vertex_colors=fallback.astype(np.float32), uv=uv, bones=bones,
                  camera=cams[primary], views=[c for i, c in enumerate(cams) if i != primary],
                  metadata={"model": mm.name, "model_source": mm.source, "photos": len(paths)})
    progress.update("done", 1.0)
    return MultiPhotoReconstruction(multi=multi, rig=rig, model=mm, texture=bake.texture, bake=bake, uv=uv,
                                    images=images, image_paths=paths, primary=primary,
                                    warnings=list(multi.warnings),
                                    timings={**multi.timings, "total_s": time.perf_counter() - t0})


def _is_symmetric(model: MorphableModel, tol_m: float = 0.002) -> bool:
    """Whether the template is left-right symmetric (mirror hole filling is then safe)."""
    v = model.v_template[:: max(1, model.n_vertices // 2000)]        # a subsample is enough
    mirrored = v * np.array([-1.0, 1.0, 1.0])
    d = np.sqrt(((v[:, None] - mirrored[None]) ** 2).sum(-1).min(1))
    return bool(np.median(d) < tol_m)


def save_texture(rec: MultiPhotoReconstruction, path) -> str:
    """Write the albedo texture as PNG and point the rig at it."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rec.texture, cv2.COLOR_RGB2BGR))
    rec.rig.texture_path = str(path.resolve())
    return str(path)
