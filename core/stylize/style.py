"""One-shot stylization (after LeGO, Yoon et al. CVPR 2024) and applying a learned style.

From ONE pair - a neutral head of the model and a stylized sculpt of it with the same topology -
a copy DT of the pretrained surface deformer DS is fine-tuned so that DT(codes of the neutral)
gives the sculpt, while for every other identity and expression DT(z) stays DS(z) plus "the same
style". The losses (weights in ``StyleConfig``):

- vertex: DT at the neutral's codes reproduces the sculpt, vertex by vertex;
- keep: away from where the sculpt differs from the neutral, DT(z) stays DS(z) on random codes;
- normal: the style's change of surface normals (sculpt vs neutral) appears on other identities
  sharing an expression (LeGO's normal-consistency style loss);
- transfer: the sculpt's offsets appear on other identities too (our addition: with a code-linear
  deformer the vertex term alone would hide the style in the identity columns of one person);
- CLIP reconstruction: renders of DT(z_ref) and of the sculpt agree in CLIP image space;
- CLIP direction: DS(z) -> DT(z) moves in CLIP space the way neutral -> sculpt does.

The CLIP terms need a CLIP checkpoint (``clip_guidance``); without one they are off and the
report says so. A learned style is a ``StyleAsset``: DT's weights plus which model it belongs to,
saved as a ``.pt`` that is read with ``weights_only=True``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import FaceForgeError, ModelFileError, TopologyError
from ..jobs import ensure_progress
from ..models.arkit import shape_key_layout
from ..models.morphable import MorphableModel
from ..render.shading import vertex_normals
from .deformer import SurfaceDeformer, load_deformer_file, model_fingerprint, sample_codes, save_atomic
from .surface import vertex_points

STYLE_FORMAT = "faceforge-style/1"


@dataclass
class StyleConfig:
    iterations: int = 100
    lr: float = 5e-4
    vertex_weight: float = 1.0
    keep_weight: float = 1.0
    normal_weight: float = 0.05
    transfer_weight: float = 2.0
    clip_reconstruction_weight: float = 0.2
    clip_direction_weight: float = 0.2
    codes_per_step: int = 3           # random (identity, expression) codes per iteration
    sampled_vertices: int = 3000      # vertices outside the style's region seen per iteration
    keep_margin_mm: float = 1.0       # where the sculpt moved less than this, DT should stay DS
    seed: int = 0


@dataclass
class StyleReport:
    iterations: int
    seconds: float
    clip: str                         # "on: <model>" or why it is off
    exemplar_error_mm: float          # DT(z_ref) vs the sculpt, median over vertices
    exemplar_max_mm: float
    style_size_mm: float              # how far the sculpt is from the neutral (median over moved vertices)
    losses_first: dict = field(default_factory=dict)
    losses_last: dict = field(default_factory=dict)


class StyleAsset:
    """A learned style: DT for one model, the codes of the neutral it was learned from, a report."""

    def __init__(self, network: SurfaceDeformer, model_name: str, fingerprint: str, reference_shape: np.ndarray,
                 reference_expr: np.ndarray, name: str = "style", report: Optional[StyleReport] = None):
        self.network = network.eval()
        self.model_name, self.fingerprint, self.name = model_name, fingerprint, name
        self.reference_shape = np.asarray(reference_shape, np.float32)
        self.reference_expr = np.asarray(reference_expr, np.float32)
        self.report = report

    def check_model(self, model: MorphableModel) -> None:
        if self.fingerprint != model_fingerprint(model):
            raise TopologyError(f"The style {self.name!r} was learned for the model {self.model_name!r}; this head "
                                f"uses {model.name!r}. Learn the style again on a head of this model.")

    def save(self, path) -> Path:
        data = {"format": STYLE_FORMAT, "name": self.name, "model_name": self.model_name,
                "fingerprint": self.fingerprint, "reference_shape": torch.as_tensor(self.reference_shape),
                "reference_expr": torch.as_tensor(self.reference_expr), **self.network.state_for_file()}
        if self.report is not None:
            data["report"] = {k: (v if not isinstance(v, dict) else {a: float(b) for a, b in v.items()})
                              for k, v in asdict(self.report).items()}
        return save_atomic(data, path)

    @classmethod
    def load(cls, path) -> "StyleAsset":
        data = load_deformer_file(path)
        if data.get("format") != STYLE_FORMAT:
            raise ModelFileError(f"{Path(path).name} is not a FaceForge style (format {data.get('format')!r}).")
        report = None
        if isinstance(data.get("report"), dict):
            report = StyleReport(**data["report"])
        return cls(SurfaceDeformer.from_state(data), data["model_name"], data["fingerprint"],
                   data["reference_shape"].numpy(), data["reference_expr"].numpy(), data.get("name", "style"), report)


# -- codes of a mesh in the model's topology --------------------------------------------------
def check_topology(model: MorphableModel, verts: np.ndarray, what: str) -> np.ndarray:
    verts = np.asarray(verts, np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise TopologyError(f"{what}: expected (V, 3) vertices, got shape {verts.shape}.")
    if len(verts) != model.n_vertices:
        raise TopologyError(f"{what} has {len(verts)} vertices but the model {model.name!r} has {model.n_vertices}: "
                            f"it must be a head of this model (same topology). For a mesh of another topology, "
                            f"use Fit Codes to Mesh first.")
    if not np.isfinite(verts).all():
        raise TopologyError(f"{what} has vertices that are not finite numbers.")
    return verts


def solve_codes(model: MorphableModel, verts: np.ndarray, with_expression: bool = False, ridge: float = 1e-3):
    """Identity (and optionally expression) codes of a head in the model's topology, by least squares
    on the skin (ridge-regularised). Exact for heads FaceForge built from the model."""
    verts = check_topology(model, verts, "The head")
    skin = model.skin_vertex_mask()
    d = (verts - model.v_template)[skin].reshape(-1)
    A = model.shape_basis[skin].reshape(-1, model.n_shape)
    if with_expression:
        A = np.concatenate([A, model.expr_basis[skin].reshape(-1, model.n_expr)], 1)
    A = A.astype(np.float64)
    scale = np.linalg.norm(A, axis=0).mean()
    x = np.linalg.solve(A.T @ A + (ridge * scale) ** 2 * np.eye(A.shape[1]), A.T @ d)
    shape = x[: model.n_shape].astype(np.float32)
    expr = x[model.n_shape:].astype(np.float32) if with_expression else np.zeros(model.n_expr, np.float32)
    if with_expression and model.expr_range is not None:
        expr = np.clip(expr, *model.expr_range)
    return shape, expr


# -- learning a style ------------------------------------------------------------------------
def _grow(mask: np.ndarray, faces: np.ndarray, rings: int) -> np.ndarray:
    """``mask`` plus ``rings`` rings of triangles around it."""
    mask = mask.copy()
    for _ in range(rings):
        touched = mask[faces].any(1)
        mask[faces[touched].ravel()] = True
    return mask


def _face_normals_loss(n_a: torch.Tensor, n_b: torch.Tensor) -> torch.Tensor:
    return (n_a - n_b).pow(2).sum(-1).mean()


def learn_style(model: MorphableModel, deformer: SurfaceDeformer, neutral: np.ndarray, stylized: np.ndarray,
                config: Optional[StyleConfig] = None, clip=None, clip_message: str = "off: no CLIP model given",
                reference_codes: Optional[tuple] = None, name: str = "style", progress=None) -> StyleAsset:
    """Fine-tune a copy of ``deformer`` (DS) into DT so that it reproduces ``stylized`` for the
    neutral's codes and carries the style to every other identity and expression.

    ``neutral`` / ``stylized``: (V, 3) model-space vertices in the model's topology. ``reference_codes``:
    (shape, expr) of the neutral (from the fit); default: solved from ``neutral`` by least squares.
    ``clip``: a ``ClipGuide`` or None. Cancellable through ``progress``.
    """
    cfg = config or StyleConfig()
    progress = ensure_progress(progress)
    neutral = check_topology(model, neutral, "The neutral head")
    stylized = check_topology(model, stylized, "The stylized head")
    if deformer.config["n_vertices"] != model.n_vertices or deformer.n_shape != model.n_shape \
            or deformer.n_expr != model.n_expr:
        raise TopologyError("The surface deformer was trained for another model.")
    moved = np.linalg.norm(stylized - neutral, axis=1) * 1000.0
    if float(moved.max()) < 0.05:
        raise FaceForgeError("The stylized head is identical to the neutral one: sculpt the style on a copy of "
                             "the head first (same vertices, moved).")
    device = deformer.template.device
    if reference_codes is None:
        reference_codes = solve_codes(model, neutral)
    s_ref = torch.as_tensor(np.asarray(reference_codes[0], np.float32), device=device)[None]
    e_ref = torch.as_tensor(np.asarray(reference_codes[1], np.float32), device=device)[None]

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    DS = deformer.eval()
    DT = deformer.clone().train()
    for p in DS.parameters():
        p.requires_grad_(False)
    for p in DT.parameters():
        p.requires_grad_(True)
    faces_np = np.asarray(model.faces, np.int64)
    faces = torch.as_tensor(faces_np, device=device)
    all_pts = vertex_points(model.n_vertices, device)
    # the style's region (what the sculpt moved, grown by two rings of triangles) is seen every
    # step; the rest of the head through a random sample: a step costs a fraction of a whole head
    region = _grow(moved > 0.05, faces_np, rings=2)
    local_faces_np = faces_np[region[faces_np].all(1)]
    region_idx = np.nonzero(region)[0]
    remap = np.full(model.n_vertices, -1, np.int64)
    remap[region_idx] = np.arange(len(region_idx))
    local_faces = torch.as_tensor(remap[local_faces_np], device=device)
    others = np.nonzero(~region)[0]
    X = torch.as_tensor(stylized, dtype=torch.float32, device=device)
    with torch.no_grad():
        basis_S = DS.point_basis(all_pts)
        ds_ref = DS.deform(basis_S, all_pts, s_ref, e_ref)[0]
    r_t = torch.as_tensor(region_idx, device=device)
    n_X = vertex_normals(X[r_t][None], local_faces)[0]
    n_ref = vertex_normals(ds_ref[r_t][None], local_faces)[0]
    style_normal = n_X - n_ref                                     # what the style does to normals
    style_offset = (X - ds_ref) * 1000.0                           # ... and to positions (mm)
    # where the sculpt did not move, DT must stay DS (LeGO keeps the rest of the head)
    keep_all = torch.as_tensor(np.exp(-(moved / cfg.keep_margin_mm) ** 2), dtype=torch.float32, device=device)

    use_clip = clip is not None and (cfg.clip_reconstruction_weight > 0 or cfg.clip_direction_weight > 0)
    if use_clip:
        from .clip_guidance import ClayCamera
        camera = ClayCamera(model.v_template, device=device, size=clip.image_size)
        with torch.no_grad():
            emb_X = clip.embed(camera.render(X, faces))
            emb_ref = clip.embed(camera.render(ds_ref, faces))
        clip_dir_target = torch.nn.functional.normalize(emb_X - emb_ref, dim=-1)

    # the factorised table and its head carry the model's bases: move them gently
    factor = [DT.vertex_features, DT.linear_head.weight]
    ids = {id(p) for p in factor}
    opt = torch.optim.Adam([{"params": factor, "lr": cfg.lr * 0.1},
                            {"params": [p for p in DT.parameters() if id(p) not in ids], "lr": cfg.lr}])
    scale_mm = 1000.0
    history = []
    t0 = time.perf_counter()
    n_region = len(region_idx)
    for it in range(cfg.iterations):
        progress.check()
        sample = rng.choice(others, size=min(len(others), cfg.sampled_vertices), replace=False)
        idx = torch.as_tensor(np.concatenate([region_idx, sample]), device=device)
        pts = vertex_points(model.n_vertices, device)
        pts = type(pts)(pts.corners[idx], pts.bary[idx])
        basis_T = DT.point_basis(pts)
        keep = keep_all[idx]
        terms = {}
        dt_ref = DT.deform(basis_T, pts, s_ref, e_ref)[0]
        terms["vertex"] = cfg.vertex_weight * ((dt_ref - X[idx]) * scale_mm).pow(2).sum(-1).mean()
        s, e = sample_codes(model, cfg.codes_per_step, g, identity_scale=0.8)
        e[:] = e[:1]                      # the identities share one expression (LeGO's style loss)
        s, e = s.to(device), e.to(device)
        dt = DT.deform(basis_T, pts, s, e)
        with torch.no_grad():
            ds = DS.deform(basis_S[idx], pts, s, e)
        diff = (dt - ds) * scale_mm
        terms["keep"] = cfg.keep_weight * (keep[None] * diff.pow(2).sum(-1)).mean()
        if cfg.transfer_weight > 0:
            # the sculpt's offsets carry over to other identities (they then shape it further)
            terms["transfer"] = cfg.transfer_weight * ((1.0 - keep[None]) * (diff - style_offset[idx][None])
                                                       .pow(2).sum(-1)).mean()
        if cfg.normal_weight > 0 and len(local_faces):
            n_dt = vertex_normals(dt[:, :n_region], local_faces)
            n_ds = vertex_normals(ds[:, :n_region], local_faces)
            terms["normal"] = cfg.normal_weight * 1e3 * _face_normals_loss(n_dt - n_ds, style_normal[None])
        if use_clip:
            view = [it % camera.n_views]
            full_T = DT.point_basis(all_pts)
            if cfg.clip_reconstruction_weight > 0:
                head = DT.deform(full_T, all_pts, s_ref, e_ref)[0]
                emb = clip.embed(camera.render(head, faces, view))
                terms["clip_reconstruction"] = cfg.clip_reconstruction_weight * (1.0 - (emb * emb_X[view]).sum(-1)).mean()
            if cfg.clip_direction_weight > 0:
                head = DT.deform(full_T, all_pts, s[:1], e[:1])[0]
                emb_t = clip.embed(camera.render(head, faces, view))
                with torch.no_grad():
                    emb_s = clip.embed(camera.render(DS.deform(basis_S, all_pts, s[:1], e[:1])[0], faces, view))
                direction = torch.nn.functional.normalize(emb_t - emb_s, dim=-1)
                terms["clip_direction"] = cfg.clip_direction_weight * (1.0 - (direction * clip_dir_target[view]).sum(-1)).mean()
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
        progress.update(f"Learning the style ({it + 1}/{cfg.iterations})", (it + 1) / cfg.iterations)
    seconds = time.perf_counter() - t0
    DT.eval()
    with torch.no_grad():
        err = ((DT.vertices(s_ref, e_ref)[0] - X).norm(dim=-1) * 1000.0).cpu().numpy()
    report = StyleReport(iterations=cfg.iterations, seconds=seconds,
                         clip=(f"on: {clip.name}" if use_clip else clip_message),
                         exemplar_error_mm=float(np.median(err)), exemplar_max_mm=float(err.max()),
                         style_size_mm=float(np.median(moved[moved > 0.05])),
                         losses_first=history[0] if history else {}, losses_last=history[-1] if history else {})
    for p in DT.parameters():
        p.requires_grad_(False)
    return StyleAsset(DT, model.name, model_fingerprint(model), s_ref[0].cpu().numpy(), e_ref[0].cpu().numpy(),
                      name=name, report=report)


# -- applying a style ----------------------------------------------------------------------------
def stylized_head(asset: StyleAsset, model: MorphableModel, shape: np.ndarray, key_codes: Optional[np.ndarray] = None):
    """The stylized neutral (V, 3) for identity ``shape`` and the stylized delta of each shape key:
    ``key_codes`` (K', Ke) expression codes per key (default: one per model expression plus ARKit's
    combined keys, as FaceForge heads have them). Returns ``(neutral, deltas (K', V, 3))``."""
    asset.check_model(model)
    net = asset.network
    device = net.template.device
    if key_codes is None:
        _, key_codes = shape_key_layout(model.expr_names)
    key_codes = np.asarray(key_codes, np.float32)
    pts = vertex_points(model.n_vertices, device)
    s = torch.as_tensor(np.asarray(shape, np.float32), device=device).reshape(1, -1)
    with torch.no_grad():
        basis = net.point_basis(pts)
        neutral = net.deform(basis, pts, s, torch.zeros(1, model.n_expr, device=device))[0]
        deltas = []
        for chunk in torch.as_tensor(key_codes, device=device).split(16):
            out = net.deform(basis, pts, s.expand(len(chunk), -1), chunk)
            deltas.append(out - neutral[None])
    return neutral.cpu().numpy(), torch.cat(deltas).cpu().numpy() if deltas else np.zeros((0,) + neutral.shape, np.float32)


def key_codes_for(model: MorphableModel, key_names) -> np.ndarray:
    """(K', Ke) expression code of each named shape key (model components and ARKit's combined keys)."""
    names, mix = shape_key_layout(model.expr_names)
    index = {n: i for i, n in enumerate(names)}
    missing = [str(n) for n in key_names if n not in index]
    if missing:
        raise TopologyError(f"The head has shape keys the model {model.name!r} does not have "
                            f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); a style applies to "
                            f"FaceForge heads of its model.")
    if len(key_names) == 0:
        return np.zeros((0, model.n_expr), np.float32)
    return np.stack([mix[index[n]] for n in key_names]).astype(np.float32)


def stylize_head(asset: StyleAsset, model: MorphableModel, neutral: np.ndarray, key_names) -> tuple:
    """For a head of the model (its neutral vertices and shape-key names): the stylized neutral
    (V, 3), the stylized delta of each key (K', V, 3) and the identity code it was read as."""
    verts = check_topology(model, neutral, "The head")
    shape, _ = solve_codes(model, verts)
    new_neutral, deltas = stylized_head(asset, model, shape, key_codes_for(model, key_names))
    return new_neutral, deltas, shape


def stylize_rig(asset: StyleAsset, model: MorphableModel, rig, name: Optional[str] = None):
    """A HeadRig of the stylized character for any FaceForge head rig of the model (photo, photos or
    tracked): same shape-key names, values, bones and animation; stylized neutral and keys."""
    import copy

    neutral, deltas, _ = stylize_head(asset, model, rig.vertices, rig.shape_key_names)
    out = copy.copy(rig)
    out.name = name or f"{rig.name}_{asset.name}"
    out.vertices = neutral.astype(np.float32)
    out.shape_key_deltas = deltas.astype(np.float32)
    if rig.bones is not None:
        bones = copy.copy(rig.bones)
        if model.joints is not None:
            bones.heads = (model.joints.regressor @ neutral).astype(np.float32)
        else:   # one root bone at the head's centre: it follows the stylized head's centre
            bones.heads = (np.asarray(rig.bones.heads) + (neutral.mean(0) - np.asarray(rig.vertices).mean(0))
                           ).astype(np.float32)
        out.bones = bones
    out.metadata = dict(rig.metadata, style=asset.name)
    return out


def style_transfer_correlation(asset: StyleAsset, deformer: SurfaceDeformer, neutral: np.ndarray, stylized: np.ndarray,
                               shape: np.ndarray) -> float:
    """How much of the sculpt's displacement pattern DT puts on another identity ``shape``:
    correlation of (DT(shape) - DS(shape)) with (sculpt - neutral) over the vertices the style moved."""
    d_style = np.asarray(stylized, np.float64) - np.asarray(neutral, np.float64)
    moved = np.linalg.norm(d_style, axis=1) > 1e-4
    with torch.no_grad():
        s = torch.as_tensor(np.asarray(shape, np.float32))[None]
        e = torch.zeros(1, deformer.n_expr)
        d_new = (asset.network.vertices(s, e) - deformer.vertices(s, e))[0].numpy().astype(np.float64)
    a, b = d_style[moved].ravel(), d_new[moved].ravel()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ----------------------------------------------------------------------------- whole jobs (one call each)
def learn_style_job(model_spec, neutral: np.ndarray, stylized: np.ndarray, iterations: int, clip_path: str,
                    name: str, out: str, device="auto", progress=None) -> tuple:
    """Learn Style as one call (Blender may run it in a child process): the model's deformer (trained
    once if missing), CLIP when a checkpoint is given, the style learned and saved to ``out``.
    Returns (name, StyleReport)."""
    from ..device import resolve_device
    from ..jobs import ensure_progress
    from ..models import load_model
    from . import clip_guidance
    from .deformer import deformer_for
    progress = ensure_progress(progress)
    dev = resolve_device(device)
    progress.update("loading the model", 0.0)
    model = load_model(model_spec)
    net = deformer_for(model, train_missing=True, device=dev, progress=progress.sub(0.0, 0.3))
    clip, clip_message = None, ""
    try:
        clip = clip_guidance.load_clip(clip_path, device=dev)
    except clip_guidance.ClipUnavailable as e:
        clip_message = f"off: {e}"
    asset = learn_style(model, net, neutral, stylized, StyleConfig(iterations=iterations), clip=clip,
                        clip_message=clip_message, name=name, progress=progress.sub(0.3, 0.98))
    asset.save(out)
    return asset.name, asset.report


def apply_style_job(style_path: str, model_spec, neutral: np.ndarray, key_names, device="auto", progress=None) -> tuple:
    """Apply Style as one call: (style name, stylized neutral (V, 3), stylized key offsets, key names)."""
    from ..device import resolve_device
    from ..jobs import ensure_progress
    from ..models import load_model
    progress = ensure_progress(progress)
    progress.update("loading the style", 0.0)
    asset = StyleAsset.load(style_path)
    model = load_model(model_spec)
    asset.check_model(model)
    asset.network.to(resolve_device(device))
    progress.update("stylizing the head and its shape keys", 0.3)
    new_neutral, deltas, _ = stylize_head(asset, model, neutral, key_names)
    progress.update("done", 1.0)
    return asset.name, new_neutral, deltas, list(key_names)
