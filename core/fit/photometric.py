"""The photometric term shared by the photo fit and the tracker's refinement: a square face
crop of the photo, its skin mask, and the colour + structure losses of a render against it.
Rendering a crop (not the whole photo) keeps the cost independent of the photo's resolution."""

from __future__ import annotations

import numpy as np
import torch

from ..detect.landmarks import landmark_regions
from ..render import render
from . import losses


def face_mask(landmarks_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Skin region from the detections: the face hull minus eyes, brows and the inner mouth."""
    import cv2

    regions = landmark_regions()
    mask = np.zeros((height, width), np.uint8)
    pts = landmarks_px[:468, :2]
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    for key in ("left_eye", "right_eye", "inner_lips", "left_eyebrow", "right_eyebrow"):
        hull = cv2.convexHull(np.round(pts[regions[key]]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 0)
    return mask.astype(np.float32)


def face_hull_weight(landmarks_px: np.ndarray, height: int, width: int, inset: float = 0.06,
                     feather: float = 0.08) -> np.ndarray:
    """(H, W) float in [0, 1]: 1 well inside the detected face's outline, 0 within ``inset`` x the
    face size of it (the outline itself often runs through hair or shadow), fading over ``feather``. Texture baking reads colour only there: outside lie hair, collars,
    hands and background, which the head's geometry alone cannot tell from skin."""
    import cv2

    pts = landmarks_px[:468, :2]
    inside = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(inside, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    size = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    return np.clip((dist - inset * size) / max(feather * size, 1.0), 0.0, 1.0).astype(np.float32)


def skin_weight(image_rgb: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1]: where a photo's colour may go into a skin texture.

    The detected face's outline (``face_hull_weight``) times how skin-like each pixel is: a robust
    colour model (median and spread of chroma and luma) of the face's own skin, so hair falling on
    the forehead, a beard's edge or a hand inside the outline are left to the fill. Eyes, brows and
    lips are kept whatever their colour: they are the person's features."""
    import cv2

    H, W = image_rgb.shape[:2]
    hull = face_hull_weight(landmarks_px, H, W)
    regions = landmark_regions()
    pts = landmarks_px[:468, :2]
    features = np.zeros((H, W), np.uint8)
    for key in ("left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "lips"):
        if key in regions:
            cv2.fillConvexPoly(features, cv2.convexHull(np.round(pts[regions[key]]).astype(np.int32)), 1)
    size = float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))
    k = max(3, int(0.04 * size) | 1)
    features = cv2.dilate(features, np.ones((k, k), np.uint8))
    ycc = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    sample = ycc[(hull > 0.99) & (features == 0)]
    if len(sample) < 50:
        return hull
    med = np.median(sample, 0)
    spread = 1.4826 * np.median(np.abs(sample - med), 0) + np.array([8.0, 3.0, 3.0])   # MAD -> sigma, floors
    z = (ycc - med) / (spread * np.array([3.0, 2.5, 2.5]))    # luma varies with shading: looser
    like = np.exp(-0.5 * (z ** 2).sum(-1))
    # the mouth's opening shows teeth, tongue or darkness, never lip or skin: a smile would bake
    # its teeth into the lips' texels (the lips region above is kept whatever its colour)
    open_mouth = mouth_opening(landmarks_px, H, W, grow=max(1, int(0.01 * size)))
    return (hull * np.maximum(like, features.astype(np.float32)) * (1.0 - open_mouth)).astype(np.float32)


def mouth_opening(landmarks_px: np.ndarray, height: int, width: int, grow: int = 0) -> np.ndarray:
    """(H, W) float 1 inside the inner lip contour (the mouth's opening; empty when closed), grown by
    ``grow`` pixels."""
    import cv2
    inner = landmark_regions()["inner_lips"]          # lower lip corner to corner, then the upper lip
    ring = inner[:11] + inner[11:][::-1]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks_px[ring, :2]).astype(np.int32)], 1)
    if grow > 0 and mask.any():
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return mask.astype(np.float32)


class PhotometricTarget:
    """A photo's face crop as a differentiable rendering target."""

    def __init__(self, image_rgb: np.ndarray, landmarks_px: np.ndarray, bbox, size: int, device):
        import cv2

        H, W = image_rgb.shape[:2]
        x0, y0, x1, y1 = bbox
        side = 1.25 * max(x1 - x0, y1 - y0)
        self.x0 = float((x0 + x1) / 2 - side / 2)
        self.y0 = float((y0 + y1) / 2 - side / 2)
        self.scale = size / side
        self.size = size
        M = np.array([[self.scale, 0, -self.x0 * self.scale], [0, self.scale, -self.y0 * self.scale]], np.float32)
        crop = cv2.warpAffine(image_rgb, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(face_mask(landmarks_px, H, W), M, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        self.image = torch.as_tensor(crop, dtype=torch.float32, device=device)[None] / 255.0
        self.skin = torch.as_tensor((mask > 0.5).astype(np.float32), device=device)[None]

    def mean_colour(self) -> torch.Tensor:
        return (self.image * self.skin[..., None]).sum((1, 2)) / self.skin.sum().clamp_min(1)

    def render(self, cam, faces, albedo, sh, focal, cx, cy):
        s = self.scale
        return render(cam, faces, albedo, sh, focal * s, (cx - self.x0) * s, (cy - self.y0) * s, self.size, self.size)

    def losses(self, cam, faces, albedo, sh, focal, cx, cy):
        """(robust colour loss, gradient structure loss) on the skin pixels the mesh covers."""
        out = self.render(cam, faces, albedo, sh, focal, cx, cy)
        m = self.skin * out.mask.float()
        return losses.photometric_loss(out.image, self.image, m), losses.gradient_loss(out.image, self.image, m)
