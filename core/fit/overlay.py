"""The 'does it fit?' picture: the fitted mesh drawn over the photo, landmarks on top."""

from __future__ import annotations

import numpy as np
import torch


def draw_overlay(image_rgb: np.ndarray, fit, faces: np.ndarray) -> np.ndarray:
    """Shaded fitted mesh blended over the photo, its visible wireframe, and landmarks
    (green: detected, red: model). Returns an RGB uint8 image of the photo's size."""
    import cv2

    from ..render import render

    H, W = image_rgb.shape[:2]
    P = fit.params
    cam = torch.as_tensor(fit.vertices_camera, dtype=torch.float32)[None]
    grey = torch.full((1, cam.shape[1], 3), 0.75)
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 0.7 / 0.886227
    sh[:, 3] = 0.25                      # light from the camera's left
    sh[:, 2] = -0.25
    with torch.no_grad():
        out = render(cam, torch.as_tensor(faces), grey, sh, float(P["focal"]), float(P["cx"]), float(P["cy"]), H, W)
    shaded = (out.image[0].clamp(0, 1).numpy() * 255).astype(np.float32)
    mask = out.mask[0].numpy()
    canvas = image_rgb.astype(np.float32).copy()
    canvas[mask] = 0.45 * canvas[mask] + 0.55 * shaded[mask]
    canvas = canvas.astype(np.uint8)

    # wireframe of visible triangles only (a triangle is visible if it owns some pixel),
    # blended in lightly so the photo stays readable
    visible = np.unique(out.fragments.pix_to_face[0].numpy())
    visible = visible[visible >= 0]
    f = P["focal"]
    v = fit.vertices_camera
    uv = np.stack([f * v[:, 0] / v[:, 2] + P["cx"], f * v[:, 1] / v[:, 2] + P["cy"]], 1)
    wire = canvas.copy()
    polys = [np.round(uv[faces[t]] * 4).astype(np.int32) for t in visible]
    cv2.polylines(wire, polys, True, (255, 255, 255), 1, cv2.LINE_AA, shift=2)
    canvas = cv2.addWeighted(canvas, 0.6, wire, 0.4, 0)
    # landmarks on the facial contours only (all 468 would hide the fit)
    from ..detect.landmarks import landmark_regions
    regions = landmark_regions()
    contour = set()
    for key in ("face_oval", "lips", "left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "nose"):
        contour.update(regions[key])
    keep = [i for i, d in enumerate(fit.landmark_detector_index) if d in contour]
    r = max(1, int(round(max(H, W) / 600)))
    for i in keep:
        x, y = fit.landmarks_detected_px[i]
        cv2.circle(canvas, (int(round(x * 4)), int(round(y * 4))), r * 4, (0, 230, 0), -1, cv2.LINE_AA, shift=2)
    for i in keep:
        x, y = fit.landmarks_model_px[i]
        cv2.circle(canvas, (int(round(x * 4)), int(round(y * 4))), r * 4, (255, 40, 40), -1, cv2.LINE_AA, shift=2)
    return canvas
