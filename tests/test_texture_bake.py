"""Texture baking on real and synthetic photos (issue 12 item 16): a smile's teeth stay out of the
lips, and photos with different exposure / white balance blend without a colour seam.

The seam case renders the default head (ICT-FaceKit's UVs) with a uniform skin texture from two
sides, the second photo darker and bluer (another exposure and white balance, which the lighting
fit would not know about), and bakes them back: both cheeks must come out the same colour.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.fit.photometric import mouth_opening, skin_weight
from core.models import load_model
from core.render.shading import default_sh
from core.rig.model_rig import skin_uv
from core.texture.bake import bake_texture, grazing_weight, match_exposure, render_textured

SKIN = np.array([0.78, 0.58, 0.48])
CAST = np.array([0.70, 0.76, 0.92])        # the second photo: darker and bluer


def test_a_smiles_teeth_are_not_skin(astronaut_landmarks):
    """The astronaut smiles with her teeth showing: the mouth's opening gets no texture weight (it got
    full weight before, as part of the lips region kept whatever its colour); the cheeks keep theirs."""
    img, pts = astronaut_landmarks
    H, W = img.shape[:2]
    opening = mouth_opening(pts, H, W) > 0
    assert opening.sum() > 100                                   # the mouth is open in this photo
    assert img[opening].mean() > 140                             # and shows bright teeth
    w = skin_weight(img, pts)
    assert w[opening].max() == 0
    cheek = np.round(pts[[50, 280], :2]).astype(int)             # mediapipe's cheek points
    assert all(w[y, x] > 0.5 for x, y in cheek)


@pytest.fixture(scope="module")
def astronaut_landmarks():
    import skimage.data
    from core.detect.landmarks import LandmarkDetector
    img = skimage.data.astronaut()
    with LandmarkDetector() as det:
        return img, det.detect(img).points


def _yaw(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_photos_of_different_exposure_blend_without_a_seam():
    model = load_model("ict")
    skin_faces, uv, tiles = skin_uv(model)
    faces = model.faces[skin_faces]
    verts = model.v_template.astype(np.float64)
    centre = verts[model.skin_vertex_mask()].mean(0)
    size, H, W, f = 128, 256, 256, 420.0
    texture = np.tile((SKIN * 255).astype(np.uint8), (size, size * tiles, 1))
    sh = default_sh(1)[0].numpy()
    views = []
    for yaw, cast, weight in ((-35, np.ones(3), 1.0), (35, CAST, 0.8)):   # the first photo is the better one
        cam = (verts - centre) @ _yaw(yaw).T * np.array([1, -1, -1]) + np.array([0, 0, 0.55])   # OpenCV axes
        image, _ = render_textured(cam, faces, uv, texture, sh, f, W / 2, H / 2, H, W, tiles=tiles)
        views.append(dict(image=(np.clip(image * cast, 0, 1) * 255).astype(np.uint8), vertices_camera=cam,
                          focal=f, cx=W / 2, cy=H / 2, sh=sh, weight=weight))
    baked = bake_texture(faces, uv, views, np.tile(SKIN, (model.n_vertices, 1)), size=size, symmetric=False,
                         tiles=tiles)
    # texel colour per side of the face, where one photo dominates: the seam is their ratio
    cov = [bake_texture(faces, uv, [v], np.tile(SKIN, (model.n_vertices, 1)), size=size, symmetric=False,
                        tiles=tiles).coverage for v in views]
    tex = baked.texture.astype(np.float64) / 255
    only = [(cov[0] > 0.3) & (cov[1] < 0.02), (cov[1] > 0.3) & (cov[0] < 0.02)]
    assert only[0].sum() > 200 and only[1].sum() > 200
    left, right = (np.median(tex[o], 0) for o in only)
    seam = np.abs(right / left - 1).max()
    assert seam < 0.04, (left, right)              # unmatched, the blue cast shows: 8-30 % per channel
    assert np.abs(left - SKIN).max() < 0.04        # matched to the better photo, whose colour is the truth here


def test_exposure_gains_come_from_shared_texels_only():
    A = torch.full((2, 1000, 3), 0.5)
    A[1] *= torch.tensor([0.5, 0.6, 0.8])
    Wt = torch.ones(2, 1000)
    Wt[0] *= 2                                     # photo 0 is the best seen: the reference
    g = match_exposure(A, Wt)
    assert torch.allclose(g[0], torch.ones(3)) and torch.allclose(g[1], 1 / torch.tensor([0.5, 0.6, 0.8]))
    Wt[1, 100:] = 0                                # only 100 shared texels: too few to judge
    assert torch.allclose(match_exposure(A, Wt)[1], torch.ones(3))


def test_grazing_views_give_no_colour():
    """A pixel seen at more than ~75 degrees smears over many texels (the streaks on cheeks and
    ears): it gives nothing; frontal views count fully, oblique ones as cos squared."""
    cos = torch.tensor([1.0, 0.8, 0.5, 0.4, 0.25, 0.2, 0.05])
    w = grazing_weight(cos)
    assert torch.allclose(w[:3], cos[:3] ** 2) and 0 < w[3] < cos[3] ** 2
    assert (w[4:] == 0).all()
