"""The built-in face model: works with no downloads (see weights/builtin_face.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import ModelFileError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "weights"
BUILTIN_PATH = WEIGHTS_DIR / "builtin_face.npz"


@lru_cache(maxsize=1)
def load_builtin():
    from .npz_format import load_model_npz

    if not BUILTIN_PATH.is_file():
        raise ModelFileError(
            f"The built-in model is missing ({BUILTIN_PATH}). Rebuild it with "
            "'python tools/build_builtin_model.py' or reinstall the add-on.")
    model = load_model_npz(BUILTIN_PATH)
    model.name = "builtin"
    return model
