"""Topology variants of a model's head, for training and testing the mesh encoder.

A variant is a new triangle mesh whose every vertex is a fixed linear blend of the model's vertices
(``Topology.weights``, sparse (Vn, V)), so ANY head of the model (any codes) can be evaluated on it
exactly: decimated by a maintained simplifier (``fast_simplification``, quadric edge collapse, its
new vertices projected back onto the surface), midpoint-subdivided, cropped to the face, clustered
on a grid (a remesh of another kind, kept out of training to test unseen topologies) and the
face-mask model's topology (its template projected once onto this model's surface). ``augment``
makes a head "roughly aligned": small rotation / translation / scale, per-vertex noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import FaceForgeError
from ..geometry import barycentric, closest_points_on_triangles, loop_subdivide, unique_edges
from ..models.morphable import MorphableModel


@dataclass
class Topology:
    """A mesh whose vertices are ``weights @ model_vertices``."""
    name: str
    kind: str                       # "parts", "decimate", "subdivide", "crop", "cluster", "facemask"
    weights: sp.csr_matrix          # (Vn, V_model)
    faces: np.ndarray               # (Fn, 3) int64
    info: dict = field(default_factory=dict)

    @property
    def n_vertices(self) -> int:
        return int(self.weights.shape[0])

    def evaluate(self, model_vertices):
        """(V, 3) or (B, V, 3) model vertices (numpy or torch) -> this topology's vertices."""
        W = self.weights
        if isinstance(model_vertices, torch.Tensor):
            Wt = torch_sparse(W, model_vertices.device)
            x = model_vertices if model_vertices.dim() == 3 else model_vertices[None]
            B, V, _ = x.shape
            y = torch.sparse.mm(Wt, x.permute(1, 0, 2).reshape(V, B * 3)).reshape(-1, B, 3).permute(1, 0, 2)
            return y if model_vertices.dim() == 3 else y[0]
        x = np.asarray(model_vertices)
        if x.ndim == 2:
            return np.asarray(W @ x, dtype=x.dtype)
        return np.stack([np.asarray(W @ xi, dtype=x.dtype) for xi in x])

    def basis(self, model: MorphableModel) -> tuple:
        """(template (Vn, 3), identity basis (Vn, 3, Ks), expression basis (Vn, 3, Ke)) on this mesh."""
        V = model.n_vertices
        t = self.weights @ model.v_template
        s = (self.weights @ model.shape_basis.reshape(V, -1)).reshape(-1, 3, model.n_shape)
        e = (self.weights @ model.expr_basis.reshape(V, -1)).reshape(-1, 3, model.n_expr)
        return t.astype(np.float32), s.astype(np.float32), e.astype(np.float32)


def torch_sparse(m: sp.spmatrix, device="cpu") -> torch.Tensor:
    m = m.tocoo()
    idx = torch.as_tensor(np.vstack([m.row, m.col]), dtype=torch.long)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(m.data, dtype=torch.float32), m.shape,
                                   device=device, check_invariants=False).coalesce()


# ----------------------------------------------------------------------------- surface queries
class SurfaceIndex:
    """A triangle mesh prepared for closest-point queries (a KD-tree on its triangle centroids)."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray):
        from scipy.spatial import cKDTree

        self.verts = np.asarray(verts, np.float64)
        self.faces = np.asarray(faces, np.int64)
        self.tree = cKDTree(self.verts[self.faces].mean(1))

    def closest(self, points: np.ndarray, candidates: int = 12) -> tuple:
        """(triangle (N,), barycentrics (N, 3), distance (N,), closest points (N, 3)). Candidate
        triangles are those whose centroids are nearest, then exact point-triangle distances decide."""
        points = np.asarray(points, np.float64)
        C = int(min(candidates, len(self.faces)))
        _, near = self.tree.query(points, k=C)
        near = near.reshape(len(points), C)
        N = len(points)
        tri = self.verts[self.faces[near.reshape(-1)]]
        q = np.repeat(points, C, axis=0)
        cp = closest_points_on_triangles(q, tri)
        dist = np.sqrt(((cp - q) ** 2).sum(1)).reshape(N, C)
        best = dist.argmin(1)
        rows = np.arange(N) * C + best
        return near[np.arange(N), best], barycentric(cp[rows], tri[rows]), dist[np.arange(N), best], cp[rows]


def project_to_surface(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, candidates: int = 12):
    """Closest surface point of each point: (triangle (N,), barycentrics (N, 3), distance (N,))."""
    return SurfaceIndex(verts, faces).closest(points, candidates)[:3]


def bary_matrix(face_index: np.ndarray, bary: np.ndarray, faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """(N, V) sparse: point n = sum_c bary[n, c] * vertex faces[face_index[n], c]."""
    N = len(face_index)
    rows = np.repeat(np.arange(N), 3)
    cols = faces[face_index].reshape(-1)
    b = np.asarray(bary, np.float64)
    b = b / np.clip(b.sum(1, keepdims=True), 1e-12, None)
    return sp.csr_matrix((b.reshape(-1), (rows, cols)), shape=(N, n_vertices))


def compact(faces: np.ndarray):
    """Drop vertices no triangle uses; returns (rows kept, remapped faces)."""
    used = np.unique(faces)
    remap = -np.ones(int(faces.max()) + 1 if len(faces) else 0, np.int64)
    remap[used] = np.arange(len(used))
    return used, remap[faces]


def largest_component(faces: np.ndarray, n_vertices: int, keep_fraction: float = 0.02) -> np.ndarray:
    """Triangles of the connected components holding at least ``keep_fraction`` of the triangles
    (crops leave slivers behind)."""
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    g = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    _, label = connected_components(g, directed=False)
    face_label = label[faces[:, 0]]
    counts = np.bincount(face_label)
    keep = counts[face_label] >= max(1, keep_fraction * len(faces))
    return faces[keep]


# ----------------------------------------------------------------------------- variants
def part_names(model: MorphableModel, which: str) -> Optional[list]:
    if model.parts is None:
        return None
    names = list(model.parts.names)
    skin = [n for n, s in zip(names, model.parts.skin) if s]
    if which == "skin":
        return skin
    if which == "skin+eyes":
        return skin + [n for n in names if n.startswith("eyeball")]
    if which == "face":
        return [n for n in skin if n == "face"] or skin
    if which == "all":
        return names
    raise ValueError(f"unknown part selection {which!r}")


def parts_topology(model: MorphableModel, which: str = "skin") -> Topology:
    """The model's own triangles on a selection of parts ("skin", "skin+eyes", "face", "all")."""
    names = part_names(model, which)
    if names is None:
        faces = model.faces
    else:
        keep_part = np.isin(np.asarray(model.parts.names), names)
        vmask = keep_part[np.asarray(model.parts.vertex_part)]
        faces = model.faces[vmask[model.faces].all(1)]
    used, new_faces = compact(np.asarray(faces, np.int64))
    W = sp.csr_matrix((np.ones(len(used)), (np.arange(len(used)), used)), shape=(len(used), model.n_vertices))
    return Topology(f"{which}", "parts", W, new_faces, {"parts": which})


def decimate(base: Topology, n_vertices: int, geometry: np.ndarray, name: str = "", agg: float = 7.0) -> Topology:
    """Quadric decimation of ``base`` (evaluated as ``geometry``, its own vertices) to about
    ``n_vertices``; the new vertices are projected back onto the base surface."""
    import fast_simplification

    geometry = np.asarray(geometry, np.float64)
    target_faces = int(max(8, min(len(base.faces) - 1, round(len(base.faces) * n_vertices / base.n_vertices))))
    v, f = fast_simplification.simplify(geometry, base.faces.astype(np.int32), target_count=target_faces, agg=agg)
    f = np.asarray(f, np.int64)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    used, f = compact(f)
    v = np.asarray(v)[used]
    fi, bary, _ = project_to_surface(v, geometry, base.faces)
    W = (bary_matrix(fi, bary, base.faces, base.n_vertices) @ base.weights).tocsr()
    return Topology(name or f"{base.name}/decimate{len(v)}", "decimate", W, f, {**base.info, "from": base.name})


def subdivide(base: Topology, name: str = "") -> Topology:
    """One midpoint subdivision step (each triangle -> 4)."""
    edges = unique_edges(base.faces)
    dummy = np.zeros((base.n_vertices, 3))
    _, faces, _ = loop_subdivide(dummy, base.faces)
    W = base.weights
    mid = 0.5 * (W[edges[:, 0]] + W[edges[:, 1]])
    return Topology(name or f"{base.name}/subdivided", "subdivide", sp.vstack([W, mid]).tocsr(),
                    np.asarray(faces, np.int64), {**base.info, "from": base.name})


def face_center(model: MorphableModel) -> np.ndarray:
    """A point in the middle of the face (the landmarks' centroid, else the front of the skin's box)."""
    if model.landmarks is not None:
        from ..models.correspondence import embedding_points
        return embedding_points(model, model.landmarks).mean(0)
    v = model.v_template[model.skin_vertex_mask()]
    lo, hi = v.min(0), v.max(0)
    c = 0.5 * (lo + hi)
    c[2] = hi[2] - 0.3 * (hi[2] - lo[2])
    return c


def crop(base: Topology, geometry: np.ndarray, center: np.ndarray, radii, name: str = "") -> Topology:
    """The part of ``base`` inside an axis-aligned ellipsoid (the face region): triangles with every
    corner inside, slivers dropped."""
    g = np.asarray(geometry, np.float64)
    inside = ((((g - center) / np.asarray(radii)) ** 2).sum(1) < 1.0)
    f = base.faces[inside[base.faces].all(1)]
    if len(f) < 8:
        raise FaceForgeError("The crop keeps almost nothing of the head.")
    f = largest_component(f, base.n_vertices)
    used, f = compact(f)
    return Topology(name or f"{base.name}/crop", "crop", base.weights[used].tocsr(), f,
                    {**base.info, "from": base.name, "radii": [float(r) for r in radii]})


def cluster_remesh(base: Topology, geometry: np.ndarray, cell: float, name: str = "") -> Topology:
    """Vertex clustering on a grid of ``cell`` metres (a remesh unlike edge collapse: near-uniform,
    possibly non-manifold triangles); cluster centres are projected onto the surface."""
    g = np.asarray(geometry, np.float64)
    key = np.floor((g - g.min(0)) / cell).astype(np.int64)
    _, cluster = np.unique(key, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    n = int(cluster.max()) + 1
    f = _unique_faces(cluster[base.faces])
    counts = np.bincount(cluster, minlength=n).astype(np.float64)
    centres = np.zeros((n, 3))
    for c in range(3):
        centres[:, c] = np.bincount(cluster, g[:, c], n) / np.maximum(counts, 1)
    f = largest_component(f, n)
    used, f = compact(f)
    fi, bary, _ = project_to_surface(centres[used], g, base.faces)
    W = (bary_matrix(fi, bary, base.faces, base.n_vertices) @ base.weights).tocsr()
    return Topology(name or f"{base.name}/cluster{len(used)}", "cluster", W, f,
                    {**base.info, "from": base.name, "cell": float(cell)})


def _unique_faces(f: np.ndarray) -> np.ndarray:
    """Drop collapsed triangles and duplicates (keeping the first orientation seen)."""
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    _, first = np.unique(np.sort(f, 1), axis=0, return_index=True)
    return f[np.sort(first)]


_FACEMASK_CACHE: dict = {}


def facemask_topology(model: MorphableModel, mask: Optional[MorphableModel] = None) -> Topology:
    """The face-mask model's topology (468 points, mediapipe's triangles) on ``model``'s surface.

    The mask's template is aligned to the model by a similarity fit on the landmarks both know
    (same detector points), then each mask vertex takes the model's own landmark embedding when it
    has one for that point, else the closest point of the model's skin. Computed once per model."""
    from ..models.builtin import load_embedded
    from ..models.correspondence import embedding_points

    key = (model.name, model.n_vertices)
    if key in _FACEMASK_CACHE:
        return _FACEMASK_CACHE[key]
    mask = mask if mask is not None else load_embedded("facemask")
    if model.landmarks is None or mask.landmarks is None:
        raise FaceForgeError(f"Model '{model.name}' has no landmark correspondences: the face-mask topology "
                             "cannot be placed on it.")
    # mask vertex of each detector point (its embedding is one-hot on a vertex)
    ml = mask.landmarks
    mask_vertex = mask.faces[ml.face_index, np.argmax(ml.bary, 1)]
    det_to_mask = dict(zip(ml.detector_index.tolist(), mask_vertex.tolist()))
    lm = model.landmarks
    model_pts = embedding_points(model, lm)
    det_to_model = {d: i for i, d in enumerate(lm.detector_index.tolist())}
    common = [d for d in lm.detector_index.tolist() if d in det_to_mask]
    src = mask.v_template[[det_to_mask[d] for d in common]].astype(np.float64)
    dst = model_pts[[det_to_model[d] for d in common]].astype(np.float64)
    s, R, t = similarity(src, dst)
    placed = s * mask.v_template.astype(np.float64) @ R.T + t
    skin = parts_topology(model, "skin")
    skin_geom = skin.evaluate(model.v_template)
    fi, bary, dist = project_to_surface(placed, skin_geom, skin.faces)
    W = bary_matrix(fi, bary, skin.faces, skin.n_vertices) @ skin.weights
    W = W.tolil()
    vertex_det = {v: d for d, v in det_to_mask.items()}
    full_faces = model.faces
    for v in range(mask.n_vertices):
        d = vertex_det.get(v)
        if d is not None and d in det_to_model:
            k = det_to_model[d]
            row = np.zeros(model.n_vertices)
            np.add.at(row, full_faces[lm.face_index[k]], lm.bary[k])
            W[v] = sp.csr_matrix(row)
    topo = Topology("facemask", "facemask", sp.csr_matrix(W), np.asarray(mask.faces, np.int64),
                    {"alignment_scale": float(s), "projection_mm_median": float(np.median(dist) * 1000)})
    _FACEMASK_CACHE[key] = topo
    return topo


def similarity(src: np.ndarray, dst: np.ndarray, weights: Optional[np.ndarray] = None) -> tuple:
    """Least-squares similarity (Umeyama): s, R, t with dst ~ s R src + t."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s = (w[:, None] * src).sum(0)
    mu_d = (w[:, None] * dst).sum(0)
    a, b = src - mu_s, dst - mu_d
    cov = (w[:, None] * b).T @ a
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    var = (w * (a ** 2).sum(1)).sum()
    s = float(np.trace(np.diag(S) @ D) / max(var, 1e-30))
    t = mu_d - s * R @ mu_s
    return s, R, t


# ----------------------------------------------------------------------------- training sets
def random_head(model: MorphableModel, rng: np.random.Generator, expression: bool = True) -> np.ndarray:
    """A model head with random identity (~N(0, 1)) and, optionally, a sparse random expression."""
    s = rng.standard_normal(model.n_shape)
    e = np.zeros(model.n_expr)
    if expression:
        e = sample_expression(model, rng)
    V = model.n_vertices
    return (model.v_template + (model.shape_basis.reshape(V * 3, -1) @ s).reshape(V, 3)
            + (model.expr_basis.reshape(V * 3, -1) @ e).reshape(V, 3)).astype(np.float64)


def sample_expression(model: MorphableModel, rng: np.random.Generator, p_active: float = 0.15) -> np.ndarray:
    if model.expr_range is None:
        return 0.7 * rng.standard_normal(model.n_expr)
    lo, hi = model.expr_range
    active = rng.random(model.n_expr) < p_active
    return lo + (hi - lo) * rng.random(model.n_expr) * active


def training_topologies(model: MorphableModel, seed: int = 0, progress=None) -> list:
    """The variety the encoder is trained on (about 30 meshes of 350-1300 vertices): the skin, the
    skin with eyes and the whole head decimated to several sizes (from the template and from random
    heads, so the edge collapses differ), coarse decimations subdivided, face crops of several
    sizes, the face part alone and the face-mask topology (and it subdivided)."""
    rng = np.random.default_rng(seed)
    out = []
    skin = parts_topology(model, "skin")

    def geom(topo, random=True):
        return topo.evaluate(random_head(model, rng, expression=False) if random else model.v_template)

    for n in (350, 500, 700, 900, 1200):
        for random in (False, True):
            out.append(decimate(skin, n, geom(skin, random), name=f"skin/dec{n}{'r' if random else ''}"))
    if model.parts is not None:
        eyes = parts_topology(model, "skin+eyes")
        for n in (600, 1000):
            out.append(decimate(eyes, n, geom(eyes), name=f"skin+eyes/dec{n}"))
        whole = parts_topology(model, "all")
        for n in (800, 1300):
            out.append(decimate(whole, n, geom(whole), name=f"all/dec{n}"))
        face = parts_topology(model, "face")
        for n in (400, 800):
            out.append(decimate(face, n, geom(face), name=f"face/dec{n}"))
    for n in (120, 200, 280):
        out.append(subdivide(decimate(skin, n, geom(skin)), name=f"skin/dec{n}/sub"))
    c = face_center(model)
    for radii, n in (((0.075, 0.10, 0.09), 350), ((0.09, 0.12, 0.10), 550), ((0.11, 0.14, 0.11), 900),
                     ((0.085, 0.11, 0.095), 700)):
        d = decimate(skin, int(n * 2.2), geom(skin))
        out.append(crop(d, d.evaluate(model.v_template), c, radii, name=f"skin/crop{n}"))
    if model.landmarks is not None:
        try:
            fm = facemask_topology(model)
            out.append(fm)
            out.append(subdivide(fm, name="facemask/sub"))
        except FaceForgeError:
            pass
    return out


def augment(verts: torch.Tensor, generator: torch.Generator, center, rotation_deg: float = 2.0,
            translation_m: float = 0.002, scale: float = 0.01, noise_m: float = 0.0001, also=None):
    """Roughly aligned copies of (B, V, 3) heads: a random rotation (up to ``rotation_deg`` about a
    random axis through ``center``), translation, uniform scale and per-vertex noise. ``also`` (N, 3) or
    (B, N, 3): points moved by the same similarity (no noise), returned second."""
    from ..models.morphable import axis_angle_to_matrix

    B = verts.shape[0]
    dev = verts.device
    axis = torch.randn(B, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True)
    angle = (torch.rand(B, 1, generator=generator) * 2 - 1) * np.deg2rad(rotation_deg)
    R = axis_angle_to_matrix((axis * angle).to(dev))
    t = ((torch.rand(B, 1, 3, generator=generator) * 2 - 1) * translation_m).to(dev)
    s = (1.0 + (torch.rand(B, 1, 1, generator=generator) * 2 - 1) * scale).to(dev)
    c = torch.as_tensor(np.asarray(center, np.float32), device=dev)
    move = lambda p: s * torch.einsum("bij,bvj->bvi", R, p - c) + c + t  # noqa: E731
    noise = (torch.randn(verts.shape, generator=generator) * noise_m).to(dev)
    out = move(verts) + noise
    if also is None:
        return out
    return out, move(also if also.dim() == 3 else also[None].expand(B, -1, -1))
