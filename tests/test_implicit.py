"""The implicit head (core/implicit): NeuS rendering, training with resume, deformation inversion,
and, at small scale, convergence on a synthetic talking head with hair whose geometry is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faceforge.core.errors import FaceForgeError, ModelFileError
from faceforge.core.implicit import render as R
from faceforge.core.implicit.meshing import invert_deformation
from faceforge.core.implicit.model import ImplicitConfig, ImplicitHead
from faceforge.core.implicit.synthetic import make_clip
from faceforge.core.implicit.train import TrainConfig, data_from_synthetic, load_checkpoint, train
from faceforge.core.models.builtin import load_embedded


@pytest.fixture(scope="module")
def ict():
    return load_embedded("ict")


class SphereHead(torch.nn.Module):
    """An analytic sphere standing in for the networks, to check the renderer against geometry."""

    def __init__(self, radius=0.1):
        super().__init__()
        self.radius = radius
        self.log_inv_s = torch.nn.Parameter(torch.tensor(math.log(2000.0)))

    @property
    def inv_s(self):
        return self.log_inv_s.exp()

    def observed(self, x, frame, expr, with_normals=True):
        s = x.norm(dim=-1) - self.radius
        n = torch.nn.functional.normalize(x, dim=-1)
        return s, torch.zeros(len(x), 1), n, n

    def colour(self, h, n, frame):
        return torch.full((len(h), 3), 0.5)


def test_neus_rendering_finds_a_sphere_where_it_is():
    head = SphereHead()
    box = R.Box(torch.full((3,), -0.2), torch.full((3,), 0.2))
    Rm, t = torch.eye(3), torch.tensor([0.0, 0.0, 1.0])            # camera 1 m in front, looking along +z
    pix = torch.tensor([[50.0, 50.0], [50.0, 59.0], [50.0, 90.0]])  # centre, near the rim, off the sphere
    o, d = R.camera_rays(pix, 100.0, 50.0, 50.0, Rm, t)
    out = R.render_rays(head, o, d, 0, torch.zeros(1), box, n_samples=256, perturb=False)
    assert out.opacity[0] > 0.98 and out.opacity[1] > 0.98 and out.opacity[2] < 0.02
    assert float(out.depth[0]) == pytest.approx(0.9, abs=0.004)        # the sphere's front at z = -0.1
    assert torch.allclose(out.rgb[0], torch.full((3,), 0.5), atol=0.02)
    # the occupancy grid: same picture, far fewer samples through the "networks"
    grid = R.OccupancyGrid(box, 32)
    frac = grid.update(lambda x: x.norm(dim=-1) - 0.1, margin=0.0)
    out2 = R.render_rays(head, o, d, 0, torch.zeros(1), box, n_samples=256, perturb=False, grid=grid)
    assert frac < 0.25 and out2.evaluated < 0.3 * out.evaluated
    assert torch.allclose(out2.opacity, out.opacity, atol=0.02)
    assert float(out2.depth[0]) == pytest.approx(float(out.depth[0]), abs=0.004)


def test_surface_rendering_finds_the_sphere_and_shades_one_point_per_pixel():
    head = SphereHead()
    box = R.Box(torch.full((3,), -0.2), torch.full((3,), 0.2))
    grid = R.OccupancyGrid(box, 32)
    grid.update(lambda x: x.norm(dim=-1) - 0.1, margin=0.0)
    Rm, t = torch.eye(3), torch.tensor([0.0, 0.0, 1.0])
    rgb, alpha, depth = R.render_surface(head, 0, torch.zeros(1), Rm, t, 100.0, 50.0, 50.0, 100, 100, box, grid)
    ys, xs = np.mgrid[0:100, 0:100]
    # the analytic silhouette: rays whose distance from the centre is under the radius (z = 1 m, r = 0.1)
    u, v = (xs + 0.5 - 50) / 100.0, (ys + 0.5 - 50) / 100.0
    disc = (u ** 2 + v ** 2) / (1 + u ** 2 + v ** 2) < 0.1 ** 2
    got = alpha.numpy() > 0.5
    assert (got ^ disc).sum() <= 0.02 * disc.sum()                   # only rim pixels may differ
    dz = 1.0 / math.sqrt(1 + 2 * 0.005 ** 2)                           # pixel (50, 50)'s ray, off-axis by half a pixel
    exact = dz - math.sqrt(dz ** 2 - 1 + 0.1 ** 2)                      # where it meets the sphere
    assert float(depth[50, 50]) == pytest.approx(exact, abs=2e-5)      # secant steps: far under the 6 mm sample spacing
    assert torch.allclose(rgb[50, 50], torch.full((3,), 0.5)) and float(rgb[0, 0].sum()) == 0.0


def test_deformation_inversion_reaches_the_canonical_points(ict):
    torch.manual_seed(0)
    head = ImplicitHead(ImplicitConfig(n_frames=2, n_expr=ict.n_expr, centre=(0, 0, 0), half_size=0.2))
    with torch.no_grad():                      # a deformation of a few millimetres, as expressions give
        head.deform[-1].weight.normal_(0.0, 0.02)
    pts = ict.v_template[::50].astype(np.float32)
    e = np.random.default_rng(0).random(ict.n_expr).astype(np.float32) * 0.5
    x, residual_mm = invert_deformation(head, pts, e, 1, init=pts)
    with torch.no_grad():
        xc, _ = head.deformation(torch.as_tensor(x), torch.as_tensor(e)[None].expand(len(x), -1),
                                 head.latents[1][None].expand(len(x), -1))
    moved = np.linalg.norm(x - pts, axis=1).mean() * 1000
    assert moved > 0.5                                     # the map really moves points
    assert residual_mm < 1e-3 and np.abs(xc.numpy() - pts).max() < 1e-5


def test_training_checkpoints_and_resumes(ict, tmp_path):
    clip = make_clip(ict, n_frames=3, size=24, seed=1)
    data = data_from_synthetic(ict, clip)
    ck = tmp_path / "head.ffimplicit.pt"
    cfg = TrainConfig(steps=4, pretrain_steps=3, rays=64, samples=16, checkpoint_every=2, grid_every=2)
    _, _, _, rep = train(data, cfg, checkpoint=str(ck))
    assert ck.is_file() and load_checkpoint(ck)["step"] == 4 and rep.resumed_from == 0
    cfg.steps = 6
    _, _, _, rep2 = train(data, cfg, checkpoint=str(ck))
    assert rep2.resumed_from == 4 and load_checkpoint(ck)["step"] == 6
    # a checkpoint of another clip is refused; a damaged one says so
    other = data_from_synthetic(ict, make_clip(ict, n_frames=4, size=24, seed=2))
    with pytest.raises(FaceForgeError, match="another clip"):
        train(other, cfg, checkpoint=str(ck))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ModelFileError):
        load_checkpoint(tmp_path / "bad.pt")


def test_preview_renders_any_frame_from_the_checkpoint_alone(ict, tmp_path):
    """Trained on frames 0, 2, 4 of a clip: a Preview of frame 3 (codes interpolated) and of frame 2 comes
    from the checkpoint file alone, in the tracked camera, the head where the person is."""
    from types import SimpleNamespace

    from faceforge.core.pipeline.implicit import clip_record, preview_frame
    clip = make_clip(ict, n_frames=5, size=32, seed=3)
    chosen = np.array([0, 2, 4])
    data = data_from_synthetic(ict, clip)
    for name in ("images", "masks", "rotation", "translation", "expr", "posed"):
        setattr(data, name, getattr(data, name)[chosen])
    track = SimpleNamespace(image_size=(32, 32), rotation=clip.rotation, translation=clip.translation, expr=clip.expr,
                            valid=np.array([1, 1, 1, 0, 1], bool), focal=clip.focal, cx=clip.cx, cy=clip.cy, fps=25.0,
                            frame_start=0, video_path="")
    ck = tmp_path / "clip.ffimplicit.pt"
    cfg = TrainConfig(steps=2, pretrain_steps=120, rays=64, samples=16)
    train(data, cfg, checkpoint=str(ck), clip=clip_record(track, chosen))
    for frame in (2, 3):
        p = preview_frame(ck, frame, width=64)
        assert p.rgb.shape == (64, 64, 3) and p.alpha.shape == (64, 64) and p.composite.shape == (64, 64, 3)
        truth = np.kron(clip.masks[frame], np.ones((2, 2), bool))      # the 32 px mask at 64 px
        a = p.alpha > 0.5
        # where the person is, in the tracked camera: after 120 pretraining steps the surface is a rough
        # bald head, so overlap is partial; its centre must sit on the person's
        assert (a & truth).sum() / (a | truth).sum() > 0.6, frame
        centre = lambda m: np.argwhere(m).mean(0)                  # noqa: E731
        assert np.abs(centre(a) - centre(truth)).max() < 3.0, frame
        assert p.trained_frame == (frame == 2)
    assert "interpolated" in p.note                                 # frame 3 had no face in the track
    with pytest.raises(FaceForgeError, match="outside"):
        preview_frame(ck, 5)
    old = tmp_path / "old.ffimplicit.pt"
    train(data, cfg, checkpoint=str(old))                           # no clip record: cannot preview
    with pytest.raises(FaceForgeError, match="train again"):
        preview_frame(old, 0)


@pytest.mark.slow
def test_training_converges_on_a_synthetic_clip(ict):
    """8 frames at 32 px: training from the morphable head's start must re-render the frames much
    better than the start does (PSNR up by >= 3 dB, the silhouette IoU >= 0.9), the canonical mesh must
    lie within 15 mm (symmetric Chamfer) of the true head with hair, and the whole pipeline gives one
    mesh moved into every frame with the deformation inverted to < 0.05 mm."""
    from faceforge.core.pipeline.implicit import implicit_head_from_data
    clip = make_clip(ict, n_frames=8, size=32, seed=0)
    data = data_from_synthetic(ict, clip)

    def quality(head, box, grid):
        psnr, iou = [], []
        for f in (1, 5):
            rgb, opacity = R.render_image(head, f, torch.as_tensor(data.expr[f]), torch.as_tensor(data.rotation[f]),
                                          torch.as_tensor(data.translation[f]), data.focal, data.cx, data.cy, 32, 32,
                                          box, grid)
            mse = float(((rgb.numpy() - data.images[f]) ** 2).mean())
            psnr.append(10 * math.log10(1.0 / mse))
            a, b = opacity.numpy() > 0.5, data.masks[f] > 0.5
            iou.append((a & b).sum() / max((a | b).sum(), 1))
        return float(np.mean(psnr)), float(np.mean(iou))

    cfg = TrainConfig(steps=0, pretrain_steps=150, rays=384, samples=40)
    start = quality(*train(data, cfg)[:3])
    cfg.steps = 250
    head, box, meshes, report, stats, _ = implicit_head_from_data(data, cfg, resolution=64)
    grid = R.OccupancyGrid(box, 32)
    grid.update(head.canonical_sdf, margin=0.02)
    end = quality(head, box, grid)
    assert end[0] >= start[0] + 3.0 and end[1] >= 0.9, (start, end)
    assert meshes.frames.shape[0] == 8 and meshes.frames.shape[1:] == meshes.canonical.shape
    # the canonical mesh against the true head with its hair (above the box's neck cut): the stated bound
    from scipy.spatial import cKDTree

    from faceforge.core.stylize.surface import sample_surface
    truth = sample_surface(clip.canonical_verts, clip.canonical_faces, 30000, np.random.default_rng(0)) \
        .blend(torch.as_tensor(clip.canonical_verts)).numpy()
    truth = truth[truth[:, 1] > data.neutral[:, 1].min() + 0.012]
    got = meshes.canonical
    chamfer_mm = 500 * (cKDTree(truth).query(got)[0].mean() + cKDTree(got).query(truth)[0].mean())
    assert chamfer_mm < 15.0, chamfer_mm
    assert float(meshes.residual_mm.max()) < 0.05


def test_hash_grid_encoding_is_a_smooth_twice_differentiable_trilinear_blend():
    from faceforge.core.implicit.model import HashGrid
    torch.manual_seed(0)
    enc = HashGrid((0.0, 0.0, 0.0), 0.2, levels=4, features=2, log2_size=10, base=4, finest=64).double()
    with torch.no_grad():
        enc.tables.normal_()
    assert enc.resolutions == [4, 10, 25, 64] and enc.out_dim == 3 + 4 * 2
    x = (torch.rand(6, 3, dtype=torch.float64) - 0.5) * 0.3
    # continuous: no jumps between nearby points (also across cell borders), exact on the raw coordinates
    y = enc(x)
    assert torch.allclose(y[:, :3], x / 0.2) and (enc(x + 1e-7) - y).abs().max() < 1e-3
    # first and second derivatives (the eikonal term needs both) agree with finite differences
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: enc(p).sum(-1), (xg,))
    assert torch.autograd.gradgradcheck(lambda p: enc(p).pow(2).sum(-1), (xg,))
    # coarse levels index densely (no collisions); the finest (65^3 corners > 2^10) hashes into the table
    ijk = torch.tensor([[[3, 2, 1]]])
    assert int(enc._index(ijk, 4)) == (3 * 5 + 2) * 5 + 1 and 0 <= int(enc._index(ijk, 64)) < 2 ** 10


def test_hash_encoded_head_learns_the_morphable_sdf_and_is_kept_apart_from_fourier_checkpoints(ict, tmp_path):
    """The GPU encoding trains on a CPU too: pretraining fits the tracked head's SDF; a checkpoint of one
    encoding is not resumed by a run of the other."""
    from faceforge.core.implicit.train import head_from_checkpoint, mesh_sdf_samples
    clip = make_clip(ict, n_frames=2, size=24, seed=1)
    data = data_from_synthetic(ict, clip)
    ck = tmp_path / "hash.ffimplicit.pt"
    cfg = TrainConfig(steps=2, pretrain_steps=150, rays=64, samples=16, encoding="hash")
    head, box, _, _ = train(data, cfg, checkpoint=str(ck))
    assert head.cfg.encoding == "hash"
    q, s = mesh_sdf_samples(data.neutral, data.faces, 4000, np.random.default_rng(5), box)
    with torch.no_grad():
        err = (head_from_checkpoint(ck).canonical_sdf(q) - s).abs()
    near = s.abs() < 0.01
    assert float(err[near].median()) < 0.004, float(err[near].median())        # metres, by the surface
    with pytest.raises(FaceForgeError, match="encoding"):
        train(data, TrainConfig(steps=4, pretrain_steps=2, rays=64, samples=16, encoding="fourier"),
              checkpoint=str(ck))
