"""Load FLAME 2020 / 2023 ``.pkl`` files without chumpy and without running code from them.

FLAME is distributed as a Python-2 pickle of a dict whose arrays are partly chumpy ``Ch``
objects and a ``scipy.sparse`` matrix. A plain ``pickle.load`` would need chumpy (which no
longer installs on current Python/numpy) and would execute whatever globals the file names.
Here a restricted unpickler resolves only an allow-list of numpy reconstruction helpers;
chumpy and scipy.sparse classes become inert stubs that just keep their pickled state, which
is then turned into numpy arrays by hand. Every other global is refused (UnsafeFileError).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import FaceForgeError, ModelFileError, UnsafeFileError
from .morphable import JointRig, MorphableModel

try:  # numpy >= 2 spells it numpy._core; importing numpy.core there warns
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x without the forward-compat shim
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

FLAME_SHAPE_COMPONENTS = 300   # FLAME's shapedirs: first 300 identity, then expression
FLAME_JOINT_NAMES = ["root", "neck", "jaw", "eye_L", "eye_R"]
_ROOT_MARKERS = (-1, 4294967295)  # kintree_table stores the root's parent as uint32(-1)
_MAX_DENSE_ELEMENTS = 50_000_000  # a sparse matrix claiming more than this is corrupt/hostile

_FLAME_CONTENTS = (
    "A FLAME 2020/2023 model file (e.g. generic_model.pkl, flame2023.pkl from "
    "flame.is.tue.mpg.de) is a pickled dict holding v_template (5023, 3), f (9976, 3), "
    "shapedirs (5023, 3, 400: 300 identity + 100 expression), posedirs (5023, 3, 36), "
    "J_regressor (5, 5023), weights (5023, 5) and kintree_table (2, 5)."
)
_REQUIRED_KEYS = ("v_template", "f", "shapedirs", "J_regressor", "weights", "kintree_table")


# --------------------------------------------------------------------------- inert stubs
class _PickledStub:
    """Stands in for a class named by the file; records what the pickle gives it, nothing more."""

    _pickled_name = "?"

    def __init__(self, *args, **kwargs):  # only reached via REDUCE on the class itself
        self.__dict__["_stub_args"] = args

    def __setstate__(self, state):
        self.__dict__["_stub_state"] = state

    @property
    def stub_state(self):
        return self.__dict__.get("_stub_state")

    @property
    def stub_args(self):
        return self.__dict__.get("_stub_args", ())

    def __repr__(self) -> str:
        return f"<stub for {self._pickled_name}>"


class _ChumpyStub(_PickledStub):
    pass


class _SparseStub(_PickledStub):
    pass


_STUB_CACHE: dict = {}


def _stub_class(base: type, module: str, name: str) -> type:
    key = (base, module, name)
    if key not in _STUB_CACHE:
        _STUB_CACHE[key] = type(f"Stub_{name}", (base,), {"_pickled_name": f"{module}.{name}"})
    return _STUB_CACHE[key]


# ------------------------------------------------------------- guarded helper callables
def _safe_reconstructor(cls, base, state):
    # copy_reg._reconstructor as used by protocol 0/1 for new-style objects; only our stubs
    # may be built, and only from ``object`` (the real helper would call base.__new__/__init__).
    if not (isinstance(cls, type) and issubclass(cls, _PickledStub)) or base is not object:
        raise UnsafeFileError(
            f"The file asks copy_reg._reconstructor to build {cls!r} from {base!r}; "
            "FaceForge refuses this (a FLAME file never needs it).")
    return cls.__new__(cls)


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Python 3 pickles bytes under protocol <= 2 as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or str(encoding).replace("-", "").replace("_", "").lower() != "latin1":
        raise UnsafeFileError(
            f"The file calls _codecs.encode with encoding {encoding!r}; only 'latin1' is allowed.")
    return text.encode("latin1", errors)


def _safe_bytes(*args):
    # protocol <= 2 pickles b'' as builtins.bytes(); refuse anything that could allocate at will
    if not args:
        return b""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    raise UnsafeFileError("The file calls bytes() with unexpected arguments; refused.")


def _np_frombuffer(buf, dtype, shape, order):
    # numpy's pickle-protocol-5 path (numpy.core.numeric._frombuffer), re-implemented
    return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape, order=order)


_ALLOWED = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _np_reconstruct
    _ALLOWED[(_mod, "scalar")] = _np_scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _np_frombuffer
for _mod in ("copy_reg", "copyreg"):
    _ALLOWED[(_mod, "_reconstructor")] = _safe_reconstructor
for _mod in ("__builtin__", "builtins"):
    _ALLOWED[(_mod, "object")] = object
    _ALLOWED[(_mod, "set")] = set          # chumpy's Ch state holds a `_dirty_vars` set
    _ALLOWED[(_mod, "frozenset")] = frozenset
    _ALLOWED[(_mod, "bytes")] = _safe_bytes
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype
_ALLOWED[("_codecs", "encode")] = _latin1_encode
del _mod

_SPARSE_NAMES = {f"{f}_{k}" for f in ("csc", "csr", "coo") for k in ("matrix", "array")}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; never imports a module named by the file."""

    def find_class(self, module: str, name: str):
        key = (str(module), str(name))
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key[0] == "chumpy" or key[0].startswith("chumpy."):
            return _stub_class(_ChumpyStub, *key)
        if (key[0] == "scipy.sparse" or key[0].startswith("scipy.sparse.")) and key[1] in _SPARSE_NAMES:
            return _stub_class(_SparseStub, *key)
        raise UnsafeFileError(
            f"Refused to load: the file references '{key[0]}.{key[1]}', which is not part of a "
            "FLAME model and could run code on this computer. Only use model files from a "
            "source you trust (FLAME: flame.is.tue.mpg.de).")

    def persistent_load(self, pid):
        raise UnsafeFileError("Refused to load: the file uses pickle persistent IDs (not FLAME).")


# ------------------------------------------------------------------------------ sniffing
_PICKLE_FIRST_BYTES = (b"\x80", b"(", b"}", b"]")  # PROTO (protocol 2+), or a protocol 0/1 opening


def looks_like_flame(path) -> bool:
    """Cheap guess (extension + pickle header) used to pick a loader; does not unpickle."""
    p = Path(path)
    if p.suffix.lower() not in (".pkl", ".pickle"):
        return False
    try:
        with open(p, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    if head[:1] == b"\x80":
        return len(head) == 2 and 2 <= head[1] <= 5
    return head[:1] in _PICKLE_FIRST_BYTES


def _not_a_pickle_message(path: str, head: bytes) -> str:
    hint = ""
    if head.startswith(b"PK"):
        hint = (" It looks like a zip archive: unzip the FLAME download and choose the .pkl inside"
                " (a FaceForge .npz model must be loaded as .npz instead).")
    elif head.startswith(b"\x93NUMPY"):
        hint = " It is a single numpy .npy array, not a model."
    elif not head:
        hint = " The file is empty."
    return f"'{path}' is not a FLAME model: it is not a Python pickle.{hint} {_FLAME_CONTENTS}"


def _unpickle(path: str) -> Any:
    if Path(path).is_dir():  # Windows reports opening a folder as PermissionError
        raise ModelFileError(f"'{path}' is a folder; choose the FLAME .pkl file inside it.")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            bad_proto = head[:1] == b"\x80" and (len(head) < 2 or head[1] > 5)
            if head[:1] not in _PICKLE_FIRST_BYTES or bad_proto:
                raise ModelFileError(_not_a_pickle_message(path, head))
            fh.seek(0)
            # latin1: Python-2 str payloads (numpy buffers) must come back byte-for-byte
            return _RestrictedUnpickler(fh, encoding="latin1").load()
    except FaceForgeError:
        raise
    except FileNotFoundError:
        raise ModelFileError(f"FLAME model file not found: '{path}'.") from None
    except OSError as exc:
        raise ModelFileError(f"Could not read '{path}': {exc}.") from None
    except (EOFError, pickle.UnpicklingError) as exc:
        raise ModelFileError(
            f"'{path}' is truncated or corrupt and cannot be read as a FLAME model ({exc}). "
            "Download or copy the file again.") from None
    except MemoryError:
        raise ModelFileError(f"'{path}' is corrupt: it asks for more memory than is available.") from None
    except Exception as exc:  # malformed opcodes/arguments surface as assorted builtin errors
        raise ModelFileError(
            f"'{path}' could not be read as a FLAME model ({type(exc).__name__}: {exc}). "
            f"{_FLAME_CONTENTS}") from None


# ------------------------------------------------------------------- stubs -> numpy
def _state_dict(stub: _PickledStub) -> Optional[dict]:
    state = stub.stub_state
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]  # (dict, slotstate) layout
    return state if isinstance(state, dict) else None


def _chumpy_value(stub: _ChumpyStub, key: str, path: str) -> Any:
    state = stub.stub_state
    d = _state_dict(stub)
    if d is not None:
        for name in ("x", "_x"):   # plain Ch keeps its value in 'x'
            if name in d:
                return d[name]
        keys = sorted(str(k) for k in d)
    elif isinstance(state, np.ndarray):
        return state
    else:
        keys = []
    if not keys and stub.stub_args:  # Ch(value) rebuilt via REDUCE
        return stub.stub_args[0]
    raise ModelFileError(
        f"'{path}': '{key}' is a chumpy object ({stub._pickled_name}) without a stored value "
        f"(its state has {keys or 'nothing'}); FaceForge can only read plain chumpy arrays. "
        "Convert the model to plain numpy arrays (or to FaceForge .npz) and try again.")


def _check(cond) -> None:
    if not cond:
        raise ValueError("inconsistent sparse matrix")


def _sparse_to_dense(stub: _SparseStub, key: str, path: str) -> np.ndarray:
    d = _state_dict(stub)
    if d is None:
        raise ModelFileError(f"'{path}': '{key}' is a sparse matrix with an unreadable layout.")
    cls_name = stub._pickled_name.rsplit(".", 1)[-1]
    fmt = str(d.get("format", cls_name[:3]))
    if fmt not in ("csc", "csr", "coo"):
        raise ModelFileError(f"'{path}': '{key}' is a sparse matrix of unsupported format '{fmt}'.")
    try:
        shape = tuple(int(s) for s in d.get("_shape", d.get("shape")))
        _check(len(shape) == 2 and min(shape) >= 0 and shape[0] * shape[1] <= _MAX_DENSE_ELEMENTS)
        data = np.asarray(d["data"], np.float64).ravel()
        if fmt in ("csc", "csr"):
            indices = np.asarray(d["indices"], np.int64).ravel()
            indptr = np.asarray(d["indptr"], np.int64).ravel()
            outer, inner = (shape[1], shape[0]) if fmt == "csc" else shape
            _check(len(indptr) == outer + 1 and indptr[0] == 0 and np.all(np.diff(indptr) >= 0))
            _check(indptr[-1] == len(indices) == len(data))
            _check(len(indices) == 0 or (indices.min() >= 0 and indices.max() < inner))
            major = np.repeat(np.arange(outer), np.diff(indptr))
            rows, cols = (indices, major) if fmt == "csc" else (major, indices)
        else:
            coords = d["coords"] if "coords" in d else (d["row"], d["col"])
            rows, cols = (np.asarray(c, np.int64).ravel() for c in coords)
            _check(len(rows) == len(cols) == len(data))
            _check(len(rows) == 0 or (rows.min() >= 0 and rows.max() < shape[0]
                                      and cols.min() >= 0 and cols.max() < shape[1]))
        dense = np.zeros(shape, np.float64)
        np.add.at(dense, (rows, cols), data)  # duplicate entries add up, as in scipy
        return dense
    except Exception:
        raise ModelFileError(
            f"'{path}': '{key}' is a sparse matrix ({stub._pickled_name}) whose stored arrays are "
            "missing or inconsistent; the file is corrupt.") from None


def _to_array(value: Any, key: str, path: str, depth: int = 0) -> np.ndarray:
    if depth > 8:
        raise ModelFileError(f"'{path}': '{key}' nests chumpy objects too deeply to read.")
    if isinstance(value, _ChumpyStub):
        return _to_array(_chumpy_value(value, key, path), key, path, depth + 1)
    if isinstance(value, _SparseStub):
        return _sparse_to_dense(value, key, path)
    if isinstance(value, _PickledStub):  # pragma: no cover - only two stub kinds exist
        raise ModelFileError(f"'{path}': '{key}' has an unsupported type {value._pickled_name}.")
    try:
        arr = np.asarray(value)
    except Exception:
        arr = None
    if arr is None or arr.dtype.kind not in "biuf":
        raise ModelFileError(
            f"'{path}': '{key}' should be a numeric array but is {type(value).__name__}. {_FLAME_CONTENTS}")
    return arr


# ---------------------------------------------------------------------------- loader
def load_flame(path, n_shape: int = 300, n_expr: int = 100) -> MorphableModel:
    """Read a FLAME ``.pkl`` as a MorphableModel with at most ``n_shape``/``n_expr`` components.

    The first 300 shapedirs columns are identity and the rest expression (files with fewer
    columns give identity only). Raises ModelFileError (UnsafeFileError for hostile files).
    """
    if int(n_shape) < 0 or int(n_expr) < 0:
        raise ValueError("n_shape and n_expr must be >= 0")
    path = str(path)
    data = _unpickle(path)
    if not isinstance(data, dict):
        raise ModelFileError(
            f"'{path}' is a pickle of {type(data).__name__}, not a FLAME model dict. {_FLAME_CONTENTS}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelFileError(
            f"'{path}' is not a FLAME model: missing {', '.join(missing)}. {_FLAME_CONTENTS}")

    def bad(key: str, arr: np.ndarray, expected: str) -> ModelFileError:
        return ModelFileError(
            f"'{path}': '{key}' has shape {tuple(arr.shape)} but should be {expected}. {_FLAME_CONTENTS}")

    v_template = _to_array(data["v_template"], "v_template", path)
    if v_template.ndim != 2 or v_template.shape[1] != 3 or v_template.shape[0] < 3:
        raise bad("v_template", v_template, "(V, 3)")
    V = v_template.shape[0]

    faces = _to_array(data["f"], "f", path)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise bad("f", faces, "(F, 3)")
    if faces.dtype.kind == "f" and not np.all(faces == np.round(faces)):
        raise ModelFileError(f"'{path}': triangle indices 'f' are not whole numbers.")
    faces = faces.astype(np.int64)  # FLAME stores uint32
    if faces.min() < 0 or faces.max() >= V:
        raise ModelFileError(
            f"'{path}': triangle indices 'f' range over [{faces.min()}, {faces.max()}] but there "
            f"are only {V} template vertices.")

    shapedirs = _to_array(data["shapedirs"], "shapedirs", path)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (V, 3) or shapedirs.shape[2] < 1:
        raise bad("shapedirs", shapedirs, f"(V={V}, 3, K) matching v_template")

    kintree = _to_array(data["kintree_table"], "kintree_table", path)
    if kintree.ndim != 2 or kintree.shape[0] != 2 or kintree.shape[1] < 1:
        raise bad("kintree_table", kintree, "(2, J)")
    J = kintree.shape[1]
    if not np.array_equal(kintree[1].astype(np.int64), np.arange(J)):
        raise ModelFileError(f"'{path}': kintree_table row 1 must list joints 0..{J - 1} in order.")
    parents = kintree[0].astype(np.int64)
    parents[np.isin(parents, _ROOT_MARKERS)] = -1
    if parents[0] != -1:
        raise ModelFileError(f"'{path}': the first joint in kintree_table must be the root.")

    regressor = _to_array(data["J_regressor"], "J_regressor", path)
    if regressor.shape != (J, V):
        raise bad("J_regressor", regressor, f"(J={J}, V={V})")
    weights = _to_array(data["weights"], "weights", path)
    if weights.shape != (V, J):
        raise bad("weights", weights, f"(V={V}, J={J})")

    posedirs = None
    if data.get("posedirs") is not None:  # optional: a FLAME-like file may lack correctives
        pd = _to_array(data["posedirs"], "posedirs", path)
        if pd.shape != (V, 3, 9 * (J - 1)):
            raise bad("posedirs", pd, f"(V={V}, 3, {9 * (J - 1)})")
        # FLAME multiplies the flattened (V*3, P) matrix by the pose feature; ours is (P, V, 3)
        posedirs = np.array(np.transpose(pd, (2, 0, 1)), dtype=np.float32, order="C")

    total = shapedirs.shape[2]
    n_id = min(FLAME_SHAPE_COMPONENTS, total)
    shape_basis = np.array(shapedirs[:, :, :min(int(n_shape), n_id)], dtype=np.float32, order="C")
    expr_basis = np.array(shapedirs[:, :, n_id:n_id + int(n_expr)], dtype=np.float32, order="C")

    names = list(FLAME_JOINT_NAMES) if J == len(FLAME_JOINT_NAMES) else \
        ["root"] + [f"joint_{i}" for i in range(1, J)]
    joints = JointRig(
        names=names,
        parents=parents,
        regressor=np.array(regressor, dtype=np.float32, order="C"),
        weights=np.array(weights, dtype=np.float32, order="C"),
        posedirs=posedirs,
    )
    model = MorphableModel(
        name="FLAME",
        v_template=np.array(v_template, dtype=np.float32, order="C"),
        faces=np.array(faces, dtype=np.int64, order="C"),
        shape_basis=shape_basis,
        expr_basis=expr_basis,
        expr_names=[f"exp_{i:03d}" for i in range(expr_basis.shape[2])],
        albedo_mean=None,
        joints=joints,
        landmarks=None,
        source=path,
        notes={"format": "FLAME pkl"},
    )
    return model.validate()


__all__ = ["load_flame", "looks_like_flame", "FLAME_JOINT_NAMES"]
