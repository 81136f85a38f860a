"""A MAGE-style mesh encoder: a head mesh of ANY topology -> the model's identity and expression codes.

After Neural Face Rigging (Qin et al., SIGGRAPH 2023), whose MAGE encoder maps a mesh to codes with
DiffusionNet. Here: per-vertex features (position in model units and normal) -> a DiffusionNet over the
mesh -> a per-vertex MLP -> surface-area-weighted mean -> an MLP -> identity codes (the first
``n_shape``) and expression codes (all of the model's). Trained on model samples re-meshed many ways
(``remesh.py``) with a loss on the decoded head's vertices (mm) plus a small code term.

``fit_codes_to_mesh`` brings a user's mesh into code space: checks, a simplification to a few thousand
vertices, a rigid pre-alignment against the model's template, the encoder's prediction, then a short
refinement of the codes and a rigid transform by closest-point (point-to-surface, both directions)
least squares. It returns the codes, the nearest model head and the remaining distance in mm.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import FaceForgeError, JobCancelled, ModelFileError
from ..jobs import ensure_progress
from ..models.morphable import MorphableModel, axis_angle_to_matrix
from ..render.shading import vertex_normals
from .deformer import model_fingerprint, save_atomic
from .diffusion_net import DiffusionNet, MeshOperators, mesh_operators, vertex_normals_np
from .remesh import (SurfaceIndex, augment, parts_topology, project_to_surface, sample_expression,
                     training_topologies)

FORMAT = "faceforge-mesh-encoder/1"
DISPLACEMENT_SCALE = 0.1     # displacement outputs are in centimetres (encoder units are decimetres)


@dataclass
class EncoderConfig:
    model_name: str
    fingerprint: str
    n_shape: int                    # identity codes predicted (the model's first n_shape)
    n_expr: int                     # expression codes predicted (all of the model's)
    model_n_shape: int
    center: list                    # model-space point subtracted from positions (m)
    unit: float = 0.1               # positions are divided by this (m): a head is ~3 units across
    width: int = 128
    blocks: int = 4
    k_eig: int = 64
    pool_channels: int = 128
    head_hidden: int = 512
    max_vertices: int = 1200        # inputs are simplified to at most this many vertices
    reference_vertices: int = 0     # the mean head kept in the encoder (sizes, for loading)
    reference_faces: int = 0
    expr_range: Optional[list] = None
    info: dict = field(default_factory=dict)


class MeshEncoder(nn.Module):
    """(vertices (B, V, 3) in model space, metres; faces; operators) -> (identity (B, n_shape), expression (B, n_expr)).

    Per-vertex inputs: position, normal, the closest point of the model's mean head (its skin and eyes,
    kept in the encoder) and the offset to it. The DiffusionNet gives every vertex two things: its
    displacement from the mean head (the offset plus a learned correction, trained with a dense
    per-vertex loss) and ``pool_channels`` features a_i saying where on the head it lies. Pooling is
    second order: the surface-area-weighted mean of a_i d_i^T, displacement integrated against
    location-dependent weights, which is exactly how a linear model's codes follow from a head (so a
    linear map of it can be exact), goes through a linear map plus an MLP to the codes. Pooling
    displacements rather than positions keeps the pooled vector free of a large per-topology constant
    (a face crop and a whole head of the mean face both pool to ~0), so one readout serves every
    topology."""

    IN_CHANNELS = 12

    def __init__(self, config: EncoderConfig, reference: Optional[tuple] = None):
        super().__init__()
        self.config = config
        c = config
        if reference is not None:
            rv, rf = np.asarray(reference[0], np.float32), np.asarray(reference[1], np.int64)
            c.reference_vertices, c.reference_faces = int(len(rv)), int(len(rf))
        else:
            rv = np.zeros((c.reference_vertices, 3), np.float32)
            rf = np.zeros((c.reference_faces, 3), np.int64)
        self.register_buffer("reference_verts", torch.as_tensor(rv))
        self.register_buffer("reference_faces", torch.as_tensor(rf))
        self._index = None
        self.net = DiffusionNet(self.IN_CHANNELS, c.width, width=c.width, blocks=c.blocks)
        self.displacement = nn.Linear(c.width, 3)
        self.location = nn.Sequential(nn.ReLU(), nn.Linear(c.width, c.pool_channels))
        pooled = c.pool_channels * 3
        n_out = c.n_shape + c.n_expr
        self.linear = nn.Linear(pooled, n_out)
        self.head = nn.Sequential(nn.Linear(pooled, c.head_hidden), nn.ReLU(), nn.Linear(c.head_hidden, n_out))
        for layer in (self.displacement, self.linear, self.head[-1]):    # start from the mean head (codes 0)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("center", torch.tensor(c.center, dtype=torch.float32))

    # -- features and forward ------------------------------------------------------------
    def normalise(self, verts: torch.Tensor) -> torch.Tensor:
        return (verts - self.center) / self.config.unit

    def reference_index(self) -> SurfaceIndex:
        if self._index is None:
            self._index = SurfaceIndex(self.reference_verts.numpy(), self.reference_faces.numpy())
        return self._index

    def closest_reference_points(self, verts: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) closest points of the mean head to each vertex (no gradient: an input)."""
        index = self.reference_index()
        v = verts.detach().cpu().numpy()
        out = np.stack([index.closest(b, candidates=8)[3] for b in v])
        return torch.as_tensor(out, dtype=verts.dtype, device=verts.device)

    def features(self, verts: torch.Tensor, faces: torch.Tensor, ops: MeshOperators) -> tuple:
        """(pooled (B, P*3), per-vertex displacement from the mean head (B, V, 3) in the encoder's units)."""
        x = self.normalise(verts)
        closest = self.closest_reference_points(verts)
        offset = (verts - closest) / self.config.unit                         # ~0.05 for 5 mm
        inputs = torch.cat([x, vertex_normals(verts, faces), self.normalise(closest),
                            offset / DISPLACEMENT_SCALE], -1)
        h = self.net(inputs, ops)
        d = offset + DISPLACEMENT_SCALE * self.displacement(h)
        a = self.location(h)                                                  # (B, V, P)
        w = ops.mass / ops.mass.sum()
        pooled = torch.einsum("v,bvp,bvc->bpc", w, a, d / DISPLACEMENT_SCALE).reshape(len(x), -1)
        return pooled, d

    def forward(self, verts: torch.Tensor, faces: torch.Tensor, ops: MeshOperators, aux: bool = False):
        pooled, d = self.features(verts, faces, ops)
        out = self.linear(pooled) + self.head(pooled)
        s, e = out[:, : self.config.n_shape], out[:, self.config.n_shape:]
        if aux:
            return s, e, d
        return s, e

    def operators(self, verts: np.ndarray, faces: np.ndarray) -> MeshOperators:
        """The mesh's operators, computed on the encoder's normalised positions."""
        v = (np.asarray(verts, np.float64) - np.asarray(self.config.center)) / self.config.unit
        return mesh_operators(v, faces, self.config.k_eig)

    @torch.no_grad()
    def encode(self, verts: np.ndarray, faces: np.ndarray, ops: Optional[MeshOperators] = None) -> dict:
        """Codes of one mesh (model space, roughly aligned; at most ``max_vertices`` vertices, see
        ``simplify_for_encoder``): ``{"shape", "expr", "operators_s", "network_s"}``; expressions are
        clamped to the model's range."""
        t0 = time.perf_counter()
        if ops is None:
            ops = self.operators(verts, faces)
        t1 = time.perf_counter()
        self.eval()
        v = torch.as_tensor(np.asarray(verts, np.float32))[None]
        s, e = self(v, torch.as_tensor(np.asarray(faces, np.int64)), ops)
        e = e[0].numpy().astype(np.float64)
        if self.config.expr_range is not None:
            e = np.clip(e, *self.config.expr_range)
        return {"shape": s[0].numpy().astype(np.float64), "expr": e, "operators_s": t1 - t0,
                "network_s": time.perf_counter() - t1}

    def check_model(self, model: MorphableModel) -> None:
        c = self.config
        if c.fingerprint != model_fingerprint(model) or c.n_expr != model.n_expr:
            raise ModelFileError(
                f"This mesh encoder was trained for the model {c.model_name!r}, not for {model.name!r} "
                f"({model.n_vertices} vertices): train one for this model with "
                f"`python tools/train_mesh_encoder.py --model {model.source or model.name}`.")


# ----------------------------------------------------------------------------- files
def save_encoder(encoder: MeshEncoder, path) -> Path:
    """Weights (a state dict of tensors) + the config as plain values; readable with weights_only=True."""
    data = {"format": FORMAT, "config": asdict(encoder.config),
            "state": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}}
    return save_atomic(data, path)


def load_encoder(path, model: Optional[MorphableModel] = None) -> MeshEncoder:
    """Load an encoder file (tensors and plain values only: ``torch.load(weights_only=True)``); with
    ``model``, refuse one trained for another model."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No mesh encoder file at {path}.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # noqa: BLE001 - any unreadable file is the same user error
        raise ModelFileError(f"{path.name} is not a FaceForge mesh encoder (or it is damaged): {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or "state" not in data or "config" not in data:
        raise ModelFileError(f"{path.name} is not a FaceForge mesh encoder file.")
    try:
        enc = MeshEncoder(EncoderConfig(**data["config"]))
        enc.load_state_dict(data["state"])
    except (TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{path.name}: the encoder's weights do not match its configuration ({exc}).") from exc
    enc.eval()
    if model is not None:
        enc.check_model(model)
    return enc


def weights_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"


def shipped_encoder_path(model: MorphableModel) -> Path:
    return weights_dir() / f"mage_encoder_{model.name}.pt"


def encoder_for(model: MorphableModel, path=None) -> MeshEncoder:
    """The encoder in ``path``, else the one shipped for ``model`` (the default model has one), else a
    clear error saying how to train one."""
    p = Path(path) if path else shipped_encoder_path(model)
    if not p.is_file():
        raise FaceForgeError(f"No mesh encoder for the model {model.name!r} yet. Train one once (an hour or so on "
                             f"a CPU): `python tools/train_mesh_encoder.py --model {model.source or model.name}`.")
    return load_encoder(p, model)


# ----------------------------------------------------------------------------- training
@dataclass
class _PoolMesh:
    topo: int
    ops: MeshOperators
    faces: torch.Tensor
    template: torch.Tensor          # (Vn, 3)
    shape_basis: torch.Tensor       # (Vn*3, Ks)
    expr_basis: torch.Tensor        # (Vn*3, Ke)


def _loss_vertices(model: MorphableModel) -> np.ndarray:
    """Model vertices the training loss and the reported errors are measured on: the skin and eyeballs."""
    if model.parts is None:
        return np.arange(model.n_vertices)
    names = np.asarray(model.parts.names)
    keep = np.asarray(model.parts.skin, bool) | np.char.startswith(names.astype(str), "eyeball")
    return np.nonzero(keep[np.asarray(model.parts.vertex_part)])[0]


def sample_training_codes(model: MorphableModel, batch: int, rng: np.random.Generator) -> tuple:
    """Identity ~N(0, s^2) with s in [0.7, 1.3] per head; expressions sparse (a third neutral)."""
    s = rng.standard_normal((batch, model.n_shape)) * rng.uniform(0.7, 1.3, (batch, 1))
    e = np.stack([sample_expression(model, rng, p_active=rng.choice([0.05, 0.15, 0.3])) for _ in range(batch)])
    e[rng.random(batch) < 0.33] = 0.0
    return s.astype(np.float32), e.astype(np.float32)


def model_reference(model: MorphableModel) -> tuple:
    """The mean head's skin and eyes (vertices, triangles): what the encoder measures offsets against."""
    ref = parts_topology(model, "skin+eyes" if model.parts is not None else "skin")
    return ref.evaluate(model.v_template).astype(np.float32), ref.faces


def default_config(model: MorphableModel, n_shape: Optional[int] = None, **kw) -> EncoderConfig:
    skin = model.v_template[model.skin_vertex_mask()]
    center = (0.5 * (skin.min(0) + skin.max(0))).astype(float).tolist()
    r = model.expr_range
    return EncoderConfig(model_name=model.name, fingerprint=model_fingerprint(model),
                         n_shape=int(min(n_shape or model.n_shape, model.n_shape)), n_expr=model.n_expr,
                         model_n_shape=model.n_shape, center=center, expr_range=None if r is None else list(r), **kw)


def build_pool(enc: MeshEncoder, model: MorphableModel, topos: list, geometries: int, rng: np.random.Generator,
               progress=None, check=None) -> list:
    """Training meshes with their operators: ``geometries`` random heads per topology."""
    pool = []
    n = len(topos) * geometries
    for ti, tp in enumerate(topos):
        tmpl, sb, eb = tp.basis(model)
        faces_t = torch.as_tensor(tp.faces)
        for g in range(geometries):
            if check is not None:
                check()
            s, e = sample_training_codes(model, 1, rng)
            geom = tmpl + (sb.reshape(-1, model.n_shape) @ s[0]).reshape(-1, 3) \
                + (eb.reshape(-1, model.n_expr) @ e[0]).reshape(-1, 3)
            pool.append(_PoolMesh(ti, enc.operators(geom, tp.faces), faces_t, torch.as_tensor(tmpl),
                                  torch.as_tensor(sb.reshape(-1, model.n_shape)),
                                  torch.as_tensor(eb.reshape(-1, model.n_expr))))
            if progress is not None:
                progress.update(f"operators {len(pool)}/{n}", len(pool) / n)
    return pool


@torch.no_grad()
def calibrate_readout(enc: MeshEncoder, model: MorphableModel, pool: list, samples: int, rng: np.random.Generator,
                      gen: torch.Generator, ridge: float = 1e-3, check=None) -> float:
    """Refit the encoder's linear readout in closed form (ridge regression of the codes, minus what the
    MLP head gives, on the pooled features of ``samples`` fresh training heads). The features stay as
    trained; minibatch Adam leaves the 900 x 157 linear map noisy, and this removes that noise.
    Returns the mean vertex error (mm, on the pool meshes' vertices) after the refit."""
    enc.eval()
    ks = enc.config.n_shape
    center = np.asarray(enc.config.center)
    feats, targets, meshes = [], [], []
    per = 4
    for i in range(0, samples, per):
        if check is not None:
            check()
        pm = pool[int(rng.integers(len(pool)))]
        s, e = sample_training_codes(model, per, rng)
        verts = pm.template[None] + (torch.as_tensor(s) @ pm.shape_basis.T
                                     + torch.as_tensor(e) @ pm.expr_basis.T).reshape(per, -1, 3)
        phi, _ = enc.features(augment(verts, gen, center), pm.faces, pm.ops)
        feats.append(phi)
        targets.append(torch.cat([torch.as_tensor(s[:, :ks]), torch.as_tensor(e)], 1) - enc.head(phi))
        meshes.append(pm)
    X = torch.cat(feats).double()
    Y = torch.cat(targets).double()
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    XtX = Xa.T @ Xa
    reg = ridge * float(torch.diagonal(XtX)[:-1].mean()) * torch.eye(Xa.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0.0
    sol = torch.linalg.solve(XtX + reg, Xa.T @ Y)                      # (P+1, K)
    enc.linear.weight.copy_(sol[:-1].T.float())
    enc.linear.bias.copy_(sol[-1].float())
    resid = (Xa @ sol - Y).float()                                            # code errors after the refit
    errs = []
    for j, pm in enumerate(meshes):
        r = resid[j * per:(j + 1) * per]
        d = (r[:, :ks] @ pm.shape_basis[:, :ks].T + r[:, ks:] @ pm.expr_basis.T).reshape(per, -1, 3)
        errs.append(float(d.norm(dim=-1).mean()) * 1000.0)
    return float(np.mean(errs))


def train_encoder(model: MorphableModel, steps: int = 3000, n_shape: Optional[int] = None, width: int = 128,
                  blocks: int = 4, k_eig: int = 64, lr: float = 5e-4, meshes_per_step: int = 2,
                  codes_per_mesh: int = 4, pool_geometries: int = 2, seed: int = 0, progress=None,
                  cancel: Optional[Callable[[], bool]] = None, log: Optional[Callable[[str], None]] = None,
                  init: Optional[MeshEncoder] = None, threads: Optional[int] = None,
                  aux_weight: float = 0.5, log_every: int = 100, topologies: Optional[list] = None,
                  calibrations: int = 2, calibrate_samples: int = 2000, train_readout: bool = True,
                  ridge: float = 1e-3) -> tuple:
    """Train a MeshEncoder for ``model``; returns (encoder, info dict).

    A pool of re-meshed heads with precomputed operators (``pool_geometries`` random heads per
    topology: eigenbases are too slow to compute per step); each step takes ``meshes_per_step`` pool
    meshes and puts ``codes_per_mesh`` fresh random heads on each (so the operators come from a
    nearby head of the same topology, a mild augmentation), roughly aligned by ``augment``.

    The linear readout is not trained by gradient: it is solved in closed form (``calibrate_readout``)
    at the start, ``calibrations - 1`` times during training and once more at the end on twice the
    samples; Adam trains the DiffusionNet, the location features and the MLP head around it.
    ``progress.update`` (core.jobs) may raise JobCancelled; ``cancel()`` returning True also stops."""
    progress = ensure_progress(progress)
    if threads:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = default_config(model, n_shape, width=width, blocks=blocks, k_eig=k_eig)
    enc = init if init is not None else MeshEncoder(cfg, reference=model_reference(model))
    cfg = enc.config

    def check():
        if hasattr(progress, "check"):
            progress.check()
        if cancel is not None and cancel():
            raise JobCancelled()

    progress.update("re-meshing the model", 0.0)
    topos = topologies if topologies is not None else training_topologies(model, seed=seed)
    t_ops = time.perf_counter()
    pool = build_pool(enc, model, topos, pool_geometries, rng, progress=progress.sub(0.0, 0.1), check=check)
    ops_seconds = time.perf_counter() - t_ops
    lv = _loss_vertices(model)
    L_s = torch.as_tensor(model.shape_basis[lv].reshape(-1, model.n_shape))
    L_e = torch.as_tensor(model.expr_basis[lv].reshape(-1, model.n_expr))
    ks = cfg.n_shape
    center = np.asarray(cfg.center)
    calib_log = []
    t_cal = 0.0

    def calibrate(samples, stage):
        nonlocal t_cal
        t = time.perf_counter()
        progress.update(f"solving the readout ({stage})", progress_at())
        err = calibrate_readout(enc, model, pool, samples, rng, gen, ridge=ridge, check=check)
        t_cal += time.perf_counter() - t
        calib_log.append({"stage": stage, "samples": samples, "train_vertex_error_mm": round(err, 3)})
        if log is not None:
            log(f"readout solved ({stage}, {samples} heads): {err:.3f} mm on them  "
                f"{time.perf_counter() - t_start:.0f} s")
        enc.train()

    step_now = 0

    def progress_at():
        return 0.1 + 0.85 * step_now / max(steps, 1)

    for p in enc.linear.parameters():
        p.requires_grad_(train_readout)
    if calibrations > 0:
        calibrate(calibrate_samples, "start")
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)) + 0.02)
    recal_at = set(int(round(steps * k / calibrations)) for k in range(1, calibrations)) if calibrations > 1 else set()
    enc.train()
    history, where_hist = [], []
    t_train = time.perf_counter()
    for step in range(steps):
        step_now = step
        check()
        if step in recal_at:
            calibrate(calibrate_samples, f"step {step}")
        opt.zero_grad()
        total = vert_err = where_err = 0.0
        for _ in range(meshes_per_step):
            pm = pool[int(rng.integers(len(pool)))]
            s, e = sample_training_codes(model, codes_per_mesh, rng)
            s_t, e_t = torch.as_tensor(s), torch.as_tensor(e)
            verts = pm.template[None] + (s_t @ pm.shape_basis.T + e_t @ pm.expr_basis.T).reshape(codes_per_mesh, -1, 3)
            verts, moved_template = augment(verts, gen, center, also=pm.template)
            ps, pe, disp = enc(verts, pm.faces, pm.ops, aux=True)
            s_full = torch.cat([ps, torch.zeros(codes_per_mesh, model.n_shape - ks)], 1) if ks < model.n_shape else ps
            d = ((s_full - s_t) @ L_s.T + (pe - e_t) @ L_e.T).reshape(codes_per_mesh, -1, 3)
            err_mm = d.norm(dim=-1) * 1000.0
            disp_true = (verts - moved_template) / cfg.unit
            where_mm = (disp - disp_true).norm(dim=-1) * (cfg.unit * 1000.0)
            loss = (err_mm.mean() + 0.05 * ((ps - s_t[:, :ks]) ** 2).mean() + 0.5 * ((pe - e_t) ** 2).mean()
                    + aux_weight * where_mm.mean())
            (loss / meshes_per_step).backward()
            total += loss.item() / meshes_per_step
            vert_err += err_mm.mean().item() / meshes_per_step
            where_err += where_mm.mean().item() / meshes_per_step
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        history.append(vert_err)
        where_hist.append(where_err)
        if (step + 1) % 10 == 0 or step == steps - 1:
            recent = float(np.mean(history[-50:]))
            progress.update(f"training step {step + 1}/{steps}: {recent:.2f} mm", progress_at())
            if log is not None and ((step + 1) % log_every == 0 or step == steps - 1):
                log(f"step {step + 1}/{steps}  loss {total:.3f}  vertex error {recent:.3f} mm  "
                    f"displacement {np.mean(where_hist[-50:]):.2f} mm  lr {sched.get_last_lr()[0]:.2e}  "
                    f"{time.perf_counter() - t_start:.0f} s")
    step_now = steps
    if calibrations > 0:
        calibrate(2 * calibrate_samples, "end")
    for p in enc.linear.parameters():
        p.requires_grad_(True)
    enc.eval()
    progress.update("done", 1.0)
    info = {"steps": steps, "topologies": [t.name for t in topos], "pool_meshes": len(pool),
            "meshes_per_step": meshes_per_step, "codes_per_mesh": codes_per_mesh, "lr": lr, "seed": seed,
            "operators_s": round(ops_seconds, 1), "calibration_s": round(t_cal, 1),
            "train_s": round(time.perf_counter() - t_train - t_cal, 1),
            "total_s": round(time.perf_counter() - t_start, 1), "calibrations": calib_log,
            "final_train_vertex_error_mm": round(float(np.mean(history[-100:])), 3) if history else None,
            "threads": torch.get_num_threads()}
    enc.config.info = {**enc.config.info, **info}
    return enc, info


# ----------------------------------------------------------------------------- input checks
def check_mesh(verts, faces, what: str = "The mesh") -> tuple:
    """(vertices (V, 3) float64, triangles (F, 3) int64) or a FaceForgeError saying what is wrong."""
    v = np.asarray(verts, dtype=np.float64) if verts is not None else np.zeros((0, 3))
    f = np.asarray(faces) if faces is not None else np.zeros((0, 3), np.int64)
    if v.size == 0 or f.size == 0:
        raise FaceForgeError(f"{what} is empty (no vertices or no faces): select a mesh of a head.")
    if v.ndim != 2 or v.shape[1] != 3:
        raise FaceForgeError(f"{what}: vertices must be (V, 3), got {v.shape}.")
    if f.ndim != 2 or f.shape[1] != 3:
        raise FaceForgeError(f"{what}: faces must be (F, 3) triangles, got {f.shape} (triangulate it first).")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise FaceForgeError(f"{what}: face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}].")
    if not np.isfinite(v).all():
        raise FaceForgeError(f"{what} has NaN or infinite vertex coordinates.")
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    collapsed = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])
    scale2 = float(np.ptp(v, axis=0).max()) ** 2
    degenerate = collapsed | (area <= 1e-12 * max(scale2, 1e-30))
    if degenerate.all() or area.sum() <= 0:
        raise FaceForgeError(f"{what} is degenerate: its triangles have no area.")
    if degenerate.mean() > 0.5:
        raise FaceForgeError(f"{what} is degenerate: {100 * degenerate.mean():.0f}% of its triangles have no area. "
                             "Clean it up (merge by distance, remove degenerate faces) first.")
    f = f[~degenerate]
    used = np.unique(f)
    if len(used) < 50:
        raise FaceForgeError(f"{what} has only {len(used)} vertices in triangles: far too coarse to be read as a head.")
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    nonmanifold = float((counts > 2).mean())
    if nonmanifold > 0.05:
        raise FaceForgeError(f"{what} is badly non-manifold: {100 * nonmanifold:.0f}% of its edges are shared by more "
                             "than two triangles (duplicated or overlapping geometry?). Merge by distance / remove "
                             "duplicates first.")
    return v, f


def check_size(model: MorphableModel, verts: np.ndarray, what: str = "The mesh") -> float:
    """The mesh's size relative to the model's skin (bounding-box diagonals); FaceForgeError when far off."""
    skin = model.v_template[model.skin_vertex_mask()]
    ref = float(np.linalg.norm(np.ptp(skin, axis=0)))
    size = float(np.linalg.norm(np.ptp(verts, axis=0)))
    ratio = size / ref
    if ratio < 0.2 or ratio > 3.0:
        hint = ""
        for factor, unit in ((0.01, "centimetres"), (0.001, "millimetres"), (100.0, "hectometres?")):
            if 0.2 <= ratio * factor <= 3.0:
                hint = f" It looks modelled in {unit}: scale it by {factor:g} (and apply the scale) first."
                break
        word = "small" if ratio < 0.2 else "large"
        raise FaceForgeError(f"{what} is far too {word} for a head: {size:.3g} units across, while a head of the model "
                             f"{model.name!r} is about {ref:.2f} m across (FaceForge works in metres).{hint}")
    return ratio


def simplify_for_encoder(verts: np.ndarray, faces: np.ndarray, max_vertices: int) -> tuple:
    """At most ``max_vertices`` vertices (quadric decimation), unused vertices dropped."""
    from .remesh import compact

    used, f = compact(faces)
    v = verts[used]
    if len(v) > max_vertices:
        import fast_simplification

        target = int(len(f) * max_vertices / len(v))
        v, f = fast_simplification.simplify(np.ascontiguousarray(v), np.ascontiguousarray(f, np.int32),
                                            target_count=max(target, 16))
        f = np.asarray(f, np.int64)
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
        used, f = compact(f)
        v = np.asarray(v, np.float64)[used]
    return v, f


# ----------------------------------------------------------------------------- fitting
@dataclass
class CodesFit:
    """What ``fit_codes_to_mesh`` found (model space: metres, y up, +z out of the face)."""
    shape: np.ndarray               # (model.n_shape,) identity codes
    expr: np.ndarray                # (model.n_expr,) expression codes
    vertices: np.ndarray            # (V, 3) the model head with those codes, model topology, model space
    vertices_neutral: np.ndarray    # (V, 3) the same identity without expression
    rotation: np.ndarray            # (3, 3) and
    translation: np.ndarray         # (3,): user-mesh point p -> model space R p + t
    error_mm: dict                  # distances from the mesh to the fitted head: median, mean, p90, rms, max
    encoder_error_mm: dict          # the same for the encoder's prediction alone (after the pre-alignment)
    encoder_shape: np.ndarray
    encoder_expr: np.ndarray
    timings: dict
    warnings: list = field(default_factory=list)
    input_vertices: int = 0
    encoded_vertices: int = 0

    def vertices_in_mesh_frame(self) -> np.ndarray:
        """The fitted head placed over the user's mesh (inverse of the rigid transform)."""
        return (self.vertices - self.translation) @ self.rotation

    def params_json(self, model: MorphableModel) -> dict:
        return {"model": model.name, "shape": np.round(self.shape, 5).tolist(),
                "expression": dict(zip(model.expr_names, np.round(self.expr, 4).tolist())),
                "mesh_to_model": {"rotation": self.rotation.tolist(), "translation": self.translation.tolist()},
                "error_mm": self.error_mm, "encoder_error_mm": self.encoder_error_mm,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}, "warnings": self.warnings,
                "input_vertices": self.input_vertices, "encoded_vertices": self.encoded_vertices}


def _stats_mm(d: np.ndarray) -> dict:
    d = np.asarray(d) * 1000.0
    return {"median": round(float(np.median(d)), 3), "mean": round(float(d.mean()), 3),
            "p90": round(float(np.percentile(d, 90)), 3), "rms": round(float(np.sqrt((d ** 2).mean())), 3),
            "max": round(float(d.max()), 3)}


def _rodrigues(w: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(torch.as_tensor(w, dtype=torch.float64)).numpy()


def _axis_angle(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis-angle vector (for rotations well below 180 degrees)."""
    c = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(c)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-9:
        return 0.5 * v
    return v * (angle / (2.0 * math.sin(angle)))


def rigid_prealign(points: np.ndarray, ref_verts: np.ndarray, ref_faces: np.ndarray, iterations: int = 25) -> tuple:
    """A rigid (R, t) taking ``points`` onto the reference surface, and its score (trimmed mean distance, m):
    trimmed point-to-plane ICP (plus a little point-to-point) from a few starts (as given, centred on the
    reference's box, front faces matched); the best score wins."""
    index = SurfaceIndex(ref_verts, ref_faces)
    ref_normals = vertex_normals_np(ref_verts, ref_faces)
    lo, hi = ref_verts.min(0), ref_verts.max(0)
    plo, phi = points.min(0), points.max(0)
    starts = [np.zeros(3), 0.5 * (lo + hi) - 0.5 * (plo + phi),
              np.array([0.5 * (lo[0] + hi[0] - plo[0] - phi[0]), 0.5 * (lo[1] + hi[1] - plo[1] - phi[1]),
                        hi[2] - phi[2]])]
    rng = np.random.default_rng(0)
    sub = points if len(points) <= 1500 else points[rng.choice(len(points), 1500, replace=False)]

    def score_of(R, t):
        d = np.sort(index.closest(sub @ R.T + t, candidates=8)[2])
        return float(d[: max(1, int(0.8 * len(d)))].mean())

    best = None
    for t0 in starts:
        R, t = np.eye(3), t0.copy()
        for it in range(iterations):
            p = sub @ R.T + t
            fi, bary, dist, q = index.closest(p, candidates=8)
            n = (ref_normals[ref_faces[fi]] * bary[:, :, None]).sum(1)
            n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
            keep = dist <= np.percentile(dist, 80)
            p, q, n = p[keep], q[keep], n[keep]
            # linearised rigid step: minimise |n.(p + w x p + dt - q)|^2 + 0.1 |p + w x p + dt - q|^2
            A = [np.concatenate([np.cross(p, n), n], 1)]
            b = [np.einsum("nc,nc->n", n, q - p)]
            for c in range(3):
                ec = np.zeros((len(p), 3))
                ec[:, c] = 1.0
                A.append(0.3 * np.concatenate([np.cross(p, ec), ec], 1))
                b.append(0.3 * (q[:, c] - p[:, c]))
            u = np.linalg.lstsq(np.concatenate(A), np.concatenate(b), rcond=None)[0]
            dR = _rodrigues(u[:3])
            R, t = dR @ R, dR @ t + u[3:]
            if np.linalg.norm(u[:3]) < 1e-5 and np.linalg.norm(u[3:]) < 1e-6:
                break
        score = score_of(R, t)
        if best is None or score < best[0]:
            best = (score, R, t)
    return best[1], best[2], best[0]


def _box_least_squares(H: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray, x0: np.ndarray,
                       iterations: int = 30) -> np.ndarray:
    """argmin 0.5 x^T H x - g^T x within [lo, hi] (H = A^T A, g = A^T b: the normal form of a bounded
    least-squares problem) by projected Newton steps on the free variables: variables on a bound whose
    gradient pushes outwards are held there, the rest solved exactly, the result projected into the box,
    until the held set settles. (Small dense solves in torch: a few ms for ~160 unknowns.)"""
    Ht = torch.as_tensor(H, dtype=torch.float64)
    Ht = Ht + 1e-10 * torch.diagonal(Ht).mean() * torch.eye(len(g), dtype=torch.float64)
    gt = torch.as_tensor(g, dtype=torch.float64)
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    x = torch.minimum(torch.maximum(torch.as_tensor(x0, dtype=torch.float64), lo_t), hi_t)
    held_before = None
    for _ in range(iterations):
        grad = Ht @ x - gt
        held = ((x <= lo_t) & (grad > 0)) | ((x >= hi_t) & (grad < 0))
        free = ~held
        if held_before is not None and torch.equal(held, held_before):
            break
        held_before = held
        xf = torch.linalg.solve(Ht[free][:, free], gt[free] - Ht[free][:, held] @ x[held])
        x = x.clone()
        x[free] = xf
        x = torch.minimum(torch.maximum(x, lo_t), hi_t)
    return x.numpy()


PREALIGN_GAIN = 0.8   # the rigid pre-alignment is used when it brings the mesh this much closer to the mean head


def _trimmed_distance(points: np.ndarray, ref_verts: np.ndarray, ref_faces: np.ndarray, keep: float = 0.8) -> float:
    rng = np.random.default_rng(0)
    sub = points if len(points) <= 1500 else points[rng.choice(len(points), 1500, replace=False)]
    d = np.sort(project_to_surface(sub, ref_verts, ref_faces, candidates=8)[2])
    return float(d[: max(1, int(keep * len(d)))].mean())


class _ModelSurface:
    """The model's surface used for matching (all of its parts) and its bases on it."""

    def __init__(self, model: MorphableModel, n_shape: int, rng: np.random.Generator, model_points: int = 3000):
        self.model = model
        skin = parts_topology(model, "all")       # every part: a copy of a whole head has teeth and eyes too
        self.vidx = skin.weights.tocsr().indices.copy()     # one-hot rows, in order: the vertex ids
        self.faces = skin.faces
        self.T = model.v_template[self.vidx].astype(np.float64)
        self.S = model.shape_basis[self.vidx, :, :n_shape].astype(np.float64)            # (V, 3, Ks)
        self.E = model.expr_basis[self.vidx].astype(np.float64)                          # (V, 3, Ke)
        # model -> mesh direction: a subset of the outer skin (not eyeballs, often missing on meshes)
        skin_only = model.skin_vertex_mask()[self.vidx]
        cand = np.nonzero(skin_only)[0]
        self.sample = np.sort(rng.choice(cand, min(model_points, len(cand)), replace=False))

    def verts(self, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        return self.T + self.S @ s + self.E @ e


def _boundary_vertices(faces: np.ndarray, n: int) -> np.ndarray:
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    u, c = np.unique(e, axis=0, return_counts=True)
    mask = np.zeros(n, bool)
    mask[u[c == 1].reshape(-1)] = True
    return mask


def refine_codes(model: MorphableModel, points: np.ndarray, faces: np.ndarray, shape0: np.ndarray, expr0: np.ndarray,
                 iterations: int = 12, shape_prior: float = 0.3, expr_prior: float = 3.0,
                 rotation_sigma: float = math.radians(2.0), translation_sigma: float = 0.002,
                 progress=None) -> tuple:
    """Codes + a rigid correction minimising point-to-surface distances both ways between the mesh
    (``points``/``faces``, already roughly in model space) and the model head.

    Each iteration finds closest points (mesh -> head surface, head skin samples -> mesh surface,
    those landing on the mesh's open border or far away dropped) and solves ONE linear least-squares
    problem: point-to-plane (+ a little point-to-point) residuals are linear in the codes and in a
    small rotation/translation; identity codes have a N(0, 1) prior, expressions stay in their range.
    Returns (shape, expr, R, t) with model-space mesh points R p + t."""
    rng = np.random.default_rng(0)
    Ks = len(shape0)
    Ke = model.n_expr
    surf = _ModelSurface(model, Ks, rng)
    border = _boundary_vertices(faces, len(points))
    s, e = shape0.copy(), expr0.copy()
    R, t = np.eye(3), np.zeros(3)
    lo_e, hi_e = (-np.inf, np.inf) if model.expr_range is None else model.expr_range
    n_unknown = 6 + Ks + Ke
    for it in range(iterations):
        if progress is not None:
            progress.update("refining the codes", it / iterations)
        P = points @ R.T + t                                            # mesh in model space
        Pn = vertex_normals_np(P, faces)
        X = surf.verts(s, e)
        # mesh -> head: closest point on the head's surface (barycentric blend of head vertices)
        fi, bary, d1 = project_to_surface(P, X, surf.faces, candidates=8)
        corner = surf.faces[fi]                                          # (N, 3)
        Xn = vertex_normals_np(X, surf.faces)
        n1 = (Xn[corner] * bary[:, :, None]).sum(1)
        n1 /= np.linalg.norm(n1, axis=1, keepdims=True).clip(1e-12)
        tau = max(0.002, 3.0 * float(np.median(d1)))
        w1 = np.where(d1 < tau, 1.0, np.where(d1 < 3 * tau, tau / np.maximum(d1, 1e-12), 0.0))
        # head -> mesh: skin samples to their closest mesh point (dropped on the mesh's border / far away)
        Xs = X[surf.sample]
        gi, gbary, d2 = project_to_surface(Xs, P, faces, candidates=8)
        q = (P[faces[gi]] * gbary[:, :, None]).sum(1)
        qn = (Pn[faces[gi]] * gbary[:, :, None]).sum(1)
        qn /= np.linalg.norm(qn, axis=1, keepdims=True).clip(1e-12)
        on_border = border[faces[gi, np.argmax(gbary, 1)]]
        w2 = np.where((d2 < tau) & ~on_border, 1.0, 0.0)
        # linear system in u = [omega (3), dt (3), s (Ks), e (Ke)]; mesh points move: p -> p + omega x p + dt
        rows, rhs = [], []
        # mesh -> head, point-to-plane: n . (p + w x p + dt - sum_b b (T + S s + E e)) = 0
        Sb = (surf.S[corner] * bary[:, :, None, None]).sum(1)           # (N, 3, Ks)
        Eb = (surf.E[corner] * bary[:, :, None, None]).sum(1)
        Tb = (surf.T[corner] * bary[:, :, None]).sum(1)
        A = np.concatenate([np.cross(P, n1), n1, -np.einsum("nc,nck->nk", n1, Sb), -np.einsum("nc,nck->nk", n1, Eb)], 1)
        rows.append(A * w1[:, None])
        rhs.append(-np.einsum("nc,nc->n", n1, P - Tb) * w1)
        # + a little point-to-point, mesh -> head (keeps points from sliding along the surface)
        for c in range(3):
            ec = np.zeros((len(P), 3))
            ec[:, c] = 1.0
            A = np.concatenate([np.cross(P, ec), ec, -Sb[:, c], -Eb[:, c]], 1)
            rows.append(0.3 * A * w1[:, None])
            rhs.append(-0.3 * (P[:, c] - Tb[:, c]) * w1)
        # head -> mesh, point-to-plane on the mesh's normal: n . (T + S s + E e - (q + w x q + dt)) = 0
        Ss, Es, Ts = surf.S[surf.sample], surf.E[surf.sample], surf.T[surf.sample]
        A = np.concatenate([-np.cross(q, qn), -qn, np.einsum("nc,nck->nk", qn, Ss),
                            np.einsum("nc,nck->nk", qn, Es)], 1)
        rows.append(A * w2[:, None])
        rhs.append(np.einsum("nc,nc->n", qn, q - Ts) * w2)
        A = np.concatenate(rows)
        b = np.concatenate(rhs)
        n_eff = max(float((w1 > 0).sum() + (w2 > 0).sum()), 1.0)
        # priors: in squared metres per unit code, so they weigh like a few points at ~1 mm
        sigma2 = (1e-3) ** 2 * n_eff / 200.0
        prior = np.zeros((Ks + Ke, n_unknown))
        prior[np.arange(Ks), 6 + np.arange(Ks)] = math.sqrt(shape_prior * sigma2)
        prior[Ks + np.arange(Ke), 6 + Ks + np.arange(Ke)] = math.sqrt(expr_prior * sigma2)
        rigid = np.zeros((6, n_unknown))       # the motion is cheap but not free (it trades with identity)
        rigid[np.arange(3), np.arange(3)] = math.sqrt(sigma2) / rotation_sigma
        rigid[3 + np.arange(3), 3 + np.arange(3)] = math.sqrt(sigma2) / translation_sigma
        # the current motion is already applied: the prior pulls the total motion back towards none
        b_rigid = np.concatenate([-_axis_angle(R) * math.sqrt(sigma2) / rotation_sigma,
                                  -t * math.sqrt(sigma2) / translation_sigma])
        A = np.concatenate([A, prior, rigid])
        b = np.concatenate([b, np.zeros(Ks + Ke), b_rigid])
        lo = np.full(n_unknown, -np.inf)
        hi = np.full(n_unknown, np.inf)
        lo[6 + Ks:], hi[6 + Ks:] = lo_e, hi_e
        lo[:3], hi[:3] = -0.2, 0.2
        x0 = np.concatenate([np.zeros(6), s, e])
        u = _box_least_squares(A.T @ A, A.T @ b, lo, hi, x0)
        dR = _rodrigues(u[:3])
        R, t = dR @ R, dR @ t + u[3:6]
        s, e = u[6:6 + Ks], u[6 + Ks:]
    return s, e, R, t


def fit_codes_to_mesh(model: MorphableModel, verts, faces, encoder: Optional[MeshEncoder] = None,
                      refine_iterations: int = 12, prealign: bool = True, progress=None,
                      what: str = "The mesh", shape_prior: float = 0.3, expr_prior: float = 3.0) -> CodesFit:
    """Codes of the model head nearest to a mesh of any topology (a head, roughly aligned with the model:
    metres, y up, facing +z; a face crop works too).

    Steps: checks (empty, degenerate, non-manifold, far too small / large: FaceForgeError) ->
    simplification to the encoder's vertex budget -> rigid pre-alignment on the model's template ->
    the encoder's codes -> ``refine_iterations`` of closest-point least squares on codes + rigid motion.
    ``error_mm``: distances from the mesh's vertices to the fitted head's surface (model-space mm)."""
    progress = ensure_progress(progress)
    timings = {}
    t0 = time.perf_counter()
    v, f = check_mesh(verts, faces, what)
    if encoder is None:
        encoder = encoder_for(model)
    encoder.check_model(model)
    check_size(model, v, what)
    warnings = []
    progress.update("simplifying the mesh", 0.02)
    vs, fs = simplify_for_encoder(v, f, encoder.config.max_vertices)
    timings["simplify_s"] = time.perf_counter() - t0
    # rigid pre-alignment onto the mean head (a mesh already in place stays put)
    t1 = time.perf_counter()
    R0, t0v = np.eye(3), np.zeros(3)
    skin = parts_topology(model, "skin")
    mean_skin = skin.evaluate(model.v_template.astype(np.float64))
    moved = False
    if prealign:     # a mesh away from where the model's heads are (or turned) is aligned rigidly first
        progress.update("aligning the mesh", 0.05)
        as_given = _trimmed_distance(vs, mean_skin, skin.faces)
        R_pre, t_pre, score = rigid_prealign(vs, mean_skin, skin.faces)
        if score < PREALIGN_GAIN * as_given:
            R0, t0v, moved = R_pre, t_pre, True
    va = vs @ R0.T + t0v
    timings["prealign_s"] = time.perf_counter() - t1
    progress.update("encoding", 0.15)
    code = encoder.encode(va, fs)
    timings["operators_s"] = code["operators_s"]
    timings["encoder_s"] = code["network_s"]
    Ks_model = model.n_shape
    s0 = np.zeros(Ks_model)
    s0[: len(code["shape"])] = code["shape"]
    e0 = code["expr"]
    Sflat = model.shape_basis.reshape(model.n_vertices * 3, -1)
    Eflat = model.expr_basis.reshape(model.n_vertices * 3, -1)
    head = lambda s, e: model.v_template.astype(np.float64) + (Sflat @ s.astype(np.float32)  # noqa: E731
                                                               + Eflat @ e.astype(np.float32)).reshape(-1, 3)
    surf_faces = parts_topology(model, "all")
    rng = np.random.default_rng(1)
    probe = v if len(v) <= 20000 else v[rng.choice(len(v), 20000, replace=False)]

    def distances(s, e, R, t):
        X = surf_faces.evaluate(head(s, e))
        return project_to_surface(probe @ (R @ R0).T + (R @ t0v + t), X, surf_faces.faces, candidates=8)[2]

    enc_err = _stats_mm(distances(s0, e0, np.eye(3), np.zeros(3)))
    t2 = time.perf_counter()
    s, e, R, t = s0, e0, np.eye(3), np.zeros(3)
    if refine_iterations > 0:
        sub = progress.sub(0.2, 0.95) if hasattr(progress, "sub") else None
        loose = dict(rotation_sigma=math.radians(10.0), translation_sigma=0.02) if moved else {}
        s, e, R, t = refine_codes(model, va, fs, s0, e0, iterations=refine_iterations, progress=sub,
                                  shape_prior=shape_prior, expr_prior=expr_prior, **loose)
    timings["refine_s"] = time.perf_counter() - t2
    err = _stats_mm(distances(s, e, R, t))
    if err["median"] > 5.0:
        warnings.append(f"{what} stays {err['median']:.1f} mm (median) from the nearest model head: it may not be a "
                        "head, or not aligned with the model (y up, facing +z, metres).")
    R_total, t_total = R @ R0, R @ t0v + t
    timings["total_s"] = time.perf_counter() - t0
    progress.update("done", 1.0)
    return CodesFit(shape=s, expr=e, vertices=head(s, e).astype(np.float32),
                    vertices_neutral=head(s, np.zeros_like(e)).astype(np.float32), rotation=R_total,
                    translation=t_total, error_mm=err, encoder_error_mm=enc_err, encoder_shape=s0, encoder_expr=e0,
                    timings=timings, warnings=warnings, input_vertices=int(len(np.unique(f))),
                    encoded_vertices=int(len(vs)))


def head_rig_from_codes(model: MorphableModel, fit: CodesFit, name: str = "fitted_head"):
    """A HeadRig (core.rig) of the fitted identity with the model's expression shape keys at the fitted
    values, like the photo pipeline's heads (polygons, UVs, material slots)."""
    from ..rig import BoneSpec, HeadRig
    from ..rig.model_rig import expression_shape_keys, model_topology

    key_names, deltas, values = expression_shape_keys(model, fit.expr)
    bones = None
    if model.joints is not None:
        j = model.joints
        bones = BoneSpec(names=list(j.names), parents=j.parents.copy(),
                         heads=(j.regressor @ fit.vertices_neutral).astype(np.float32),
                         weights=j.weights.astype(np.float32),
                         pose=np.zeros((len(j.names) - 1, 3), np.float32))
    colours = None if model.albedo_mean is None else model.albedo_mean.astype(np.float32)
    return HeadRig(name=name, vertices=fit.vertices_neutral.astype(np.float32), faces=model.faces.copy(),
                   shape_key_names=key_names, shape_key_deltas=deltas, shape_key_values=values,
                   vertex_colors=colours, uv=model.uv, bones=bones, topology=model_topology(model),
                   metadata={"model": model.name, "model_source": model.source,
                             "fit_error_mm": fit.error_mm["median"], "source": "fit_codes_to_mesh"})
