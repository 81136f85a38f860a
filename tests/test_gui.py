"""Real Blender: Debian's Blender 3.4 with a window under Xvfb, and its --background CLI route.

The GUI case installs the built legacy zip through Blender's own add-on operators, opens the
FaceForge tab, clicks Reconstruct on the astronaut (the background job + modal progress path),
cancels a run with Esc, lets a second one finish, views through the photo camera and takes
screenshots (kept in out/screens/). Driver: tools/gui_screenshot.py.

Blender and Xvfb come from apt (`./run test` installs them when it runs as root); these cases
skip only when they are missing and cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENS = ROOT / "out" / "screens"

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def _have(*tools) -> bool:
    return all(shutil.which(t) for t in tools)


def _try_install() -> str:
    """apt-get the GUI tools when we are root on Debian (idempotent; quick when present)."""
    if _have("blender", "xvfb-run", "xauth"):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "blender / xvfb-run / xauth not found, and not root with apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "blender", "xvfb", "xauth"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            return f"could not install blender/xvfb with apt-get: {r.stderr[-500:]}"
    return "" if _have("blender", "xvfb-run", "xauth") else "apt-get ran but blender/xvfb-run are still missing"


@pytest.fixture(scope="module")
def blender_env(tmp_path_factory):
    reason = _try_install()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("blender")
    for d in ("config", "scripts", "tmp"):
        (base / d).mkdir()
    env = dict(os.environ)
    # Debian's Blender runs the system Python 3.11: the venv's packages give it torch, mediapipe, cv2
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], TMPDIR=str(base / "tmp"),
               BLENDER_USER_CONFIG=str(base / "config"), BLENDER_USER_SCRIPTS=str(base / "scripts"))
    return env, base


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import imageio.v3 as iio
    import skimage.data
    p = tmp_path_factory.mktemp("photo") / "astronaut.png"
    iio.imwrite(p, skimage.data.astronaut())
    return p


@pytest.fixture(scope="module")
def legacy_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "--out", str(out)], capture_output=True,
                       text=True, timeout=180, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    return next(out.glob("faceforge-*-legacy.zip"))


def run_gui_driver(blender_env, driver: str, out: Path, result_name: str, *args) -> dict:
    """Run ``tools/<driver>`` in Debian's Blender with a window under Xvfb; keep its screenshots in
    out/screens (pass or fail) and return what it saw (``out/<result_name>``), checked error-free."""
    env, base = blender_env
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x900x24",
           "blender", "--factory-startup", "--enable-event-simulate", "--window-geometry", "0", "0", "1600", "900",
           "--python", str(ROOT / "tools" / driver), "--", *[str(a) for a in args], "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420, cwd=str(base))
    log = (r.stdout + r.stderr)[-4000:]
    result_file = out / result_name
    assert result_file.is_file(), f"exit {r.returncode}\n{log}"
    res = json.loads(result_file.read_text())
    SCREENS.mkdir(parents=True, exist_ok=True)           # keep the artefacts, pass or fail
    for f in out.iterdir():
        shutil.copy2(f, SCREENS / f.name)
    assert r.returncode == 0 and not res["errors"], f"{res['errors']}\n{log}"
    return res


def _image_stats(path: Path):
    import imageio.v3 as iio
    import numpy as np
    img = iio.imread(path)
    return img.shape, float(np.asarray(img[..., :3], dtype=np.float32).std())


def test_gui_install_reconstruct_cancel_screenshot(blender_env, legacy_zip, photo):
    _, base = blender_env
    out = base / "screens"
    res = run_gui_driver(blender_env, "gui_screenshot.py", out, "result.json", "--zip", legacy_zip, "--photo", photo)

    assert res["blender"].startswith("3.4")
    assert res["installed"] and res["registered"]
    assert Path(res["addon_file"]).is_relative_to(base / "scripts")          # the installed zip, not the repo
    assert res["sidebar_category"].startswith("FaceForge")
    # Esc during a run: cancelled promptly, nothing changed
    assert res["cancel_run_invoke"] == ["RUNNING_MODAL"] and res["cancel_via"] == "esc"
    assert res["cancel_state"] == "CANCELLED" and res["unchanged_after_cancel"] and res["cancel_seconds"] < 5
    # the full run: modal (Blender kept handling events), progress seen, head built
    assert res["invoke"] == ["RUNNING_MODAL"] and res["ui_polls_while_running"] >= 5
    # screenshots mid-job with the engine computing (a forced redraw next to a Python thread crashed
    # Blender 3.4): the engine runs in a child process, which Esc removed
    assert res["mid_job_screenshots"] >= 3 and res["engine_in_child"] and res["child_gone_after_cancel"]
    assert res["max_fraction_seen"] > 0.2
    assert res["operator_state"] == "FINISHED" and res["object_exists"]
    assert res["vertices"] == 26719 and res["shape_keys"] == 59          # the default full head
    assert res["view_camera"] == ["FINISHED"] and res["undo_removes_head"]
    # View Through Photo Camera: the whole photo frame (as Blender projects it) lies in the part of the view
    # that the toolbar, sidebar and tool header do not cover, and fills it along one side
    cv = res["camera_view"]
    w, h = cv["region"]
    covers = cv["covers"]
    left = covers["TOOLS"][0] + covers["TOOLS"][2] if "TOOLS" in covers else 0
    right = covers["UI"][0] if "UI" in covers else w
    top = covers["TOOL_HEADER"][1] if "TOOL_HEADER" in covers else h
    xs, ys = [c[0] for c in cv["corners"]], [c[1] for c in cv["corners"]]
    assert left <= min(xs) and max(xs) <= right and 0 <= min(ys) and max(ys) <= top, cv
    assert max((max(xs) - min(xs)) / (right - left), (max(ys) - min(ys)) / top) > 0.9, cv
    # the head went beside the startup cube, and its photo camera does not see the cube
    assert cv["cube_points_in_view"] == 0 and any(abs(c) > 0.5 for c in cv["head_origin"]), cv
    for name in ("progress", "result", "head", "gaze"):
        png = Path(res["screens"][name])
        assert png.is_file(), name
        shape, spread = _image_stats(png)
        assert shape[:2] == (900, 1600) and spread > 20, (name, shape, spread)     # a real frame, not blank
        assert (SCREENS / png.name).is_file()


def test_headless_blender_cli(blender_env, photo, tmp_path):
    """blender -b --python blender_addon/cli.py -- ...: help, exit codes, progress lines, files."""
    env, _ = blender_env
    base = ["blender", "-b", "--factory-startup", "--python", str(ROOT / "blender_addon" / "cli.py"), "--"]
    r = subprocess.run(base + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "reconstruct" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(base + ["reconstruct", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "x.fbx")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "faceforge: error: The photo" in r.stderr
    fbx = tmp_path / "head.fbx"
    r = subprocess.run(base + ["reconstruct", str(photo), "--out", str(fbx), "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "FaceForge: fitting landmarks" in r.stdout and "FaceForge: done 100%" in r.stdout
    assert fbx.is_file() and fbx.stat().st_size > 50_000


NUMPY_CHECK = r"""
import json, os, sys
import bpy
out, zip_path, deps, wheels = sys.argv[sys.argv.index("--") + 1:]
res = {}
import numpy
res["blender_numpy"] = numpy.__version__
bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
bpy.ops.preferences.addon_enable(module="faceforge")
res["enabled"] = "faceforge" in bpy.context.preferences.addons
try:
    bpy.ops.faceforge.install_dependencies(packages="ffneedsnumpy", target=deps,
                                           pip_args=f"--no-index --find-links {wheels}")
    res["installed"] = os.path.isdir(os.path.join(deps, "ffneedsnumpy"))
except Exception as e:
    res["install_error"] = str(e)[-500:]
res["deps_numpy"] = sorted(p for p in os.listdir(deps) if p.startswith("numpy")) if os.path.isdir(deps) else None
import importlib.util
res["numpy_seen"] = importlib.util.find_spec("numpy").origin
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_cube_add()
glb = os.path.join(os.path.dirname(out), "cube.glb")
bpy.ops.export_scene.gltf(filepath=glb, export_format="GLB")
bpy.ops.wm.read_factory_settings(use_empty=True)
try:
    res["gltf_import"] = sorted(bpy.ops.import_scene.gltf(filepath=glb))
except Exception as e:
    res["gltf_import"] = f"{type(e).__name__}: {str(e)[-300:]}"
json.dump(res, open(out, "w"))
sys.stdout.flush()
os._exit(0)
"""


def test_addon_dependencies_leave_blenders_numpy_and_gltf_importer_alone(blender_env, legacy_zip, tmp_path):
    """Issue 12 item 14: with the add-on enabled and its Install Dependencies run, Blender 3.4's own
    glTF importer still works. Blender's numpy here is numpy 1.23.5 (what official 3.4 builds bundle;
    Debian's Blender has none, so it is put on PYTHONPATH as Blender's own); the dependency folder is
    filled by the real pip through the add-on's operator from local wheels: a dummy package that
    needs numpy, and a dummy numpy 1.23.5. A newer numpy (1.24+) would break the importer (np.bool)."""
    import subprocess as sp
    from test_runner import _dummy_wheel
    blender_numpy = tmp_path / "blender_numpy"
    r = sp.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(blender_numpy),
                "numpy==1.23.5"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"numpy 1.23.5 (Blender 3.4's) could not be installed from the package index: {r.stderr[-300:]}")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _dummy_wheel(wheels, "numpy", "1.23.5")
    _dummy_wheel(wheels, "numpy", "1.26.4")
    _dummy_wheel(wheels, "ffneedsnumpy", "0.1", requires=["numpy>=1"])
    env, base = blender_env
    env = dict(env, PYTHONPATH=str(blender_numpy))       # Blender's own numpy, nothing else of ours
    out, deps, script = tmp_path / "numpy.json", tmp_path / "deps", tmp_path / "check.py"
    script.write_text(NUMPY_CHECK)
    r = sp.run(["blender", "-b", "--factory-startup", "--python", str(script), "--", str(out), str(legacy_zip),
                str(deps), str(wheels)], capture_output=True, text=True, env=env, timeout=300)
    assert out.is_file(), (r.stdout + r.stderr)[-3000:]
    res = json.loads(out.read_text())
    assert res["blender_numpy"] == "1.23.5" and res["enabled"], res
    assert res.get("installed"), res
    assert res["deps_numpy"] == [], res                        # pip's numpy copy removed from the folder
    assert res["numpy_seen"].startswith(str(blender_numpy)), res
    assert res["gltf_import"] == ["FINISHED"], res
