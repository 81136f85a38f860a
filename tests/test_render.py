"""Differentiable renderer (core.render): coverage, depth, interpolation, gradients, shading, backends."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf

from core.errors import FaceForgeError
from core.render import (BACKGROUND_DEPTH, camera_space, default_sh, interpolate, project, rasterize, render,
                         resolve_backend, sh_basis, sh_shade, soft_silhouette, vertex_normals)
from core.render import pytorch3d_backend
from core.render.shading import A0, A1, A2, BAND_FACTORS, C0, C1, C2

F64 = torch.float64


def uv_sphere(n_lat=6, n_lon=8, radius=1.0, dtype=F64):
    """Closed UV sphere with outward winding normals."""
    verts = [(0.0, -radius, 0.0)]
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon + 0.37 * i      # twist the rings: no edge lines up with pixel rows
            verts.append((radius * math.sin(theta) * math.cos(phi), -radius * math.cos(theta),
                          radius * math.sin(theta) * math.sin(phi)))
    verts.append((0.0, radius, 0.0))
    ring = lambda i, j: 1 + (i - 1) * n_lon + j % n_lon  # noqa: E731
    faces = []
    for j in range(n_lon):
        faces += [(0, ring(1, j), ring(1, j + 1)), (len(verts) - 1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j))]
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [(a, c, b), (b, c, d)]
    verts = torch.tensor(verts, dtype=dtype)
    faces = torch.tensor(faces)
    tri = verts[faces]
    outward = (torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * tri.mean(1)).sum(-1) > 0
    faces[~outward] = faces[~outward][:, [0, 2, 1]]
    return verts, faces


def fibonacci_sphere(n, dtype=F64):
    k = torch.arange(n, dtype=dtype) + 0.5
    z = 1 - 2 * k / n
    r = (1 - z * z).sqrt()
    phi = math.pi * (3 - math.sqrt(5)) * k
    return torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), -1)


def screen_triangle(points_px, z, focal=100.0, cx=0.0, cy=0.0, dtype=F64):
    """Camera-space vertices at depth z that project onto the given pixel positions."""
    uv = torch.tensor(points_px, dtype=dtype)
    z = torch.as_tensor(z, dtype=dtype).expand(uv.shape[0])
    xy = (uv - torch.tensor([cx, cy], dtype=dtype)) * z[:, None] / focal
    return torch.cat((xy, z[:, None]), -1)[None]


# ---------------------------------------------------------------------------------------------
# camera
# ---------------------------------------------------------------------------------------------

def test_project_and_camera_space():
    pts = torch.tensor([[[0.0, 0.0, 2.0], [1.0, -0.5, 2.0]]], dtype=F64)
    uv = project(pts, 100.0, 32.0, 24.0)
    assert torch.allclose(uv, torch.tensor([[[32.0, 24.0], [82.0, -1.0]]], dtype=F64))
    # per-image focal (B,) broadcasts and is differentiable
    focal = torch.tensor([100.0, 200.0], dtype=F64, requires_grad=True)
    uv2 = project(pts.expand(2, -1, -1), focal, 0.0, 0.0)
    assert torch.allclose(uv2[1, 1], torch.tensor([100.0, -50.0], dtype=F64))
    uv2.sum().backward()
    assert torch.allclose(focal.grad, torch.tensor([0.25, 0.25], dtype=F64))
    rot = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=F64)
    out = camera_space(torch.tensor([[[1.0, 0.0, 0.0]]], dtype=F64), rot, torch.tensor([[0.0, 0.0, 5.0]], dtype=F64))
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0, 5.0]]], dtype=F64))


# ---------------------------------------------------------------------------------------------
# hard rasterisation
# ---------------------------------------------------------------------------------------------

def test_triangle_coverage_matches_area_and_background():
    H = W = 64
    pts = [(10.3, 8.7), (54.1, 15.2), (25.6, 57.9)]
    verts = screen_triangle(pts, 2.0)
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), 100.0, 0.0, 0.0, H, W)
    (x0, y0), (x1, y1), (x2, y2) = pts
    area = 0.5 * abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0))
    assert abs(frags.mask.sum().item() - area) < 8           # lattice-point count ~ area
    assert frags.pix_to_face.shape == (1, H, W) and frags.pix_to_face.dtype == torch.long
    bg = ~frags.mask
    assert (frags.pix_to_face[bg] == -1).all()
    assert (frags.bary[bg] == 0).all() and (frags.depth[bg] == BACKGROUND_DEPTH).all()
    inside = frags.mask
    assert torch.allclose(frags.bary[inside].sum(-1), torch.ones((), dtype=F64))
    assert torch.allclose(frags.depth[inside], torch.full((), 2.0, dtype=F64))
    # the pixel centre (j + 0.5, i + 0.5) convention: a pixel whose centre is just inside / outside
    assert frags.mask[0, 30, 30] and not frags.mask[0, 0, 0]


def test_quad_is_exact_and_watertight():
    # axis-aligned square from two triangles; its diagonal passes exactly through pixel centres
    H, W = 40, 50
    corners = [(5.2, 7.8), (35.2, 7.8), (35.2, 37.8), (5.2, 37.8)]   # columns 5..34, rows 8..37
    verts = screen_triangle(corners, 3.0)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(verts, faces, 100.0, 0.0, 0.0, H, W)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[8:38, 5:35] = True
    assert torch.equal(frags.mask[0], expected)
    assert set(frags.pix_to_face[0][expected].unique().tolist()) == {0, 1}


def test_depth_test_picks_the_nearer_triangle_in_any_order():
    H = W = 32
    near = screen_triangle([(2.0, 2.0), (30.0, 4.0), (8.0, 30.0)], 2.0)
    far = screen_triangle([(4.0, 1.0), (31.0, 28.0), (1.0, 25.0)], 5.0)
    verts = torch.cat((near, far), 1)
    for faces, near_id in ((torch.tensor([[0, 1, 2], [3, 4, 5]]), 0), (torch.tensor([[3, 4, 5], [0, 1, 2]]), 1)):
        frags = rasterize(verts, faces, 100.0, 0.0, 0.0, H, W)
        near_mask = rasterize(near, torch.tensor([[0, 1, 2]]), 100.0, 0.0, 0.0, H, W).mask[0]
        far_mask = rasterize(far, torch.tensor([[0, 1, 2]]), 100.0, 0.0, 0.0, H, W).mask[0]
        both = near_mask & far_mask
        only_far = far_mask & ~near_mask
        assert both.sum() > 100
        assert (frags.pix_to_face[0][both] == near_id).all()
        assert (frags.pix_to_face[0][only_far] == 1 - near_id).all()
        assert torch.allclose(frags.depth[0][both], torch.full((), 2.0, dtype=F64))
        assert torch.allclose(frags.depth[0][only_far], torch.full((), 5.0, dtype=F64))


def test_exact_ties_go_to_the_lowest_face_index():
    verts = screen_triangle([(2.0, 2.0), (30.0, 4.0), (8.0, 30.0)], 2.0)
    frags = rasterize(verts, torch.tensor([[0, 1, 2], [0, 1, 2], [2, 0, 1]]), 100.0, 0.0, 0.0, 32, 32)
    assert frags.mask.any() and (frags.pix_to_face[frags.mask] == 0).all()


def test_faces_behind_camera_degenerate_and_offscreen_are_skipped():
    H = W = 32
    tri = screen_triangle([(2.0, 2.0), (30.0, 4.0), (8.0, 30.0)], 2.0)
    behind = tri * torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    crossing = tri.clone()
    crossing[0, 0, 2] = -0.5                      # one vertex behind the camera
    degenerate = screen_triangle([(2.0, 2.0), (10.0, 10.0), (20.0, 20.0)], 2.0)
    offscreen = screen_triangle([(-50.0, -40.0), (-10.0, -45.0), (-30.0, -5.0)], 2.0)
    for verts in (behind, crossing, degenerate, offscreen):
        v = verts.clone().requires_grad_(True)
        out = render(v, torch.tensor([[0, 1, 2]]), torch.full_like(v, 0.5), default_sh(1, dtype=F64),
                     100.0, 0.0, 0.0, H, W, with_silhouette=True)
        assert not out.mask.any()
        (out.image.sum() + out.silhouette.sum()).backward()
        assert torch.isfinite(v.grad).all()
    # no faces at all
    frags = rasterize(tri, torch.zeros(0, 3, dtype=torch.long), 100.0, 0.0, 0.0, H, W)
    assert not frags.mask.any()


def test_backface_culling_uses_the_3d_normal():
    tri = screen_triangle([(2.0, 2.0), (30.0, 4.0), (8.0, 30.0)], 2.0)
    faces = torch.tensor([[0, 1, 2]])
    tri_v = tri[0]
    normal = torch.linalg.cross(tri_v[1] - tri_v[0], tri_v[2] - tri_v[0])
    front = (normal * -tri_v[0]).sum() > 0
    front_faces = faces if front else faces[:, [0, 2, 1]]
    back_faces = front_faces[:, [0, 2, 1]]
    for culled in (False, True):
        assert rasterize(tri, front_faces, 100.0, 0.0, 0.0, 32, 32, cull_backfaces=culled).mask.any()
        assert rasterize(tri, back_faces, 100.0, 0.0, 0.0, 32, 32, cull_backfaces=culled).mask.any() != culled
    sil = soft_silhouette(tri, back_faces, 100.0, 0.0, 0.0, 32, 32, cull_backfaces=True)
    assert sil.max() == 0


def test_interpolation_is_perspective_correct():
    # a tilted quad: interpolating camera-space positions must give points on each pixel's ray
    verts = torch.tensor([[[-1.0, -0.8, 2.0], [1.2, -0.9, 4.0], [1.1, 1.0, 5.0], [-0.9, 0.9, 2.5]]], dtype=F64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    focal, cx, cy, H, W = 40.0, 24.0, 20.0, 40, 48
    frags = rasterize(verts, faces, focal, cx, cy, H, W)
    assert frags.mask.sum() > 300
    pos = interpolate(verts, faces, frags)
    ii, jj = torch.nonzero(frags.mask[0], as_tuple=True)
    centres = torch.stack((jj + 0.5, ii + 0.5), -1).to(F64)
    uv = project(pos[0][ii, jj][None], focal, cx, cy)[0]
    assert (uv - centres).abs().max() < 1e-9
    assert torch.allclose(frags.depth[0][ii, jj], pos[0][ii, jj, 2])
    # any affine function of position is reproduced exactly
    A = torch.randn(3, 4, dtype=F64)
    b = torch.randn(4, dtype=F64)
    vals = interpolate(verts @ A + b, faces, frags)
    assert torch.allclose(vals[0][ii, jj], pos[0][ii, jj] @ A + b, atol=1e-9)
    assert (vals[0][~frags.mask[0]] == 0).all()


# ---------------------------------------------------------------------------------------------
# gradients (float64, central differences)
# ---------------------------------------------------------------------------------------------

def _sphere_scene(seed=0):
    torch.manual_seed(seed)
    verts, faces = uv_sphere()
    verts = verts + 0.05 * torch.randn_like(verts)                # break symmetries
    verts_cam = (verts + torch.tensor([0.1, -0.05, 3.0], dtype=F64))[None]
    return verts_cam, faces


def _fd(fn, x, eps=1e-6):
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        flat[i] = (fn(xp) - fn(xm)) / (2 * eps)
    return grad


def test_image_gradients_match_finite_differences():
    verts, faces = _sphere_scene()
    H = W = 28
    focal0, cx, cy = torch.tensor([22.0], dtype=F64), 14.2, 13.7
    albedo = 0.3 + 0.4 * torch.rand_like(verts)
    sh = default_sh(1, dtype=F64) + 0.2 * torch.randn(1, 9, 3, dtype=F64)
    weights = torch.rand(1, H, W, 3, dtype=F64)
    base = rasterize(verts, faces, focal0, cx, cy, H, W).pix_to_face

    # fixed visible set: pixels whose visible face never changes under the perturbations
    keep = torch.ones_like(base, dtype=torch.bool)
    cache = {}

    def image(v, f):
        out = render(v, faces, albedo, sh, f, cx, cy, H, W)
        return out.image, out.fragments.pix_to_face

    for which, x in (("v", verts), ("f", focal0)):
        for i in range(x.numel()):
            for sign in (1, -1):
                xx = x.clone()
                xx.view(-1)[i] += sign * 1e-6
                img, p2f = image(xx, focal0) if which == "v" else image(verts, xx)
                cache[(which, i, sign)] = img
                keep &= p2f == base
    assert keep.sum() > 200
    mask = (weights * keep[..., None])

    v = verts.clone().requires_grad_(True)
    f = focal0.clone().requires_grad_(True)
    (image(v, f)[0] * mask).sum().backward()
    for which, x, analytic in (("v", verts, v.grad), ("f", focal0, f.grad)):
        fd = torch.zeros_like(x)
        for i in range(x.numel()):
            fd.view(-1)[i] = ((cache[(which, i, 1)] - cache[(which, i, -1)]) * mask).sum() / 2e-6
        rel = (analytic - fd).norm() / fd.norm()
        assert rel < 1e-6, (which, rel.item())


def test_soft_silhouette_gradients_match_finite_differences():
    verts, faces = _sphere_scene(1)
    H = W = 26
    cx, cy = 12.6, 13.3
    weights = torch.rand(1, H, W, dtype=F64)

    def loss(v, f):
        return (soft_silhouette(v, faces, f, cx, cy, H, W, sigma=0.8) * weights).sum()

    focal0 = torch.tensor([18.0], dtype=F64)
    v = verts.clone().requires_grad_(True)
    f = focal0.clone().requires_grad_(True)
    loss(v, f).backward()
    fd_v = _fd(lambda x: loss(x, focal0), verts)
    fd_f = _fd(lambda x: loss(verts, x), focal0)
    assert (v.grad - fd_v).norm() / fd_v.norm() < 1e-6
    assert (f.grad - fd_f).abs() / fd_f.abs() < 1e-6


def _reference_silhouette(v, faces, f, cx, cy, H, W, sigma, cutoff=3.0):
    """All pixels x all faces with autograd: the definition, for small scenes."""
    uv = project(v, f, cx, cy)[0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64) + 0.5, torch.arange(W, dtype=F64) + 0.5, indexing="ij")
    q = torch.stack((xs, ys), -1).reshape(-1, 2)
    log_empty = torch.zeros(H * W, dtype=F64)
    for tri in faces:
        p = uv[tri]
        e1, e2 = p[1] - p[0], p[2] - p[0]
        orient = torch.sign(e1[0] * e2[1] - e1[1] * e2[0]).detach()
        line, seg = [], []
        for k in range(3):
            a, e = p[k], p[(k + 1) % 3] - p[k]
            normal = orient * torch.stack((-e[1], e[0])) / e.norm()
            line.append(((q - a) * normal).sum(-1))
            t = (((q - a) * e).sum(-1) / (e * e).sum()).clamp(0, 1)
            seg.append((q - a - t[:, None] * e).norm(dim=-1))
        s_min = torch.stack(line).min(0).values
        sd = torch.where(s_min >= 0, s_min, -torch.stack(seg).min(0).values)
        log_empty = log_empty + torch.where(sd > -cutoff * sigma, nnf.logsigmoid(-sd / sigma), 0.0)
    return (1 - torch.exp(log_empty)).reshape(1, H, W)


def test_soft_silhouette_matches_its_definition():
    verts = torch.tensor([[[-0.5, -0.4, 2.0], [0.6, -0.5, 2.2], [0.1, 0.5, 1.9], [0.7, 0.6, 2.1]]], dtype=F64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    weights = torch.rand(1, 30, 30, dtype=F64)
    v1 = verts.clone().requires_grad_(True)
    v2 = verts.clone().requires_grad_(True)
    ours = soft_silhouette(v1, faces, 30.0, 15.3, 14.7, 30, 30, sigma=1.3)
    ref = _reference_silhouette(v2, faces, 30.0, 15.3, 14.7, 30, 30, sigma=1.3)
    assert torch.allclose(ours, ref, atol=1e-12)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(v1.grad, v2.grad, rtol=1e-9, atol=1e-9)
    assert 0 <= ours.min() and ours.max() <= 1


def test_silhouette_loss_moves_geometry_toward_the_target():
    verts, faces = _sphere_scene(2)
    H = W = 32
    target = soft_silhouette(verts, faces, 24.0, 16.0, 16.0, H, W).detach()
    shifted = (verts + torch.tensor([0.3, 0.0, 0.0], dtype=F64)).requires_grad_(True)
    loss = ((soft_silhouette(shifted, faces, 24.0, 16.0, 16.0, H, W) - target) ** 2).sum()
    loss.backward()
    assert shifted.grad[..., 0].sum() > 0        # descent moves the mesh back toward -x


# ---------------------------------------------------------------------------------------------
# shading
# ---------------------------------------------------------------------------------------------

def test_sh_basis_orthogonality_and_known_values():
    n = fibonacci_sphere(20000)
    basis = sh_basis(n) / torch.tensor(BAND_FACTORS, dtype=F64)      # the plain orthonormal real SH
    gram = basis.T @ basis * (4 * math.pi / n.shape[0])
    assert torch.allclose(gram, torch.eye(9, dtype=F64), atol=2e-3)
    up_z = sh_basis(torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    expected = torch.zeros(9, dtype=F64)
    expected[0], expected[2], expected[6] = A0 * C0, A1 * C1, A2 * C2 / math.sqrt(3.0)
    assert torch.allclose(up_z, expected)
    x, y = sh_basis(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64))
    linear = torch.tensor(A1 * C1, dtype=F64)
    assert torch.isclose(x[3], linear) and torch.isclose(y[1], linear)
    assert torch.isclose(x[8], torch.tensor(0.5 * A2 * C2, dtype=F64)) and torch.isclose(y[8], -x[8])


def test_default_sh_is_unit_ambient():
    n = fibonacci_sphere(500)[None]
    colour = sh_shade(torch.full_like(n, 0.5), n, default_sh(1, dtype=F64))
    assert torch.allclose(colour, torch.full_like(colour, 0.5))


def test_light_from_plus_z_brightens_surfaces_facing_it():
    n = fibonacci_sphere(2000)[None]
    sh = default_sh(1, dtype=F64)
    sh[:, 2] = 0.6                              # linear band along +z
    shade = sh_shade(torch.ones_like(n), n, sh)[0, :, 0]
    assert shade[n[0, :, 2].argmax()] > shade[n[0, :, 2].argmin()]
    assert torch.corrcoef(torch.stack((shade, n[0, :, 2])))[0, 1] > 0.99

    # rendered: a sphere in front of the camera lit from the camera (-z in OpenCV camera space)
    verts, faces = uv_sphere(16, 24)
    verts_cam = (verts + torch.tensor([0.0, 0.0, 4.0], dtype=F64))[None]
    sh[:, 2] = -0.6
    out = render(verts_cam, faces, torch.full_like(verts_cam, 0.5), sh, 40.0, 20.0, 20.0, 40, 40)
    centre, rim = out.image[0, 20, 20, 0], out.image[0, 20, 10, 0]
    assert out.mask[0, 20, 10] and centre > rim + 0.1


def test_vertex_normals_of_a_sphere_are_radial_and_unit():
    verts, faces = uv_sphere(12, 16)
    normals = vertex_normals(verts[None], faces)[0]
    assert torch.allclose(normals.norm(dim=-1), torch.ones((), dtype=F64))
    assert (normals * nnf.normalize(verts, dim=-1)).sum(-1).min() > 0.97


# ---------------------------------------------------------------------------------------------
# render() and backends
# ---------------------------------------------------------------------------------------------

def test_render_outputs_and_mid_grey():
    verts, faces = uv_sphere(10, 12)
    verts_cam = (verts + torch.tensor([0.0, 0.0, 3.0], dtype=F64))[None]
    out = render(verts_cam, faces, torch.full_like(verts_cam, 0.5), default_sh(1, dtype=F64), 30.0, 16.0, 16.0,
                 32, 32, with_silhouette=True)
    assert out.image.shape == (1, 32, 32, 3) and out.mask.dtype == torch.bool
    assert out.silhouette.shape == (1, 32, 32) and out.normals.shape == verts_cam.shape
    assert torch.allclose(out.image[out.mask], torch.full((), 0.5, dtype=F64))
    assert (out.image[~out.mask] == 0).all()
    assert (out.silhouette[out.mask] > 0.5).all() and out.silhouette[0, 0, 0] < 1e-6


def test_batch_matches_single_renders():
    verts, faces = uv_sphere(8, 10)
    shifts = torch.tensor([[0.2, 0.0, 3.0], [-0.3, 0.1, 4.0]], dtype=F64)
    verts_cam = verts[None] + shifts[:, None]
    albedo = torch.rand_like(verts_cam)
    sh = default_sh(2, dtype=F64) + 0.1 * torch.randn(2, 9, 3, dtype=F64)
    focal = torch.tensor([30.0, 35.0], dtype=F64)
    out = render(verts_cam, faces, albedo, sh, focal, 16.0, 15.0, 30, 32, with_silhouette=True)
    for b in range(2):
        single = render(verts_cam[b:b + 1], faces, albedo[b:b + 1], sh[b:b + 1], focal[b:b + 1], 16.0, 15.0, 30, 32,
                        with_silhouette=True)
        assert torch.equal(out.fragments.pix_to_face[b], single.fragments.pix_to_face[0])
        assert torch.allclose(out.image[b], single.image[0])
        assert torch.allclose(out.silhouette[b], single.silhouette[0])


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("FACEFORGE_RENDER_BACKEND", raising=False)
    assert resolve_backend("auto") == "torch" and resolve_backend("torch") == "torch"
    monkeypatch.setenv("FACEFORGE_RENDER_BACKEND", "pytorch3d")
    assert resolve_backend("auto") == ("pytorch3d" if pytorch3d_backend.available() else "torch")
    with pytest.raises(ValueError):
        resolve_backend("opengl")
    if not pytorch3d_backend.available():
        with pytest.raises(FaceForgeError):
            resolve_backend("pytorch3d")


def test_pytorch3d_backend_agrees_with_torch():
    pytest.importorskip("pytorch3d")
    verts, faces = uv_sphere(16, 20)
    verts_cam = (verts + torch.tensor([0.1, -0.1, 3.0], dtype=F64))[None].float()
    args = (verts_cam, faces, torch.full_like(verts_cam, 0.5), default_sh(1), 40.0, 30.3, 28.7, 60, 64)
    ours = render(*args, backend="torch")
    theirs = render(*args, backend="pytorch3d")
    a, b = ours.fragments, theirs.fragments
    assert (a.mask != b.mask).float().mean() < 0.01
    same = (a.pix_to_face == b.pix_to_face) & a.mask
    assert same.sum() > 0.97 * a.mask.sum()
    assert torch.allclose(a.bary[same], b.bary[same], atol=1e-3)
    assert torch.allclose(a.depth[same], b.depth[same], atol=1e-3)
    assert torch.allclose(ours.image[same], theirs.image[same], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_render_matches_cpu():
    verts, faces = uv_sphere(24, 32)
    verts_cam = (verts + torch.tensor([0.1, -0.1, 3.0], dtype=F64))[None].float()
    albedo = torch.rand_like(verts_cam)
    sh = default_sh(1) + 0.1 * torch.randn(1, 9, 3)
    weights = torch.rand(1, 64, 64, 3)
    results = {}
    for device in ("cpu", "cuda"):
        v = verts_cam.to(device).requires_grad_(True)
        f = torch.tensor([50.0], device=device, requires_grad=True)
        out = render(v, faces.to(device), albedo.to(device), sh.to(device), f, 32.0, 31.0, 64, 64,
                     with_silhouette=True)
        ((out.image * weights.to(device)).sum() + out.silhouette.sum()).backward()
        assert out.image.device.type == device and out.silhouette.device.type == device
        results[device] = [x.detach().cpu() for x in (out.fragments.pix_to_face, out.image, out.silhouette,
                                                      v.grad, f.grad)]
    p2f_cpu, img_cpu, sil_cpu, gv_cpu, gf_cpu = results["cpu"]
    p2f_gpu, img_gpu, sil_gpu, gv_gpu, gf_gpu = results["cuda"]
    same = p2f_cpu == p2f_gpu
    assert same.float().mean() > 0.995
    assert torch.allclose(img_cpu[same], img_gpu[same], atol=1e-4)
    assert torch.allclose(sil_cpu, sil_gpu, atol=1e-4)
    assert (gv_cpu - gv_gpu).norm() / gv_cpu.norm() < 2e-2
    assert torch.allclose(gf_cpu, gf_gpu, rtol=2e-2)


def test_render_package_is_vendorable(repo_root):
    # vendored inside the Blender add-on: relative imports only, and never bpy
    for path in (repo_root / "core" / "render").glob("*.py"):
        text = path.read_text()
        assert "import bpy" not in text and "from core" not in text and "import core" not in text, path
