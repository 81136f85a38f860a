"""Several photos of one person -> one identity, a baked albedo texture, a camera per photo."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..detect import detect_landmarks, load_image
from ..detect.images import exif_focal_px
from ..device import resolve_device
from ..jobs import ensure_progress
from ..models import MorphableModel, load_model
from ..rig import BoneSpec, CameraSpec, HeadRig
from ..rig.model_rig import expression_shape_keys, model_topology, skin_uv


@dataclass
class MultiPhotoReconstruction:
    multi: "object"                  # core.fit.multi_fit.MultiPhotoFit
    rig: HeadRig
    model: MorphableModel
    texture: np.ndarray              # (S, S, 3) uint8 albedo
    bake: "object"                   # core.texture.BakeResult
    uv: np.ndarray                   # (F_b, 3, 2) corner UVs of the baked triangles (bake_faces)
    images: list
    image_paths: list
    primary: int                     # the photo whose camera is the scene camera
    bake_faces: np.ndarray = None    # (F_b, 3) the triangles the texture covers (the model's skin)
    uv_tiles: int = 1                # the texture spans u in [0, uv_tiles)
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def photo_paths(inputs) -> list:
    """Files and folders -> sorted list of image files (a folder contributes its images)."""
    from ..detect.images import SUPPORTED_SUFFIXES
    from ..errors import InputError

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


def reconstruct_photos(inputs, model=None, device="auto", progress=None, texture_size: int = 1024,
                       config=None) -> MultiPhotoReconstruction:
    """Photos of one person (files or a folder) -> one identity, textured head, a camera per photo."""
    from ..fit.multi_fit import fit_photos
    from ..fit.photometric import skin_weight
    from .photo import fill_albedo
    from ..texture import bake_texture, cylindrical_uv

    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    paths = photo_paths(inputs)
    mm = load_model(model)
    use_exif = config is None or config.photo.exif_focal
    images, dets, names, focals = [], [], [], []
    for i, path in enumerate(paths):
        progress.update(f"reading and detecting {Path(path).name}", 0.1 * i / len(paths))
        img = load_image(path)
        images.append(img)
        dets.append(detect_landmarks(img, source=Path(path).name))
        names.append(Path(path).name)
        focals.append(exif_focal_px(path, img.shape[1], img.shape[0]) if use_exif else None)
    layer = mm.layer(dev)
    multi = fit_photos(images, dets, layer, config, progress.sub(0.1, 0.8), names=names, focal_px=focals)
    progress.update("baking the texture", 0.8)
    import torch
    views, cams = [], []
    with torch.no_grad():
        shape = torch.as_tensor(multi.shape[None], device=dev)
        for img, det, v, q, path in zip(images, dets, multi.views, multi.quality, paths):
            joint = torch.as_tensor(v["joint_pose"][None], device=dev) if mm.joints is not None else None
            verts = layer(shape, torch.as_tensor(v["expr"][None], device=dev), joint)[0].cpu().numpy()
            cam_v = verts @ v["R"].T + v["t"]
            views.append(dict(image=img, vertices_camera=cam_v, focal=v["focal"], cx=v["cx"], cy=v["cy"],
                              sh=v["sh"], weight=1.0 / q.noise_scale ** 2,
                              mask=skin_weight(img, det.points)))
            H, W = v["image_size"]
            cams.append(CameraSpec(focal_px=v["focal"], width=W, height=H, rotation=v["R"].astype(np.float64),
                                   translation=v["t"].astype(np.float64), cx=v["cx"], cy=v["cy"],
                                   image_path=str(Path(path).resolve())))
    fallback = np.mean([f.vertex_albedo for f in multi.fits], 0)
    symmetric = is_symmetric(mm)
    layout = skin_uv(mm)
    if layout is not None:
        # the model's own UV layout (ICT-FaceKit: its skin tiles), so the texture fits its other assets
        bake_faces, uv, tiles = mm.faces[layout[0]], layout[1], layout[2]
    else:
        bake_faces, uv, tiles = mm.faces, cylindrical_uv(mm.v_template, mm.faces), 1
    bake = bake_texture(bake_faces, uv, views, fill_albedo(mm, fallback), size=texture_size, symmetric=symmetric,
                        model_vertices=mm.v_template, device=dev, tiles=tiles)
    primary = int(np.argmin([abs(q.yaw_deg) for q in multi.quality]))     # the most frontal photo
    expr = multi.views[primary]["expr"]
    key_names, key_deltas, values = expression_shape_keys(mm, expr)
    bones = None
    if mm.joints is not None:
        j = mm.joints
        bones = BoneSpec(names=list(j.names), parents=j.parents.copy(),
                         heads=(j.regressor @ multi.vertices_neutral).astype(np.float32),
                         weights=j.weights.astype(np.float32),
                         pose=multi.views[primary]["joint_pose"].astype(np.float32))
    rig = HeadRig(name=Path(paths[primary]).stem + "_multi", vertices=multi.vertices_neutral.astype(np.float32),
                  faces=mm.faces.copy(), shape_key_names=key_names, shape_key_deltas=key_deltas,
                  shape_key_values=values, vertex_colors=fallback.astype(np.float32),
                  uv=uv if layout is None else mm.uv, bones=bones, topology=model_topology(mm),
                  camera=cams[primary], views=[c for i, c in enumerate(cams) if i != primary],
                  metadata={"model": mm.name, "model_source": mm.source, "photos": len(paths)})
    progress.update("done", 1.0)
    return MultiPhotoReconstruction(multi=multi, rig=rig, model=mm, texture=bake.texture, bake=bake, uv=uv,
                                    bake_faces=bake_faces, uv_tiles=tiles,
                                    images=images, image_paths=paths, primary=primary,
                                    warnings=list(multi.warnings),
                                    timings={**multi.timings, "total_s": time.perf_counter() - t0})


def is_symmetric(model: MorphableModel, tol_m: float = 0.002) -> bool:
    """Whether the template is left-right symmetric (mirror hole filling is then safe); remembered on
    the model, since every bake asks."""
    cache = model.__dict__.setdefault("_symmetric", {})
    if tol_m not in cache:
        from scipy.spatial import cKDTree
        v = model.v_template[:: max(1, model.n_vertices // 2000)]        # a subsample is enough
        d, _ = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
        cache[tol_m] = bool(np.median(d) < tol_m)
    return cache[tol_m]


def save_texture(rec, path) -> str:
    """Write a reconstruction's albedo texture (``rec.texture``) as PNG and point its rig at it."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rec.texture, cv2.COLOR_RGB2BGR))
    rec.rig.texture_path = str(path.resolve())
    return str(path)
