"""FLAME .pkl loading (safe, chumpy-free) and the FaceForge .npz model format."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flame_format import (Ch, JOINT_NAMES, ROOT_PARENT, dump_pickle, flame_dict,  # noqa: E402
                          make_tiny_flame_arrays, write_flame_pkl, write_malicious_pkl)

from core.errors import ModelFileError, UnsafeFileError  # noqa: E402
from core.models.flame import load_flame, looks_like_flame  # noqa: E402
from core.models.morphable import LandmarkEmbedding, MorphableModel  # noqa: E402
from core.models.npz_format import FORMAT_TAG, load_model_npz, save_model_npz  # noqa: E402


@pytest.fixture(scope="module")
def arrays():
    return make_tiny_flame_arrays(seed=3)


@pytest.fixture
def flame_pkl(tmp_path, arrays):
    path = tmp_path / "generic_model.pkl"
    write_flame_pkl(path, **arrays)
    return path


def f32(a):
    return np.asarray(a).astype(np.float32)


# ------------------------------------------------------------------------------- FLAME
# protocol 2 + Python-2 strings is what the real downloads are; the others are re-saves
@pytest.mark.parametrize("protocol, py2_strings", [(2, True), (2, False), (0, False), (5, False)])
@pytest.mark.parametrize("chumpy_objects", [True, False])
def test_flame_loads_exactly_without_chumpy(tmp_path, arrays, protocol, py2_strings, chumpy_objects):
    path = tmp_path / "m.pkl"
    write_flame_pkl(path, **arrays, chumpy_objects=chumpy_objects, protocol=protocol,
                    py2_strings=py2_strings)
    raw = path.read_bytes()
    assert b"chumpy.ch" in raw and b"scipy.sparse" in raw  # references chumpy.ch.Ch like real files
    assert (b"_codecs" in raw) == (protocol in (0, 2) and not py2_strings)
    assert "chumpy" not in sys.modules
    m = load_flame(path)
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules

    assert m.name == "FLAME" and m.source == str(path) and m.notes == {"format": "FLAME pkl"}
    assert m.albedo_mean is None and m.landmarks is None
    assert m.v_template.dtype == np.float32 and m.faces.dtype == np.int64
    assert np.array_equal(m.v_template, f32(arrays["v_template"]))
    assert np.array_equal(m.faces, arrays["faces"])
    sd = arrays["shapedirs"]
    assert np.array_equal(m.shape_basis, f32(sd[:, :, :300]))
    assert np.array_equal(m.expr_basis, f32(sd[:, :, 300:400]))
    assert m.expr_names[0] == "exp_000" and m.expr_names[-1] == "exp_099" and len(m.expr_names) == 100

    j = m.joints
    assert j.names == JOINT_NAMES == ["root", "neck", "jaw", "eye_L", "eye_R"]
    assert j.parents.dtype == np.int64 and j.parents.tolist() == [-1, 0, 1, 1, 1]
    assert np.array_equal(j.regressor, f32(arrays["J_regressor_dense"]))
    assert np.array_equal(j.weights, f32(arrays["weights"]))
    assert j.posedirs.shape == (36, m.n_vertices, 3)
    for p in (0, 7, 35):
        assert np.array_equal(j.posedirs[p], f32(arrays["posedirs"][:, :, p]))
    for arr in (m.v_template, m.shape_basis, j.posedirs, j.regressor):
        assert arr.flags.writeable and arr.flags.c_contiguous


def test_identity_expression_split_and_truncation(tmp_path, arrays):
    sd = arrays["shapedirs"]
    path = tmp_path / "m.pkl"
    write_flame_pkl(path, **arrays)
    m = load_flame(path, n_shape=20, n_expr=5)
    assert (m.n_shape, m.n_expr) == (20, 5)
    assert np.array_equal(m.shape_basis, f32(sd[:, :, :20]))
    assert np.array_equal(m.expr_basis, f32(sd[:, :, 300:305]))
    assert m.expr_names == [f"exp_{i:03d}" for i in range(5)]

    # the layer applies identity coefficient i as shapedirs[..., i], expression e as [..., 300+e]
    layer = m.layer()
    shape = torch.zeros(1, 20)
    shape[0, 4] = 1.0
    expr = torch.zeros(1, 5)
    expr[0, 2] = -2.0
    out = layer(shape, expr).numpy()[0]
    expected = f32(arrays["v_template"]) + f32(sd[:, :, 4]) - 2.0 * f32(sd[:, :, 302])
    np.testing.assert_allclose(out, expected, atol=1e-7)


@pytest.mark.parametrize("total, n_id, n_ex", [(320, 300, 20), (120, 120, 0)])
def test_fewer_components_in_file(tmp_path, total, n_id, n_ex):
    a = make_tiny_flame_arrays(seed=1, n_components=total)
    path = tmp_path / "m.pkl"
    write_flame_pkl(path, **a)
    m = load_flame(path)
    assert (m.n_shape, m.n_expr, len(m.expr_names)) == (n_id, n_ex, n_ex)
    assert np.array_equal(m.shape_basis, f32(a["shapedirs"][:, :, :n_id]))
    assert np.array_equal(m.expr_basis, f32(a["shapedirs"][:, :, n_id:]))
    m.layer()(torch.zeros(1, n_id), torch.zeros(1, n_ex))  # usable even with no expressions


def _flame_lbs_reference(a, shape_coeffs, pose):
    """FLAME's own LBS on the raw FLAME-layout arrays (float64 numpy, scipy rotations)."""
    v = a["v_template"] + a["shapedirs"][:, :, :len(shape_coeffs)] @ shape_coeffs
    J = a["J_regressor_dense"] @ v
    parents = a["kintree_table"][0].copy()
    parents[parents == ROOT_PARENT] = -1
    R = Rotation.from_rotvec(pose).as_matrix()                 # (5, 3, 3); pose[0] = 0
    feat = (R[1:] - np.eye(3)).ravel()
    V = len(v)
    v_posed = v + (a["posedirs"].reshape(V * 3, -1) @ feat).reshape(V, 3)
    G = np.zeros((5, 4, 4))
    for i in range(5):
        local = np.eye(4)
        local[:3, :3] = R[i]
        local[:3, 3] = J[i] - (J[parents[i]] if parents[i] >= 0 else 0)
        G[i] = local if parents[i] < 0 else G[parents[i]] @ local
    G[:, :3, 3] -= np.einsum("jab,jb->ja", G[:, :3, :3], J)
    T = np.einsum("vj,jab->vab", a["weights"], G)
    return np.einsum("vab,vb->va", T[:, :3, :3], v_posed) + T[:, :3, 3]


def test_skinning_matches_flame_reference(flame_pkl, arrays):
    m = load_flame(flame_pkl, n_shape=10, n_expr=0)
    rng = np.random.default_rng(0)
    shape = rng.normal(size=10)
    pose = np.zeros((5, 3))
    pose[1:] = rng.normal(0, 0.3, (4, 3))
    expected = _flame_lbs_reference(arrays, shape, pose)
    out = m.layer()(torch.tensor(shape[None], dtype=torch.float32), None,
                    torch.tensor(pose[None, 1:], dtype=torch.float32)).numpy()[0]
    np.testing.assert_allclose(out, expected, atol=2e-6)


@pytest.mark.parametrize("joint, moved_joints", [(2, [2]), (3, [3]), (4, [4]), (1, [1, 2, 3, 4])])
def test_rotating_a_joint_moves_only_its_vertices(tmp_path, arrays, joint, moved_joints):
    a = dict(arrays, posedirs=np.zeros_like(arrays["posedirs"]))  # isolate the skinning
    path = tmp_path / "m.pkl"
    write_flame_pkl(path, **a)
    layer = load_flame(path).layer()
    pose = torch.zeros(1, 4, 3)
    pose[0, joint - 1] = torch.tensor([0.4, 0.1, -0.2])
    rest = layer(torch.zeros(1, 300)).numpy()[0]
    posed = layer(torch.zeros(1, 300), None, pose).numpy()[0]
    moved = np.linalg.norm(posed - rest, axis=1) > 1e-6
    influenced = a["weights"][:, moved_joints].sum(1) > 0
    assert influenced.any() and (~influenced).any()
    assert np.array_equal(moved, influenced)


def test_chumpy_object_without_value_is_refused(tmp_path, arrays):
    d = flame_dict(**arrays)
    d["shapedirs"] = Ch(arrays["shapedirs"], state={"a": 1, "b": 2})  # e.g. a derived chumpy op
    path = tmp_path / "m.pkl"
    dump_pickle(d, path)
    with pytest.raises(ModelFileError, match="chumpy object .*without a stored value"):
        load_flame(path)


@pytest.mark.parametrize("how, inside_chumpy", [("system", False), ("eval", False),
                                                 ("subprocess", False), ("system", True)])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how, inside_chumpy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    write_malicious_pkl(path, marker, how=how, inside_chumpy=inside_chumpy)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError) as err:
        load_flame(path)
    assert not marker.exists()
    # protocol 2 writes Python-2 names: subprocess.call is stored as commands.call
    expected = {"system": "system'", "eval": "eval'", "subprocess": ".call'"}[how]
    assert expected in str(err.value) and "trust" in str(err.value)


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "eval"),
    ("builtins", "getattr"), ("builtins", "__import__"), ("subprocess", "Popen"),
    ("functools", "partial"), ("numpy", "load"), ("numpy.core.multiarray", "fromfile"),
    ("scipy.sparse", "load_npz"), ("copyreg", "_reduce_ex"), ("_codecs", "decode"),
])
def test_unknown_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "g.pkl"
    # GLOBAL opcode followed by STOP: find_class alone must refuse it
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00.")
    with pytest.raises(UnsafeFileError, match=f"'{module}.{name}'"):
        load_flame(path)


def test_reconstructor_cannot_build_arbitrary_objects(tmp_path):
    # copy_reg._reconstructor(numpy.ndarray, numpy.ndarray, ...) would call ndarray.__new__/__init__
    path = tmp_path / "r.pkl"
    path.write_bytes(b"\x80\x02ccopy_reg\n_reconstructor\ncnumpy\nndarray\ncnumpy\nndarray\nN\x87R.")
    with pytest.raises(UnsafeFileError, match="_reconstructor"):
        load_flame(path)


def _corrupt_cases(tmp_path, arrays):
    good = tmp_path / "good.pkl"
    write_flame_pkl(good, **arrays)
    data = good.read_bytes()
    cases = {}
    cases["truncated"] = (data[: len(data) // 2], "truncated or corrupt")
    cases["text"] = (b"hello, I am a text file\n", "not a Python pickle")
    cases["zip"] = (b"PK\x03\x04" + b"\0" * 40, "zip archive")
    cases["empty"] = (b"", "empty")
    cases["list"] = (pickle.dumps([1, 2, 3], protocol=2), "pickle of list")
    d = flame_dict(**arrays)
    del d["shapedirs"]
    cases["no_shapedirs"] = (d, "missing shapedirs")
    d = flame_dict(**arrays)
    d["shapedirs"] = Ch(arrays["shapedirs"][:-1])
    cases["shapedirs_mismatch"] = (d, r"'shapedirs' has shape \(161, 3, 400\)")
    d = flame_dict(**arrays)
    d["weights"] = arrays["weights"][:, :4]
    cases["weights_mismatch"] = (d, r"'weights' has shape")
    d = flame_dict(**arrays)
    d["f"] = arrays["faces"] + 1000
    cases["faces_range"] = (d, "triangle indices")
    d = flame_dict(**arrays)
    d["shapedirs"] = "not an array"
    cases["shapedirs_str"] = (d, "should be a numeric array")
    return cases


@pytest.mark.parametrize("case", ["truncated", "text", "zip", "empty", "list", "no_shapedirs",
                                  "shapedirs_mismatch", "weights_mismatch", "faces_range",
                                  "shapedirs_str"])
def test_bad_files_raise_helpful_model_file_errors(tmp_path, arrays, case):
    content, message = _corrupt_cases(tmp_path, arrays)[case]
    path = tmp_path / f"{case}.pkl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        dump_pickle(content, path)
    with pytest.raises(ModelFileError, match=message) as err:
        load_flame(path)
    assert not isinstance(err.value, UnsafeFileError)
    assert str(path) in str(err.value)
    if case in ("text", "list", "no_shapedirs", "shapedirs_mismatch"):
        assert "v_template (5023, 3)" in str(err.value)  # tells the user what FLAME holds


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_flame(tmp_path / "nope.pkl")
    with pytest.raises(ModelFileError, match="folder"):
        load_flame(tmp_path)


def test_looks_like_flame(tmp_path, flame_pkl):
    assert looks_like_flame(flame_pkl)
    txt = tmp_path / "t.pkl"
    txt.write_text("hello")
    assert not looks_like_flame(txt)
    assert not looks_like_flame(tmp_path / "missing.pkl")
    other = tmp_path / "m.npz"
    other.write_bytes(flame_pkl.read_bytes())
    assert not looks_like_flame(other)


# --------------------------------------------------------------------------------- npz
def _rich_model(flame_pkl) -> MorphableModel:
    m = load_flame(flame_pkl, n_shape=12, n_expr=7)
    rng = np.random.default_rng(5)
    V, F = m.n_vertices, len(m.faces)
    m.albedo_mean = rng.uniform(0, 1, (V, 3)).astype(np.float32)
    m.albedo_basis = rng.normal(0, 0.05, (V, 3, 4)).astype(np.float32)
    m.uv = rng.uniform(0, 1, (V, 2)).astype(np.float32)
    m.expr_names = [f"smile_{i}" if i % 2 else f"brow ü {i}" for i in range(7)]
    bary = rng.uniform(0.1, 1, (9, 3))
    m.landmarks = LandmarkEmbedding(
        detector_index=np.arange(0, 90, 10, dtype=np.int64),
        face_index=rng.integers(0, F, 9).astype(np.int64),
        bary=(bary / bary.sum(1, keepdims=True)).astype(np.float32),
        method="render-detect", error_mm=1.25)
    m.source = "converted from a test FLAME"
    m.notes = {"format": "FLAME pkl", "n": 3, "scale": np.float32(0.5), "list": [1, 2], "nested": {"a": "b"}}
    return m.validate()


def _assert_same_model(a: MorphableModel, b: MorphableModel, notes=None):
    for field in ("v_template", "faces", "shape_basis", "expr_basis", "albedo_mean", "albedo_basis", "uv"):
        x, y = getattr(a, field), getattr(b, field)
        if x is None:
            assert y is None, field
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y), field
    assert (a.name, a.expr_names, a.source) == (b.name, b.expr_names, b.source)
    assert b.notes == (a.notes if notes is None else notes)
    if a.joints is None:
        assert b.joints is None
    else:
        assert a.joints.names == b.joints.names
        for field in ("parents", "regressor", "weights", "posedirs"):
            x, y = getattr(a.joints, field), getattr(b.joints, field)
            assert (x is None and y is None) or (x.dtype == y.dtype and np.array_equal(x, y)), field
    if a.landmarks is None:
        assert b.landmarks is None
    else:
        la, lb = a.landmarks, b.landmarks
        assert (la.method, la.error_mm) == (lb.method, lb.error_mm)
        for field in ("detector_index", "face_index", "bary"):
            x, y = getattr(la, field), getattr(lb, field)
            assert x.dtype == y.dtype and np.array_equal(x, y), field


@pytest.mark.parametrize("compress", [True, False])
def test_npz_round_trip_is_exact(tmp_path, flame_pkl, compress):
    m = _rich_model(flame_pkl)
    path = save_model_npz(m, tmp_path / "head.npz", compress=compress)
    back = load_model_npz(path)
    _assert_same_model(m, back, notes={**m.notes, "scale": 0.5})  # numpy scalar -> JSON number
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_npz_round_trip_minimal_model(tmp_path):
    rng = np.random.default_rng(2)
    m = MorphableModel(name="Tri", v_template=rng.normal(size=(4, 3)).astype(np.float32),
                       faces=np.array([[0, 1, 2], [0, 2, 3]], np.int64),
                       shape_basis=rng.normal(size=(4, 3, 2)).astype(np.float32),
                       expr_basis=np.zeros((4, 3, 0), np.float32), expr_names=[])
    path = tmp_path / "tri.model"  # any name: no '.npz' is appended
    assert save_model_npz(m, path) == path and path.exists()
    back = load_model_npz(path)
    assert back.source == str(path)  # no stored source -> the file itself
    back.source = ""
    _assert_same_model(m, back)
    m.landmarks = LandmarkEmbedding(np.array([1], np.int64), np.array([1], np.int64),
                                    np.array([[0.2, 0.3, 0.5]], np.float32))  # error_mm None
    m.source = "x"
    _assert_same_model(m, load_model_npz(save_model_npz(m, path)))


def _saved_arrays(tmp_path, flame_pkl) -> dict:
    path = save_model_npz(_rich_model(flame_pkl), tmp_path / "ok.npz")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _write_npz(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # np.savez happily pickles object arrays
    return path


@pytest.mark.parametrize("key", ["expr_names", "v_template", "notes_json"])
def test_npz_object_arrays_are_refused(tmp_path, flame_pkl, key):
    a = _saved_arrays(tmp_path, flame_pkl)
    a[key] = np.array(a[key].tolist(), dtype=object)
    with pytest.raises(UnsafeFileError, match=f"'{key}' holds Python objects"):
        load_model_npz(_write_npz(tmp_path / "obj.npz", a))


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update(format=np.array("something-else")), "not a FaceForge model"),
    (lambda a: a.update(format_version=np.array(3)), "version 3.*Update FaceForge"),
    (lambda a: a.pop("shape_basis"), "missing shape_basis"),
    (lambda a: a.pop("format"), "missing format"),
    (lambda a: a.pop("lbs_weights"), "joints need all of"),
    (lambda a: a.update(shape_basis=a["shape_basis"][:-1]), "identity basis must be"),
    (lambda a: a.update(faces=a["faces"].astype(np.float32)), "'faces' must be int64"),
    (lambda a: a.update(expr_names=a["expr_names"][:-1]), "names"),
    (lambda a: a.update(notes_json=np.array("{oops")), "not valid JSON"),
])
def test_npz_bad_contents(tmp_path, flame_pkl, edit, message):
    a = _saved_arrays(tmp_path, flame_pkl)
    edit(a)
    with pytest.raises(ModelFileError, match=message):
        load_model_npz(_write_npz(tmp_path / "bad.npz", a))


def test_npz_not_an_archive(tmp_path, flame_pkl):
    txt = tmp_path / "t.npz"
    txt.write_text("just text")
    with pytest.raises(ModelFileError, match="not a zip"):
        load_model_npz(txt)
    npy = tmp_path / "a.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(ModelFileError, match="single .npy array"):
        load_model_npz(npy)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model_npz(flame_pkl)
    with pytest.raises(ModelFileError, match="not found"):
        load_model_npz(tmp_path / "missing.npz")
    good = save_model_npz(_rich_model(flame_pkl), tmp_path / "g.npz")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ModelFileError):
        load_model_npz(trunc)


def test_npz_save_validates_and_leaves_nothing(tmp_path, flame_pkl):
    m = _rich_model(flame_pkl)
    m.shape_basis = m.shape_basis[:-1]
    target = tmp_path / "broken.npz"
    with pytest.raises(ModelFileError):
        save_model_npz(m, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_npz_format_tag_constant():
    assert FORMAT_TAG == "faceforge-morphable-model"
