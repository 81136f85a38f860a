"""What every pipeline takes from a model to describe its head: polygons, material slots, UVs and
the shape keys (one per expression component, plus ARKit's combined keys where a model splits them)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..models.arkit import rig_shape_keys
from ..models.morphable import MorphableModel
from .head_rig import MeshTopology


def model_topology(model: MorphableModel) -> Optional[MeshTopology]:
    """Polygons + corner UVs + one material slot per part material (skin first), or None for a
    triangles-only model (the Blender side then builds triangles, as before)."""
    pg = model.polygons
    if pg is None:
        return None
    first_vertex = pg.vertices[pg.starts]
    if model.parts is not None:
        part_material = np.asarray(model.parts.material)
        order = list(dict.fromkeys(["skin"] + [m for m in part_material if m != "skin"]))
        slot = np.array([order.index(m) for m in part_material])
        material_index = slot[np.asarray(model.parts.vertex_part)[first_vertex]]
        # drop slot names no polygon uses (a model without a part named 'skin' material)
        used = sorted(set(material_index.tolist()))
        remap = {s: i for i, s in enumerate(used)}
        material_index = np.array([remap[s] for s in material_index.tolist()], np.int64)
        names = [order[s] for s in used]
    else:
        material_index = np.zeros(len(pg.sizes), np.int64)
        names = ["skin"]
    tiles = skin_uv_tiles(model)
    uv = None if pg.uv is None else pg.uv.copy()
    if uv is not None and tiles > 1 and "skin" in names:
        # the skin texture holds the model's skin tiles side by side in one image: the skin
        # corners' u is divided by the tile count so every viewer and exporter reads it right;
        # the model's own UVs stay available as uv_model
        corner_slot = np.repeat(material_index, pg.sizes)
        uv[corner_slot == names.index("skin"), 0] /= tiles
    return MeshTopology(sizes=pg.sizes.copy(), vertices=pg.vertices.copy(), uv=uv, material_index=material_index,
                        material_names=names, uv_tiles=tiles,
                        uv_model=None if pg.uv is None or tiles == 1 else pg.uv.copy())


def skin_material_faces(model: MorphableModel) -> np.ndarray:
    """Triangles that wear the skin material (the fitted skin plus e.g. ICT's eye sockets)."""
    fp = model.face_parts()
    if fp is None:
        return np.arange(len(model.faces))
    return np.nonzero(np.asarray(model.parts.material)[fp] == "skin")[0]


def skin_uv_tiles(model: MorphableModel) -> int:
    """How many unit UV tiles (side by side along u) the skin's corner UVs span (ICT-FaceKit: 2)."""
    uv = model.corner_uv()
    if uv is None:
        return 1
    u = uv[skin_material_faces(model)][..., 0]
    return max(1, int(np.ceil(float(u.max()) - 1e-6)))


def skin_uv(model: MorphableModel):
    """(skin-material triangle indices, their corner UVs (F_s, 3, 2), tiles) for baking a skin texture
    into the model's own layout, or None when the model has no UVs."""
    uv = model.corner_uv()
    if uv is None:
        return None
    skin = skin_material_faces(model)
    return skin, uv[skin], skin_uv_tiles(model)


def expression_shape_keys(model: MorphableModel, values=None):
    """``(names, deltas (K', V, 3), values (K'))`` of a head's shape keys from the model's expressions."""
    v = np.zeros(model.n_expr, np.float32)
    if values is not None:
        values = np.asarray(values, np.float32).reshape(-1)
        v[: len(values)] = values[: model.n_expr]
    return rig_shape_keys(model.expr_names, model.expr_basis, key_values(model, v))


def key_values(model: MorphableModel, values) -> np.ndarray:
    """Expression values (..., K) as shape-key weights: inside the model's range for blendshape models
    (ICT-FaceKit, ARKit: 0..1). The fitters' range penalty leaves them a hair outside (-0.003): what
    leaves FaceForge must sit inside each key's slider, or readers clamp it (``key_ranges``)."""
    values = np.asarray(values, np.float32)
    if model.expr_range is None:
        return values
    lo, hi = model.expr_range
    return np.clip(values, lo, hi)
