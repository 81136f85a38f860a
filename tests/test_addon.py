"""The add-on as a package: registration, packaging (extension + legacy zips), install, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
OPERATORS = ("FACEFORGE_OT_reconstruct_photo", "FACEFORGE_OT_export_fbx", "FACEFORGE_OT_export_gltf")


def run_py(code: str, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter (isolated bpy state); the code must end with os._exit."""
    import os
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([PY, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), env=full_env)


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# ----------------------------------------------------------------------------- registration
def test_register_unregister_cycle():
    was = hasattr(bpy.types, OPERATORS[0])
    if was:
        blender_addon.unregister()
    try:
        blender_addon.register()
        for name in OPERATORS + ("FACEFORGE_PT_main",):
            assert hasattr(bpy.types, name), name
        assert hasattr(bpy.types.Scene, "faceforge")
        assert bpy.context.scene.faceforge.model_source == "BUILTIN"
        panel = bpy.types.FACEFORGE_PT_main
        assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "FaceForge")
        for cls in blender_addon.operators.CLASSES:
            assert cls.bl_idname.startswith("faceforge.")
            assert cls.bl_description and cls.bl_options == {"REGISTER", "UNDO"}
        rna = bpy.ops.faceforge.reconstruct_photo.get_rna_type().properties
        assert rna["filepath"].subtype == "FILE_PATH" and rna["filter_image"].default is True
        assert "output_dir" in rna
        assert blender_addon.preferences.FACEFORGE_AP_preferences.bl_idname == "blender_addon"
        blender_addon.unregister()
        for name in OPERATORS + ("FACEFORGE_PT_main",):
            assert not hasattr(bpy.types, name), name
        assert not hasattr(bpy.types.Scene, "faceforge")
        blender_addon.register()      # a second cycle works too (no stale state)
        blender_addon.unregister()
    finally:
        if was:
            blender_addon.register()


def test_engine_loads_repo_core_under_the_addon_name():
    r = run_py(
        "import json, os, sys\n"
        "import blender_addon\n"
        "from blender_addon import engine\n"
        "from blender_addon.core.rig import HeadRig\n"
        "print(json.dumps({'name': engine.core.__name__, 'vendored': engine.VENDORED,\n"
        "  'same': HeadRig is engine.core.rig.HeadRig, 'top_core': 'core' in sys.modules,\n"
        "  'weights': (engine.weights_dir() / 'builtin_face.npz').is_file(),\n"
        "  'torch': 'torch' in sys.modules}))\n"
        "sys.stdout.flush(); os._exit(0)\n")
    assert r.returncode == 0, r.stderr
    info = last_json(r.stdout)
    assert info == {"name": "blender_addon.core", "vendored": False, "same": True, "top_core": False,
                    "weights": True, "torch": False}   # importing the add-on does not pull in torch


# ----------------------------------------------------------------------------- packaging
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([PY, str(ROOT / "build_addon.py"), "--out", str(out)], capture_output=True, text=True,
                       timeout=120, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    ext = sorted(out.glob("faceforge-*-extension.zip"))
    legacy = sorted(out.glob("faceforge-*-legacy.zip"))
    assert len(ext) == 1 and len(legacy) == 1, list(out.iterdir())
    return {"extension": ext[0], "legacy": legacy[0], "log": r.stdout}


def test_build_produces_both_zips(built):
    assert "Success parsing TOML" in built["log"]          # validated by Blender's extension builder
    with zipfile.ZipFile(built["extension"]) as zf:
        ext = set(zf.namelist())
    with zipfile.ZipFile(built["legacy"]) as zf:
        legacy = set(zf.namelist())
    for rel in ("blender_manifest.toml", "__init__.py", "engine.py", "scene/head_builder.py",
                "core/__init__.py", "core/rig/head_rig.py", "weights/builtin_face.npz"):
        assert rel in ext, rel
        assert f"faceforge/{rel}" in legacy, rel
    assert all(n.startswith("faceforge/") for n in legacy)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in ext | legacy)
    # the repo's core tree is vendored completely
    core_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "core").rglob("*.py") if "__pycache__" not in p.parts}
    assert core_files <= ext


def test_import_checker_catches_absolute_imports(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        import build_addon
    finally:
        sys.path.remove(str(ROOT))
    (tmp_path / "ok.py").write_text("from .core import rig\nfrom . import engine\nimport os\n")
    (tmp_path / "bad.py").write_text("import core.rig\nfrom core.errors import FaceForgeError\n")
    problems = build_addon.absolute_import_problems(tmp_path)
    assert len(problems) == 2 and all(p.startswith("bad.py") for p in problems)


INSTALL = r"""
import json, os, sys
import bpy
kind, path, photo = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
if kind == "legacy":
    assert bpy.ops.preferences.addon_install(filepath=path) == {"FINISHED"}
    assert bpy.ops.preferences.addon_enable(module="faceforge") == {"FINISHED"}
    name = "faceforge"
else:
    assert bpy.ops.extensions.package_install_files(filepath=path, repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    name = "bl_ext.user_default.faceforge"
mod = sys.modules[name]
out["file"] = mod.__file__
out["registered"] = all(hasattr(bpy.types, c) for c in
                        ("FACEFORGE_OT_reconstruct_photo", "FACEFORGE_OT_export_fbx", "FACEFORGE_PT_main"))
out["core"] = mod.engine.core.__name__
out["vendored"] = mod.engine.VENDORED
out["top_core"] = "core" in sys.modules
out["prefs"] = bpy.context.preferences.addons[name].preferences.device
# preferences drive the operator: a custom model path that does not exist is a clear error
bpy.context.preferences.addons[name].preferences.model_path = "/nonexistent/model.npz"
bpy.context.scene.faceforge.model_source = "CUSTOM"
try:
    bpy.ops.faceforge.reconstruct_photo(filepath=photo)
    out["custom_error"] = None
except RuntimeError as e:
    out["custom_error"] = str(e)
out["objects_after_error"] = len(bpy.data.objects)
if kind == "extension":
    # the vendored engine finds its vendored data (weights/ inside the installed package)
    import importlib
    models = importlib.import_module(name + ".core.models")
    model = models.load_model("builtin")
    out["builtin_vertices"] = int(model.n_vertices)
    out["weights_dir"] = str(mod.engine.weights_dir())
if kind == "legacy":
    assert bpy.ops.preferences.addon_disable(module="faceforge") == {"FINISHED"}
    out["unregistered"] = not hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo")
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)
"""


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    import imageio.v3 as iio
    p = tmp_path_factory.mktemp("photo") / "astronaut.png"
    iio.imwrite(p, skimage_data.astronaut())
    return p


def _user_env(tmp_path):
    res = tmp_path / "blender_user"
    res.mkdir()
    return {"BLENDER_USER_RESOURCES": str(res), "BLENDER_USER_SCRIPTS": str(res / "scripts")}, res


def test_legacy_zip_installs_and_enables(built, photo, tmp_path):
    env, res = _user_env(tmp_path)
    r = run_py(INSTALL, "legacy", built["legacy"], photo, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = last_json(r.stdout)
    assert Path(info["file"]).is_relative_to(res)            # the installed copy, not the repo
    assert info["registered"] and info["unregistered"]
    assert info["core"] == "faceforge.core" and info["vendored"] and not info["top_core"]
    assert info["prefs"] == "AUTO"
    assert info["custom_error"] and "model.npz" in info["custom_error"]
    assert info["objects_after_error"] == 3                 # startup cube, camera, light: untouched


def test_extension_zip_installs_with_vendored_engine(built, photo, tmp_path):
    env, res = _user_env(tmp_path)
    r = run_py(INSTALL, "extension", built["extension"], photo, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = last_json(r.stdout)
    assert Path(info["file"]).is_relative_to(res)
    assert info["registered"] and info["core"] == "bl_ext.user_default.faceforge.core" and not info["top_core"]
    assert info["custom_error"] and "model.npz" in info["custom_error"]
    assert info["objects_after_error"] == 3
    assert Path(info["weights_dir"]).is_relative_to(res) and info["builtin_vertices"] > 100


# ----------------------------------------------------------------------------- CLI
def cli(*args, timeout=120):
    return subprocess.run([PY, str(ROOT / "blender_addon" / "cli.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))


def test_cli_help_and_usage():
    r = cli("--help")
    assert r.returncode == 0 and "reconstruct" in r.stdout
    r = cli("reconstruct", "--help")
    assert r.returncode == 0 and "--out" in r.stdout and "--report-dir" in r.stdout
    r = cli()
    assert r.returncode == 2 and "required" in r.stderr
    r = cli("reconstruct", "x.jpg")
    assert r.returncode == 2 and "nothing to write" in r.stderr
    r = cli("reconstruct", "x.jpg", "--out", "head.obj")
    assert r.returncode == 2 and ".fbx" in r.stderr


def test_cli_bad_photo_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    r = cli("reconstruct", missing, "--out", tmp_path / "head.fbx")
    assert r.returncode == 1
    assert f"faceforge-blender: error: The photo '{missing}' does not exist" in r.stderr
    assert not (tmp_path / "head.fbx").exists()


# ----------------------------------------------------------------------------- panel drawing
class FakeLayout:
    """Records what a panel draws and checks every property and operator it names exists."""

    def __init__(self, log):
        self.log = log
        self.alert = False
        self.enabled = True
        self.use_property_split = False

    def _child(self, kind):
        self.log.append((kind,))
        return FakeLayout(self.log)

    def box(self):
        return self._child("box")

    def row(self, **kw):
        return self._child("row")

    def column(self, **kw):
        return self._child("column")

    def label(self, text="", icon="NONE"):
        self.log.append(("label", text))

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{data} has no property {name}"
        self.log.append(("prop", name))

    def operator(self, idname, **kw):
        mod, op = idname.split(".")
        assert getattr(getattr(bpy.ops, mod), op).get_rna_type() is not None, idname
        self.log.append(("operator", idname))
        return types.SimpleNamespace()  # the panel sets operator properties on it


@pytest.mark.parametrize("source", ["BUILTIN", "CUSTOM"])
def test_panel_draws_the_workflow(source):
    was = hasattr(bpy.types, OPERATORS[0])
    if not was:
        blender_addon.register()
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        settings = bpy.context.scene.faceforge
        settings.model_source = source
        settings.last_error = "The photo 'x.jpg' does not exist or is not a file."
        log = []
        panel = types.SimpleNamespace(layout=FakeLayout(log))
        blender_addon.ui.panels.FACEFORGE_PT_main.draw(panel, bpy.context)
        labels = [e[1] for e in log if e[0] == "label"]
        assert [t for t in labels if t[:2] in ("1.", "2.", "3.", "4.")] == \
            ["1. Model", "2. Input", "3. Reconstruct", "4. Export"]
        ops = [e[1] for e in log if e[0] == "operator"]
        assert ops[-3:] == ["faceforge.reconstruct_photo", "faceforge.export_fbx", "faceforge.export_gltf"]
        assert ("prop", "photo_path") in log and ("prop", "model_source") in log
        assert "Failed:" in labels
        if source == "CUSTOM":
            assert "No model file set" in labels and "preferences.addon_show" in ops
    finally:
        if not was:
            blender_addon.unregister()
