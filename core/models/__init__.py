"""Morphable models: one interface (MorphableModel), several loaders.

``load_model(spec)`` accepts an embedded model's name ("ict", the default full head, or
"facemask"/"builtin", the light face mask), a FLAME ``.pkl`` or a FaceForge ``.npz``. Models
without landmark correspondences get them found automatically (see correspondence.py).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFileError
from .builtin import DEFAULT_MODEL, embedded_name
from .morphable import JointRig, LandmarkEmbedding, ModelParts, MorphableLayer, MorphableModel, Polygons

__all__ = ["DEFAULT_MODEL", "embedded_name", "JointRig", "LandmarkEmbedding", "ModelParts", "MorphableLayer",
           "MorphableModel", "Polygons", "load_model"]

_cache: dict = {}


def load_model(spec=None, find_landmarks: bool = True) -> MorphableModel:
    """Load a model by name or path (None = the default full head); cached per (path, mtime)."""
    from .builtin import load_embedded

    if isinstance(spec, MorphableModel):
        model = spec
    elif embedded_name(spec) is not None:
        model = load_embedded(embedded_name(spec))
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelFileError(f"Model file not found: {path}")
        key = (str(path.resolve()), path.stat().st_mtime_ns, find_landmarks)
        if key in _cache:
            return _cache[key]
        suffix = path.suffix.lower()
        if suffix == ".npz":
            from .npz_format import load_model_npz
            model = load_model_npz(path)
        elif suffix in (".pkl", ".pickle"):
            from .flame import load_flame
            model = load_flame(path)
        else:
            raise ModelFileError(
                f"Unsupported model file '{path.name}': use a FLAME .pkl or a FaceForge .npz "
                "(see docs/model_format.md).")
        _cache[key] = model
    if find_landmarks and model.landmarks is None:
        from .correspondence import find_landmark_embedding
        model.landmarks = find_landmark_embedding(model)
    return model
