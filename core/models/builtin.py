"""The models that ship with FaceForge and work with no downloads.

- ``ict`` (the default): ICT-FaceKit's full head, 26,719 vertices in 17 parts (eyes, teeth,
  mouth interior, lashes), quads and UVs, 100 identity modes and 57 ARKit-named expressions
  (weights/ict_facekit.md; MIT licence in weights/ICT-FaceKit-LICENSE.txt).
- ``facemask`` (also ``builtin``, its older name): a light 468-vertex face mask on mediapipe's
  topology, learned from package-shipped media (weights/builtin_face.md); fast, no likeness.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import ModelFileError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "weights"
BUILTIN_PATH = WEIGHTS_DIR / "builtin_face.npz"
ICT_PATH = WEIGHTS_DIR / "ict_facekit.npz"

DEFAULT_MODEL = "ict"
# every name an embedded model answers to -> its canonical name
ALIASES = {"": DEFAULT_MODEL, "default": DEFAULT_MODEL, "ict": "ict", "ict_facekit": "ict",
           "facemask": "facemask", "builtin": "facemask"}
EMBEDDED_FILES = {"ict": (ICT_PATH, "tools/build_default_model.py --source ICT-FaceKit"),
                  "facemask": (BUILTIN_PATH, "tools/build_builtin_model.py")}


def embedded_name(spec):
    """The canonical name if ``spec`` names an embedded model (None/"" = the default), else None."""
    if spec is None:
        return DEFAULT_MODEL
    if not isinstance(spec, str):
        return None
    return ALIASES.get(spec.strip().lower())


def load_builtin():
    """The face-mask model (kept under its first name for callers that ask for 'builtin')."""
    return load_embedded("facemask")


@lru_cache(maxsize=2)
def load_embedded(name: str = DEFAULT_MODEL):
    from .npz_format import load_model_npz

    canonical = embedded_name(name)
    if canonical is None:
        raise ModelFileError(f"'{name}' is not an embedded model; choose one of {sorted(EMBEDDED_FILES)}.")
    path, tool = EMBEDDED_FILES[canonical]
    if not path.is_file():
        raise ModelFileError(
            f"The embedded model '{canonical}' is missing ({path}). Rebuild it with "
            f"'python {tool}' or reinstall the add-on.")
    model = load_model_npz(path)
    # the face mask keeps its historical name: track files and heads made before name it so
    model.name = "builtin" if canonical == "facemask" else canonical
    return model
