"""Builds FaceForge's default full-head model (weights/ict_facekit.npz) from ICT-FaceKit.

ICT-FaceKit (USC ICT Vision and Graphics Lab, MIT licence) is a light-stage-scan head model:
one topology of 26,719 vertices in 17 parts (face, head and neck, mouth socket, eye sockets,
gums and tongue, teeth, eyeballs, lacrimal fluid, eye blend, eye occlusion, eyelashes), quads
with UVs, 100 identity modes (its sampler draws weights from N(0, 1), so they are already
unit-variance) and 57 expression shapes named in ARKit style.

Reproduce with (the source is a checkout or a bare git dir of github.com/ICT-VGL/ICT-FaceKit):
    .venv/bin/python tools/build_default_model.py --source /path/to/ICT-FaceKit

What it writes (weights/ict_facekit.npz, FaceForge .npz format version 2):
- the whole topology: every part as a named region, the polygons (quads + a few triangles)
  with per-corner UVs for Blender, and a triangulation for the renderer;
- every identity and expression mode, in metres (source: cm), stored as float16 to fit the
  repository (the precision lost against the float32 source is measured and printed);
- expression names mapped to ARKit's where one-to-one (core/models/arkit.py);
- the mediapipe landmark correspondence, found on the skin once here (core/models/correspondence.py)
  so no run of FaceForge pays for it, and the Multi-PIE 68-point vertex indices from ICT's README
  (an independent landmark set for evaluation with dlib);
- a per-vertex albedo: the built-in face model's mean skin colours carried over through the
  correspondence, plain colours for teeth, gums, eyes and lashes (ICT Light ships no albedo).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.models.arkit import arkit_name  # noqa: E402
from core.models.morphable import ModelParts, MorphableModel, Polygons  # noqa: E402

CM_TO_M = 0.01
OUT = ROOT / "weights" / "ict_facekit.npz"

# ICT-FaceKit README, "Face Model Topology": (name, first vertex, last vertex, skin?, material)
PARTS = [
    ("face", 0, 9408, True, "skin"),
    ("head_and_neck", 9409, 11247, True, "skin"),
    ("mouth_socket", 11248, 13293, False, "mouth"),
    ("eye_socket_left", 13294, 13677, False, "skin"),
    ("eye_socket_right", 13678, 14061, False, "skin"),
    ("gums_and_tongue", 14062, 17038, False, "gums"),
    ("teeth", 17039, 21450, False, "teeth"),
    ("eyeball_left", 21451, 23020, False, "eye"),
    ("eyeball_right", 23021, 24590, False, "eye"),
    ("lacrimal_fluid_left", 24591, 24794, False, "eye_wet"),
    ("lacrimal_fluid_right", 24795, 24998, False, "eye_wet"),
    ("eye_blend_left", 24999, 25022, False, "eye_wet"),
    ("eye_blend_right", 25023, 25046, False, "eye_wet"),
    ("eye_occlusion_left", 25047, 25198, False, "eye_occlusion"),
    ("eye_occlusion_right", 25199, 25350, False, "eye_occlusion"),
    ("eyelashes_left", 25351, 26034, False, "lashes"),
    ("eyelashes_right", 26035, 26718, False, "lashes"),
]
# scleras (README, "Eyeball Details"): the eyeball's centre is fitted to them
SCLERAS = {"left": (21451, 22220), "right": (23021, 23790)}
EYEBALLS = {"left": (21451, 23020), "right": (23021, 24590)}
# how far each eyeLook shape turns the eyeball at weight 1 (degrees; ARKit gives no angle, these are
# typical maxima of a comfortable gaze). ICT's eyeLook shapes move only the lids, so without this
# the eyes would not follow gaze
GAZE_DEG = {"Up": 25.0, "Down": 25.0, "In": 30.0, "Out": 30.0}
# Multi-PIE 68 landmarks on ICT's topology (README, "Facial Landmarks"), 0-based vertex indices
MULTIPIE_68 = [1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
               268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
               4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081,
               0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966]
# plain per-vertex colours (sRGB) of the parts that are not skin
PART_COLOUR = {"mouth": (0.45, 0.18, 0.18), "gums": (0.62, 0.28, 0.30), "teeth": (0.88, 0.86, 0.80),
               "eye": (0.90, 0.88, 0.86), "eye_wet": (0.85, 0.80, 0.80), "eye_occlusion": (0.5, 0.4, 0.38),
               "lashes": (0.08, 0.06, 0.05)}
IRIS_COLOUR = (0.30, 0.22, 0.15)
PUPIL_COLOUR = (0.03, 0.03, 0.03)
# human eye: limbus (iris edge) ~5.9 mm and a relaxed pupil ~1.8 mm from the eye's forward axis
LIMBUS_M, PUPIL_M = 0.0059, 0.0018


class Source:
    """ICT-FaceKit's FaceXModel files from a checkout folder or a (bare) git directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.git = not (self.path / "FaceXModel").is_dir()
        if self.git and not (self.path / "HEAD").is_file() and not (self.path / ".git").exists():
            raise SystemExit(f"{path}: neither an ICT-FaceKit checkout (FaceXModel/) nor a git directory")

    def names(self) -> list:
        if not self.git:
            return sorted(p.name for p in (self.path / "FaceXModel").iterdir())
        out = subprocess.run(["git", "--git-dir", str(self.path), "ls-tree", "--name-only", "HEAD", "FaceXModel/"],
                             check=True, capture_output=True, text=True).stdout.split()
        return sorted(Path(n).name for n in out)

    def read(self, name: str) -> str:
        if not self.git:
            return (self.path / "FaceXModel" / name).read_text()
        return subprocess.run(["git", "--git-dir", str(self.path), "show", f"HEAD:FaceXModel/{name}"],
                              check=True, capture_output=True, text=True).stdout

    def licence(self) -> str:
        if not self.git:
            return (self.path / "LICENSE").read_text()
        return subprocess.run(["git", "--git-dir", str(self.path), "show", "HEAD:LICENSE"],
                              check=True, capture_output=True, text=True).stdout

    def commit(self) -> str:
        if not self.git:
            return "checkout"
        return subprocess.run(["git", "--git-dir", str(self.path), "rev-parse", "HEAD"],
                              check=True, capture_output=True, text=True).stdout.strip()


def obj_vertices(text: str) -> np.ndarray:
    rows = [line[2:] for line in text.splitlines() if line.startswith("v ")]
    return np.array(" ".join(rows).split(), np.float64).reshape(-1, 3)


def obj_topology(text: str):
    """Vertices, UVs, polygons (sizes, vertex corners, uv corners) and each polygon's material."""
    vt, sizes, cv, cuv, mats = [], [], [], [], []
    material = ""
    for line in text.splitlines():
        if line.startswith("vt "):
            vt.append(line[3:])
        elif line.startswith("f "):
            corners = line[2:].split()
            sizes.append(len(corners))
            for c in corners:
                a = c.split("/")
                cv.append(int(a[0]) - 1)
                cuv.append(int(a[1]) - 1)
            mats.append(material)
        elif line.startswith("usemtl "):
            material = line[7:].strip()
    uv = np.array(" ".join(vt).split(), np.float64).reshape(-1, 2)
    return obj_vertices(text), uv, np.array(sizes), np.array(cv), np.array(cuv), mats


def triangulate(sizes: np.ndarray, corners: np.ndarray, vertices: np.ndarray):
    """Polygons -> triangles (quads split along their shorter diagonal), and each one's polygon."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tris, owner = [], []
    for p, (s, n) in enumerate(zip(starts, sizes)):
        c = corners[s:s + n]
        if n == 4 and np.linalg.norm(vertices[c[1]] - vertices[c[3]]) < np.linalg.norm(vertices[c[0]] - vertices[c[2]]):
            c = np.roll(c, -1)       # split along 1-3 instead of 0-2
        for k in range(1, n - 1):
            tris.append((c[0], c[k], c[k + 1]))
            owner.append(p)
    return np.array(tris, np.int64), np.array(owner, np.int64)


def sphere_centre(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere through ``points``: |p|^2 = 2 c.p + (r^2 - |c|^2) is linear in c."""
    A = np.c_[2 * points, np.ones(len(points))]
    sol = np.linalg.lstsq(A, (points ** 2).sum(1), rcond=None)[0]
    return sol[:3]


def rotation(axis: str, deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def add_eyeball_rotation(v: np.ndarray, expr_basis: np.ndarray, expr_names: list) -> dict:
    """Make each eyeLook shape also turn its eyeball (sclera and iris) about the eyeball's centre.

    Stored as blendshape offsets (rotated minus rest), so every tool that plays ARKit shapes turns
    the eyes; in between, the linear blend shortens the radius by 1 - cos(angle * w / 2)-ish (at most
    3.4 % at half of a 30-degree turn), which is invisible behind the lids."""
    report = {}
    for side, (lo, hi) in EYEBALLS.items():
        c = sphere_centre(v[SCLERAS[side][0]:SCLERAS[side][1] + 1])
        # model space: x to the model's left, y up, +z out of the face; which way is "out"
        # depends on the side: the left eye looks out toward +x
        out_sign = 1.0 if c[0] > 0 else -1.0
        turns = {"Up": ("x", -GAZE_DEG["Up"]), "Down": ("x", GAZE_DEG["Down"]),
                 "Out": ("y", out_sign * GAZE_DEG["Out"]), "In": ("y", -out_sign * GAZE_DEG["In"])}
        suffix = "Left" if side == "left" else "Right"
        p = v[lo:hi + 1] - c
        for direction, (axis, deg) in turns.items():
            k = expr_names.index(f"eyeLook{direction}{suffix}")
            expr_basis[lo:hi + 1, :, k] = (p @ rotation(axis, deg).T - p).astype(np.float32)
        report[side] = {"centre_m": np.round(c, 5).tolist(), **{d: t[1] for d, t in turns.items()}}
    return report


def build(source: Source, out: Path, find_landmarks: bool = True) -> dict:
    t0 = time.perf_counter()
    names = source.names()
    neutral_text = source.read("generic_neutral_mesh.obj")
    v_cm, uv, sizes, cv, cuv, mats = obj_topology(neutral_text)
    V = len(v_cm)
    assert V == PARTS[-1][2] + 1, f"expected {PARTS[-1][2] + 1} vertices, got {V}"
    identities = sorted(n for n in names if n.startswith("identity") and n.endswith(".obj"))
    expressions = sorted((n for n in names if n.endswith(".obj") and not n.startswith(("identity", "generic"))),
                         key=str.lower)
    print(f"[build] {V} vertices, {len(sizes)} polygons, {len(identities)} identity and "
          f"{len(expressions)} expression files", flush=True)

    def deltas(files):
        out = np.empty((V, 3, len(files)), np.float32)
        for k, name in enumerate(files):
            v = obj_vertices(source.read(name))
            assert v.shape == (V, 3), f"{name}: {v.shape}"
            out[:, :, k] = (v - v_cm) * CM_TO_M
        return out

    shape_basis = deltas(identities)
    expr_basis = deltas(expressions)
    expr_names = [arkit_name(Path(n).stem) for n in expressions]
    gaze = add_eyeball_rotation(v_cm * CM_TO_M, expr_basis, expr_names)
    print(f"[build] bases read in {time.perf_counter() - t0:.1f} s", flush=True)

    vertex_part = np.zeros(V, np.int64)
    for p, (_, lo, hi, _, _) in enumerate(PARTS):
        vertex_part[lo:hi + 1] = p
    parts = ModelParts(names=[p[0] for p in PARTS], vertex_part=vertex_part,
                       skin=np.array([p[3] for p in PARTS]), material=[p[4] for p in PARTS])
    v_m = (v_cm * CM_TO_M).astype(np.float32)
    faces, owner = triangulate(sizes, cv, v_m)
    polygons = Polygons(sizes=sizes.astype(np.int64), vertices=cv.astype(np.int64),
                        uv=uv[cuv].astype(np.float32), face_polygon=owner)
    # per-vertex UVs: the first corner that uses each vertex (per-corner UVs keep the seams)
    vertex_uv = np.zeros((V, 2), np.float32)
    vertex_uv[cv[::-1]] = uv[cuv[::-1]]

    model = MorphableModel(
        name="ict_facekit", v_template=v_m, faces=faces, shape_basis=shape_basis, expr_basis=expr_basis,
        expr_names=expr_names, uv=vertex_uv, parts=parts, polygons=polygons,
        source="",   # the loader reports the file itself; provenance is in the notes
        notes={"made_from": "ICT-FaceKit (USC ICT VGL), by tools/build_default_model.py",
               "licence": "MIT (weights/ICT-FaceKit-LICENSE.txt)", "source_commit": source.commit(),
               "ict_expression_names": [Path(n).stem for n in expressions],
               "multipie68_vertices": MULTIPIE_68,
               "obj_materials": sorted(set(mats)),
               "expr_range": [0.0, 1.0],
               "eyeball_rotation_deg": gaze,
               "units": "metres (source centimetres)"})
    model.validate()
    # store as float16 (to fit the repository): measure what that costs
    report = {}
    for label, basis in (("identity", model.shape_basis), ("expression", model.expr_basis)):
        err = np.abs(basis.astype(np.float16).astype(np.float32) - basis) * 1000
        report[f"{label}_fp16_max_error_mm"] = float(err.max())
        report[f"{label}_fp16_rms_error_mm"] = float(np.sqrt((err ** 2).mean()))
        report[f"{label}_max_offset_mm"] = float(np.abs(basis).max() * 1000)
    model.shape_basis = model.shape_basis.astype(np.float16).astype(np.float32)
    model.expr_basis = model.expr_basis.astype(np.float16).astype(np.float32)

    if find_landmarks:
        from core.models.correspondence import find_landmark_embedding
        t1 = time.perf_counter()
        model.landmarks = find_landmark_embedding(model)
        report["landmarks"] = int(len(model.landmarks.face_index))
        report["landmark_error_mm"] = model.landmarks.error_mm
        report["landmark_s"] = round(time.perf_counter() - t1, 1)
        print(f"[build] {report['landmarks']} landmarks, self-check {model.landmarks.error_mm} mm", flush=True)
    model.albedo_mean = vertex_albedo(model)
    model.notes["build_report"] = report

    from core.models.npz_format import save_model_npz
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_npz(model, out, basis_dtype=np.float16)
    (out.parent / "ICT-FaceKit-LICENSE.txt").write_text(source.licence())
    report["file_mb"] = round(out.stat().st_size / 2 ** 20, 2)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def vertex_albedo(model: MorphableModel) -> np.ndarray:
    """Skin: the built-in face model's mean colours through the landmarks; other parts: plain colours."""
    from core.models.correspondence import SKIN, embedding_points

    colours = np.tile(SKIN, (model.n_vertices, 1)).astype(np.float32)
    if model.landmarks is not None:
        from core.detect.landmarks import N_SURFACE_POINTS
        from core.detect.landmarks import landmark_regions
        lm = model.landmarks
        # interior points only: the built-in model's colours on the face outline are largely hair,
        # background and shadow from its training videos, and would ring the face in grey
        use = (lm.detector_index < N_SURFACE_POINTS) & ~np.isin(lm.detector_index, landmark_regions()["face_oval"])
        colours = _transfer_builtin_albedo(model, embedding_points(model, lm)[use], lm.detector_index[use])
    mat = np.asarray(model.parts.material)[model.parts.vertex_part]
    for name, rgb in PART_COLOUR.items():
        colours[mat == name] = rgb
    # ICT's sclera and iris meshes are both whole shells (its real-time shader draws the iris from a
    # texture): colour them by the angle from the eye's forward axis (+z through the fitted centre),
    # so the iris shows without a texture and turns with the eyeLook shapes
    v = model.v_template.astype(np.float64)
    for side, (lo, hi) in EYEBALLS.items():
        c = sphere_centre(v[SCLERAS[side][0]:SCLERAS[side][1] + 1])
        d = v[lo:hi + 1] - c
        radius = np.linalg.norm(d, axis=1)
        off_axis = np.linalg.norm(d[:, :2], axis=1)          # distance from the forward axis
        front = d[:, 2] > 0
        col = np.tile(PART_COLOUR["eye"], (len(d), 1))
        t = np.clip((LIMBUS_M - off_axis) / 0.0006, 0, 1)[:, None] * front[:, None]   # soft limbal edge
        col = col * (1 - t) + np.array(IRIS_COLOUR) * t
        col[front & (off_axis < PUPIL_M)] = PUPIL_COLOUR
        colours[lo:hi + 1] = col
        model.notes.setdefault("eyeball_radius_mm", {})[side] = round(float(np.median(radius)) * 1000, 2)
    return colours.astype(np.float32)


def _transfer_builtin_albedo(model, pts, which):
    """Inverse-distance blend of the built-in model's mean albedo at the 4 nearest landmarks
    (built-in vertex i is detector point i); far from the face it fades to plain skin."""
    from core.models.builtin import load_builtin
    from core.models.correspondence import SKIN
    base = load_builtin().albedo_mean[which]
    v = model.v_template.astype(np.float64)
    d2 = ((v[:, None, :] - pts[None]) ** 2).sum(-1)
    near = np.argsort(d2, 1)[:, :4]
    w = 1.0 / (np.take_along_axis(d2, near, 1) + 1e-6)
    out = (base[near] * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    fade = np.clip((np.sqrt(d2.min(1)) - 0.01) / 0.02, 0, 1)[:, None]
    return (out * (1 - fade) + SKIN * fade).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="ICT-FaceKit checkout folder or its (bare) git directory")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-landmarks", action="store_true", help="skip the landmark correspondence (debugging)")
    args = ap.parse_args(argv)
    report = build(Source(Path(args.source)), Path(args.out), find_landmarks=not args.no_landmarks)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
