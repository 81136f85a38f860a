"""Likeness: how much of a person's 3D face FaceForge recovers from 1, 3 and 5 photos (issue #9).

What is measured
  Ground truth comes from an independent renderer: Blender itself (bpy, Workbench engine,
  tools/blender_render_heads.py), never FaceForge's own rasteriser. For each subject:
  - identity ~ N(0, I) * --identity-scale in the active model's identity space (unit-variance
    coefficients), plus a mild random expression (blendshape models such as ICT-FaceKit: 3 random
    shapes at weights 0.1-0.4, --strong-expressions 0.6-1.0; PCA expression models: N(0, 0.3) per
    component, x 2.5 with --strong-expressions);
  - colour: the model's vertex albedo (``albedo_mean``; a plain skin colour if it has none) with a
    random skin tone; Blender studio lighting (a random preset, rotated) with or without shadows;
    a random vertical grey-blue gradient background. Transparent layers (ICT's lacrimal film, eye
    blend, eye occlusion and lash cards) are left out: Workbench cannot draw their alpha textures;
  - 5 views at yaws 0, -30, +30, -50, +50 degrees, each jittered by U(-3, 3) degrees of yaw and
    roll and U(-4, 4) of pitch; a 35-50 mm equivalent lens; the head turns about its own centre
    at a distance that makes the face (cheek to cheek) 40% of a --size x --size image.
  FaceForge runs through its public pipelines, with mediapipe detecting on the renders:
  - 1 view: ``core.pipeline.reconstruct_photo`` on the frontal render (texture_size=0);
  - 3 views (0, +-30) and 5 views: ``core.pipeline.reconstruct_photos`` (texture_size=256), which
    also checks with dlib's face-recognition embedding that the photos show one person (a refusal
    is counted and the fit re-run without the check). Its identities are scored as
    (a) the single view it trusts most, (b) the plain mean of the per-view identities,
    (c) the confidence-weighted fusion, (d) the joint refinement (its final result).
  eos-py (C++ 3DMM landmark fitter; ``pip install eos-py``, skipped with a message if missing)
  fits the SAME model (its identity basis as an eos PcaModel, its expressions as eos blendshapes,
  or an expression PcaModel for PCA models) to the SAME mediapipe landmarks of the frontal render:
  every corresponded detector point at the vertex nearest its embedding on the surface; eos's
  defaults (5 iterations, lambda 30), WITHOUT contour fitting: the outline points stay fixed
  surface points, as in FaceForge's landmark stage. (eos's contour fitting needs a contour and an
  edge topology made for the model; one tried for ICT, from the face part's triangles and a curve
  through the embedded outline points, made eos diverge, and its self-occlusion test casts a ray
  per silhouette vertex against every triangle.)
  Error: the median per-vertex distance (mm) between the recovered NEUTRAL shape (identity only,
  expression 0) and the true neutral shape after a similarity (Procrustes with scale) alignment
  on the region. --region face (default): the model's ``face`` part (ICT: vertices 0-9408, with
  ears and forehead; all vertices for a model without parts); --region narrow: ICT's "narrow face
  area" (vertices 0-6704, per ICT-FaceKit's README; the face part elsewhere). Both are kept in the
  JSON. The mean face (identity 0) is scored the same way; the table gives medians over subjects
  and their ratio to the mean face's median.
  Also printed: how far mediapipe's points lie from the true projections of the surface points
  they are corresponded to, per head turn (the detector bias of issue #9 item 2), and timings:
  FaceForge's landmark stage and whole fit per photo beside eos's fit on the same landmarks.
Synthetic, hairless, Workbench-shaded heads of the model itself: this measures how well a fit
recovers a shape the model can express, not accuracy on real scans (NoW etc.).

Run: .venv/bin/python benchmarks/bench_likeness.py [--subjects 8] [--model builtin|ict|file.npz]
     [--out DIR (keep the renders)] [--json PATH] [--region face|narrow] [--no-eos]
     ``--subjects 2`` is a quick run. Needs bpy (in requirements) and, for the peer, eos-py.
     mediapipe logs to stderr on every detection; ``2>/dev/null`` keeps the table readable.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402

YAWS = (0.0, -30.0, 30.0, -50.0, 50.0)
BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0])   # camera axes: Blender looks down -Z with +Y up
VIEW_SETS = {1: [0], 3: [0, 1, 2], 5: [0, 1, 2, 3, 4]}
HIDDEN_MATERIALS = {"eye_wet", "eye_occlusion", "lashes"}       # alpha-textured layers in the add-on
LIGHTS = ("Default", "basic.sl", "outdoor.sl", "paint.sl", "studio.sl")
PLAIN_SKIN = (0.78, 0.60, 0.50)
ICT_NARROW_FACE = 6705           # ICT-FaceKit README: vertices [0, 6705) are the narrow face area
LABELS = {"mean": "mean face (identity = 0)", "single": "FaceForge single photo (reconstruct_photo)",
          "single_plain": "  the same without the symmetric shading stage",
          "a": "(a) most confident single view", "b": "(b) mean of per-view identities",
          "c": "(c) confidence-weighted fusion", "d": "(d) joint refinement (the result)",
          "eos": "eos-py (same model + landmarks)"}


# ----------------------------------------------------------------------------- geometry
def rotation(yaw, pitch, roll) -> np.ndarray:
    """Head rotation (degrees): yaw about +y, pitch about +x, roll about +z (model axes)."""
    y, p, r = np.radians([yaw, pitch, roll])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """src moved onto dst by the least-squares rotation, scale and translation (Umeyama)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    U, S, Vt = np.linalg.svd(b.T @ a)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = (S * np.diag(D)).sum() / (a ** 2).sum()
    return s * a @ R.T + md


def region_error_mm(pred: np.ndarray, truth: np.ndarray, idx: np.ndarray) -> float:
    p = similarity_align(pred[idx].astype(np.float64), truth[idx].astype(np.float64))
    return float(np.median(np.linalg.norm(p - truth[idx], axis=1)) * 1000.0)


def regions(model) -> dict:
    """Vertex index sets the error is measured on (see the docstring)."""
    if model.parts is not None and "face" in model.parts.names:
        face = np.nonzero(model.parts.vertex_part == model.parts.names.index("face"))[0]
    elif model.parts is not None:
        face = np.nonzero(model.skin_vertex_mask())[0]
    else:
        face = np.arange(model.n_vertices)
    narrow = face
    if model.name == "ict" and model.n_vertices > ICT_NARROW_FACE:
        narrow = np.arange(ICT_NARROW_FACE)
    return {"face": face, "narrow": narrow}


def neutral(model, shape) -> np.ndarray:
    k = len(shape)
    return model.v_template + np.einsum("vck,k->vc", model.shape_basis[:, :, :k], np.asarray(shape, np.float32))


def posed(model, shape, expr) -> np.ndarray:
    v = neutral(model, shape)
    if model.n_expr:
        v = v + np.einsum("vck,k->vc", model.expr_basis, np.asarray(expr, np.float32))
    return v


def landmark_points(model, verts) -> np.ndarray:
    """3D positions of the model's corresponded detector points on these vertices (L, 3)."""
    emb = model.landmarks
    return (verts[model.faces[emb.face_index]] * emb.bary[:, :, None]).sum(1)


# ----------------------------------------------------------------------------- subjects and renders
def make_subject(model, seed: int, scale: float, strong_expression: bool = False) -> dict:
    rng = np.random.default_rng(1000 + seed)
    shape = rng.standard_normal(model.n_shape) * scale
    expr = np.zeros(model.n_expr)
    if model.n_expr:
        if model.expr_range is not None:        # blendshapes in 0..1: a few, mildly (or strongly)
            pick = rng.choice(model.n_expr, size=min(3, model.n_expr), replace=False)
            expr[pick] = rng.uniform(*((0.6, 1.0) if strong_expression else (0.1, 0.4)), len(pick))
        else:
            expr = rng.normal(0.0, 0.75 if strong_expression else 0.3, model.n_expr)
    base = model.albedo_mean if model.albedo_mean is not None else np.tile(PLAIN_SKIN, (model.n_vertices, 1))
    tone = rng.uniform(0.8, 1.15) * np.array([1.0, rng.uniform(0.9, 1.05), rng.uniform(0.85, 1.05)])
    views = []
    for yaw in YAWS:
        views.append(dict(yaw=yaw + rng.uniform(-3, 3), pitch=rng.uniform(-4, 4), roll=rng.uniform(-3, 3),
                          shift=rng.uniform(-0.04, 0.04, 2).tolist()))
    top, bottom = rng.uniform(0.25, 0.9, 3), rng.uniform(0.2, 0.8, 3)
    return dict(seed=seed, shape=shape, expr=expr, colors=np.clip(base * tone, 0, 1),
                lens_mm=float(rng.uniform(35, 50)), light=LIGHTS[rng.integers(len(LIGHTS))],
                light_rotation_deg=float(rng.uniform(-60, 60)), shadow=bool(rng.integers(2)),
                bg_top=(top * [0.9, 0.95, 1.0]).tolist(), bg_bottom=(bottom * [0.9, 0.95, 1.0]).tolist(),
                views=views)


def render_faces(model) -> np.ndarray:
    if model.parts is None:
        return model.faces
    hidden = [i for i, m in enumerate(model.parts.material) if m in HIDDEN_MATERIALS]
    keep = ~np.isin(model.face_parts(), hidden)
    return model.faces[keep]


def plan_views(model, subj: dict, size: int) -> None:
    """Camera-space pose of each view (R, t) and the true projections of the landmark points."""
    verts = posed(model, subj["shape"], subj["expr"])
    lm = landmark_points(model, verts)
    skin = verts[model.skin_vertex_mask()]
    # turn about the head's centre (mid-depth of the skin), level with the face's landmarks
    pivot = np.array([lm[:, 0].mean(), lm[:, 1].mean(), 0.5 * (skin[:, 2].min() + skin[:, 2].max())])
    f = subj["lens_mm"] / 36.0 * size
    face_w = np.ptp(lm[:, 0])
    dist = f * face_w / (0.4 * size)
    subj["verts"], subj["focal_px"], subj["distance_m"] = verts, f, dist
    for v in subj["views"]:
        R = rotation(v["yaw"], v["pitch"], v["roll"])
        t = np.array([v["shift"][0] * dist * 0.3, v["shift"][1] * dist * 0.3, -dist]) - R @ pivot
        X = lm @ R.T + t                       # Blender camera space: looking down -Z, +Y up
        v["R"], v["t"] = R, t
        v["true_px"] = np.stack([size / 2 + f * X[:, 0] / -X[:, 2], size / 2 - f * X[:, 1] / -X[:, 2]], 1)


def render_all(model, subjects: list, size: int, folder: Path) -> float:
    from blender_render_heads import write_job

    renders, Rs, ts = [], [], []
    for h, s in enumerate(subjects):
        for j, v in enumerate(s["views"]):
            v["path"] = str(folder / f"subject{s['seed']:02d}_view{j}_yaw{v['yaw']:+.0f}.png")
            renders.append(dict(head=h, lens_mm=s["lens_mm"], width=size, height=size, light=s["light"],
                                light_rotation_deg=s["light_rotation_deg"], shadow=s["shadow"],
                                bg_top=s["bg_top"], bg_bottom=s["bg_bottom"], path=v["path"]))
            Rs.append(v["R"])
            ts.append(v["t"])
    job = folder / "render_job.npz"
    write_job(job, render_faces(model), np.stack([s["verts"] for s in subjects]),
              np.stack([s["colors"] for s in subjects]), np.stack(Rs), np.stack(ts), renders)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "blender_render_heads.py"), str(job)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"Blender rendering failed:\n{proc.stderr[-3000:]}")
    job.unlink()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- eos peer
class EosPeer:
    """The same model as an eos MorphableModel; landmarks at the vertex nearest each embedding."""

    def __init__(self, model):
        import eos

        self.eos = eos
        V = model.n_vertices
        tris = model.faces.astype(np.int64).tolist()

        def pca(basis):                         # (V, 3, K) unit-variance columns -> eos's convention
            B = basis.reshape(V * 3, -1).astype(np.float64)
            norms = np.linalg.norm(B, axis=0)
            # eos scales its orthonormal basis by sqrt(eigenvalue): this gives back B exactly, so
            # eos's coefficients are FaceForge's unit-variance ones
            return (B / norms).astype(np.float32), (norms ** 2).astype(np.float32)

        basis, ev = pca(model.shape_basis)
        mean = model.v_template.reshape(-1).astype(np.float32)
        shape_model = eos.morphablemodel.PcaModel(mean, basis, ev, tris)
        if model.expr_range is not None:
            expr = [eos.morphablemodel.Blendshape(n, model.expr_basis[:, :, k].reshape(-1).astype(np.float32))
                    for k, n in enumerate(model.expr_names)]
        else:
            eb, eev = pca(model.expr_basis)
            expr = eos.morphablemodel.PcaModel(np.zeros(V * 3, np.float32), eb, eev, tris)
        self.mm = eos.morphablemodel.MorphableModel(shape_model, expr, eos.morphablemodel.PcaModel())
        emb = model.landmarks
        self.vertex = model.faces[emb.face_index, np.argmax(emb.bary, 1)]      # (L,) nearest corner
        self.detector_index = emb.detector_index
        self.mapper = eos.core.LandmarkMapper()    # identity: a landmark's name is its vertex index
        self.model = model

    def fit(self, det) -> tuple:
        pts = det.points[self.detector_index, :2].astype(np.float32)
        lms = [self.eos.core.Landmark(str(int(v)), p) for v, p in zip(self.vertex, pts)]
        H, W = det.image_size
        t0 = time.perf_counter()
        _, _, shape, _ = self.eos.fitting.fit_shape_and_pose(self.mm, lms, self.mapper, W, H)
        dt = time.perf_counter() - t0
        return neutral(self.model, np.asarray(shape, np.float32)), dt


# ----------------------------------------------------------------------------- one subject
def fit_subject(model, subj: dict, regs: dict, eos_peer) -> dict:
    from core.detect import detect_landmarks, load_image
    from core.errors import FaceForgeError
    from core.fit import FitConfig
    from core.fit.multi_fit import DifferentPeopleError, MultiFitConfig
    from core.pipeline import reconstruct_photo, reconstruct_photos

    truth = neutral(model, subj["shape"])
    err = lambda v: {r: region_error_mm(v, truth, idx) for r, idx in regs.items()}  # noqa: E731
    out = dict(seed=subj["seed"], lens_mm=subj["lens_mm"], light=subj["light"], shadow=subj["shadow"],
               views=[dict(yaw=v["yaw"], pitch=v["pitch"], roll=v["roll"], path=v["path"]) for v in subj["views"]],
               errors={"mean": err(model.v_template)}, timings={}, notes=[])
    paths = [v["path"] for v in subj["views"]]
    emb = model.landmarks
    dets = []
    for v in subj["views"]:
        try:
            d = detect_landmarks(load_image(v["path"]), source=Path(v["path"]).name)
        except FaceForgeError as exc:
            d = None
            out["notes"].append(f"no detection on {Path(v['path']).name}: {exc}")
        dets.append(d)
        # mediapipe's points vs the true projections of the surface points they are corresponded to
        v_off = None if d is None else float(np.linalg.norm(d.points[emb.detector_index, :2] - v["true_px"], axis=1).mean())
        out["views"][len(dets) - 1]["detector_offset_px"] = v_off
        out["views"][len(dets) - 1]["face_px"] = None if d is None else d.face_size

    if dets[0] is not None:
        rec = reconstruct_photo(paths[0], model=model, device="cpu", texture_size=0)
        out["errors"]["single"] = err(rec.fit.vertices_neutral)
        out["expression"] = {"1": expression_recovery(model, subj["expr"], [rec.fit.params["expr"]])}
        out["timings"]["single_landmarks_s"] = rec.fit.timings["landmarks_s"]
        out["timings"]["single_fit_s"] = rec.fit.timings["total_s"]
        out["timings"]["single_total_s"] = rec.timings["total_s"]
        out["timings"]["single_shading_s"] = rec.fit.timings.get("shading_s")
        # the same without the mirror-symmetric shading stage (what the photo fit gave before it)
        plain = reconstruct_photo(paths[0], model=model, device="cpu", texture_size=0,
                                  config=FitConfig(symmetric_shading=False))
        out["errors"]["single_plain"] = err(plain.fit.vertices_neutral)
        if eos_peer is not None:
            v_eos, dt = eos_peer.fit(dets[0])
            out["errors"]["eos"] = err(v_eos)
            out["timings"]["eos_fit_s"] = dt

    for n in (3, 5):
        idx = VIEW_SETS[n]
        if any(dets[i] is None for i in idx):
            out["notes"].append(f"{n} views skipped: a view was not detected")
            continue
        sel = [paths[i] for i in idx]
        try:
            rec = reconstruct_photos(sel, model=model, device="cpu", texture_size=256)
            out[f"same_person_{n}"] = True
        except DifferentPeopleError as exc:
            out[f"same_person_{n}"] = False
            out["notes"].append(f"{n} views: dlib said different people ({exc}); refitted without the check")
            rec = reconstruct_photos(sel, model=model, device="cpu", texture_size=256,
                                     config=MultiFitConfig(check_people=False))
        m = rec.multi
        out["errors"][f"a{n}"] = err(neutral(model, m.shape_single[m.best_single()]))
        out["errors"][f"b{n}"] = err(neutral(model, m.shape_mean))
        out["errors"][f"c{n}"] = err(neutral(model, m.shape_fused))
        out["errors"][f"d{n}"] = err(m.vertices_neutral)
        out["timings"][f"multi{n}_per_photo_s"] = m.timings["per_photo_s"] / n
        out["timings"][f"multi{n}_joint_s"] = m.timings["joint_s"]
        out["timings"][f"multi{n}_total_s"] = rec.timings["total_s"]
        out[f"trusted_view_{n}"] = int(idx[m.best_single()])
        out.setdefault("expression", {})[str(n)] = expression_recovery(model, subj["expr"], [v["expr"] for v in m.views])
        # each photo's head rotation relative to the first photo's, against the truth (frame-free: a
        # rotation of the whole model frame cancels); the final views, after the colour stage
        R_true = [BLENDER_TO_OPENCV @ subj["views"][i]["R"] for i in idx]
        for j, i in enumerate(idx[1:], 1):
            d = (m.views[j]["R"] @ m.views[0]["R"].T) @ (R_true[j] @ R_true[0].T).T
            out["views"][i].setdefault("relative_rotation_error_deg", {})[str(n)] = float(
                np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1))))
    return out


def expression_recovery(model, true_expr, fitted: list) -> dict:
    """How well the photos' expressions were recovered, per photo on average: the summed absolute error of
    the weights, and (blendshape models, whose subjects have a few) the mean fitted weight of the
    blendshapes the subject has."""
    true_expr = np.asarray(true_expr, np.float64)
    fitted = [np.asarray(e, np.float64) for e in fitted]
    on = (true_expr != 0) & (model.expr_range is not None)
    return dict(abs_error=float(np.mean([np.abs(e - true_expr).sum() for e in fitted])),
                true_weights=float(np.mean([e[on].mean() for e in fitted])) if on.any() else None,
                true_weights_truth=float(true_expr[on].mean()) if on.any() else None)


# ----------------------------------------------------------------------------- report
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def print_table(results: list, region: str, eos_msg: str) -> None:
    cells = _cells(results, region)
    mean = cells["mean"][1]
    fmt = lambda x: "     -" if x is None else f"{x:6.2f}"                            # noqa: E731
    rat = lambda x: "      -" if x is None or not mean else f"{x / mean:6.2f}x"      # noqa: E731
    print(f"\n  median vertex error (mm) on the '{region}' region after similarity alignment, "
          f"median over {len(results)} subjects")
    print(f"  {'':44} {'1 view':>7} {'3 views':>7} {'5 views':>7}   {'ratio to mean face: 1':>21} {'3':>7} {'5':>7}")
    for key in ("mean", "single", "single_plain", "a", "b", "c", "d", "eos"):
        if key == "eos" and eos_msg:
            print(f"  {LABELS[key]:44} {eos_msg}")
            continue
        row = {1: mean, 3: mean, 5: mean} if key == "mean" else cells[key]
        print(f"  {LABELS[key]:44} {fmt(row.get(1)):>7} {fmt(row.get(3)):>7} {fmt(row.get(5)):>7}   "
              f"{rat(row.get(1)):>21} {rat(row.get(3)):>7} {rat(row.get(5)):>7}")


def print_targets(results: list, region: str) -> None:
    """Issue 9's targets against this run: ratios to the mean face, falling with every view."""
    cells = _cells(results, region)
    mean = cells["mean"][1]
    got = {1: cells["single"].get(1), 3: cells["d"].get(3), 5: cells["d"].get(5)}
    if not mean or any(v is None for v in got.values()):
        return
    r = {n: v / mean for n, v in got.items()}
    ok = lambda c: "met" if c else "NOT met"                                         # noqa: E731
    print(f"  targets: 1 view <= 0.85x: {r[1]:.2f}x {ok(r[1] <= 0.85)}; 3 views <= 0.6x: {r[3]:.2f}x "
          f"{ok(r[3] <= 0.6)}; 5 views <= 0.5x: {r[5]:.2f}x {ok(r[5] <= 0.5)}; falling 1 -> 3 -> 5 (medians): "
          f"{ok(r[1] > r[3] > r[5])}")
    per = [(e["single"][region], e["d3"][region], e["d5"][region]) for e in (x["errors"] for x in results)
           if all(k in e for k in ("single", "d3", "d5"))]
    print(f"  per subject: 1 -> 3 views better for {sum(b < a for a, b, _ in per)} of {len(per)}, "
          f"3 -> 5 for {sum(c < b for _, b, c in per)} of {len(per)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--model", default=None, help="model spec: ict (default), facemask/builtin, a .npz or FLAME .pkl")
    ap.add_argument("--size", type=int, default=640, help="render width = height (pixels)")
    ap.add_argument("--identity-scale", type=float, default=1.0)
    ap.add_argument("--strong-expressions", action="store_true",
                    help="3 blendshapes at 0.6-1.0 instead of 0.1-0.4 (what a smile does to the identity)")
    ap.add_argument("--region", choices=("face", "narrow"), default="face")
    ap.add_argument("--out", default=None, help="keep the renders in this folder")
    ap.add_argument("--json", default=None, help="write every per-subject number here")
    ap.add_argument("--no-eos", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()

    from core.models import load_model

    model = load_model(args.model)
    regs = regions(model)
    eos_peer, eos_msg = None, ""
    if not args.no_eos:
        try:
            eos_peer = EosPeer(model)
        except ImportError:
            eos_msg = "skipped: eos-py is not installed (pip install eos-py)"
    else:
        eos_msg = "skipped (--no-eos)"

    tmp = None
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="faceforge_likeness_")
        folder = Path(tmp.name)
    subjects = [make_subject(model, s, args.identity_scale, args.strong_expressions) for s in range(args.subjects)]
    for s in subjects:
        plan_views(model, s, args.size)
    print(f"Likeness benchmark: model '{model.name}' ({model.n_vertices} vertices, {model.n_shape} identity, "
          f"{model.n_expr} expression components), {args.subjects} subjects x {len(YAWS)} Blender renders "
          f"({args.size}x{args.size}, Workbench), region '{args.region}' = {len(regs[args.region])} vertices")
    t_render = render_all(model, subjects, args.size, folder)
    print(f"  rendered {len(subjects) * len(YAWS)} views in {t_render:.1f} s"
          + (f" -> {folder}" if args.out else ""))

    # one untimed fit first: torch, mediapipe and the model's caches warm up on the first call
    from core.errors import FaceForgeError
    from core.pipeline import reconstruct_photo

    try:
        reconstruct_photo(subjects[0]["views"][0]["path"], model=model, device="cpu", texture_size=0)
    except FaceForgeError:
        pass
    results = []
    for s in subjects:
        t0 = time.perf_counter()
        r = fit_subject(model, s, regs, eos_peer)
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        e = r["errors"]
        show = lambda k: f"{e[k][args.region]:.2f}" if k in e else "-"        # noqa: E731
        print(f"  subject {s['seed']}: mean face {show('mean')}, single {show('single')}, joint 3 {show('d3')}, "
              f"joint 5 {show('d5')}, eos {show('eos')} mm ({r['wall_s']:.0f} s)"
              + "".join(f"\n    note: {n}" for n in r["notes"]), flush=True)

    print_table(results, args.region, eos_msg)
    print_targets(results, args.region)

    # detector bias: mediapipe vs the true projections of the corresponded surface points
    by_turn = {}
    for r in results:
        for v in r["views"]:
            if v.get("detector_offset_px") is not None:
                by_turn.setdefault(int(round(abs(v["yaw"]) / 10) * 10), []).append(v["detector_offset_px"])
    face_px = med([v.get("face_px") for r in results for v in r["views"]])
    print("\n  mediapipe vs the true projections of its corresponded surface points (mean px per view, median over views):")
    print("    " + ", ".join(f"|yaw| ~{k} deg: {statistics.median(v):.1f} px" for k, v in sorted(by_turn.items()))
          + (f"  (face ~{face_px:.0f} px wide)" if face_px else ""))

    # how well the multi-photo fits place each photo's head (what bounds the colour stage)
    for n in (3, 5):
        rot = {}
        for r in results:
            for i, v in enumerate(r["views"]):
                e = v.get("relative_rotation_error_deg", {}).get(str(n))
                if e is not None:
                    rot.setdefault(YAWS[i], []).append(e)
        if rot:
            print(f"  {n} photos: head rotation error relative to the frontal photo's (degrees, median over subjects): "
                  + ", ".join(f"yaw {k:+.0f}: {statistics.median(v):.1f}" for k, v in sorted(rot.items())))

    # the photos' expressions against the truth (the landmark fits cannot tell many blendshapes apart)
    ex = {n: [r["expression"][str(n)] for r in results if str(n) in r.get("expression", {})] for n in (1, 3, 5)}
    if any(ex.values()):
        part = lambda rows: (f"summed |error| {med([x['abs_error'] for x in rows]):.2f}"              # noqa: E731
                             + (f", the subject's own components at {med([x['true_weights'] for x in rows]):.2f}"
                                if med([x["true_weights"] for x in rows]) is not None else ""))
        truth = med([x["true_weights_truth"] for rows in ex.values() for x in rows])
        print("  expressions per photo (median over subjects): "
              + "; ".join(f"{n} photo{'s' if n > 1 else ''}: {part(rows)}" for n, rows in ex.items() if rows)
              + (f" (true weights {truth:.2f})" if truth is not None else ""))

    # dlib and detection
    refused = [(r["seed"], n) for r in results for n in (3, 5) if r.get(f"same_person_{n}") is False]
    missed = sum(v.get("detector_offset_px") is None for r in results for v in r["views"])
    print(f"  mediapipe missed {missed} of {len(results) * len(YAWS)} renders; dlib's same-person check refused "
          f"{len(refused)} of {sum(f'same_person_{n}' in r for r in results for n in (3, 5))} multi-photo sets"
          + (f" (subject, views: {refused})" if refused else ""))

    T = lambda k: med([r["timings"].get(k) for r in results])                       # noqa: E731
    print("\n  timings (median over subjects, this machine, CPU):")
    if T("single_fit_s") is not None:
        print(f"    single photo: landmark stage {T('single_landmarks_s'):.2f} s, whole fit {T('single_fit_s'):.2f} s "
              f"(of which the mirror-symmetric shading stage {T('single_shading_s') or 0:.2f} s), "
              f"pipeline incl. detection {T('single_total_s'):.2f} s")
    if T("eos_fit_s") is not None:
        print(f"    eos-py fit_shape_and_pose on the same landmarks: {T('eos_fit_s'):.3f} s "
              f"(FaceForge's landmark stage is {T('single_landmarks_s') / T('eos_fit_s'):.0f}x that)")
    for n in (3, 5):
        if T(f"multi{n}_total_s") is not None:
            print(f"    {n} photos: {T(f'multi{n}_per_photo_s'):.2f} s per photo fit, joint {T(f'multi{n}_joint_s'):.2f} s, "
                  f"pipeline {T(f'multi{n}_total_s'):.2f} s (incl. detection, same-person check, 256 px bake)")
    total = time.perf_counter() - t_start
    print(f"  benchmark wall time {total:.0f} s")

    if args.json:
        summary = {reg: {k: {str(n): v for n, v in row.items()} for k, row in _cells(results, reg).items()}
                   for reg in regs}
        Path(args.json).write_text(json.dumps(dict(
            model=model.name, subjects=args.subjects, size=args.size, identity_scale=args.identity_scale,
            strong_expressions=args.strong_expressions,
            region_vertices={k: int(len(v)) for k, v in regs.items()}, medians_mm=summary,
            eos=eos_msg or "fitted", detector_offset_px={str(k): v for k, v in sorted(by_turn.items())},
            render_s=t_render, wall_s=total, per_subject=results), indent=1, default=_json_default))
        print(f"  per-subject numbers -> {args.json}")
    if tmp is not None:
        tmp.cleanup()


def _cells(results, region) -> dict:
    def col(key):
        return med([r["errors"][key][region] for r in results if key in r["errors"]])

    return {"mean": {1: col("mean")}, "single": {1: col("single")}, "single_plain": {1: col("single_plain")},
            "eos": {1: col("eos")},
            **{m: {3: col(f"{m}3"), 5: col(f"{m}5")} for m in "abcd"}}


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(type(o))


if __name__ == "__main__":
    import os

    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)            # bpy/torch destructors can hang at interpreter exit (ENVIRONMENT.md)
