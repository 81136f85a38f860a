"""The multi-view colour-consistency stage (core/fit/photo_consistency.py) recovers shape that landmarks miss.

A random identity of the default head (ICT-FaceKit) with the model's albedo is rendered by FaceForge's
own rasteriser from three sides, each under its own SH light; its 'detections' are exact projections
of the landmark points of a face pulled towards the average (as mediapipe's are). From the landmark
solution at the true poses, the colours must recover clearly more of the shape. Measured (this
set-up, matte skin): landmarks 2.46 mm, + colours 1.18 mm (centred, unaligned median over the face part;
1.19 before the colour stage's reordered sums, which change only float rounding).
With two re-estimation rounds per level (before rounds = 3): 1.27 mm; with the tighter robust weights before
robust_scale = 3: 1.40 mm (1.43 before the expression coupling; 1.27
without the specular term, which has nothing to explain here; 1.73 without the mirror-symmetric albedo)."""


import dataclasses

import numpy as np
import pytest
import torch

from core.fit import multi_fit
from core.fit.photo_consistency import (PhotoConsistencyConfig, mirror_partners, photometric_vertices,
                                        refine_photo_consistency, single_photo_applies,
                                        single_photo_config)
from core.fit.silhouette import SilhouetteConfig, refine_silhouette
from core.models import load_model
from tests.likeness_support import detection, error_mm, person_and_biased_landmarks, render_view, rotation


@pytest.fixture(scope="module")
def ict():
    return load_model(None)


def _rendered_person(ict, yaws, seed=5):
    """A random identity rendered by FaceForge's rasteriser from ``yaws`` (each photo its own side
    light), its detector-biased 'detections', and the landmark-only solution at the true poses."""
    truth, verts, lm, lm_det = person_and_biased_landmarks(ict, seed)
    layer = ict.layer("cpu")
    size, f = 320, 600.0
    dets, views, images = [], [], []
    for k, yaw in enumerate(yaws):
        R = rotation(yaw)
        t = np.array([0.0, 0.0, 0.75]) - R @ lm.mean(0)
        sh = torch.zeros(1, 9, 3)
        sh[0, 0] = 1.0                                   # ambient, plus a light from the side and above
        sh[0, 1], sh[0, 2], sh[0, 3] = -0.15, -0.35, 0.2 * (k - 1) if len(yaws) > 1 else 0.3
        images.append(render_view(ict, verts, R, t, sh[0], f, size))
        dets.append(detection(ict, lm_det, R, t, f, size))
        views.append(dict(R=R, t=t, focal=f, cx=size / 2, cy=size / 2, expr=np.zeros(ict.n_expr, np.float32),
                          joint_pose=np.zeros((0, 3), np.float32), sh=sh[0].numpy()))
    zero = np.zeros(ict.n_shape, np.float32)
    lm_only = refine_silhouette(layer, dets, [None] * len(yaws), zero, views, SilhouetteConfig(rounds=2, iters=6))
    start = [dict(v, R=s["R"], t=s["t"], expr=s["expr"]) for v, s in zip(views, lm_only["views"])]
    return truth, layer, images, dets, lm_only, start


def test_colours_recover_more_shape_than_landmarks(ict):
    truth, layer, images, dets, lm_only, start = _rendered_person(ict, (0.0, -35.0, 35.0))
    cfg = PhotoConsistencyConfig(blur_px=(2.0, 1.0), iters=10)
    pc = refine_photo_consistency(layer, images, dets, [None] * 3, lm_only["shape"], start, cfg)
    idx = np.nonzero(ict.parts.vertex_part == ict.parts.names.index("face"))[0]
    e_lm = error_mm(ict, truth, lm_only["shape"], idx)
    e_pc = error_mm(ict, truth, pc["shape"], idx)
    assert len(pc["vertices"]) > 1000 and set(pc["vertices"]) <= set(idx.tolist())
    assert np.isfinite(pc["albedo"]).all() and len(pc["views"]) == 3
    print("photo-consistency test: landmarks %.2f mm, + colours %.2f mm" % (e_lm, e_pc))
    assert e_pc < 0.8 * e_lm, (e_lm, e_pc)


def test_colours_do_not_pile_up_expressions(ict):
    """The person has no expression; without the sparse expression prior (an option, off by default) the
    colours explain what they cannot fit with several blendshapes per photo (the likeness benchmark: 0.5-0.9
    on a face that barely smiles), with it they leave most at zero and the shape no worse."""
    truth, layer, images, dets, lm_only, start = _rendered_person(ict, (0.0, -35.0, 35.0))
    idx = np.nonzero(ict.parts.vertex_part == ict.parts.names.index("face"))[0]
    out = {}
    for l1 in (0.0, 1e3):
        cfg = PhotoConsistencyConfig(blur_px=(2.0, 1.0), iters=10, expr_l1=l1)
        pc = refine_photo_consistency(layer, images, dets, [None] * 3, lm_only["shape"], start, cfg)
        out[l1] = (np.mean([np.abs(v["expr"]).sum() for v in pc["views"]]), error_mm(ict, truth, pc["shape"], idx))
    (e_free, mm_free), (e_l1, mm_l1) = out.values()
    print("expressions: sum |weights| per photo %.2f -> %.2f; shape %.2f -> %.2f mm" % (e_free, e_l1, mm_free, mm_l1))
    assert e_l1 < 0.5 * e_free, out
    assert mm_l1 < 1.1 * mm_free, out


def test_one_photo_mirror_symmetric_albedo_recovers_shape(ict):
    """One photo lit from the side: with one albedo per mirror pair the two halves of the face must be
    explained by the shape (without the pairing a single photo gives no constraint at all). Two people:
    measured 2.53 -> 2.28 mm and 3.10 -> 1.86 mm (centred median over the face part; 2.27 and 1.84 before
    the float-rounding-level changes of the landmark and colour stages' sums)."""
    idx = np.nonzero(ict.parts.vertex_part == ict.parts.names.index("face"))[0]
    before, after = [], []
    for seed in (5, 6):
        truth, layer, images, dets, lm_only, start = _rendered_person(ict, (0.0,), seed)
        e_lm = error_mm(ict, truth, lm_only["shape"], idx)
        sym = refine_photo_consistency(layer, images, dets, [None], lm_only["shape"], start, single_photo_config())
        e_sym = error_mm(ict, truth, sym["shape"], idx)
        print("one photo, person %d: landmarks %.2f mm, mirror-paired colours %.2f" % (seed, e_lm, e_sym))
        assert e_sym < 1.02 * e_lm, (seed, e_lm, e_sym)
        before.append(e_lm)
        after.append(e_sym)
        if seed == 5:
            plain = refine_photo_consistency(layer, images, dets, [None], lm_only["shape"], start,
                                             dataclasses.replace(single_photo_config(), symmetric_albedo=False))
            e_plain = error_mm(ict, truth, plain["shape"], idx)
            assert abs(e_plain - e_lm) < 0.05 * e_lm, (e_lm, e_plain)   # nothing seen twice: landmarks only
    assert sum(after) < 0.85 * sum(before), (before, after)


def test_pose_search_finds_a_mis_turned_head(ict):
    """The detector's points on a turned head describe a less turned face, so a landmark fit can be 10+
    degrees off there (likeness benchmark, -50 degree photos: 8-18 degrees), beyond the reach of the
    continuous refinement. A photo of a head turned 55 degrees is put 10 degrees less turned than it is:
    the colour-matched search before the first blur level must find it again; without it the error stays.
    A photo left under search_min_turn_deg (here the 35-degree one, put at 25) is not searched: nearer
    frontal the landmark pose is the better cue."""
    from scipy.spatial.transform import Rotation

    def error_deg(R, yaw):
        d = R @ rotation(yaw).T
        return float(np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1))))

    cfg = PhotoConsistencyConfig(blur_px=(2.0,), rounds=1, iters=2)
    for yaw, searched in ((55.0, True), (35.0, False)):
        truth, layer, images, dets, lm_only, start = _rendered_person(ict, (0.0, -35.0, yaw))
        verts = layer.shaped(torch.as_tensor(lm_only["shape"][None], dtype=torch.float32))[0].numpy()
        turned = [dict(v) for v in start]
        v = turned[2]
        D = Rotation.from_euler("y", 10.0, degrees=True).as_matrix()        # about the camera's vertical
        centre = (verts @ v["R"].T + v["t"]).mean(0)
        v["R"], v["t"] = D @ v["R"], centre + D @ (v["t"] - centre)
        start_err = error_deg(turned[2]["R"], yaw)
        errors = {}
        for search in (True, False):
            out = refine_photo_consistency(layer, images, dets, [None] * 3, lm_only["shape"], turned,
                                           dataclasses.replace(cfg, pose_search=search))
            errors[search] = error_deg(out["views"][2]["R"], yaw)
        print("pose search, a %d-degree photo: start %.1f deg, with the search %.1f, without %.1f"
              % (yaw, start_err, errors[True], errors[False]))
        assert start_err > 8.0
        if searched:
            assert errors[True] < 4.0 and errors[False] > 6.0, errors
        else:
            assert abs(errors[True] - errors[False]) < 0.5, errors


def _glossy_person(ict, yaws, seed, gloss=1.0, shininess=8.0):
    """A random identity under one white light fixed to the head (front, above, right) with a Phong
    highlight on top of the diffuse shading, rendered by FaceForge's rasteriser from ``yaws``: the
    highlight moves over the skin from photo to photo, which one albedo per vertex cannot explain."""
    from core.render import render
    from core.render.shading import sh_basis, vertex_normals

    truth, verts, lm, lm_det = person_and_biased_landmarks(ict, seed)
    layer = ict.layer("cpu")
    size, f = 320, 600.0
    light = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])
    dirs = torch.nn.functional.normalize(torch.as_tensor(np.random.default_rng(0).normal(size=(4000, 3)),
                                                         dtype=torch.float32), dim=-1)
    flat = torch.zeros(1, 9, 3)
    flat[0, 0] = 1.0 / float(sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))[0, 0])     # irradiance 1 everywhere
    dets, views, images = [], [], []
    for yaw in yaws:
        R = rotation(yaw)
        t = np.array([0.0, 0.0, 0.75]) - R @ lm.mean(0)
        l = torch.as_tensor(R @ light, dtype=torch.float32)
        # the diffuse light: ambient + a clamped cosine along l, as 9 SH coefficients (least squares)
        sh = torch.linalg.lstsq(sh_basis(dirs), (0.35 + 0.65 * (dirs @ l).clamp_min(0))[:, None]).solution
        sh = sh.expand(9, 3).numpy().copy()
        cam = torch.as_tensor((verts @ R.T + t)[None], dtype=torch.float32)
        n = vertex_normals(cam, torch.as_tensor(ict.faces))[0]
        h = torch.nn.functional.normalize(l - torch.nn.functional.normalize(cam[0], dim=-1), dim=-1)
        spec = gloss * (n * h).sum(-1).clamp_min(0) ** shininess
        glint = render(cam, ict.faces[ict.skin_faces()], spec[None, :, None].expand(1, -1, 3).contiguous(), flat,
                       f, size / 2, size / 2, size, size, backend="torch")
        img = render_view(ict, verts, R, t, sh, f, size) / 255.0
        img = img + np.where(glint.mask[0, ..., None].numpy(), glint.image[0].numpy(), 0.0)
        images.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
        dets.append(detection(ict, lm_det, R, t, f, size))
        views.append(dict(R=R, t=t, focal=f, cx=size / 2, cy=size / 2, expr=np.zeros(ict.n_expr, np.float32),
                          joint_pose=np.zeros((0, 3), np.float32), sh=sh))
    zero = np.zeros(ict.n_shape, np.float32)
    lm_only = refine_silhouette(layer, dets, [None] * len(yaws), zero, views, SilhouetteConfig(rounds=2, iters=6))
    start = [dict(v, R=s["R"], t=s["t"], expr=s["expr"]) for v, s in zip(views, lm_only["views"])]
    return truth, layer, images, dets, lm_only, start


def test_specular_term_explains_a_moving_highlight(ict):
    """Glossy skin: each photo's highlight sits on other skin, so a diffuse-only model reads it as shape.
    With the grey specular SH term (a function of the view's mirror direction about the normal) the colour
    stage recovers more of the shape. Measured (two people, three photos): 1.98 -> 1.41 mm, 1.72 -> 1.42 (1.94 ->
    1.33 and 1.73 -> 1.47 before float-rounding-level changes to the landmark and colour stages' sums; 1.61 ->
    1.27 and 1.66 -> 1.42 with two re-estimation rounds per level, before rounds = 3; 1.66 -> 1.27 and 1.67 ->
    1.55 before robust_scale = 3; 1.54 -> 1.22 and 1.65 -> 1.52 before the expression coupling)."""
    idx = np.nonzero(ict.parts.vertex_part == ict.parts.names.index("face"))[0]
    errors = {False: [], True: []}
    for seed in (5, 6):
        truth, layer, images, dets, lm_only, start = _glossy_person(ict, (0.0, -35.0, 35.0), seed)
        for specular in (False, True):
            cfg = PhotoConsistencyConfig(blur_px=(2.0, 1.0), iters=10, specular=specular)
            pc = refine_photo_consistency(layer, images, dets, [None] * 3, lm_only["shape"], start, cfg)
            errors[specular].append(error_mm(ict, truth, pc["shape"], idx))
            if specular:
                assert pc["views"][0]["specular"].shape == (9,)
    print("glossy skin: diffuse-only %s mm, with the specular term %s" % (errors[False], errors[True]))
    assert sum(errors[True]) < 0.93 * sum(errors[False]), errors
    assert all(b < 1.02 * a for a, b in zip(errors[False], errors[True])), errors


def test_light_with_specular_is_recovered_exactly():
    """_light_spec solves the diffuse SH light (9, 3) and the grey specular SH (9,) jointly in closed form."""
    from core.fit.photo_consistency import _light_spec, _reflection_basis
    from core.render.shading import sh_basis

    g = torch.Generator().manual_seed(0)
    p = torch.randn(500, 3, generator=g) * 0.05 + torch.tensor([0.0, 0.0, 0.7])
    nrm = torch.nn.functional.normalize(torch.randn(500, 3, generator=g) - torch.tensor([0.0, 0.0, 2.0]), dim=-1)
    a = torch.rand(500, 3, generator=g) * 0.5 + 0.3
    sh, spec = torch.randn(9, 3, generator=g) * 0.3, torch.randn(9, generator=g) * 0.1
    basis, rbasis = sh_basis(nrm), _reflection_basis(p, nrm)
    c = a * (basis @ sh) + (rbasis @ spec)[:, None]
    sh_fit, spec_fit = _light_spec(c, a, basis, rbasis, torch.ones(500))
    assert torch.allclose(sh_fit, sh, atol=1e-3) and torch.allclose(spec_fit, spec, atol=1e-3)


def test_mirror_partners(ict):
    pv = photometric_vertices(ict.layer("cpu"), 0.015)
    m = mirror_partners(ict, pv)
    assert m is not None and (m[m] == np.arange(len(pv))).all()            # an involution
    v = ict.v_template[pv]
    paired = m != np.arange(len(pv))
    np.testing.assert_allclose(v[m][paired], (v * [-1, 1, 1])[paired], atol=2e-3)
    # its own: the mid-line, and the few whose mirror image lies just outside the region
    assert (~paired).sum() < 0.05 * len(pv) and (np.abs(v[~paired, 0]) < 2e-3).mean() > 0.3
    import types
    shifted = np.where(ict.v_template[:, :1] > 0, 0.01, 0.0) + ict.v_template      # one side moved 1 cm
    assert mirror_partners(types.SimpleNamespace(v_template=shifted), pv) is None
    assert single_photo_applies(ict.layer("cpu")) and not single_photo_applies(load_model("builtin").layer("cpu"))


def test_photometric_vertices_are_face_skin(ict):
    pv = photometric_vertices(ict.layer("cpu"), 0.015)
    face = np.nonzero(ict.parts.vertex_part == ict.parts.names.index("face"))[0]
    assert 3000 < len(pv) < len(face) and np.isin(pv, face).all()


def test_off_keeps_the_shape(monkeypatch):
    """MultiFitConfig(photo_consistency=None): the stage is not run and the outline stage's shape is the result."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from synthetic_faces import random_identity, render_views

    model = load_model("builtin")
    truth = random_identity(model, 0)
    images, dets = render_views(model, truth, [-30, 0, 30], seed=0)

    def must_not_run(*a, **k):
        raise AssertionError("the photo-consistency stage ran although it is off")

    seen = {}
    real_sil = multi_fit.refine_silhouette

    def sil_spy(*a, **k):
        seen["sil"] = real_sil(*a, **k)
        return seen["sil"]

    monkeypatch.setattr(multi_fit, "refine_photo_consistency", must_not_run)
    monkeypatch.setattr(multi_fit, "refine_silhouette", sil_spy)
    cfg = multi_fit.MultiFitConfig(check_people=False, photo_consistency=None)
    r = multi_fit.fit_photos(images, dets, model.layer("cpu"), cfg)
    expected = seen["sil"]["shape"] if "sil" in seen else r.shape_joint
    np.testing.assert_allclose(r.shape, expected, atol=1e-6)
    assert r.timings["photo_consistency_s"] < 0.01
