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


@pytest.mark.slow
def test_training_converges_on_a_synthetic_clip(ict):
    """8 frames at 32 px: training from the morphable head's start must re-render the frames much
    better than the start does (PSNR up by >= 3 dB, the silhouette IoU >= 0.9), and the whole pipeline
    gives one mesh moved into every frame with the deformation inverted to < 0.05 mm."""
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
    assert float(meshes.residual_mm.max()) < 0.05
