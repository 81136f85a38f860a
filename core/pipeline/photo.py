"""One photo -> fitted model -> HeadRig, plus the report files (params.json, overlay.png)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..detect import detect_landmarks, load_image
from ..detect.images import exif_focal_px
from ..detect.reliability import WARN_YAW_DEG, check_fit
from ..device import resolve_device
from ..fit import FitConfig, PhotoFit, PhotoFitter
from ..jobs import ensure_progress
from ..models import MorphableModel, load_model
from ..rig import BoneSpec, CameraSpec, HeadRig
from ..rig.model_rig import expression_shape_keys, model_topology, skin_uv


@dataclass
class PhotoReconstruction:
    fit: PhotoFit
    rig: HeadRig
    model: MorphableModel
    image: np.ndarray
    image_path: str
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    texture: Optional[np.ndarray] = None   # (S, tiles*S, 3) uint8 albedo in the model's own UVs, if it has any
    bake: Optional[object] = None          # core.texture.BakeResult
    face_index: int = 0                    # which face was fitted, counted from the left (0-based)
    face_boxes: list = field(default_factory=list)   # (x0, y0, x1, y1) of every face found, left to right
    exif_focal_px: Optional[float] = None  # the focal length the photo's EXIF gave, held by the fit (None: fitted)


def reconstruct_photo(image_path, model=None, device="auto", progress=None,
                      config: Optional[FitConfig] = None, texture_size: int = 1024,
                      face: Optional[int] = None) -> PhotoReconstruction:
    """Photo file -> fitted model -> HeadRig. Raises FaceForgeError subclasses on bad input.

    ``face`` picks one of several faces: 0-based, counted from the left (by default the most
    confident plausible one; the warnings say how many there were and which was used).

    When the model has its own UVs (the default full head) the photo is also baked into a skin
    texture in that layout (``texture_size`` pixels high; 0 skips it); the unseen side is filled
    from the mirror image, then from the fitted colours."""
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    progress.update("reading photo", 0.0)
    image = load_image(image_path)
    progress.update("loading model", 0.03)
    mm = load_model(model)
    progress.update("detecting face", 0.08)
    det = detect_landmarks(image, source=Path(image_path).name, face=face)
    t1 = time.perf_counter()
    layer = mm.layer(dev)
    # with the shading stage after it, the photometric stage only has to give the light and colours
    # (the shading stage re-solves the geometry), so it runs half its steps, as for several photos
    # (likeness benchmark: 0.69x vs 0.71x the mean face's error with 30 / 15 steps, ~0.8 s less)
    config = config or FitConfig(photo_steps=15)
    fitter = PhotoFitter(layer, config)
    shading = config.symmetric_shading
    focal = exif_focal_px(image_path, image.shape[1], image.shape[0]) if config.exif_focal else None
    fit = fitter.fit(image, det, progress=progress.sub(0.12, 0.8 if shading else 0.97), focal_px=focal)
    if shading:
        fit = refine_shading(layer, fit, image, det, progress)
    # the fit's own evidence: a pose past the landmarks' range, or landmarks the model cannot follow
    late = check_fit(fit.params["rotation"], fit.landmark_error_rel, Path(image_path).name,
                     pose_warned=det.yaw_deg is not None and det.yaw_deg >= WARN_YAW_DEG)
    if late:
        fit.warnings.append(late)
    rig = head_rig_from_fit(mm, fit, name=Path(image_path).stem, image_path=str(Path(image_path).resolve()))
    bake = None
    t2 = time.perf_counter()
    if texture_size and skin_uv(mm) is not None:
        progress.update("baking the texture", 0.97)
        bake = bake_fit_texture(mm, fit, image, det.points, texture_size, dev)
    progress.update("done", 1.0)
    return PhotoReconstruction(fit=fit, rig=rig, model=mm, image=image, image_path=str(image_path),
                               warnings=list(fit.warnings),
                               timings={"detect_s": t1 - t0, **fit.timings, "texture_s": time.perf_counter() - t2,
                                        "total_s": time.perf_counter() - t0},
                               texture=None if bake is None else bake.texture, bake=bake,
                               face_index=det.face_index, face_boxes=list(det.face_boxes), exif_focal_px=focal)


def refine_shading(layer, fit: PhotoFit, image: np.ndarray, det, progress) -> PhotoFit:
    """The shape refined on the photo's shading with a mirror-symmetric skin colour (the fit itself
    when the model is not symmetric); the outline of the person mask joins in where there is one."""
    from ..fit.photo_consistency import refine_photo_fit, single_photo_applies
    from ..fit.silhouette import person_mask

    if not single_photo_applies(layer):
        return fit
    t = time.perf_counter()
    progress.update("fitting the shape to the shading", 0.8)
    out = refine_photo_fit(layer, fit, image, det, mask=person_mask(image))
    out.timings = dict(fit.timings, shading_s=time.perf_counter() - t)
    out.timings["total_s"] = fit.timings.get("total_s", 0.0) + out.timings["shading_s"]
    return out


def fill_albedo(model: MorphableModel, fitted: np.ndarray) -> np.ndarray:
    """Colours for texels no photo shows well: one flat skin colour (the bake tones it to the photo's
    median skin), so scalp and neck continue the face without seams. Neither the fitted per-vertex
    albedo (near the face's edge it has absorbed hair and shadow) nor a model's mean albedo (its
    features would sit where the photo's do not) is smeared there."""
    skin = model.skin_vertex_mask()
    return np.tile(np.median(np.asarray(fitted)[skin], 0), (model.n_vertices, 1)).astype(np.float32)


def bake_fit_texture(model: MorphableModel, fit: PhotoFit, image: np.ndarray, landmarks_px: np.ndarray, size: int,
                     device="cpu"):
    """One photo's colours, de-lit by the fitted light, baked into the model's skin UVs."""
    from ..fit.photometric import skin_weight
    from ..texture import bake_texture
    from .photos import is_symmetric

    faces_idx, uv, tiles = skin_uv(model)
    P = fit.params
    view = dict(image=image, vertices_camera=fit.vertices_camera, focal=float(P["focal"]), cx=float(P["cx"]),
                cy=float(P["cy"]), sh=P["sh"], weight=1.0,
                mask=skin_weight(image, landmarks_px))
    return bake_texture(model.faces[faces_idx], uv, [view], fill_albedo(model, fit.vertex_albedo), size=size,
                        symmetric=is_symmetric(model), model_vertices=model.v_template, device=device, tiles=tiles)


def head_rig_from_fit(model: MorphableModel, fit: PhotoFit, name="head", image_path=None) -> HeadRig:
    """The fitted identity as the mesh, expression components as shape keys at their fitted values."""
    P = fit.params
    key_names, deltas, values = expression_shape_keys(model, P["expr"])
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
                   shape_key_names=key_names, shape_key_deltas=deltas, shape_key_values=values,
                   vertex_colors=fit.vertex_albedo.astype(np.float32), uv=model.uv, bones=bones, camera=camera,
                   topology=model_topology(model),
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
        "focal_length_from": "EXIF (FocalLengthIn35mmFilm), held" if rec.exif_focal_px else "fitted",
        "landmark_error_px": round(fit.landmark_error_px, 3),
        "landmark_error_relative": round(fit.landmark_error_rel, 5),
        "photometric_error": None if fit.photometric_error is None else round(fit.photometric_error, 5),
        "timings_s": {k: round(v, 3) for k, v in rec.timings.items()},
        "warnings": rec.warnings,
        "face": {"index": rec.face_index, "count": len(rec.face_boxes), "order": "left to right, from 0",
                 "boxes": [[round(float(v), 1) for v in b] for b in rec.face_boxes]},
        "conventions": "model space: metres, y up, +z out of the face; camera: OpenCV (x right, y down, z forward); "
                       "rotation/translation map model to camera",
    }


def save_outputs(rec: PhotoReconstruction, out_dir) -> dict:
    """params.json and overlay.png for a reconstruction, and faces.png (every face found, numbered
    for ``face=N``) when the photo has several. Never overwrites anything but these."""
    import cv2

    from ..detect.faces import draw_face_numbers
    from ..fit.overlay import draw_overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params_path = out / "params.json"
    params_path.write_text(json.dumps(fit_params_json(rec), indent=1))
    overlay = draw_overlay(rec.image, rec.fit, rec.model.faces)
    overlay_path = out / "overlay.png"
    cv2.imwrite(str(overlay_path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    paths = {"params": str(params_path), "overlay": str(overlay_path)}
    if len(rec.face_boxes) > 1:
        faces_path = out / "faces.png"
        numbered = draw_face_numbers(rec.image, rec.face_boxes, rec.face_index)
        cv2.imwrite(str(faces_path), cv2.cvtColor(numbered, cv2.COLOR_RGB2BGR))
        paths["faces"] = str(faces_path)
    return paths
