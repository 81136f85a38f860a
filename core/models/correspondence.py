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
from ..geometry import closest_surface_points
from .morphable import LandmarkEmbedding, MorphableModel

SKIN = np.array([0.78, 0.60, 0.50], np.float32)


def render_template(model: MorphableModel, size: int = 640, device="cpu", yaw_deg: float = 0.0, albedo=None):
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
    if albedo is None:
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


def _lift(model, img, frags, cam, points_px, size):
    """Detected pixels -> 3D model-space points on the rendered surface."""
    pix_to_face = frags.pix_to_face[0].cpu().numpy()
    bary = frags.bary[0].detach().cpu().numpy()
    covered = np.argwhere(pix_to_face >= 0)
    out = np.zeros((len(points_px), 3))
    for i, (x, y) in enumerate(points_px):
        r, c = int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))
        if pix_to_face[r, c] < 0:                          # just off the silhouette: nearest covered pixel
            k = np.argmin((covered[:, 0] - y) ** 2 + (covered[:, 1] - x) ** 2)
            r, c = covered[k]
        b = np.clip(bary[r, c], 0, None)
        b = b / max(b.sum(), 1e-8)
        out[i] = (model.v_template[model.faces[pix_to_face[r, c]]] * b[:, None]).sum(0)
    return out


def find_landmark_embedding(model: MorphableModel, size: int = 640, device="cpu",
                            yaws=(-12.0, 0.0, 12.0)) -> LandmarkEmbedding:
    """Detector-point -> surface embedding for ``model``; raises ModelFileError if it cannot.

    Several slightly turned renders are detected independently; each detection is lifted to
    3D and the per-point median is snapped back onto the surface, which averages out the
    detector's per-image noise."""
    from ..detect.landmarks import N_POINTS, N_SURFACE_POINTS, LandmarkDetector

    n = N_POINTS          # all 478; iris points are kept below only where an eyeball can carry them

    def detect_views(albedo):
        lifted = []
        with LandmarkDetector(video=False, max_faces=1, min_confidence=0.3) as det:
            for yaw in yaws:
                img, frags, cam = render_template(model, size, device, yaw_deg=yaw, albedo=albedo)
                try:
                    found = det.detect(img, source="the model's template render")
                except NoFaceError:
                    continue
                lifted.append(_lift(model, img, frags, cam, found.points[:n, :2], size))
        return lifted

    lifted = detect_views(None)
    if lifted and model.albedo_mean is None:
        # an untextured template has no lips or brows for the detector to see: paint the
        # built-in model's mean colours onto it through the first estimate, and look again
        painted = _transfer_builtin_albedo(model, np.median(np.stack(lifted), 0)[:N_SURFACE_POINTS])
        if painted is not None:
            lifted = detect_views(painted) or lifted
    if not lifted:
        raise ModelFileError(
            f"Could not find facial landmarks on model '{model.name}': the detector saw no face on "
            "renders of its template. FaceForge expects metres, y up and the face looking along +z; "
            "check the model's axes, or give the landmark embedding in a FaceForge .npz.")
    median = np.median(np.stack(lifted), 0)
    face_index, bary, _ = closest_surface_points(median, model.v_template.astype(np.float64), model.faces, 24)
    keep = np.arange(N_SURFACE_POINTS).tolist() + [i for i in range(N_SURFACE_POINTS, n)
                                                    if _on_eyeball(model, face_index[i], bary[i])]
    return LandmarkEmbedding(np.array(keep), face_index[keep], bary[keep], method=f"render-detect x{len(lifted)}")


def _on_eyeball(model: MorphableModel, face: int, bary: np.ndarray) -> bool:
    """An iris point moves with gaze: keep it only where the surface is skinned to an eye joint
    (FLAME's eyeballs), so the tracker can fit eye rotations. On a model without eyeballs it
    would be pinned to the eyelid and fight the expression, so it is left out."""
    if model.joints is None:
        return False
    eyes = [j for j, name in enumerate(model.joints.names) if str(name).lower().startswith("eye")]
    if not eyes:
        return False
    w = (model.joints.weights[model.faces[face]] * bary[:, None]).sum(0)
    return float(w[eyes].sum()) > 0.5


def _transfer_builtin_albedo(model: MorphableModel, landmarks_3d: np.ndarray):
    """Per-vertex colours for ``model``: inverse-distance blend of the built-in model's mean
    albedo at the 4 nearest estimated landmarks (built-in vertex i is detector point i)."""
    from .builtin import load_builtin

    try:
        colours = load_builtin().albedo_mean[: len(landmarks_3d)]
    except Exception:   # a missing built-in model only costs this refinement
        return None
    v = model.v_template.astype(np.float64)
    d2 = ((v[:, None, :] - landmarks_3d[None]) ** 2).sum(-1)          # (V, L)
    near = np.argsort(d2, 1)[:, :4]
    w = 1.0 / (np.take_along_axis(d2, near, 1) + 1e-6)
    out = (colours[near] * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    # far from the face (scalp, neck, back of the head) fade to plain skin
    far = np.sqrt(d2.min(1))
    fade = np.clip((far - 0.01) / 0.02, 0, 1)[:, None]
    return (out * (1 - fade) + SKIN * fade).astype(np.float32)


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
    from ..detect.landmarks import landmark_regions
    inner = ~np.isin(common, landmark_regions()["face_oval"])
    return {"mean": float(d.mean()), "median": float(np.median(d)), "max": float(d.max()), "n": int(len(d)),
            "inner_mean": float(d[inner].mean()), "contour_mean": float(d[~inner].mean())}
