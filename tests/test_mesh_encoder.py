"""The MAGE-style mesh encoder (core/stylize/encoder.py): a head mesh of any topology -> model codes.

Ground truth comes from the model itself: random heads (identity ~N(0, 1), sparse expressions) are
re-meshed (``remesh.py``) so every vertex of the new mesh is a known blend of model vertices; the
encoder's codes are decoded with the model and compared with the true head, vertex by vertex (skin and
eyeballs, mm). "Seen" topologies are rebuilt exactly as in training; "unseen" ones are a grid-clustered
remesh (an algorithm never used in training) and a decimation to a size and from a head not in training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceforge.core.errors import FaceForgeError, JobCancelled, ModelFileError
from faceforge.core.models.builtin import load_embedded
from faceforge.core.stylize import remesh
from faceforge.core.stylize.diffusion_net import DiffusionNet, mass_weighted_mean, mesh_operators
from faceforge.core.stylize.encoder import (_loss_vertices, encoder_for, fit_codes_to_mesh, load_encoder,
                                            sample_training_codes, save_encoder, train_encoder)

# bounds (figures measured with the shipped encoder are in weights/mage_encoder_ict.md)
ENCODER_SEEN_MEDIAN_MM = 3.0     # measured 2.0-2.4 mm (10 heads per topology, benchmarks/bench_mesh_encoder.py)
ENCODER_UNSEEN_MEDIAN_MM = 3.0   # measured 2.0-2.7 mm
FIT_MEDIAN_MM = 1.5          # fitted head vs the true head, mesh frame, skin + eyeballs (measured 0.55-1.15)
FIT_SURFACE_MEDIAN_MM = 0.5  # mesh -> fitted head surface (measured 0.13-0.36)


@pytest.fixture(scope="module")
def model():
    return load_embedded("ict")


@pytest.fixture(scope="module")
def encoder(model):
    torch.set_num_threads(1)
    return encoder_for(model)


@pytest.fixture(scope="module")
def skin(model):
    return remesh.parts_topology(model, "skin")


def random_heads(model, n, seed):
    rng = np.random.default_rng(seed)
    s, e = sample_training_codes(model, n, rng)
    V = model.n_vertices
    heads = model.v_template[None] + (np.einsum("vck,nk->nvc", model.shape_basis, s)
                                      + np.einsum("vck,nk->nvc", model.expr_basis, e))
    return s.astype(np.float64), e.astype(np.float64), heads.reshape(n, V, 3)


def decoded(model, s, e):
    return model.v_template + np.einsum("vck,k->vc", model.shape_basis, s) + np.einsum("vck,k->vc", model.expr_basis, e)


def encoder_errors(model, encoder, topo, n=3, seed=0):
    """Per-vertex errors (mm) of the decoded heads, and code errors, over ``n`` random heads on ``topo``."""
    lv = _loss_vertices(model)
    s_true, e_true, heads = random_heads(model, n, seed)
    errs, s_err, e_err = [], [], []
    for i in range(n):
        r = encoder.encode(topo.evaluate(heads[i]), topo.faces)
        s = np.zeros(model.n_shape)
        s[: len(r["shape"])] = r["shape"]
        errs.append(np.linalg.norm(decoded(model, s, r["expr"])[lv] - heads[i][lv], axis=1) * 1000)
        s_err.append(s - s_true[i])
        e_err.append(r["expr"] - e_true[i])
    return np.concatenate(errs), np.array(s_err), np.array(e_err)


def uv_sphere(r=0.1, rings=24, segments=48):
    th = np.linspace(0, np.pi, rings + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(T) * np.cos(P), np.cos(T), np.sin(T) * np.sin(P)], -1).reshape(-1, 3) * r
    v = np.concatenate([[[0, r, 0]], v, [[0, -r, 0]]])
    idx = lambda i, j: 1 + i * segments + (j % segments)  # noqa: E731
    f = [[0, idx(0, j + 1), idx(0, j)] for j in range(segments)]
    for i in range(rings - 2):
        for j in range(segments):
            f += [[idx(i, j), idx(i, j + 1), idx(i + 1, j)], [idx(i, j + 1), idx(i + 1, j + 1), idx(i + 1, j)]]
    last = len(v) - 1
    f += [[last, idx(rings - 2, j), idx(rings - 2, j + 1)] for j in range(segments)]
    return v, np.array(f)


# ----------------------------------------------------------------------------- operators and blocks
def test_operators_of_a_sphere():
    r = 0.1
    v, f = uv_sphere(r)
    ops = mesh_operators(v, f, k_eig=16)
    assert float(ops.mass.sum()) == pytest.approx(4 * np.pi * r * r, rel=0.02)
    assert float(ops.evals[0]) == pytest.approx(0.0, abs=1e-3)
    assert np.allclose(ops.evals[1:4].numpy(), 2 / r ** 2, rtol=0.03)       # l = 1: l(l+1)/r^2
    gram = ops.evecs.T @ (ops.mass[:, None] * ops.evecs)
    assert torch.allclose(gram, torch.eye(16), atol=1e-3)
    # the tangent gradient of f = y (height) has length sin(polar angle) on the unit-speed sphere
    field = torch.tensor(v[:, 1], dtype=torch.float32)
    gx = torch.sparse.mm(ops.grad_x, field[:, None])[:, 0]
    gy = torch.sparse.mm(ops.grad_y, field[:, None])[:, 0]
    want = np.sqrt(np.clip(1 - (v[:, 1] / r) ** 2, 0, 1))
    assert np.median(np.abs(torch.hypot(gx, gy).numpy() - want)) < 0.02


def test_diffusion_net_does_not_care_about_the_triangulation(model, skin):
    torch.manual_seed(0)
    net = DiffusionNet(3, 16, width=32, blocks=2)
    for block in net.blocks:
        block.diffusion.time.data.fill_(0.05)
    g = skin.evaluate(model.v_template)
    out = []
    for n in (600, 1500):
        t = remesh.decimate(skin, n, g)
        v = t.evaluate(model.v_template)
        x = torch.tensor((v - v.mean(0)) / 0.1, dtype=torch.float32)[None]
        ops = mesh_operators(x[0].numpy(), t.faces, 32)
        with torch.no_grad():
            out.append(mass_weighted_mean(net(x, ops), ops)[0])
    rel = float((out[0] - out[1]).norm() / out[0].norm())
    assert rel < 0.05, rel


def test_topology_variants_are_exact_blends_of_the_model(model, skin):
    _, _, heads = random_heads(model, 1, seed=3)
    head = heads[0]
    g = skin.evaluate(model.v_template)
    variants = [remesh.decimate(skin, 700, g), remesh.cluster_remesh(skin, g, 0.01),
                remesh.crop(skin, g, remesh.face_center(model), (0.09, 0.12, 0.1)), remesh.facemask_topology(model)]
    head_skin = skin.evaluate(head)
    for t in variants:
        v = t.evaluate(head)
        d = remesh.project_to_surface(v, head_skin, skin.faces)[2]
        assert d.max() < 1e-6, (t.name, d.max())                  # on the head's own surface, for any head
        tmpl, S, E = t.basis(model)
        assert np.allclose(t.evaluate(model.v_template), tmpl, atol=1e-6)
    fm = remesh.facemask_topology(model)
    assert fm.n_vertices == 468 and fm.info["projection_mm_median"] < 3.0


# ----------------------------------------------------------------------------- the encoder alone
def test_encoder_recovers_codes_on_seen_and_unseen_topologies(model, encoder, skin):
    g = skin.evaluate(model.v_template)
    other = skin.evaluate(remesh.random_head(model, np.random.default_rng(11), expression=False))
    cases = {
        "seen": (remesh.decimate(skin, 900, g), ENCODER_SEEN_MEDIAN_MM),          # = training's skin/dec900
        "unseen grid remesh": (remesh.cluster_remesh(skin, g, 0.008), ENCODER_UNSEEN_MEDIAN_MM),
        "unseen decimation": (remesh.decimate(skin, 1000, other), ENCODER_UNSEEN_MEDIAN_MM),
    }
    for name, (topo, bound) in cases.items():
        err, s_err, e_err = encoder_errors(model, encoder, topo, n=3, seed=5)
        assert np.median(err) < bound, (name, np.median(err))
        assert np.sqrt((s_err[:, :10] ** 2).mean()) < 0.8, (name, s_err[:, :10])   # leading identity codes
        assert np.abs(e_err).mean() < 0.15, name                                     # expression weights (0..1)


def test_encoder_file_round_trip_and_unsafe_files(model, encoder, skin, tmp_path):
    path = save_encoder(encoder, tmp_path / "enc.pt")
    data = torch.load(path, weights_only=True)                 # plain tensors and values only
    assert data["config"]["model_name"] == "ict"
    again = load_encoder(path, model)
    t = remesh.decimate(skin, 500, skin.evaluate(model.v_template))
    v = t.evaluate(model.v_template)
    a, b = encoder.encode(v, t.faces), again.encode(v, t.faces)
    assert np.allclose(a["shape"], b["shape"], atol=1e-5) and np.allclose(a["expr"], b["expr"], atol=1e-5)

    class Sneaky:
        def __reduce__(self):
            return (print, ("this must never run",))
    bad = tmp_path / "bad.pt"
    torch.save({"format": "faceforge-mesh-encoder/1", "config": {}, "state": {}, "x": Sneaky()}, bad)
    with pytest.raises(ModelFileError, match="not a FaceForge mesh encoder"):
        load_encoder(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a file at all")
    with pytest.raises(ModelFileError):
        load_encoder(junk)
    with pytest.raises(ModelFileError, match="No mesh encoder file"):
        load_encoder(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- fitting a mesh
def test_fit_codes_to_a_mesh_of_another_topology(model, encoder, skin):
    s, e, heads = random_heads(model, 1, seed=21)
    g = skin.evaluate(model.v_template)
    topo = remesh.cluster_remesh(skin, g, 0.006)                    # ~4k vertices, never seen in training
    fit = fit_codes_to_mesh(model, topo.evaluate(heads[0]), topo.faces, encoder)
    lv = _loss_vertices(model)
    err = np.linalg.norm(fit.vertices_in_mesh_frame()[lv] - heads[0][lv], axis=1) * 1000
    assert np.median(err) < FIT_MEDIAN_MM, np.median(err)
    assert fit.error_mm["median"] < FIT_SURFACE_MEDIAN_MM, fit.error_mm
    assert fit.error_mm["median"] <= fit.encoder_error_mm["median"]
    assert fit.shape.shape == (model.n_shape,) and fit.expr.shape == (model.n_expr,)
    assert fit.expr.min() >= 0.0 and fit.expr.max() <= 1.0
    assert fit.vertices.shape == (model.n_vertices, 3) and fit.encoded_vertices <= encoder.config.max_vertices
    assert not fit.warnings


def test_bad_meshes_are_refused_clearly(model, encoder, skin):
    t = remesh.decimate(skin, 500, skin.evaluate(model.v_template))
    v, f = t.evaluate(model.v_template), t.faces
    with pytest.raises(FaceForgeError, match="empty"):
        fit_codes_to_mesh(model, np.zeros((0, 3)), np.zeros((0, 3), int), encoder)
    with pytest.raises(FaceForgeError, match="NaN"):
        fit_codes_to_mesh(model, np.where(np.arange(len(v))[:, None] == 3, np.nan, v), f, encoder)
    with pytest.raises(FaceForgeError, match="indices"):
        fit_codes_to_mesh(model, v, f + len(v), encoder)
    flat = v.copy()
    flat[:, 1:] = 0.0                                                  # every triangle collapsed onto a line
    with pytest.raises(FaceForgeError, match="degenerate"):
        fit_codes_to_mesh(model, flat, f, encoder)
    with pytest.raises(FaceForgeError, match="non-manifold"):
        fit_codes_to_mesh(model, v, np.concatenate([f, f[:, ::-1], f[:, [1, 0, 2]]]), encoder)
    with pytest.raises(FaceForgeError, match="far too small"):
        fit_codes_to_mesh(model, v * 0.001, f, encoder)
    with pytest.raises(FaceForgeError, match="far too large.*centimetres"):
        fit_codes_to_mesh(model, v * 100.0, f, encoder)
    with pytest.raises(FaceForgeError, match="too coarse"):
        fit_codes_to_mesh(model, v[:12], np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]), encoder)
    mask = load_embedded("facemask")
    with pytest.raises(ModelFileError, match="trained for the model 'ict'"):
        fit_codes_to_mesh(mask, mask.v_template, mask.faces, encoder)


# ----------------------------------------------------------------------------- slow: wider checks
@pytest.mark.slow
def test_encoder_on_many_topologies(model, encoder, skin):
    """Every kind of variant, seen and unseen, 6 heads each."""
    g = skin.evaluate(model.v_template)
    c = remesh.face_center(model)
    crop = remesh.decimate(skin, 2000, g)
    cases = {
        "seen skin/dec500": (remesh.decimate(skin, 500, g), ENCODER_SEEN_MEDIAN_MM),
        "seen facemask": (remesh.facemask_topology(model), ENCODER_SEEN_MEDIAN_MM + 0.5),
        "unseen grid remesh 12 mm": (remesh.cluster_remesh(skin, g, 0.012), ENCODER_UNSEEN_MEDIAN_MM),
        "unseen face crop": (remesh.crop(crop, crop.evaluate(model.v_template), c, (0.1, 0.13, 0.105)),
                             ENCODER_UNSEEN_MEDIAN_MM + 0.5),
        "unseen subdivided 400": (remesh.subdivide(remesh.decimate(skin, 400, g)), ENCODER_UNSEEN_MEDIAN_MM),
    }
    for name, (topo, bound) in cases.items():
        err, _, _ = encoder_errors(model, encoder, topo, n=6, seed=9)
        assert np.median(err) < bound, (name, np.median(err))


@pytest.mark.slow
def test_fit_on_a_crop_the_face_mask_and_a_misplaced_mesh(model, encoder, skin):
    lv = _loss_vertices(model)
    s, e, heads = random_heads(model, 3, seed=31)
    g = skin.evaluate(model.v_template)
    crop = remesh.crop(skin, g, remesh.face_center(model), (0.1, 0.13, 0.105))
    face = np.zeros(model.n_vertices, bool)
    face[crop.weights.tocoo().col] = True                                 # the region the crop shows
    fm = remesh.facemask_topology(model)
    # a crop: judged on the region it shows
    fit = fit_codes_to_mesh(model, crop.evaluate(heads[0]), crop.faces, encoder)
    err = np.linalg.norm(fit.vertices_in_mesh_frame() - heads[0], axis=1)[face] * 1000
    assert np.median(err) < FIT_MEDIAN_MM, np.median(err)
    # the 468-point face mask: sparse, judged on the face too
    fit = fit_codes_to_mesh(model, fm.evaluate(heads[1]), fm.faces, encoder)
    err = np.linalg.norm(fit.vertices_in_mesh_frame() - heads[1], axis=1)[face] * 1000
    assert np.median(err) < 2 * FIT_MEDIAN_MM, np.median(err)
    # a whole head turned 12 degrees and moved 4 cm: pre-aligned, then fitted
    topo = remesh.decimate(skin, 3000, g)
    angle = np.radians(12.0)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    moved = topo.evaluate(heads[2]) @ R.T + np.array([0.04, -0.01, 0.02])
    fit = fit_codes_to_mesh(model, moved, topo.faces, encoder)
    err = np.linalg.norm(fit.vertices_in_mesh_frame()[lv] - (heads[2][lv] @ R.T + [0.04, -0.01, 0.02]), axis=1) * 1000
    assert np.median(err) < FIT_MEDIAN_MM, np.median(err)
    assert fit.error_mm["median"] < FIT_SURFACE_MEDIAN_MM


@pytest.mark.slow
def test_training_runs_reports_progress_and_cancels(model, skin, tmp_path):
    g = skin.evaluate(model.v_template)
    tops = [remesh.decimate(skin, 300, g), remesh.decimate(skin, 450, g)]
    stages = []

    class Progress:
        def update(self, stage, fraction):
            stages.append((stage, fraction))

        def sub(self, a, b):
            return self

        def check(self):
            pass

    enc, info = train_encoder(model, steps=4, pool_geometries=1, topologies=tops, calibrate_samples=24,
                              progress=Progress(), threads=1)
    assert info["steps"] == 4 and len(info["calibrations"]) == 3 and info["pool_meshes"] == 2   # start, middle, end
    assert any(s.startswith("training step") for s, _ in stages)
    assert load_encoder(save_encoder(enc, tmp_path / "tiny.pt"), model).config.n_expr == model.n_expr
    calls = []
    with pytest.raises(JobCancelled):
        train_encoder(model, steps=50, pool_geometries=1, topologies=tops, calibrate_samples=8, threads=1,
                      cancel=lambda: calls.append(1) or len(calls) > 5)
