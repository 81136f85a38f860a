"""Test helper: WRITES FLAME-format pickles shaped like the real downloads (no chumpy needed).

Real FLAME .pkl files are protocol-2 pickles of a dict in which v_template / shapedirs /
posedirs / weights are chumpy ``chumpy.ch.Ch`` objects (state dict with the value in 'x' and
a ``_dirty_vars`` set), ``J_regressor`` is a ``scipy.sparse.csc_matrix`` and
``kintree_table`` stores the root's parent as 4294967295. The fake ``chumpy`` modules
exist in sys.modules only while pickling, so the loader under test never sees them.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import struct
import subprocess
import sys
import types

import numpy as np
import scipy.sparse

ROOT_PARENT = 4294967295  # uint32(-1), as in FLAME's kintree_table
JOINT_NAMES = ["root", "neck", "jaw", "eye_L", "eye_R"]


class Ch:
    """Stand-in for chumpy.ch.Ch; pickles under that name with a Ch-like state dict."""

    def __init__(self, x, state=None):
        self.x = np.asarray(x)
        self._state = state  # override the pickled state (to test odd layouts)

    def __getstate__(self):
        if self._state is not None:
            return self._state
        # what chumpy's Ch.__getstate__ leaves after dropping _parents and _cache
        return {"x": self.x, "_dirty_vars": {"x"}, "_itr": None, "_make_dense": False,
                "_make_sparse": False, "_depends_on_deps": {}}


Ch.__module__ = "chumpy.ch"
Ch.__qualname__ = "Ch"


@contextlib.contextmanager
def _fake_chumpy():
    """Register chumpy / chumpy.ch (holding our Ch) only while pickling."""
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    pkg = types.ModuleType("chumpy")
    mod = types.ModuleType("chumpy.ch")
    mod.Ch = Ch
    pkg.ch = mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and (latin-1) str as Python-2 ``str`` opcodes, as the real FLAME files have.

    Python 3 would write bytes as ``_codecs.encode(...)`` calls under protocol 2; Python 2
    wrote SHORT_BINSTRING / BINSTRING, which a ``encoding='latin1'`` load turns into str.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        if isinstance(obj, str):
            try:
                data = obj.encode("latin1")
            except UnicodeEncodeError:
                return pickle._Pickler.save_str(self, obj)
        else:
            data = bytes(obj)
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def dump_pickle(obj, path, protocol: int = 2, py2_strings: bool = False) -> None:
    """Pickle ``obj`` (which may contain Ch stand-ins) to ``path``.

    ``py2_strings`` (protocol 1-2 only) mimics a Python-2 writer; see _Py2Pickler.
    """
    with _fake_chumpy(), open(path, "wb") as fh:
        if py2_strings and 1 <= protocol <= 2:
            _Py2Pickler(fh, protocol=protocol).dump(obj)
        else:
            pickle.dump(obj, fh, protocol=protocol)


def flame_dict(v_template, faces, shapedirs, posedirs, J_regressor_dense, weights, kintree_table,
               chumpy_objects: bool = True) -> dict:
    """The dict a FLAME .pkl holds, built from plain arrays."""
    wrap = (lambda a: Ch(a)) if chumpy_objects else (lambda a: np.asarray(a))  # noqa: E731
    reg = np.asarray(J_regressor_dense, np.float64)
    v = np.asarray(v_template, np.float64)
    return {
        "f": np.asarray(faces).astype(np.uint32),
        "v_template": wrap(v),
        "shapedirs": Ch(np.asarray(shapedirs, np.float64)),  # a Ch in every real file
        "posedirs": wrap(np.asarray(posedirs, np.float64)),
        "J_regressor": scipy.sparse.csc_matrix(reg),
        "weights": wrap(np.asarray(weights, np.float64)),
        "kintree_table": np.asarray(kintree_table, np.int64),
        "J": reg @ v,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_flame_pkl(path, v_template, faces, shapedirs, posedirs, J_regressor_dense, weights,
                    kintree_table, chumpy_objects: bool = True, protocol: int = 2,
                    py2_strings: bool = True) -> None:
    """Write a FLAME-format pickle the way the real generic_model.pkl / flame2023.pkl look
    (protocol 2, Python-2 strings, chumpy Ch arrays, csc J_regressor)."""
    dump_pickle(flame_dict(v_template, faces, shapedirs, posedirs, J_regressor_dense, weights,
                           kintree_table, chumpy_objects), path, protocol, py2_strings)


# ------------------------------------------------------------------------ hostile files
class _SystemCall:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _EvalCall:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.eval, (f"open({self.marker!r}, 'w').close()",)


class _SubprocessCall:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


_PAYLOADS = {"system": _SystemCall, "eval": _EvalCall, "subprocess": _SubprocessCall}


def write_malicious_pkl(path, marker, how: str = "system", inside_chumpy: bool = False) -> None:
    """A FLAME-looking pickle whose loading would create ``marker`` (via os.system/eval/...)."""
    payload = _PAYLOADS[how](marker)
    arrays = make_tiny_flame_arrays(0, n_components=4)
    d = flame_dict(**arrays)
    if inside_chumpy:  # hidden inside a Ch's state, as a real attack might
        d["shapedirs"] = Ch(arrays["shapedirs"], state={"x": payload})
    else:
        d = {"v_template": payload, **{k: v for k, v in d.items() if k != "v_template"}}
    dump_pickle(d, path, protocol=2)


# -------------------------------------------------------------------------- tiny model
def _icosphere(subdiv: int):
    t = (1.0 + 5 ** 0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
             (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [np.array(v, np.float64) / np.linalg.norm(v) for v in verts]
    for _ in range(subdiv):
        cache, new_faces = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return np.array(verts), np.array(faces, np.int64)


def make_tiny_flame_arrays(seed: int = 0, n_components: int = 400) -> dict:
    """A consistent FLAME-like model on a 162-vertex head-sized ellipsoid (metres, y up, +z face).

    Keys match write_flame_pkl's parameters. Skinning: lower neck -> root, head -> neck,
    lower front -> jaw (with a 50/50 seam with the neck), two front patches -> eyes.
    """
    rng = np.random.default_rng(seed)
    unit, faces = _icosphere(2)
    v = unit * np.array([0.075, 0.10, 0.09])
    V = len(v)
    x, y, z = v.T

    targets = np.array([[0.0, -0.09, -0.01], [0.0, -0.06, -0.01], [0.0, -0.03, 0.01],
                        [0.03, 0.03, 0.06], [-0.03, 0.03, 0.06]])
    reg = np.zeros((5, V))
    for j, t in enumerate(targets):  # inverse-distance average of the 6 nearest vertices
        d = np.linalg.norm(v - t, axis=1)
        near = np.argsort(d)[:6]
        reg[j, near] = 1.0 / (d[near] + 1e-3)
        reg[j] /= reg[j].sum()

    w = np.zeros((V, 5))
    w[:, 1] = 1.0
    w[y < -0.08, :] = [1, 0, 0, 0, 0]
    jaw = (y < -0.02) & (y >= -0.08) & (z > 0.0)
    seam = (y < -0.02) & (y >= -0.08) & (z <= 0.0) & (z > -0.03)
    w[jaw] = [0, 0, 1, 0, 0]
    w[seam] = [0, 0.5, 0.5, 0, 0]
    for j in (3, 4):
        w[np.linalg.norm(v - targets[j], axis=1) < 0.03] = np.eye(5)[j]

    # smooth random fields: sums of low-frequency sinusoids, a few millimetres each
    freq = rng.normal(0.0, 15.0, (n_components, 3, 3))           # (K, terms, xyz) in 1/m
    phase = rng.uniform(0, 2 * np.pi, (n_components, 3))
    dirs = rng.normal(0.0, 1.0, (n_components, 3, 3))            # (K, terms, offset xyz)
    waves = np.sin(np.einsum("vc,ktc->vkt", v, freq) + phase[None])
    shapedirs = np.einsum("vkt,ktc->vck", waves, dirs)
    shapedirs *= 1e-3 / np.abs(shapedirs).max(axis=(0, 1), keepdims=True)
    shapedirs *= np.linspace(3.0, 0.5, n_components)[None, None]

    pose_freq = rng.normal(0.0, 10.0, (36, 3))
    posedirs = 2e-4 * np.sin(v @ pose_freq.T)[:, None, :] * rng.normal(0, 1, (1, 3, 36))

    kintree = np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)
    return dict(v_template=v, faces=faces, shapedirs=shapedirs, posedirs=posedirs,
                J_regressor_dense=reg, weights=w, kintree_table=kintree)
