"""Octree surface extraction (issue 11 item 3): the same mesh as marching cubes on the dense grid at
the same resolution, for far fewer SDF queries; a feature thinner than a coarse cell is still found
when the band holds (1-Lipschitz SDF, band >= 1) and missed without it; the exact mesh SDF used for
the head case (distance against brute force, sign against the winding number).

The ICT case evaluates the mesh SDF once on the dense grid and serves both extractions from it (a
lookup by grid index), so the file stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.implicit.extract import chamfer_distance, dense_surface, extract_surface, sample_surface
from core.implicit.mesh_sdf import MeshSDF, boundary_loops, close_holes, model_skin_sdf


# ----------------------------------------------------------------------------- analytic SDFs (torch)
def sphere(centre=(0.0, 0.0, 0.0), radius=0.7):
    c = torch.tensor(centre, dtype=torch.float32)
    return lambda p: (p - c).norm(dim=1) - radius


def torus(R=0.6, r=0.18):
    def f(p):
        q = torch.stack([torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - R, p[:, 1]], 1)
        return q.norm(dim=1) - r
    return f


def union(*fns):
    return lambda p: torch.stack([f(p) for f in fns], 0).min(0).values


def head_like():
    """A skull, two ears and a nose: a union of spheres (1-Lipschitz, like any min of SDFs)."""
    return union(sphere((0.0, 0.05, 0.0), 0.55), sphere((-0.58, 0.0, 0.0), 0.12), sphere((0.58, 0.0, 0.0), 0.12),
                 sphere((0.0, -0.05, 0.56), 0.1))


def thin_ring(width=0.012):
    """A sphere and, around it, a ring much thinner than a coarse cell (2 / 16 = 0.125): a hair strand."""
    def ring(p):
        q = torch.stack([torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.8, p[:, 1] - 0.031], 1)
        return q.norm(dim=1) - width
    return union(sphere(radius=0.4), ring)


BOX = ([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0])


def identical(a, b, atol=1e-6) -> bool:
    """The same triangles on the same vertices. Vertex positions may differ by float rounding: torch
    may round an SDF value differently in a batch of another size (seen with torch.stack/min here)."""
    return a[0].shape == b[0].shape and a[1].shape == b[1].shape and np.array_equal(a[1], b[1]) \
        and bool(np.abs(a[0] - b[0]).max(initial=0.0) <= atol)


def signed_volume(v, f) -> float:
    t = v[f].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


# ----------------------------------------------------------------------------- same mesh as dense
@pytest.mark.parametrize("name,fn,res,coarse", [
    ("sphere", sphere(), 128, 16),
    ("torus", torus(), 96, 12),
    ("head_like", head_like(), 128, 32),
])
@pytest.mark.parametrize("band", [1.0, 1.5])
def test_octree_equals_dense(name, fn, res, coarse, band):
    dense = dense_surface(fn, *BOX, res)
    octree = extract_surface(fn, *BOX, res, coarse=coarse, band=band)
    assert len(dense[0]) > 1000
    assert identical(octree, dense), name
    stats = octree[2]
    assert stats["dense_queries"] == (res + 1) ** 3 == dense[2]["queries"]
    assert stats["queries"] < dense[2]["queries"] / 4          # the 256^3 figure is in the benchmark
    assert stats["queries"] == sum(lv["points"] for lv in stats["levels"])


def test_sphere_mesh_is_right_and_outward():
    v, f, stats = extract_surface(sphere(radius=0.7), *BOX, 64, coarse=16)
    r = np.linalg.norm(v, axis=1)
    assert np.abs(r - 0.7).max() < 2.0 / 64 * 0.1          # linear interpolation of an exact SDF
    assert signed_volume(v, f) == pytest.approx(4 / 3 * np.pi * 0.7 ** 3, rel=0.01)  # normals point out
    assert f.dtype == np.int64 and v.dtype == np.float32
    assert [lv["step"] for lv in stats["levels"]] == [4, 2, 1]


def test_resolution_not_a_power_of_two_and_a_box_that_is_not_a_cube():
    fn = head_like()
    lo, hi = [-0.9, -0.8, -1.0], [0.9, 0.75, 0.8]
    dense = dense_surface(fn, lo, hi, 100)
    octree = extract_surface(fn, lo, hi, 100, coarse=16)       # 13 coarse cells of 8: 104 cells, cropped to 100
    assert octree[2]["padded_cells"] == [104, 104, 104]
    assert identical(octree, dense)
    per_axis = extract_surface(fn, lo, hi, (90, 80, 96), coarse=12)
    assert identical(per_axis, dense_surface(fn, lo, hi, (90, 80, 96)))


def test_thin_feature_found_with_the_band_and_missed_without():
    fn = thin_ring()
    dense = dense_surface(fn, *BOX, 128)
    ring = np.abs(np.linalg.norm(dense[0][:, [0, 2]], axis=1) - 0.8) < 0.05
    assert ring.sum() > 500                                   # the dense grid sees the ring
    # with the band (>= the Lipschitz constant 1) the octree finds it: the same mesh
    assert identical(extract_surface(fn, *BOX, 128, coarse=16, band=1.0), dense)
    # refining on sign changes only (band 0) loses it: no coarse corner is inside the ring
    v0, f0, _ = extract_surface(fn, *BOX, 128, coarse=16, band=0.0)
    assert (np.abs(np.linalg.norm(v0[:, [0, 2]], axis=1) - 0.8) < 0.05).sum() == 0
    assert chamfer_distance(v0, dense[0]) > 0.01


def test_empty_and_bad_sdfs():
    v, f, stats = extract_surface(lambda p: p.norm(dim=1) + 1.0, *BOX, 64, coarse=16)
    assert v.shape == (0, 3) and f.shape == (0, 3) and stats["queries"] == 17 ** 3   # nothing refined
    with pytest.raises(ValueError, match="values"):
        extract_surface(lambda p: p[:, 0][:-1], *BOX, 32, coarse=8)
    with pytest.raises(ValueError, match="NaN"):
        extract_surface(lambda p: p[:, 0] * float("nan"), *BOX, 32, coarse=8)
    with pytest.raises(ValueError, match="bounds"):
        extract_surface(sphere(), [0, 0, 0], [1, -1, 1], 32)


def test_chunks_progress_and_no_grad():
    calls, seen = [], []

    def fn(p):
        calls.append(len(p))
        assert not torch.is_grad_enabled()
        return p.norm(dim=1) - 0.7

    v, f, stats = extract_surface(fn, *BOX, 64, coarse=16, chunk=5000,
                                  progress=type("P", (), {"update": lambda self, s, x: seen.append(x),
                                                          "check": lambda self: None})())
    assert max(calls) <= 5000 and sum(calls) == stats["queries"]
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_chamfer_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 3))
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, a + [0.01, 0, 0]) == pytest.approx(0.01, rel=1e-6)
    v, f, _ = extract_surface(sphere(radius=0.5), *BOX, 48, coarse=12)
    v2, f2, _ = extract_surface(sphere(radius=0.52), *BOX, 48, coarse=12)
    assert chamfer_distance(v, v2, f, f2, samples=20000) == pytest.approx(0.02, abs=0.003)
    pts = sample_surface(v, f, 5000)
    assert np.abs(np.linalg.norm(pts, axis=1) - 0.5).max() < 0.01


# ----------------------------------------------------------------------------- the ICT head
def winding_number(tri: np.ndarray, x: np.ndarray) -> float:
    """Generalised winding number of a point (Jacobson et al. 2013): 1 inside a closed surface, 0 outside."""
    a = tri - x
    la = np.linalg.norm(a, axis=-1)
    det = np.einsum("fi,fi->f", a[:, 0], np.cross(a[:, 1], a[:, 2]))
    dot = lambda i, j: np.einsum("fi,fi->f", a[:, i], a[:, j])  # noqa: E731
    den = la[:, 0] * la[:, 1] * la[:, 2] + dot(0, 1) * la[:, 2] + dot(1, 2) * la[:, 0] + dot(2, 0) * la[:, 1]
    return float(np.arctan2(det, den).sum() / (2 * np.pi))


@pytest.fixture(scope="module")
def ict_skin():
    from core.models import load_model
    return load_model(find_landmarks=False)


def test_mesh_sdf_is_exact(ict_skin):
    """Distances equal brute force over every triangle; signs equal the generalised winding number."""
    sdf = model_skin_sdf(ict_skin, truncation=0.03)
    assert not boundary_loops(sdf.faces)
    v, f = sdf.vertices, sdf.faces
    rng = np.random.default_rng(1)
    lo, hi = v.min(0) - 0.04, v.max(0) + 0.04
    pts = np.concatenate([lo + rng.random((80, 3)) * (hi - lo),
                          sample_surface(v, f, 80, seed=2) + rng.normal(scale=0.004, size=(80, 3))])
    d = sdf.signed_distance(pts)
    from core.geometry import closest_points_on_triangles
    tri = v[f]
    brute = np.array([np.linalg.norm(closest_points_on_triangles(np.repeat(x[None], len(tri), 0), tri) - x,
                                     axis=1).min() for x in pts])
    np.testing.assert_allclose(np.abs(d), np.minimum(brute, 0.03), atol=1e-12)
    winding = np.array([winding_number(tri, x) for x in pts])
    assert np.all((winding > 0.5) == (d < 0))
    assert (d < 0).sum() > 20 and (d > 0).sum() > 20
    # the torch interface
    t = sdf(torch.as_tensor(pts[:10], dtype=torch.float32))
    assert t.dtype == torch.float32 and t.shape == (10,)


def test_close_holes_makes_the_skin_watertight(ict_skin):
    f = ict_skin.faces[np.isin(ict_skin.parts.vertex_part[ict_skin.faces], np.nonzero(ict_skin.parts.skin)[0]).all(1)]
    assert len(boundary_loops(f)) == 4                        # neck, mouth, two eyes
    v2, f2 = close_holes(ict_skin.v_template, f)
    assert boundary_loops(f2) == [] and len(v2) == len(ict_skin.v_template) + 4
    with pytest.raises(ValueError, match="closed"):
        MeshSDF(ict_skin.v_template, f)


def test_ict_head_octree_equals_dense(ict_skin):
    """The default model's head at 96^3 (4 mm cells): identical meshes, a fraction of the queries."""
    res, coarse, band = 96, 24, 1.0
    v = ict_skin.v_template.astype(np.float64)
    centre, half = (v.min(0) + v.max(0)) / 2, float((v.max(0) - v.min(0)).max() / 2 + 0.02)
    lo, hi = centre - half, centre + half
    h = (hi - lo) / res
    trunc = 1.05 * band * 0.5 * 4 * float(np.linalg.norm(h))   # what the coarsest level needs
    sdf = model_skin_sdf(ict_skin, truncation=trunc)
    grid = np.stack(np.meshgrid(*[np.arange(res + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    values = sdf.signed_distance(lo + grid * h).reshape((res + 1,) * 3).astype(np.float32)

    def lookup(p):                                            # the exact SDF at grid points, by index
        i = np.rint((p.numpy().astype(np.float64) - lo) / h).astype(np.int64)
        return torch.from_numpy(values[i[:, 0], i[:, 1], i[:, 2]])

    dense = dense_surface(lookup, lo, hi, res)
    octree = extract_surface(lookup, lo, hi, res, coarse=coarse, band=band)
    assert len(dense[0]) > 10000
    assert identical(octree, dense)
    assert octree[2]["query_ratio"] > 8                         # 12.5x here; 256^3: see the benchmark
    diag = np.linalg.norm(dense[0].max(0) - dense[0].min(0))
    assert chamfer_distance(octree[0], dense[0]) <= 0.005 * diag
    # the mesh is the head: every vertex within half a cell's diagonal of the skin surface
    assert np.abs(sdf.signed_distance(dense[0])).max() < 0.5 * np.linalg.norm(h)
