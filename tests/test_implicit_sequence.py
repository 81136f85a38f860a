"""A mesh sequence of one topology as a PCA blendshape basis (issue 11 item 5, the import part):
the worst vertex error stays within the tolerance with few components, the rigid head motion is
carried apart, the error reported is the error reached, and the HeadRig description is the same
animation (its Blender build is tested in test_implicit_sequence_blender.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from core.implicit.sequence import MeshSequenceBasis, compress_sequence, reconstruct, sequence_head_rig


def smooth(rng, T, dims, scale, knots=8):
    k = rng.normal(scale=scale, size=(knots, dims))
    s = np.linspace(0, knots - 1, T)
    return np.stack([np.interp(s, np.arange(knots), k[:, d]) for d in range(dims)], 1)


def rodrigues(aa):
    th = np.linalg.norm(aa)
    if th < 1e-12:
        return np.eye(3)
    k = aa / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


@pytest.fixture(scope="module")
def ict():
    from core.models import load_model
    return load_model(find_landmarks=False)


def expression_clip(model, T=30, seed=0, noise_mm=0.02, motion=False):
    """The default model's head going through smooth random expressions (+ a jaw-like rotation of the
    lower face, which no linear basis holds exactly), vertex noise, optionally moving rigidly."""
    rng = np.random.default_rng(seed)
    v0 = model.v_template.astype(np.float64)
    w = smooth(rng, T, model.n_expr, 0.5)
    frames = v0[None] + np.einsum("vck,tk->tvc", model.expr_basis.astype(np.float64), w)
    lower = np.clip((0.0 - v0[:, 1]) / 0.04, 0.0, 1.0)[:, None]       # below the mouth, fading in
    jaw = 0.25 * (0.5 + 0.5 * np.sin(np.linspace(0, 3 * np.pi, T)))
    pivot = np.array([0.0, 0.02, -0.02])
    for t in range(T):
        Rj = rodrigues(np.array([jaw[t], 0.0, 0.0]))
        frames[t] = frames[t] + lower * ((frames[t] - pivot) @ Rj.T + pivot - frames[t])
    frames += rng.normal(scale=noise_mm * 1e-3, size=frames.shape)
    if not motion:
        return frames, None, None
    aa = smooth(rng, T, 3, 0.3)
    R = np.stack([rodrigues(a) for a in aa])
    tr = smooth(rng, T, 3, 0.05)
    return np.einsum("tij,tvj->tvi", R, frames) + tr[:, None], R, tr


def errors_mm(a, b):
    return np.linalg.norm(a - b, axis=-1) * 1000.0


def test_expression_clip_within_tolerance(ict):
    frames, _, _ = expression_clip(ict)
    b = compress_sequence(frames, max_components=29, tolerance_mm=0.3)
    err = errors_mm(reconstruct(b), frames)
    assert b.error_max_mm <= 0.3
    assert err.max() == pytest.approx(b.error_max_mm, abs=1e-3)          # the error reported is the error
    assert err.mean() == pytest.approx(b.error_mean_mm, abs=1e-3)
    np.testing.assert_allclose(b.frame_error_max_mm, err.max(1), atol=1e-3)
    assert 3 <= b.n_components < 29
    assert b.components.shape == (b.n_components, ict.n_vertices, 3) and b.weights.shape == (30, b.n_components)
    assert np.allclose(np.abs(b.weights).max(0), 1.0) and np.allclose(b.weights.max(0), 1.0)   # sliders in [-1, 1]
    assert b.rotation is None and b.compression_ratio() > 1.5
    # the smallest K: one component fewer misses the tolerance
    fewer = compress_sequence(frames, max_components=b.n_components - 1, tolerance_mm=0.3)
    assert fewer.n_components == b.n_components - 1 and fewer.error_max_mm > 0.3


def test_tighter_tolerance_more_components_and_the_cap_is_reported(ict):
    frames, _, _ = expression_clip(ict, noise_mm=0.0)
    loose = compress_sequence(frames, tolerance_mm=1.0)
    tight = compress_sequence(frames, tolerance_mm=0.05)
    assert loose.n_components < tight.n_components
    assert loose.error_max_mm <= 1.0 and tight.error_max_mm <= 0.05
    capped = compress_sequence(frames, max_components=2, tolerance_mm=0.05)
    assert capped.n_components == 2 and capped.error_max_mm > 0.05       # honest: the cap was hit
    assert capped.error_max_mm == pytest.approx(errors_mm(reconstruct(capped), frames).max(), abs=1e-3)


def test_rigid_motion_is_carried_apart(ict):
    frames, R, tr = expression_clip(ict, seed=3, motion=True)
    b = compress_sequence(frames, max_components=29, tolerance_mm=0.3, rotation=R, translation=tr)
    assert b.error_max_mm <= 0.3
    assert errors_mm(reconstruct(b), frames).max() <= b.error_max_mm + 1e-3
    still, _, _ = expression_clip(ict, seed=3)
    assert b.n_components == compress_sequence(still, max_components=29, tolerance_mm=0.3).n_components
    # without the motion the same clip needs (many) more components for the same tolerance
    assert compress_sequence(frames, max_components=29, tolerance_mm=0.3).n_components > b.n_components


def test_static_and_single_frame_sequences():
    v = np.random.default_rng(0).normal(size=(50, 3))
    b = compress_sequence(np.repeat(v[None], 5, 0))
    assert b.n_components == 0 and b.error_max_mm == 0.0
    np.testing.assert_allclose(reconstruct(b), np.repeat(v[None], 5, 0), atol=1e-6)
    one = compress_sequence(v[None])
    assert one.n_components == 0 and one.n_frames == 1 and one.error_max_mm < 1e-3


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(T, V, 3\)"):
        compress_sequence(np.zeros((4, 10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        compress_sequence(np.full((2, 10, 3), np.nan))
    with pytest.raises(ValueError, match="rotation"):
        compress_sequence(np.zeros((4, 10, 3)), rotation=np.zeros((3, 3, 3)))


def test_head_rig_plays_the_basis(ict):
    frames, R, tr = expression_clip(ict, seed=5, motion=True)
    b = compress_sequence(frames, max_components=29, tolerance_mm=0.3, rotation=R, translation=tr)
    colours = np.random.default_rng(0).random((ict.n_vertices, 3))
    rig = sequence_head_rig(b, ict.faces, name="Implicit", vertex_colors=colours, fps=24.0, frame_start=7)
    K = b.n_components
    assert rig.shape_key_names == [f"pc{k:03d}" for k in range(K)]
    assert rig.shape_key_deltas.shape == (K, ict.n_vertices, 3) and rig.vertex_colors.shape == (ict.n_vertices, 3)
    a = rig.animation
    assert a.n_frames == 30 and a.frame_start == 7 and a.fps == 24.0 and a.joint_pose is None
    assert rig.bones.names == ["root"] and rig.bones.weights.shape == (ict.n_vertices, 1)
    lo, hi = rig.slider_range()
    assert lo <= a.shape_key_values.min() and a.shape_key_values.max() <= hi
    assert rig.metadata["pca"]["components"] == K and rig.metadata["pca"]["error_max_mm"] == b.error_max_mm
    # what the scene builder plays: keys on the rest shape, then the root motion
    for t in (0, 11, 29):
        keyed = rig.vertices + np.tensordot(a.shape_key_values[t], rig.shape_key_deltas, axes=1)
        played = keyed @ a.root_rotation[t].T + a.root_translation[t]
        assert errors_mm(played, frames[t]).max() <= b.error_max_mm + 1e-3
    assert isinstance(b, MeshSequenceBasis)
