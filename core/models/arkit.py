"""Apple ARKit's 52 blendshape names, and how a model's expression names map onto them.

ARKit (and tools built on it: Live Link Face, Unreal's MetaHuman pipeline, many rigs) names
expressions ``eyeBlinkLeft``, ``jawOpen``, ``mouthSmileRight``... ICT-FaceKit uses the same
names with ``_L``/``_R`` suffixes, splits ARKit's ``browInnerUp`` and ``cheekPuff`` into left
and right halves, adds ``cheekRaiser_L/R`` and ``PupilDilate_L/R``, and has no ``tongueOut``.

FaceForge's default model stores ARKit names wherever there is a one-to-one shape; the split
halves and the extra shapes keep ICT's own names. A head's shape keys additionally get the two
*combined* ARKit keys (``browInnerUp`` = both halves, ``cheekPuff`` = both halves, value 0 after a
fit), so every ARKit name but ``tongueOut`` is a shape key an ARKit tool can drive.
"""

from __future__ import annotations

import re

import numpy as np

# Apple's ARFaceAnchor.BlendShapeLocation order (the order Live Link Face writes its columns in)
ARKIT_NAMES = [
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut",
]
assert len(ARKIT_NAMES) == 52

# ARKit names a model may only have as left/right halves (ICT-FaceKit splits these two)
COMBINED = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"),
            "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}

_SIDE = re.compile(r"^(?P<base>.+)_(?P<side>[LR])$")


def arkit_name(name: str) -> str:
    """An ICT-style expression name -> its ARKit name where one exists one-to-one, else unchanged.

    ``eyeBlink_L`` -> ``eyeBlinkLeft``; ``jawOpen`` stays; ``browInnerUp_L`` and ``cheekRaiser_L``
    stay (ARKit has no one-sided ``browInnerUp`` and no ``cheekRaiser``)."""
    m = _SIDE.match(name)
    if m is None:
        return name
    candidate = m["base"] + ("Left" if m["side"] == "L" else "Right")
    return candidate if candidate in ARKIT_NAMES else name


def missing_arkit_names(names) -> list:
    """ARKit names that neither a shape of ``names`` nor a combined key can provide."""
    have = set(names)
    return [n for n in ARKIT_NAMES if n not in have and not all(h in have for h in COMBINED.get(n, ("",)))]


def is_arkit_model(names) -> bool:
    """Whether expressions named ``names`` cover ARKit (tongueOut aside): recordings can drive them."""
    return len(missing_arkit_names(names)) <= 1


def shape_key_layout(expr_names):
    """Shape keys for a head with these expression components.

    Returns ``(key_names, mix)``: ``mix`` is a (K', K) matrix with key deltas = ``mix @ deltas``;
    the first K keys are the components themselves, then one combined ARKit key per split pair
    the model has (e.g. ``browInnerUp`` = ``browInnerUp_L`` + ``browInnerUp_R``)."""
    names = list(expr_names)
    index = {n: i for i, n in enumerate(names)}
    rows = [np.eye(len(names), dtype=np.float32)]
    extra = []
    for combined, halves in COMBINED.items():
        if combined in index or not all(h in index for h in halves):
            continue
        row = np.zeros((1, len(names)), np.float32)
        for h in halves:
            row[0, index[h]] = 1.0
        rows.append(row)
        extra.append(combined)
    return names + extra, np.concatenate(rows, 0)


def expand_key_values(values: np.ndarray, n_keys: int) -> np.ndarray:
    """Component values (..., K) -> shape-key values (..., K'): combined keys start at 0."""
    values = np.asarray(values, np.float32)
    pad = np.zeros(values.shape[:-1] + (n_keys - values.shape[-1],), np.float32)
    return np.concatenate([values, pad], -1)


def rig_shape_keys(expr_names, expr_basis: np.ndarray, values: np.ndarray):
    """``(names, deltas (K', V, 3), values (K'))`` for a HeadRig from a model's expression basis."""
    names, mix = shape_key_layout(expr_names)
    deltas = np.transpose(expr_basis, (2, 0, 1)).astype(np.float32)          # (K, V, 3)
    if len(names) > deltas.shape[0]:
        extra = np.einsum("ek,kvc->evc", mix[deltas.shape[0]:], deltas)
        deltas = np.concatenate([deltas, extra.astype(np.float32)], 0)
    return names, deltas, expand_key_values(values, len(names))
