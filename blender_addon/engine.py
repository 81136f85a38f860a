"""Exposes FaceForge's bpy-free engine as the submodule ``<add-on package>.core``.

Three layouts are supported:

- Built add-on (``build_addon.py``): ``core/`` is vendored inside the add-on package
  (``faceforge/core``), so a plain relative import finds it.
- Installed package (``pip install -e .``, the ``faceforge`` console command): setuptools maps
  ``faceforge`` -> ``blender_addon/`` and ``faceforge.core`` -> ``core/``; a plain import finds it.
- Source checkout: ``blender_addon/`` and ``core/`` are siblings in the repository. The
  repository's ``core/`` is loaded *under the add-on's own name* (``blender_addon.core``),
  registered in ``sys.modules`` so that the relative imports inside core resolve, and no
  generic top-level ``core`` module is created that could clash with another add-on.

Everything else in the add-on does ``from .engine import core`` (or, once this module was
imported, ``from .core.rig import HeadRig``). The engine finds its data through
``Path(core.__file__).parent.parent / "weights"``, which works in all three layouts.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_PACKAGE = __package__ or _HERE.name


def _load_sibling_core():
    name = f"{_PACKAGE}.core"
    if name in sys.modules:
        return sys.modules[name]
    root = _HERE.parent / "core"
    init = root / "__init__.py"
    if not init.is_file():
        raise ImportError(
            "FaceForge's engine (core/) was not found: neither vendored inside the add-on "
            f"({_HERE / 'core'}) nor next to it ({root}). Reinstall the add-on from a built zip."
        )
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_core():
    # vendored copy (built add-on), or a package mapping (``pip install -e .``: faceforge.core -> core/)
    try:
        return importlib.import_module(f"{_PACKAGE}.core")
    except ModuleNotFoundError as e:
        if e.name != f"{_PACKAGE}.core":
            raise
    return _load_sibling_core()   # source checkout: core/ next to blender_addon/


core = _import_core()
_parent = sys.modules.get(_PACKAGE)
if _parent is not None and getattr(_parent, "core", None) is not core:
    setattr(_parent, "core", core)  # makes ``from .core.x import y`` resolve like a real subpackage

VENDORED = (_HERE / "core" / "__init__.py").is_file()


def weights_dir() -> Path:
    """Where the engine's data files live (``weights/`` next to ``core/``)."""
    return Path(core.__file__).resolve().parent.parent / "weights"


def load_pipeline():
    """Import ``core.pipeline`` lazily (it pulls in torch); raise a clear error if it cannot load."""
    try:
        pipeline = importlib.import_module(f"{core.__name__}.pipeline")
        share_cpu_with_blender()
        return pipeline
    except ImportError as e:  # torch / mediapipe missing inside Blender's Python, or engine incomplete
        raise core.errors.FaceForgeError(
            f"FaceForge's reconstruction engine could not be loaded ({e}). "
            "Install the missing Python packages (torch, numpy, mediapipe, opencv) into Blender's Python: "
            "Preferences > Add-ons > FaceForge > Install Dependencies, or pip (see the README)."
        ) from e


def in_blender_binary() -> bool:
    """True inside Blender's own executable (GUI or -b), False for the bpy Python module."""
    import bpy
    return bool(getattr(bpy.app, "binary_path", "")) and not getattr(bpy.app, "module", False)


def share_cpu_with_blender() -> None:
    """Leave two cores to Blender's own threads when torch runs inside Blender's process.

    torch's OpenMP workers spin-wait at barriers; next to Blender's TBB / UI / GL threads on
    few cores they get descheduled and a fit slows down several times (seen with Debian's
    Blender 3.4 on 2 cores: about 25 s with two threads, 5 s with one). The fits are small,
    so fewer threads cost little. FACEFORGE_TORCH_THREADS=N sets the count explicitly."""
    import os
    torch = sys.modules.get("torch")
    if torch is None:
        return
    explicit = os.environ.get("FACEFORGE_TORCH_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        torch.set_num_threads(int(explicit))
    elif in_blender_binary():
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 2)))


def block_triton() -> bool:
    """Keep torch from loading triton (its LLVM crashes next to Mesa's): see core/triton_guard.py."""
    return importlib.import_module(f"{core.__name__}.triton_guard").block_triton()


def _ensure_errors():
    importlib.import_module(f"{core.__name__}.errors")
    importlib.import_module(f"{core.__name__}.jobs")


_ensure_errors()

__all__ = ["core", "VENDORED", "weights_dir", "load_pipeline", "block_triton"]
