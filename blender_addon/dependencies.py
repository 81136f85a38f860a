"""The Python packages the engine needs: are they in Blender's Python, and installing them.

Presence is checked with ``importlib.util.find_spec``: nothing is imported (torch alone takes
seconds), so the add-on registers and draws a clear message even when they are missing.

Installing runs ``<Blender's python> -m pip install --target <folder>`` as a FaceForge job (in
the background, with progress and cancel). The folder is per user and per Python version and
survives add-on updates; it is appended to ``sys.path`` at registration (appended, so Blender's
own numpy keeps precedence). Blender ships numpy, and its own add-ons are written for that version
(Blender 3.4's glTF importer uses ``np.bool``, gone since numpy 1.24): pip is constrained to Blender's
numpy version, and the numpy pip puts in the folder anyway (``--target`` ignores what is installed)
is removed, so the add-on's packages can never shadow Blender's numpy, whatever the path order.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ADDON_PACKAGE = __package__


@dataclass(frozen=True)
class Requirement:
    module: str      # what is imported
    pip: str         # what pip installs (pinned like requirements.txt: the tested stack)
    purpose: str


REQUIRED = (
    Requirement("torch", "torch==2.14.1", "fitting engine (CPU or CUDA)"),
    Requirement("numpy", "numpy<2", "arrays (Blender ships it)"),
    Requirement("mediapipe", "mediapipe==0.10.21", "face landmarks"),
    Requirement("cv2", "opencv-python-headless", "reading photos"),
)
OPTIONAL = (
    Requirement("torchvision", "torchvision==0.29.1", "image models used by Stylize"),
    Requirement("open_clip", "open-clip-torch", "CLIP image losses for Learn Style"),
)

# Wheels `build_addon.py --bundle-wheels` puts inside the 4.2+ extension (Blender installs them with it):
# the face detector and what it imports at run time, except numpy (Blender ships it). torch is never
# bundled: it is GBs and depends on the user's GPU/CUDA, so the Install Dependencies button fetches it.
BUNDLED = [
    "mediapipe==0.10.21", "opencv-python-headless", "absl-py", "attrs", "flatbuffers", "protobuf<5",
    "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "packaging", "pillow", "pyparsing",
    "python-dateutil", "six", "sounddevice", "cffi", "pycparser",
]

_present: dict = {}


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a broken half-installed package
        return False


def present(module: str) -> bool:
    if module not in _present:
        _present[module] = module in sys.modules or _find(module)
    return _present[module]


def refresh() -> None:
    """Forget what was found (after an install, or when the user asks to check again)."""
    _present.clear()
    importlib.invalidate_caches()


def missing(requirements=REQUIRED) -> list:
    return [r for r in requirements if not present(r.module)]


def missing_message() -> str:
    names = ", ".join(r.module for r in missing())
    return (f"Missing Python packages: {names}. Install them in Preferences > Add-ons > FaceForge "
            "(Install Dependencies) or with pip (see the README)") if names else ""


# ----------------------------------------------------------------------------- where they go
def deps_dir() -> Path:
    """Per-user folder for pip-installed packages (kept across add-on updates)."""
    import bpy
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    if ADDON_PACKAGE and ADDON_PACKAGE.startswith("bl_ext.") and hasattr(bpy.utils, "extension_path_user"):
        base = bpy.utils.extension_path_user(ADDON_PACKAGE, path="deps", create=False)   # 4.2+ extension
    else:
        base = bpy.utils.user_resource("SCRIPTS", path="faceforge_deps")
    return Path(base) / tag


def add_deps_to_path() -> None:
    d = deps_dir()
    if d.is_dir() and str(d) not in sys.path:
        sys.path.append(str(d))
        refresh()


def python_executable() -> str:
    """The Python binary that matches the running interpreter (Blender's own in official builds)."""
    want = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, getattr(sys, "_base_executable", ""),
                  os.path.join(sys.prefix, "bin", want), os.path.join(sys.prefix, "bin", "python3"),
                  os.path.join(sys.prefix, "bin", "python.exe")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK) and "blender" not in os.path.basename(c).lower():
            return c
    return sys.executable


def blender_numpy_version() -> Optional[str]:
    """The version of the numpy Blender's Python finds outside FaceForge's own folder (None: none)."""
    try:
        spec = importlib.util.find_spec("numpy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    origin = Path(spec.origin).resolve()
    if deps_dir().resolve() in origin.parents:
        return None                             # that numpy is one FaceForge installed
    from importlib import metadata
    for dist in metadata.distributions(path=[str(origin.parent.parent)]):
        if (dist.metadata["Name"] or "").lower() == "numpy":
            return dist.version
    try:
        return metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return None


def remove_numpy(target: Path) -> list:
    """Delete numpy from FaceForge's folder (Blender's own is used): what was removed."""
    import shutil
    removed = []
    for pattern in ("numpy", "numpy-*.dist-info", "numpy.libs", "numpy-*.data"):
        for p in target.glob(pattern):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
            removed.append(p.name)
    return removed


def pip_command(python: str, target: Path, specs, extra_args=()) -> list:
    return [python, "-m", "pip", "install", "--target", str(target), "--upgrade", "--no-input",
            "--progress-bar", "off", "--disable-pip-version-check", *extra_args, *specs]


def documented_command(specs=None) -> str:
    specs = specs or [r.pip for r in REQUIRED]
    quoted = " ".join(f'"{s}"' if any(c in s for c in "<>=") else s for s in specs)
    return f'"<Blender>/<version>/python/bin/python3.11" -m pip install {quoted}'


# ----------------------------------------------------------------------------- installing (a job)
def install(specs, target: Path, progress, python: str = None, extra_args=()) -> str:
    """Worker thread: pip-install ``specs`` into ``target``; progress lines, prompt cancel.

    Returns the last lines of pip's output; raises FaceForgeError with them when pip fails."""
    from .engine import core
    err = core.errors.FaceForgeError
    python = python or python_executable()
    progress.update("checking pip", 0.01)
    check = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    mine = "%d.%d" % sys.version_info[:2]
    if check.returncode != 0 or check.stdout.strip() != mine:
        raise err(f"Cannot use '{python}' to install packages for Blender's Python {mine} "
                  f"(it is Python {check.stdout.strip() or 'unknown'}). Run instead: {documented_command(specs)}")
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode != 0:
        progress.update("installing pip", 0.03)
        subprocess.run([python, "-m", "ensurepip", "--upgrade", "--user"], capture_output=True, timeout=300)
    target.mkdir(parents=True, exist_ok=True)
    numpy_version = blender_numpy_version()
    if numpy_version:      # every package is resolved against Blender's numpy, never a newer one
        constraints = target / "faceforge-constraints.txt"
        constraints.write_text(f"numpy=={numpy_version}\n")
        extra_args = ["--constraint", str(constraints), *extra_args]
    cmd = pip_command(python, target, specs, extra_args)
    print("FaceForge: " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    log, seen = [], 0
    try:
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                progress.check()            # raises JobCancelled: the finally below stops pip
                continue
            if line is None:
                break
            log.append(line)
            print(f"pip: {line}", flush=True)
            if line.startswith(("Collecting", "Downloading", "Installing", "Successfully", "Requirement")):
                seen += 1
            # pip does not say how much is left: approach 95 % as packages come in
            progress.update(f"pip: {line.strip()[:60]}", 0.05 + 0.9 * (1.0 - 0.93 ** seen))
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    tail = "\n".join(log[-8:])
    if code != 0:
        raise err(f"pip failed (exit {code}):\n{tail}\nYou can also run: {documented_command(specs)}")
    if numpy_version:
        removed = remove_numpy(target)
        if removed:
            log.append(f"kept Blender's numpy {numpy_version} (removed {', '.join(removed)} from {target})")
    progress.update("checking the installed packages", 0.97)
    if str(target) not in sys.path:
        sys.path.append(str(target))
    refresh()
    return "\n".join(log[-8:])


def torch_summary() -> str:
    """CUDA status, only when torch was already imported (importing it just to draw is too slow)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    try:
        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)} (Auto uses it)"
        return f"No CUDA GPU seen by torch {torch.__version__}: Auto runs on the CPU"
    except Exception as e:  # noqa: BLE001 - a broken driver must not break drawing
        return f"CUDA check failed: {e}"
