"""FaceForge ``.npz`` model format (version 2): any linear head model, in plain arrays.

A FaceForge model file is a numpy ``.npz`` archive (``np.savez``/``np.savez_compressed``)
read with ``allow_pickle=False``: it can hold only numeric and unicode-string arrays, never
Python objects, so opening one cannot run code. Convert any linear (PCA / blendshape) head
model to it, e.g. a full-head model whose licence you hold (see docs/model_format.md).

Conventions
-----------
- Units: **metres**. Axes: **y up, +z out of the face** (the face looks down +z), x to the
  model's left. Triangles are 0-based and wound counter-clockwise seen from outside.
- Bases are (V, 3, K) offsets, **scaled so coefficients are ~N(0, 1)**: for a PCA model,
  multiply each unit eigenvector by the standard deviation (sqrt of its eigenvalue).
  The fitter's prior is a plain squared norm on the coefficients.
- vertices = v_template + shape_basis @ shape_coeffs + expr_basis @ expr_coeffs, then
  (if joints are present) linear blend skinning with FLAME's conventions.
- Strings are unicode arrays (``np.array("text")``, ``np.array(list_of_str)``); scalars
  are 0-d arrays.

Keys (V vertices, F triangles, Ks/Ke/Ka components, J joints, L landmarks)
-------------------------------------------------------------------------
================== ============= ======== ==========================================
key                shape         dtype    meaning
================== ============= ======== ==========================================
format             ()            str      must be ``"faceforge-morphable-model"``
format_version     ()            int64    ``2`` (``1`` still loads); newer versions are refused
name               ()            str      display name, e.g. ``"MyHead"``
v_template         (V, 3)        float32  mean shape, metres
faces              (F, 3)        int64    triangle vertex indices, 0-based
shape_basis        (V, 3, Ks)    float32  identity basis, metres per unit coefficient
                                          (float16 also accepted: read as float32)
expr_basis         (V, 3, Ke)    float32  expression basis (Ke may be 0; float16 accepted)
expr_names         (Ke,)         str      unique names (become Blender shape keys)
albedo_mean        (V, 3)        float32  optional, per-vertex RGB in [0, 1]
albedo_basis       (V, 3, Ka)    float32  optional, needs albedo_mean
uv                 (V, 2)        float32  optional, per-vertex UVs
joint_names        (J,)          str      optional joint group (all four or none):
joint_parents      (J,)          int64      parent index, root first with -1, parents
                                            before children; joint 0 = root (global)
joint_regressor    (J, V)        float32    joint locations = regressor @ vertices
lbs_weights        (V, J)        float32    skinning weights, rows sum to 1
posedirs           (9(J-1), V, 3) float32 optional pose correctives (FLAME layout:
                                            feature = (R_j - I) flattened, j = 1..J-1)
lm_detector_index  (L,)          int64    optional landmark group (all three or none):
lm_face_index      (L,)          int64      mediapipe point index / triangle it lies on /
lm_bary            (L, 3)        float32    barycentric coordinates in that triangle
lm_method          ()            str      optional, how the landmarks were found
lm_error_mm        ()            float64  optional, self-check error in millimetres
lm_point_error_mm  (L,)          float32  optional, self-check error of each landmark, mm
part_names         (P,)          str      optional part group (version 2; all four or none):
vertex_part        (V,)          int64      part of each vertex
part_skin          (P,)          bool       part is outer skin (fitted to photos); others
                                            (teeth, eyeballs...) follow the bases, shown only
part_material      (P,)          str        material slot of each part
poly_sizes         (P',)         int64    optional polygon group (version 2; sizes and
poly_vertices      (N,)          int64      vertices together): corners per polygon and the
                                            vertex of each corner (N = sum of sizes), for
                                            quads/n-gons in Blender
poly_uv            (N, 2)        float32  optional per-corner UVs (seams allowed)
face_polygon       (F,)          int64    optional polygon each triangle of ``faces`` came from
source             ()            str      optional provenance; if absent, the file's path
notes_json         ()            str      optional JSON object of free-form notes
================== ============= ======== ==========================================

Unknown keys are ignored, so later writers of a version may add optional keys. Version 2
added the part and polygon groups; a version-1 file is a valid version-2 file without them.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ModelFileError, UnsafeFileError
from .morphable import JointRig, LandmarkEmbedding, ModelParts, MorphableModel, Polygons

FORMAT_TAG = "faceforge-morphable-model"
FORMAT_VERSION = 2

_REQUIRED = ("format", "format_version", "name", "v_template", "faces",
             "shape_basis", "expr_basis", "expr_names")
_JOINT_KEYS = ("joint_names", "joint_parents", "joint_regressor", "lbs_weights")
_LM_KEYS = ("lm_detector_index", "lm_face_index", "lm_bary")
_PART_KEYS = ("part_names", "vertex_part", "part_skin", "part_material")
_POLY_KEYS = ("poly_sizes", "poly_vertices")
_DOC_HINT = "See docs/model_format.md for the FaceForge .npz model format."


# ------------------------------------------------------------------------------ saving
def _json_default(obj):
    # notes may carry numpy scalars/arrays; store them as plain JSON values
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _model_arrays(model: MorphableModel, basis_dtype=np.float32) -> dict:
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    basis = lambda a: np.ascontiguousarray(a, dtype=basis_dtype)  # noqa: E731
    i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)    # noqa: E731

    def strs(xs) -> np.ndarray:  # unicode, never object, so allow_pickle=False can read it
        return np.array([str(x) for x in xs], dtype=np.str_) if len(xs) else np.zeros(0, "<U1")

    out = {
        "format": np.array(FORMAT_TAG),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "name": np.array(str(model.name)),
        "v_template": f32(model.v_template),
        "faces": i64(model.faces),
        "shape_basis": basis(model.shape_basis),
        "expr_basis": basis(model.expr_basis),
        "expr_names": strs(model.expr_names),
        "notes_json": np.array(json.dumps(model.notes or {}, default=_json_default)),
    }
    if model.source:  # absent -> the loader reports the file's own path as the source
        out["source"] = np.array(str(model.source))
    if model.albedo_mean is not None:
        out["albedo_mean"] = f32(model.albedo_mean)
    if model.albedo_basis is not None:
        out["albedo_basis"] = f32(model.albedo_basis)
    if model.uv is not None:
        out["uv"] = f32(model.uv)
    if model.parts is not None:
        pt = model.parts
        out.update(part_names=strs(pt.names), vertex_part=i64(pt.vertex_part),
                   part_skin=np.asarray(pt.skin, dtype=bool), part_material=strs(pt.material))
    if model.polygons is not None:
        pg = model.polygons
        out.update(poly_sizes=i64(pg.sizes), poly_vertices=i64(pg.vertices))
        if pg.uv is not None:
            out["poly_uv"] = f32(pg.uv)
        if pg.face_polygon is not None:
            out["face_polygon"] = i64(pg.face_polygon)
    j = model.joints
    if j is not None:
        out.update(joint_names=strs(j.names), joint_parents=i64(j.parents),
                   joint_regressor=f32(j.regressor), lbs_weights=f32(j.weights))
        if j.posedirs is not None:
            out["posedirs"] = f32(j.posedirs)
    lm = model.landmarks
    if lm is not None:
        out.update(lm_detector_index=i64(lm.detector_index), lm_face_index=i64(lm.face_index),
                   lm_bary=f32(lm.bary), lm_method=np.array(str(lm.method)))
        if lm.error_mm is not None:
            out["lm_error_mm"] = np.array(float(lm.error_mm), dtype=np.float64)
        if lm.point_error_mm is not None:
            out["lm_point_error_mm"] = f32(lm.point_error_mm)
    return out


def save_model_npz(model: MorphableModel, path, compress: bool = True, basis_dtype=np.float32) -> Path:
    """Write ``model`` to ``path`` exactly as given (no '.npz' is appended); returns the path.

    ``basis_dtype=np.float16`` halves the size of the identity/expression bases (the default
    ICT-FaceKit model uses it to fit the repository; it costs ~0.01 mm at most, see its note).

    The model is validated first and the file is written atomically (temp file + rename),
    so a failed save never leaves a half-written model behind.
    """
    model.validate()
    arrays = _model_arrays(model, basis_dtype)
    path = Path(path)
    # temp file beside the target (same filesystem, so the rename is atomic); open() rather
    # than mkstemp so the file gets the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:  # a file object, so numpy does not append '.npz'
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# ----------------------------------------------------------------------------- loading
def _read(npz, key: str, path: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UnsafeFileError(
                f"'{path}': '{key}' holds Python objects, which FaceForge refuses to load (they "
                "could run code). Store strings as unicode arrays, e.g. np.array(names, dtype=str). "
                + _DOC_HINT) from None
        raise ModelFileError(f"'{path}': '{key}' is corrupt ({exc}).") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(f"'{path}': '{key}' could not be read; the file is corrupt ({exc}).") from None


def _text(arr: np.ndarray, key: str, path: str) -> str:
    if arr.ndim != 0 or arr.dtype.kind not in "US":
        raise ModelFileError(f"'{path}': '{key}' must be a single string, got {arr.dtype} {arr.shape}.")
    v = arr.item()
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _texts(arr: np.ndarray, key: str, path: str) -> list:
    if arr.ndim != 1 or (arr.dtype.kind not in "US" and arr.size):
        raise ModelFileError(f"'{path}': '{key}' must be a 1-D array of strings, got {arr.dtype} {arr.shape}.")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]


def _scalar(arr: np.ndarray, key: str, path: str) -> float:
    if arr.ndim != 0 or arr.dtype.kind not in "iuf":
        raise ModelFileError(f"'{path}': '{key}' must be a single number, got {arr.dtype} {arr.shape}.")
    return float(arr.item())


def _num(arr: np.ndarray, key: str, path: str, dtype) -> np.ndarray:
    kinds = "iu" if np.dtype(dtype).kind in "iu" else "biuf"
    if arr.dtype.kind not in kinds:
        raise ModelFileError(f"'{path}': '{key}' must be {np.dtype(dtype).name}, got {arr.dtype}.")
    return np.asarray(arr, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def load_model_npz(path) -> MorphableModel:
    """Read a FaceForge ``.npz`` model (see module docstring); validated before returning."""
    path = str(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"Model file not found: '{path}'.")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(8)
        what = "a single .npy array" if head.startswith(b"\x93NUMPY") else \
            "a pickle (load FLAME .pkl files as FLAME)" if head[:1] == b"\x80" else "not a zip/.npz archive"
        raise ModelFileError(f"'{path}' is not a FaceForge .npz model: it is {what}. {_DOC_HINT}")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelFileError(f"'{path}' could not be opened as .npz ({exc}). {_DOC_HINT}") from None
    with npz:
        keys = set(npz.files)
        missing = [k for k in _REQUIRED if k not in keys]
        if "format" in keys:
            tag = _text(_read(npz, "format", path), "format", path)
            if tag != FORMAT_TAG:
                raise ModelFileError(
                    f"'{path}' is an .npz of kind '{tag}', not a FaceForge model "
                    f"('format' must be '{FORMAT_TAG}'). {_DOC_HINT}")
        if missing:
            raise ModelFileError(
                f"'{path}' is not a complete FaceForge model: missing {', '.join(missing)}. {_DOC_HINT}")
        version_arr = _read(npz, "format_version", path)
        if version_arr.ndim != 0 or version_arr.dtype.kind not in "iu":
            raise ModelFileError(f"'{path}': 'format_version' must be a single integer.")
        version = int(version_arr)
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"'{path}' uses FaceForge model format version {version}; this FaceForge reads up to "
                f"version {FORMAT_VERSION}. Update FaceForge to load it.")
        if version < 1:
            raise ModelFileError(f"'{path}': invalid format_version {version}.")

        def opt(key: str) -> Optional[np.ndarray]:
            return _read(npz, key, path) if key in keys else None

        def group(names: tuple, label: str) -> bool:
            present = [k for k in names if k in keys]
            if present and len(present) != len(names):
                raise ModelFileError(
                    f"'{path}': {label} need all of {', '.join(names)}; missing "
                    f"{', '.join(k for k in names if k not in keys)}. {_DOC_HINT}")
            return bool(present)

        joints = None
        if group(_JOINT_KEYS, "joints"):
            pd = opt("posedirs")
            joints = JointRig(
                names=_texts(_read(npz, "joint_names", path), "joint_names", path),
                parents=_num(_read(npz, "joint_parents", path), "joint_parents", path, np.int64),
                regressor=_num(_read(npz, "joint_regressor", path), "joint_regressor", path, np.float32),
                weights=_num(_read(npz, "lbs_weights", path), "lbs_weights", path, np.float32),
                posedirs=None if pd is None else _num(pd, "posedirs", path, np.float32),
            )
        elif "posedirs" in keys:
            raise ModelFileError(f"'{path}': 'posedirs' given without the joint keys. {_DOC_HINT}")

        landmarks = None
        if group(_LM_KEYS, "landmarks"):
            err = opt("lm_error_mm")
            point_err = opt("lm_point_error_mm")
            method = opt("lm_method")
            landmarks = LandmarkEmbedding(
                detector_index=_num(_read(npz, "lm_detector_index", path), "lm_detector_index", path, np.int64),
                face_index=_num(_read(npz, "lm_face_index", path), "lm_face_index", path, np.int64),
                bary=_num(_read(npz, "lm_bary", path), "lm_bary", path, np.float32),
                method="given" if method is None else _text(method, "lm_method", path),
                error_mm=None if err is None else _scalar(err, "lm_error_mm", path),
                point_error_mm=None if point_err is None else _num(point_err, "lm_point_error_mm", path, np.float32),
            )
            if point_err is not None and landmarks.point_error_mm.shape != landmarks.detector_index.shape:
                raise ModelFileError(f"'{path}': 'lm_point_error_mm' must have one value per landmark "
                                     f"({len(landmarks.detector_index)}), got shape {point_err.shape}.")

        parts = None
        if group(_PART_KEYS, "parts"):
            skin = _read(npz, "part_skin", path)
            if skin.dtype.kind not in "biu":
                raise ModelFileError(f"'{path}': 'part_skin' must be booleans, got {skin.dtype}.")
            parts = ModelParts(
                names=_texts(_read(npz, "part_names", path), "part_names", path),
                vertex_part=_num(_read(npz, "vertex_part", path), "vertex_part", path, np.int64),
                skin=np.asarray(skin, dtype=bool),
                material=_texts(_read(npz, "part_material", path), "part_material", path))
        polygons = None
        if group(_POLY_KEYS, "polygons"):
            puv, fpoly = opt("poly_uv"), opt("face_polygon")
            polygons = Polygons(
                sizes=_num(_read(npz, "poly_sizes", path), "poly_sizes", path, np.int64),
                vertices=_num(_read(npz, "poly_vertices", path), "poly_vertices", path, np.int64),
                uv=None if puv is None else _num(puv, "poly_uv", path, np.float32),
                face_polygon=None if fpoly is None else _num(fpoly, "face_polygon", path, np.int64))
        elif "poly_uv" in keys or "face_polygon" in keys:
            raise ModelFileError(f"'{path}': 'poly_uv'/'face_polygon' given without poly_sizes and poly_vertices. "
                                 + _DOC_HINT)

        notes = {}
        notes_arr = opt("notes_json")
        if notes_arr is not None:
            try:
                notes = json.loads(_text(notes_arr, "notes_json", path))
            except json.JSONDecodeError as exc:
                raise ModelFileError(f"'{path}': 'notes_json' is not valid JSON ({exc}).") from None
            if not isinstance(notes, dict):
                raise ModelFileError(f"'{path}': 'notes_json' must hold a JSON object.")
        source = opt("source")
        albedo_mean, albedo_basis, uv = opt("albedo_mean"), opt("albedo_basis"), opt("uv")

        model = MorphableModel(
            name=_text(_read(npz, "name", path), "name", path),
            v_template=_num(_read(npz, "v_template", path), "v_template", path, np.float32),
            faces=_num(_read(npz, "faces", path), "faces", path, np.int64),
            shape_basis=_num(_read(npz, "shape_basis", path), "shape_basis", path, np.float32),
            expr_basis=_num(_read(npz, "expr_basis", path), "expr_basis", path, np.float32),
            expr_names=_texts(_read(npz, "expr_names", path), "expr_names", path),
            albedo_mean=None if albedo_mean is None else _num(albedo_mean, "albedo_mean", path, np.float32),
            albedo_basis=None if albedo_basis is None else _num(albedo_basis, "albedo_basis", path, np.float32),
            joints=joints,
            landmarks=landmarks,
            uv=None if uv is None else _num(uv, "uv", path, np.float32),
            parts=parts,
            polygons=polygons,
            source=path if source is None else _text(source, "source", path),
            notes=notes,
        )
    # shapes that disagree with each other are reported by validate(), naming the array
    return model.validate()


__all__ = ["save_model_npz", "load_model_npz", "FORMAT_TAG", "FORMAT_VERSION"]
