"""Finding where the face detector's points lie on any model's surface, automatically.

Method (no hand-made embedding file): render the model's neutral template with skin-like
shading from three slightly turned viewpoints, run the same detector the fitter uses on each
render, and lift every detected point onto the surface through the rasterizer's triangle index
and barycentric coordinates at that pixel.

Lifting is onto the outer skin seen first along the ray, never through it: the render used for
lifting holds only the skin triangles (``model.skin_faces()``: eyeballs, teeth and mouth sockets
may help the detector but must not carry landmarks), and a pixel counts only where its nearest
skin triangle faces the camera. A point that falls in an eye or mouth hole (where a full head
shows the inside of its skull, back-facing) or just off the silhouette is snapped to the
nearest such pixel in the image, i.e. onto the rim of the hole. Points whose lifts from the
three views disagree are left out, and the views' disagreement is the self-consistency error
reported in millimetres (``LandmarkEmbedding.error_mm``, per point ``point_error_mm``).

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

# A point is left out when its lifts from the views lie, on average, further from their median
# than this fraction of the outer-eye-corner distance (~9 cm on an adult, so ~9 mm): about the
# height of an open eye, so beyond it the views may have put the point on different features
# (upper vs lower eyelid, inner vs outer lip). Measured spreads of good points: median ~1 mm,
# 90th percentile ~2-3 mm (built-in mask, FLAME-sized mesh, ICT-FaceKit); only face-contour points,
# which slide over the surface as the view turns, come near it. A lift through a hole in one
# view lands a head's depth (~20 cm) away, a spread of ~6 cm.
MAX_SPREAD_EYE_FRACTION = 0.1
OUTER_EYE_CORNERS = (33, 263)


def _camera(model: MorphableModel, size: int, yaw_deg: float, device):
    """A view of the template: camera-space vertices (V, 3), rotation, translation, focal length."""
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
    return v @ R.T + t, R, t, focal


def render_template(model: MorphableModel, size: int = 640, device="cpu", yaw_deg: float = 0.0, albedo=None):
    """Render of the whole neutral template (every part: eyes and teeth help the detector).
    Returns (image uint8, fragments, camera dict)."""
    from ..render import render

    cam, R, t, focal = _camera(model, size, yaw_deg, device)
    if albedo is None:
        albedo = model.albedo_mean if model.albedo_mean is not None else np.tile(SKIN, (model.n_vertices, 1))
    albedo = torch.as_tensor(albedo, dtype=torch.float32, device=device)[None]
    sh = torch.zeros(1, 9, 3, device=device)
    sh[:, 0] = 0.75 / 0.886227      # ambient
    sh[:, 2] = -0.35                # light from above (camera y points down)
    faces = torch.as_tensor(model.faces, device=device)
    out = render(cam[None], faces, albedo, sh, focal, size / 2, size / 2, size, size)
    grey = torch.tensor([0.35, 0.35, 0.38], device=device)
    img = torch.where(out.mask[..., None], out.image, grey)
    img = (img[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
    return img, out.fragments, {"R": R, "t": t, "focal": focal, "size": size, "verts": cam}


def _skin_surface(model: MorphableModel, skin: np.ndarray, cam: dict):
    """Per pixel of a view: the skin triangle seen first (index into ``model.faces``, -1 where no
    skin is seen), its barycentrics, and whether it may carry a landmark (it faces the camera)."""
    from ..render import rasterize

    verts, size = cam["verts"], cam["size"]
    faces = torch.as_tensor(model.faces[skin], device=verts.device)
    frags = rasterize(verts[None], faces, cam["focal"], size / 2, size / 2, size, size)
    local = frags.pix_to_face[0].cpu().numpy()
    tri = np.where(local >= 0, skin[np.maximum(local, 0)], -1)
    corners = verts[faces].detach().cpu().numpy().astype(np.float64)          # (S, 3, 3)
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    facing = (normal * corners[:, 0]).sum(1) < 0                               # normal toward the camera
    seen = local >= 0
    if seen.any() and facing[local[seen]].mean() < 0.5:
        # most skin in view faces the camera on any head, so a model whose triangles are wound
        # clockwise (normals inward) shows up as mostly "back-facing": read its winding reversed
        facing = ~facing
    usable = seen & facing[np.maximum(local, 0)]
    return tri, frags.bary[0].detach().cpu().numpy(), usable


def _lift(model, surface, points_px, size, covered=None):
    """Detected pixels -> 3D model-space points on the front-facing skin seen first.

    A point whose pixel shows no usable skin (off the silhouette, in an eye or mouth hole, on a
    back-facing inner surface) takes the nearest usable pixel in the image: the rim of the hole
    rather than whatever lies behind it. Returns (points (N, 3), in_hole (N,) bool: the pixel was
    covered by the model (``covered``, the full render's mask) but not by usable skin)."""
    tri, bary, usable = surface
    good = np.argwhere(usable)
    out = np.zeros((len(points_px), 3))
    in_hole = np.zeros(len(points_px), bool)
    for i, (x, y) in enumerate(points_px):
        r, c = int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))
        if not usable[r, c]:
            in_hole[i] = covered is not None and bool(covered[r, c])
            k = np.argmin((good[:, 0] - y) ** 2 + (good[:, 1] - x) ** 2)
            r, c = good[k]
        b = np.clip(bary[r, c], 0, None)
        b = b / max(b.sum(), 1e-8)
        out[i] = (model.v_template[model.faces[tri[r, c]]] * b[:, None]).sum(0)
    return out, in_hole


def find_landmark_embedding(model: MorphableModel, size: int = 640, device="cpu",
                            yaws=(-12.0, 0.0, 12.0)) -> LandmarkEmbedding:
    """Detector-point -> skin-surface embedding for ``model``; raises ModelFileError if it cannot.

    Several slightly turned renders are detected independently; each detection is lifted to
    3D and the per-point median is snapped back onto the skin, which averages out the
    detector's per-image noise. Points the views disagree on are left out (see
    MAX_SPREAD_EYE_FRACTION); the agreement of the rest is reported as ``error_mm``."""
    from ..detect.landmarks import N_POINTS, N_SURFACE_POINTS, LandmarkDetector

    n = N_POINTS          # all 478; iris points are kept below only where an eyeball can carry them
    skin = np.asarray(model.skin_faces(), np.int64)
    if len(skin) == 0:
        raise ModelFileError(f"Model '{model.name}' has no skin triangles to put landmarks on.")

    def detect_views(albedo):
        lifted, holes = [], np.zeros(n, bool)
        with LandmarkDetector(video=False, max_faces=1, min_confidence=0.3) as det:
            for yaw in yaws:
                img, frags, cam = render_template(model, size, device, yaw_deg=yaw, albedo=albedo)
                try:
                    found = det.detect(img, source="the model's template render")
                except NoFaceError:
                    continue
                surface = _skin_surface(model, skin, cam)
                if not surface[2].any():          # no front-facing skin in view: nothing to lift onto
                    continue
                pts, in_hole = _lift(model, surface, found.points[:n, :2], size, frags.mask[0].cpu().numpy())
                lifted.append(pts)
                holes |= in_hole
        return lifted, holes

    lifted, holes = detect_views(None)
    if lifted and model.albedo_mean is None:
        # an untextured template has no lips or brows for the detector to see: paint the
        # built-in model's mean colours onto it through the first estimate, and look again
        painted = _transfer_builtin_albedo(model, np.median(np.stack(lifted), 0)[:N_SURFACE_POINTS])
        if painted is not None:
            again = detect_views(painted)
            if again[0]:
                lifted, holes = again
    if not lifted:
        raise ModelFileError(
            f"Could not find facial landmarks on model '{model.name}': the detector saw no face on "
            "renders of its template. FaceForge expects metres, y up and the face looking along +z; "
            "check the model's axes, or give the landmark embedding in a FaceForge .npz.")
    if len(lifted) < 2:
        raise ModelFileError(
            f"Could not check the landmarks found on model '{model.name}': the detector saw a face on "
            f"only one of {len(yaws)} renders of its template turned by {list(yaws)} degrees, so the "
            "views cannot be compared. Check the model's axes (metres, y up, face along +z), or give "
            "the landmark embedding in a FaceForge .npz.")
    views = np.stack(lifted)                                          # (views, n, 3)
    median = np.median(views, 0)
    spread = np.linalg.norm(views - median, axis=2).mean(0)           # (n,) model units
    eyes = float(np.linalg.norm(median[OUTER_EYE_CORNERS[0]] - median[OUTER_EYE_CORNERS[1]]))
    agree = spread <= MAX_SPREAD_EYE_FRACTION * eyes

    v = model.v_template.astype(np.float64)
    local, bary, _ = closest_surface_points(median, v, model.faces[skin], 24)
    face_index = skin[local]
    candidates = list(range(N_SURFACE_POINTS)) + [i for i in range(N_SURFACE_POINTS, n)
                                                   if _on_eyeball(model, face_index[i], bary[i])]
    keep = np.array([i for i in candidates if agree[i]], np.int64)
    if len(keep) == 0:
        raise ModelFileError(
            f"Could not find facial landmarks on model '{model.name}': the {len(lifted)} renders of its "
            "template disagree on every point. Give the landmark embedding in a FaceForge .npz.")
    # metres -> mm (the model convention); error_mm is the views' mean disagreement over kept points
    point_error = (spread[keep] * 1000).astype(np.float32)
    rejected = len(candidates) - len(keep)
    limit_mm = MAX_SPREAD_EYE_FRACTION * eyes * 1000
    method = (f"render-detect x{len(lifted)}, skin-only lift ({int(holes[keep].sum())} kept points moved off "
              f"holes or back faces), {rejected} rejected (views disagree > {limit_mm:.1f} mm)")
    return LandmarkEmbedding(keep, face_index[keep], bary[keep], method=method,
                             error_mm=float(point_error.mean()), point_error_mm=point_error)


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
