"""Shape-key weights that leave FaceForge lie in [0, 1] (core.rig.key_ranges, model_rig.key_values)."""

import numpy as np

from core.models import load_model
from core.rig.key_ranges import needs_split, split_names, split_signed
from core.rig.model_rig import expression_shape_keys, key_values


def test_signed_split_is_exact_and_in_unit_range():
    rng = np.random.default_rng(0)
    w = rng.normal(scale=1.5, size=200)
    w[3] = -0.85
    delta = rng.normal(size=(7, 3))
    s = split_signed(w)
    assert needs_split(w) and s.scale == np.abs(w).max()
    assert s.positive.min() >= 0 and s.negative.min() >= 0 and max(s.positive.max(), s.negative.max()) <= 1 + 1e-12
    # the two keys' offsets add up to the original key's offset on every frame
    recon = s.positive[:, None, None] * (s.scale * delta) + s.negative[:, None, None] * (-s.scale * delta)
    assert np.abs(recon - w[:, None, None] * delta).max() < 1e-12
    assert split_names("jaw") == ("jaw_pos", "jaw_neg")


def test_weights_inside_the_range_are_left_alone():
    assert not needs_split([0.0, 0.3, 1.0])
    assert not needs_split([])
    assert needs_split([0.2, 1.01]) and needs_split([-0.02])
    assert split_signed([0.5, -0.25]).scale == 1.0       # |w| <= 1: offsets keep their size


def test_blendshape_models_key_values_stay_in_their_range():
    ict = load_model("ict")
    assert ict.expr_range == (0.0, 1.0)
    raw = np.linspace(-0.2, 1.3, ict.n_expr).astype(np.float32)
    _, _, values = expression_shape_keys(ict, raw)
    assert values.min() >= 0 and values.max() <= 1 and not needs_split(values)
    pca = load_model("facemask")                         # PCA expressions: values are what was fitted
    assert pca.expr_range is None
    assert np.array_equal(key_values(pca, raw[: pca.n_expr]), raw[: pca.n_expr])
