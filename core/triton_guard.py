"""Keep torch from importing triton.

torch imports triton lazily (e.g. when an optimizer is first built). libtriton bundles its own
LLVM and crashes the process (segfault) once Mesa's LLVM is loaded too: Blender's GUI on
llvmpipe/radeonsi, or mediapipe's EGL context whenever a display is available. FaceForge
never uses torch.compile, so nothing is lost. FACEFORGE_ALLOW_TRITON=1 keeps triton importable.
"""

from __future__ import annotations

import importlib.util
import os
import sys


class _NoTriton:
    """Meta-path hook: ``import triton`` raises ImportError (torch handles that: no
    torch.compile), while ``find_spec("triton")`` still answers, as torch.cuda's lazy init expects."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            return importlib.util.spec_from_loader(name, _NoTriton)
        return None

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        raise ImportError("triton is kept out of this process by FaceForge (FACEFORGE_ALLOW_TRITON=1 allows it)")


def block_triton() -> bool:
    """Install the hook (idempotent); False when allowed by the environment or already imported."""
    if os.environ.get("FACEFORGE_ALLOW_TRITON") == "1" or "triton" in sys.modules:
        return False
    if not any(f is _NoTriton for f in sys.meta_path):
        sys.meta_path.insert(0, _NoTriton)
    return True
