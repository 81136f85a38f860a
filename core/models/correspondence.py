"""Finding where the face detector's points lie on any model's surface, automatically.

Method (no hand-made embedding file): render the model's neutral template from the front with
skin-like shading, run the same detector the fitter uses on that render, and lift each detected
point onto the surface through the rasterizer's triangle index and barycentric coordinates at
that pixel. Points that fall just off the silhouette are snapped to the nearest covered pixel.
The same procedure applied to the built-in model, whose true correspondence is known (vertex i
is detector point i), gives the self-check error reported by ``correspondence_error_mm``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelFileError, NoFaceError
from .morphable import LandmarkEmbedding, MorphableModel

SKIN = np.array([0.78, 0.60, 0.50], np.float32)


def render_template(model: MorphableModel, size: int = 640, device="cpu", yaw_deg: float = 0.0):
    """Frontal render of the neutral template. Returns (image uint8, fragments, camera dict)."""
    from ..render import render

    v = torch.as_tensor(model.v_template, dtype=torch.float32, device=device)
    lo, hi = v.min(0).values, v.max(0).values
    centre = (lo + hi) / 2
    extent = float((hi - lo)[:2].max())
    yaw = np.radians(yaw_deg)
    # model y-up/z-out -> camera y-down/z-forward, with an optional turn about the vertical axis
    Ry = torch.tensor([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]], dtype=torch.float32, device=device)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], device=device))
    R = flip @ Ry
    focal = 3.0 * size
    dist = focal * extent / (0.8 * size)          # the model spans ~80% of the image
    t = torch.tensor([0.0, 0.0, dist], device=device) - R @ centre
    cam = (v @ R.T + t)[None]
    albedo = model.albedo_mean if model.albedo_mean is not None else np.tile(SKIN, (model.n_vertices, 1))
    albedo = torch.as_tensor(albedo, dtype=torch.float32, device=device)[None]
    sh = torch.zeros(1, 9, 3, device=device)
    sh[:, 0] = 0.75 / 0.886227      # ambient
    sh[:, 2] = -0.35                # light from above (camera y points down)
    sh[:, 3] = 0.0
    sh[:, 1] = 0.0
    out = render(cam, torch.as_tensor(model.faces, device=device), albedo, sh, focal, size / 2, size / 2, size, size)
    grey = torch.tensor([0.35, 0.35, 0.38], device=device)
    img = torch.where(out.mask[..., None], out.image, grey)
    img = (img[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
    return img, out.fragments, {"R": R, "t": t, "focal": focal, "size": size}


def find_landmark_embedding(model: MorphableModel, size: int = 640, device="cpu") -> LandmarkEmbedding:
    """Detector-point -> surface embedding for ``model``; raises ModelFileError if it cannot."""
    from ..detect.landmarks import LandmarkDetector

    img, frags, _ = render_template(model, size, device)
    try:
        with LandmarkDetector(video=False, max_faces=1, min_confidence=0.3) as det:
            found = det.detect(img, source="the model's template render")
    except NoFaceError as exc:
        raise ModelFileError(
            f"Could not find facial landmarks on model '{model.name}': the detector saw no face on a "
            "frontal render of its template. FaceForge expects metres, y up and the face looking "
            "along +z; check the model's axes, or give the landmark embedding in a FaceForge .npz.") from exc
    pix_to_face = frags.pix_to_face[0].cpu().numpy()
    bary = frags.bary[0].detach().cpu().numpy()
    covered = np.argwhere(pix_to_face >= 0)               # (N, 2) rows, cols
    n = found.points.shape[0]
    face_index = np.zeros(n, np.int64)
    bary_out = np.zeros((n, 3), np.float32)
    for i, (x, y) in enumerate(found.points[:, :2]):
        r, c = int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))
        if pix_to_face[r, c] < 0:                          # just off the silhouette: nearest covered pixel
            k = np.argmin((covered[:, 0] - y) ** 2 + (covered[:, 1] - x) ** 2)
            r, c = covered[k]
        face_index[i] = pix_to_face[r, c]
        b = np.clip(bary[r, c], 0, None)
        bary_out[i] = b / max(b.sum(), 1e-8)
    return LandmarkEmbedding(np.arange(n), face_index, bary_out, method="render-detect")


def embedding_points(model: MorphableModel, emb: LandmarkEmbedding, vertices=None) -> np.ndarray:
    v = model.v_template if vertices is None else vertices
    tri = v[model.faces[emb.face_index]]
    return (tri * emb.bary[:, :, None]).sum(1)


def correspondence_error_mm(model: MorphableModel, truth: LandmarkEmbedding, found: LandmarkEmbedding):
    """Mean / median / max distance (mm) between found and true landmark positions, on shared points."""
    common = np.intersect1d(truth.detector_index, found.detector_index)
    if len(common) == 0:
        raise ValueError("no detector points in common")
    ti = {d: i for i, d in enumerate(truth.detector_index)}
    fi = {d: i for i, d in enumerate(found.detector_index)}
    pt = embedding_points(model, truth)[[ti[d] for d in common]]
    pf = embedding_points(model, found)[[fi[d] for d in common]]
    d = np.linalg.norm(pt - pf, axis=1) * 1000
    return {"mean": float(d.mean()), "median": float(np.median(d)), "max": float(d.max()), "n": int(len(d))}
