"""The background-job runner (blender_addon/runner.py) with the bpy module.

The bpy module has no window event loop, so these tests drive ``JobOperator.tick`` — the
function the modal operator calls on every timer event in the real GUI — directly, from a
plain subclass. tests/test_gui.py runs the same path through a real Blender window.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon import dependencies, runner  # noqa: E402
from blender_addon.engine import core  # noqa: E402

pytestmark = pytest.mark.blender
ROOT = Path(__file__).resolve().parent.parent
KINDS = ("objects", "meshes", "materials", "cameras", "collections")


@pytest.fixture
def scene(empty_scene):
    return empty_scene



def names():
    return {k: sorted(i.name for i in getattr(bpy.data, k)) for k in KINDS}


class Op(runner.JobOperator):
    """A JobOperator without Blender's operator machinery: what the modal operator does, minus events."""

    bl_label = "Test Job"

    def __init__(self, work, build=None):
        self.work, self.build = work, build
        self.reports, self.finished_on = [], []
        self._timer = self._workspace = None

    def prepare(self, context):
        return self.work

    def finish(self, context, result):
        self.finished_on.append(threading.get_ident())
        if self.build is not None:
            self.build(context, result)
        return f"made {result}"

    def report(self, kind, message):
        self.reports.append((set(kind), message))

    def start(self, context):
        """invoke() minus the window: make the job, start its thread, make it the active one."""
        job = self._make_job(context, synchronous=False)
        runner._set_active(job)
        job.start()
        return job

    def run_modal(self, context, on_tick=None, timeout=20.0):
        ticks, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < timeout:
            result = self.tick(context)
            ticks += 1
            if on_tick is not None:
                on_tick(ticks)
            if result != {"RUNNING_MODAL"}:
                return result, ticks
            time.sleep(0.02)
        raise AssertionError("the job did not end")


def add_object(context, name):
    obj = bpy.data.objects.new(name, bpy.data.meshes.new(name))
    context.scene.collection.objects.link(obj)


# ----------------------------------------------------------------------------- success
def test_shown_progress_changes_at_most_every_refresh_interval(scene, monkeypatch):
    """Each change of the shown progress costs Blender a redraw of the sidebar and status bar (~0.1 s
    in software GL on 2 cores): it changes at most every UI_REFRESH_S, so the UI's timers keep time."""
    monkeypatch.setattr(runner, "UI_REFRESH_S", 0.5)

    def work(progress):
        for i in range(100):
            progress.update("counting", i / 99)
            time.sleep(0.012)
        return "cube"

    op = Op(work, build=lambda ctx, name: add_object(ctx, name))
    op.start(scene)
    st = runner.status(scene)
    shown = []

    def look(_):
        if st.running and (not shown or shown[-1][1] != st.text):
            shown.append((time.monotonic(), st.text))

    result, ticks = op.run_modal(scene, on_tick=look)
    assert result == {"FINISHED"} and ticks > 20
    gaps = np.diff([t for t, _ in shown])
    assert len(shown) >= 2 and (gaps > 0.35).all(), shown      # ~1.2 s of work: 2-3 changes, not 20+ (ticks: 0.02 s)



def test_job_runs_off_the_main_thread_and_builds_once(scene, monkeypatch):
    monkeypatch.setattr(runner, "UI_REFRESH_S", 0.0)     # show every change (the GUI shows one per 2 s)
    worker_threads, seen = [], []

    def work(progress):
        worker_threads.append(threading.get_ident())
        for i in range(6):
            progress.update("counting", i / 5)
            time.sleep(0.03)
        return "cube"

    op = Op(work, build=lambda ctx, name: add_object(ctx, name))
    before = names()
    op.start(scene)
    st = runner.status(scene)

    def look(_):
        if st.running:
            seen.append((st.stage, st.fraction, st.text))

    result, ticks = op.run_modal(scene, on_tick=look)
    assert result == {"FINISHED"} and ticks > 2
    assert worker_threads and worker_threads[0] != threading.main_thread().ident
    assert op.finished_on == [threading.main_thread().ident]        # scene built on the main thread, once
    assert names()["objects"] == sorted(before["objects"] + ["cube"])
    assert any(s == "counting" and 0 < f for s, f, _ in seen)         # progress mirrored into the UI state
    assert any("Counting" in t and "%" in t for _, _, t in seen)
    assert not st.running and st.last_state == "FINISHED" and st.last_message == "made cube"
    assert op.reports == [({"INFO"}, "made cube")]
    assert runner.active_job() is None


# ----------------------------------------------------------------------------- cancel
def test_cancel_button_stops_the_job_and_changes_nothing(scene):
    steps = []

    def work(progress):
        for i in range(10_000):
            steps.append(i)
            progress.update("working", i / 10_000)
            time.sleep(0.01)
        return "never"

    op = Op(work, build=lambda ctx, name: add_object(ctx, name))
    add_object(scene, "UserObject")
    before = names()
    job = op.start(scene)
    assert not bpy.ops.faceforge.reconstruct_photo.poll()            # one job at a time

    def press_cancel(tick):
        if tick == 5:
            assert bpy.ops.faceforge.cancel_job() == {"FINISHED"}     # the panel's Cancel button

    t0 = time.monotonic()
    result, _ = op.run_modal(scene, on_tick=press_cancel)
    assert result == {"CANCELLED"} and time.monotonic() - t0 < 2.0
    assert isinstance(job.error, core.errors.JobCancelled) and len(steps) < 500
    assert op.finished_on == [] and names() == before
    st = runner.status(scene)
    assert st.last_state == "CANCELLED" and "nothing was changed" in st.last_message
    assert op.reports[0][0] == {"WARNING"}
    assert not bpy.ops.faceforge.cancel_job.poll()                   # nothing left to cancel


def test_worker_that_ignores_cancel_is_abandoned(scene, monkeypatch):
    monkeypatch.setattr(runner, "CANCEL_GRACE_S", 0.2)
    release = threading.Event()

    def work(progress):
        release.wait(5)          # a long engine call with no progress.update inside
        return "late"

    op = Op(work, build=lambda ctx, name: add_object(ctx, name))
    before = names()
    job = op.start(scene)
    job.cancel()
    t0 = time.monotonic()
    result, _ = op.run_modal(scene)
    assert result == {"CANCELLED"} and time.monotonic() - t0 < 1.5
    assert job.abandoned and runner.active_job() is None
    release.set()
    job.wait(5)
    assert job.result == "late" and op.finished_on == [] and names() == before   # the late result is dropped


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("error, expect", [
    (core.errors.NoFaceError("No face was found in the photo."), "No face was found in the photo."),
    (ZeroDivisionError("bug"), "Test Job failed unexpectedly (ZeroDivisionError: bug)"),
])
def test_failing_job_reports_and_changes_nothing(scene, error, expect, capsys):
    def work(progress):
        progress.update("starting", 0.1)
        raise error

    op = Op(work, build=lambda ctx, name: add_object(ctx, name))
    before = names()
    op.start(scene)
    result, _ = op.run_modal(scene)
    assert result == {"CANCELLED"} and names() == before and op.finished_on == []
    st = runner.status(scene)
    assert st.last_state == "FAILED" and st.last_message.startswith(expect)
    assert op.reports == [({"ERROR"}, st.last_message)]
    if isinstance(error, ZeroDivisionError):
        assert "Traceback" in capsys.readouterr().out       # a bug keeps its traceback on the console


def test_scene_building_failure_rolls_back(scene):
    def build(context, result):
        add_object(context, "half")
        raise core.errors.TopologyError("bad rig")

    op = Op(lambda progress: "x", build=build)
    add_object(scene, "UserObject")
    before = names()
    op.start(scene)
    result, _ = op.run_modal(scene)
    assert result == {"CANCELLED"} and names() == before
    assert runner.status(scene).last_message == "bad rig"


# ----------------------------------------------------------------------------- synchronous / background
def _fake_pipeline(rig_factory):
    def reconstruct_photo(path, model="builtin", device="auto", progress=None, face=None):
        for i in range(5):
            progress.update("fitting", i / 4)
        return types.SimpleNamespace(rig=rig_factory(), model=types.SimpleNamespace(name="fake"), warnings=[],
                                     fit=None)
    return types.SimpleNamespace(reconstruct_photo=reconstruct_photo, fit_params_json=lambda rec: {},
                                 save_outputs=lambda rec, out: {})


def test_background_mode_runs_invoke_inline_with_progress_lines(scene, tmp_path, monkeypatch, capsys):
    from blender_addon.operators import reconstruct
    from test_scene_builder import make_rig, write_png
    monkeypatch.setattr(reconstruct, "load_pipeline", lambda: _fake_pipeline(lambda: make_rig(tmp_path)))
    photo = write_png(tmp_path / "face.png")
    assert bpy.app.background
    # INVOKE (a button click) in --background: the same job, inline, printing progress lines
    res = bpy.ops.faceforge.reconstruct_photo("INVOKE_DEFAULT", filepath=str(photo), device="CPU")
    assert res == {"FINISHED"}
    out = capsys.readouterr().out
    assert "FaceForge: loading the engine   0%" in out and "FaceForge: fitting 100%" in out
    assert len([o for o in bpy.data.objects if o.get("faceforge_head")]) == 1
    assert runner.status(scene).last_state == "FINISHED" and runner.active_job() is None


def test_missing_packages_disable_reconstruct_with_a_hint(scene, monkeypatch):
    monkeypatch.setattr(dependencies, "_present", {"torch": False, "mediapipe": False})
    assert not bpy.ops.faceforge.reconstruct_photo.poll()
    with pytest.raises(RuntimeError, match="Missing Python packages: torch, mediapipe"):
        bpy.ops.faceforge.reconstruct_photo(filepath="x.png")
    assert "Install Dependencies" in dependencies.missing_message()


# ----------------------------------------------------------------------------- device
def test_cuda_request_without_gpu_is_a_clear_error(scene, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from test_scene_builder import write_png
    photo = write_png(tmp_path / "face.png")
    before = names()
    with pytest.raises(RuntimeError, match="CUDA device was requested but torch sees no GPU"):
        bpy.ops.faceforge.reconstruct_photo(filepath=str(photo), device="CUDA")
    assert names() == before and runner.status(scene).last_state == "FAILED"


@pytest.mark.gpu
def test_reconstruct_on_cuda_through_the_operator(scene, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import imageio.v3 as iio
    import skimage.data
    photo = tmp_path / "astronaut.png"
    iio.imwrite(photo, skimage.data.astronaut())
    assert bpy.ops.faceforge.reconstruct_photo(filepath=str(photo), device="CUDA") == {"FINISHED"}
    head = next(o for o in bpy.data.objects if o.get("faceforge_head"))
    assert len(head.data.vertices) == 468 and runner.status(scene).last_state == "FINISHED"


# ----------------------------------------------------------------------------- other jobs on the same runner
def test_validate_model_reports_sizes_or_errors(scene, tmp_path):
    npz = ROOT / "weights" / "builtin_face.npz"
    assert bpy.ops.faceforge.validate_model(filepath=str(npz)) == {"FINISHED"}
    assert runner.status(scene).last_message == \
        "builtin_face.npz: 468 vertices, 16 identity, 24 expression; no joints"
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError):
        bpy.ops.faceforge.validate_model(filepath=str(bad))
    assert runner.status(scene).last_state == "FAILED" and "broken.npz" in runner.status(scene).last_message
    with pytest.raises(RuntimeError, match="not found"):
        bpy.ops.faceforge.validate_model(filepath=str(tmp_path / "missing.pkl"))


def _dummy_wheel(folder: Path, name: str = "ffdummy", version: str = "0.1", requires=()) -> Path:
    """A minimal pure-Python wheel, so pip runs for real without any index."""
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA": meta,
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    with zipfile.ZipFile(whl, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{name}-{version}.dist-info/RECORD",
                    "".join(f"{n},,\n" for n in files) + f"{name}-{version}.dist-info/RECORD,,\n")
    return whl


def test_installed_packages_never_shadow_blenders_numpy(tmp_path):
    """Blender's add-ons are written for its own numpy (3.4's glTF importer uses np.bool, gone in numpy
    1.24): pip is held to that version and the numpy it puts in FaceForge's folder is removed."""
    import numpy
    version = dependencies.blender_numpy_version()
    assert version == numpy.__version__
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _dummy_wheel(wheels, "numpy", version)                       # what pip --target would add
    _dummy_wheel(wheels, "numpy", "99.0")                        # a newer one: the constraint refuses it
    _dummy_wheel(wheels, "ffneedsnumpy", "0.1", requires=["numpy>=1"])
    target = tmp_path / "deps"
    log = dependencies.install(["ffneedsnumpy"], target, core.jobs.Progress(),
                               extra_args=["--no-index", "--find-links", str(wheels)])
    assert (target / "ffneedsnumpy" / "__init__.py").is_file()
    assert not list(target.glob("numpy*")), sorted(p.name for p in target.iterdir())
    assert (target / "faceforge-constraints.txt").read_text() == f"numpy=={version}\n"
    assert f"kept Blender's numpy {version}" in log
    assert importlib.util.find_spec("numpy").origin == numpy.__file__        # Blender's numpy still wins


def test_install_dependencies_runs_pip_as_a_job(scene, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _dummy_wheel(wheels)
    target = tmp_path / "deps"
    monkeypatch.setattr(dependencies, "_present", {"cv2": False})     # something to install: the button is enabled
    monkeypatch.setattr(sys, "path", list(sys.path))
    res = bpy.ops.faceforge.install_dependencies(packages="ffdummy", target=str(target),
                                                 pip_args=f"--no-index --find-links {wheels}")
    assert res == {"FINISHED"}
    assert (target / "ffdummy" / "__init__.py").is_file() and str(target) in sys.path
    assert importlib.util.find_spec("ffdummy") is not None
    assert runner.status(scene).last_message.startswith("Installed ffdummy")


def test_pip_failure_and_cancel_are_reported(tmp_path):
    lines = []
    progress = core.jobs.Progress(lambda s, f: lines.append(s))
    with pytest.raises(core.errors.FaceForgeError, match="pip failed"):
        dependencies.install(["ffdummy-does-not-exist"], tmp_path / "deps", progress,
                             extra_args=["--no-index", "--find-links", str(tmp_path)])
    assert any(s.startswith("pip: ") for s in lines)
    progress = core.jobs.Progress()
    progress.cancel()
    with pytest.raises(core.errors.JobCancelled):
        dependencies.install(["ffdummy"], tmp_path / "deps2", progress, extra_args=["--no-index"])


def test_documented_pip_command_matches_the_pinned_stack():
    pinned = {line.split("==")[0].split("<")[0].strip(): line.strip()
              for line in (ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")}
    for req in dependencies.REQUIRED + dependencies.OPTIONAL:
        name = req.pip.split("==")[0].split("<")[0]
        assert name in pinned, name
        assert req.pip == pinned[name], (req.pip, pinned[name])


def test_addon_registers_without_the_engine_packages():
    """torch, mediapipe and cv2 absent: registration works, the panel explains, Reconstruct is disabled."""
    code = r"""
import json, os, sys
import bpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'mediapipe', 'cv2', 'open_clip'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import blender_addon
blender_addon.register()
from blender_addon import dependencies
out = {'registered': hasattr(bpy.types, 'FACEFORGE_PT_main'),
       'message': dependencies.missing_message(),
       'poll': bpy.ops.faceforge.reconstruct_photo.poll(),
       'head_builder_imported': 'blender_addon.scene.head_builder' in sys.modules,
       'torch_imported': 'torch' in sys.modules}
try:
    bpy.ops.faceforge.reconstruct_photo(filepath='x.png')
except RuntimeError as e:
    out['error'] = str(e)
print(json.dumps(out)); sys.stdout.flush(); os._exit(0)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["registered"] and not info["poll"] and not info["torch_imported"]
    assert not info["head_builder_imported"]
    assert info["message"].startswith("Missing Python packages: torch, mediapipe, cv2")
    assert "Missing Python packages" in info["error"]
