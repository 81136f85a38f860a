"""Exposes FaceForge's bpy-free engine as the submodule ``<add-on package>.core``.

Two layouts are supported:

- Built add-on (``build_addon.py``): ``core/`` is vendored inside the add-on package
  (``faceforge/core``), so a plain relative import finds it.
- Source checkout: ``blender_addon/`` and ``core/`` are siblings in the repository. The
  repository's ``core/`` is loaded *under the add-on's own name* (``blender_addon.core``),
  registered in ``sys.modules`` so that the relative imports inside core resolve, and no
  generic top-level ``core`` module is created that could clash with another add-on.

Everything else in the add-on does ``from .engine import core`` (or, once this module was
imported, ``from .core.rig import HeadRig``). The engine finds its data through
``Path(core.__file__).parent.parent / "weights"``, which works in both layouts.
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


if (_HERE / "core" / "__init__.py").is_file():
    from . import core  # vendored copy (built add-on)
else:
    core = _load_sibling_core()
    parent = sys.modules.get(_PACKAGE)
    if parent is not None:
        setattr(parent, "core", core)  # makes ``from .core.x import y`` resolve like a real subpackage

VENDORED = (_HERE / "core" / "__init__.py").is_file()


def weights_dir() -> Path:
    """Where the engine's data files live (``weights/`` next to ``core/``)."""
    return Path(core.__file__).resolve().parent.parent / "weights"


def load_pipeline():
    """Import ``core.pipeline`` lazily (it pulls in torch); raise a clear error if it cannot load."""
    try:
        return importlib.import_module(f"{core.__name__}.pipeline")
    except ImportError as e:  # torch / mediapipe missing inside Blender's Python, or engine incomplete
        raise core.errors.FaceForgeError(
            f"FaceForge's reconstruction engine could not be loaded ({e}). "
            "Install the Python dependencies (torch, numpy, mediapipe, opencv) into Blender's Python."
        ) from e


def _ensure_errors():
    importlib.import_module(f"{core.__name__}.errors")
    importlib.import_module(f"{core.__name__}.jobs")


_ensure_errors()

__all__ = ["core", "VENDORED", "weights_dir", "load_pipeline"]
