"""Helpers shared by the multi-photo likeness tests (outline and colour stages): camera rotations of a
head turned by a yaw, and the shape error the tests bound."""

import numpy as np


def rotation(yaw):
    """Model (y up, z out) -> OpenCV camera, the head turned by ``yaw`` degrees."""
    y = np.radians(yaw)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    return np.diag([1.0, -1.0, -1.0]) @ Ry


def error_mm(model, shape_true, shape_est, idx):
    """Median distance (mm) between two identities' neutral heads over ``idx``, centred (unaligned)."""
    a = model.v_template + model.shape_basis @ shape_est
    b = model.v_template + model.shape_basis @ shape_true
    a, b = a[idx] - a[idx].mean(0), b[idx] - b[idx].mean(0)
    return float(np.median(np.linalg.norm(a - b, axis=1)) * 1000)


def person_and_biased_landmarks(model, seed: int):
    """A random identity (unit-variance coefficients), its neutral vertices, its landmark points, and
    the 3D points a detector would give for it: those of a face 40% of the way from the mean to this
    person, because the detector regresses towards an average face (as mediapipe does on the
    likeness renders)."""
    truth = np.random.default_rng(seed).standard_normal(model.n_shape).astype(np.float32)
    verts = model.v_template + model.shape_basis @ truth
    emb = model.landmarks
    lm = (verts[model.faces[emb.face_index]] * emb.bary[:, :, None]).sum(1)
    pulled = model.v_template + model.shape_basis @ (0.4 * truth)
    lm_det = (pulled[model.faces[emb.face_index]] * emb.bary[:, :, None]).sum(1)
    return truth, verts, lm, lm_det


def detection(model, points3d, R, t, focal: float, size: int):
    """A detection (478 mediapipe points; only the corresponded ones set) of 3D points seen by a
    ``size`` x ``size`` camera at pose (R, t): pixel x, y and mediapipe's relative depth."""
    import types
    idx = model.landmarks.detector_index
    cam = points3d @ R.T + t
    pts = np.zeros((478, 3), np.float32)
    pts[idx, :2] = np.stack([focal * cam[:, 0] / cam[:, 2], focal * cam[:, 1] / cam[:, 2]], 1) + size / 2
    pts[idx, 2] = focal * (cam[:, 2] - cam[:, 2].mean()) / cam[:, 2].mean()
    return types.SimpleNamespace(points=pts, face_size=float(np.ptp(pts[idx, 0])))


def render_view(model, verts, R, t, sh, focal: float, size: int) -> np.ndarray:
    """``verts`` (model space) at pose (R, t) rendered by FaceForge's rasteriser with the model's albedo
    (skin faces) and SH light ``sh`` (9, 3), on a plain blue-grey background: a ``size`` x ``size`` RGB uint8."""
    import torch

    from core.render import render

    albedo = model.albedo_mean if model.albedo_mean is not None else np.full((model.n_vertices, 3), 0.6, np.float32)
    cam = torch.as_tensor((verts @ R.T + t)[None], dtype=torch.float32)
    out = render(cam, model.faces[model.skin_faces()], torch.as_tensor(albedo[None], dtype=torch.float32),
                 torch.as_tensor(sh, dtype=torch.float32)[None], focal, size / 2, size / 2, size, size, backend="torch")
    img = torch.where(out.mask[0, ..., None], out.image[0], torch.tensor([0.35, 0.4, 0.5]))
    return (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
