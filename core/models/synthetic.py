"""A FLAME-sized test model derived from the built-in one (no licence-restricted data).

Two midpoint subdivisions of the built-in mesh give ~7k vertices / ~14k triangles (FLAME:
5023 / 9976). Its bases are padded to FLAME's 300 identity + 100 expression components with
smooth low-frequency fields of small variance, and it has FLAME's five joints (root, neck, jaw,
eyes) with jaw skinning weights on the lower face. Benchmarks and tests use it to exercise the
5k-vertex, jointed code paths (LBS, pose correctives, the FLAME .pkl loader) at FLAME's cost.
"""

from __future__ import annotations

import numpy as np

from ..geometry import loop_subdivide
from .morphable import JointRig, MorphableModel


def _smooth_fields(points: np.ndarray, n: int, scale_m: float, rng) -> np.ndarray:
    """n random smooth displacement fields over ``points`` (V, 3) -> (V, 3, n)."""
    c = points - points.mean(0)
    c = c / np.abs(c).max()
    freqs = rng.normal(0, 2.0, (n, 3, 3))
    phases = rng.uniform(0, 2 * np.pi, (n, 3))
    out = np.sin(np.einsum("vd,nkd->vkn", c, freqs) + phases.T[None])
    out -= out.mean(0, keepdims=True)
    return (out * scale_m / np.sqrt((out ** 2).sum((0, 1)) / len(points))).astype(np.float32)


def flame_sized_model(base: MorphableModel, subdivisions: int = 2, n_shape: int = 300, n_expr: int = 100,
                      seed: int = 0) -> MorphableModel:
    rng = np.random.default_rng(seed)
    V0 = base.n_vertices
    attrs = [base.shape_basis.reshape(V0, -1), base.expr_basis.reshape(V0, -1)]
    if base.albedo_mean is not None:
        attrs.append(base.albedo_mean)
    v, f = base.v_template.astype(np.float64), base.faces
    for _ in range(subdivisions):
        v, f, attrs = loop_subdivide(v, f, attrs)
    V = len(v)
    shape = attrs[0].reshape(V, 3, -1)
    expr = attrs[1].reshape(V, 3, -1)
    extra_s = _smooth_fields(v, n_shape - shape.shape[2], 0.0005, rng)     # 0.5 mm RMS each
    extra_e = _smooth_fields(v, n_expr - expr.shape[2], 0.0003, rng)
    shape = np.concatenate([shape, extra_s], 2).astype(np.float32)
    expr = np.concatenate([expr, extra_e], 2).astype(np.float32)

    # FLAME's joints: root, neck, jaw, left eye, right eye (positions from the face's geometry)
    lo, hi = v.min(0), v.max(0)
    mouth_y = float(v[:V0][13, 1]) if V0 > 13 else lo[1] + 0.3 * (hi - lo)[1]
    names = ["root", "neck", "jaw", "eye_L", "eye_R"]
    parents = np.array([-1, 0, 1, 1, 1])
    jaw_w = np.clip((mouth_y - v[:, 1]) / 0.02 + 0.5, 0, 1)                 # lower face follows the jaw
    weights = np.zeros((V, 5), np.float32)
    weights[:, 2] = jaw_w
    weights[:, 1] = 1 - jaw_w
    anchors = {
        0: np.array([0, lo[1], lo[2]]),
        1: np.array([0, lo[1] + 0.1 * (hi - lo)[1], lo[2]]),
        2: np.array([0, mouth_y, lo[2] + 0.25 * (hi - lo)[2]]),
        3: np.array([0.032, lo[1] + 0.62 * (hi - lo)[1], hi[2] - 0.03]),
        4: np.array([-0.032, lo[1] + 0.62 * (hi - lo)[1], hi[2] - 0.03]),
    }
    regressor = np.zeros((5, V), np.float32)
    for j, target in anchors.items():       # each joint = mean of its 8 nearest vertices, like a regressor
        near = np.argsort(((v - target) ** 2).sum(1))[:8]
        regressor[j, near] = 1.0 / 8
    posedirs = np.zeros((36, V, 3), np.float32)   # no correctives learned; keeps FLAME's compute path
    albedo = attrs[2].astype(np.float32) if base.albedo_mean is not None else None
    return MorphableModel(
        name="FLAME-sized synthetic", v_template=v.astype(np.float32), faces=f.astype(np.int64),
        shape_basis=shape, expr_basis=expr, expr_names=[f"exp_{k:03d}" for k in range(n_expr)],
        albedo_mean=albedo, joints=JointRig(names, parents, regressor, weights, posedirs),
        source="core.models.synthetic.flame_sized_model", notes={"derived_from": base.name},
    ).validate()
