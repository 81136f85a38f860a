"""The surface deformation network DS (after LeGO, Yoon et al. CVPR 2024).

DS maps a point on the model's template surface, an identity code and an expression code to the
deformed point. It is pretrained to reproduce the morphable model on random codes and densely
sampled surface points; LeGO then fine-tunes a copy DT on one stylized example (``style.py``).

Architecture (why this shape): the point is described by features blended from a learned
per-vertex table ``f`` and by Fourier features of its template position; from them a linear head and
a point MLP produce a per-point basis ``G(p)`` of shape ``(3, K)``, which a code vector
``[identity, expression, 1, m(codes)]`` weights:

    G(p) = L f(p) + H(mlp(fourier(p), f(p)))
    x(p, s, e) = template(p) + scale * G(p) @ [s, e, 1, m(s, e)]

The table and ``L`` start as a rank-C factorisation of the model's bases (their SVD; C = 128
keeps 99.9% of the ICT bases' energy), so training on random codes refines a good start instead of
spending hours finding one on a CPU.

So DS can reproduce a linear model exactly (G learns the bases, the constant column is 0, the
nonlinear channels m start at 0) while fine-tuning can change every part: the constant column
carries a style's offset for every identity, the identity and expression columns how the style
bends with them, and m what is not linear in the codes. G does not depend on the codes, so a
whole head with all its shape keys costs one pass of the point network.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import FaceForgeError, ModelFileError
from ..jobs import ensure_progress
from ..models.morphable import MorphableModel
from .surface import SurfacePoints, mixed_points, vertex_points

FORMAT = "faceforge-surface-deformer/1"
OUTPUT_SCALE = 0.01        # the network works in centimetres; models are in metres


def model_fingerprint(model: MorphableModel) -> str:
    """A short hash of what a trained network depends on: template, faces and the bases' sizes."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(model.v_template, np.float32).round(5).tobytes())
    h.update(np.ascontiguousarray(model.faces, np.int64).tobytes())
    h.update(f"{model.n_shape}/{model.n_expr}".encode())
    return h.hexdigest()[:16]


def sample_codes(model: MorphableModel, batch: int, generator: torch.Generator, identity_scale: float = 1.0):
    """Random (identity, expression) codes as the model would produce them: identity ~ N(0, 1);
    range-bound expressions (ICT, ARKit: 0..1) sparse, a few active at a time; PCA expressions ~N(0, 0.7)."""
    s = torch.randn(batch, model.n_shape, generator=generator) * identity_scale
    if model.expr_range is not None:
        lo, hi = model.expr_range
        active = torch.rand(batch, model.n_expr, generator=generator) < 0.12
        e = lo + (hi - lo) * torch.rand(batch, model.n_expr, generator=generator) * active
        e[: max(1, batch // 4)] = 0.0           # always some neutral faces
    else:
        e = 0.7 * torch.randn(batch, model.n_expr, generator=generator)
    return s, e


class SurfaceDeformer(nn.Module):
    """DS / DT: (surface points, identity (B, Ks), expression (B, Ke)) -> points (B, N, 3) in metres."""

    def __init__(self, template: torch.Tensor, n_shape: int, n_expr: int, features: int = 128, hidden: int = 256,
                 layers: int = 2, free_channels: int = 16, frequencies: int = 6, init_basis: Optional[np.ndarray] = None):
        super().__init__()
        self.config = dict(n_vertices=int(template.shape[0]), n_shape=int(n_shape), n_expr=int(n_expr),
                           features=int(features), hidden=int(hidden), layers=int(layers),
                           free_channels=int(free_channels), frequencies=int(frequencies))
        self.n_shape, self.n_expr, self.free_channels = int(n_shape), int(n_expr), int(free_channels)
        self.register_buffer("template", template.float().clone())
        centre = template.mean(0)
        extent = (template - centre).abs().max().clamp_min(1e-6)
        self.register_buffer("centre", centre.float())
        self.register_buffer("extent", extent.float().reshape(1))
        self.register_buffer("frequencies", (2.0 ** torch.arange(frequencies).float()) * math.pi)
        V = template.shape[0]
        self.vertex_features = nn.Parameter(0.1 * torch.randn(V, features))
        self.n_columns = n_shape + n_expr + 1 + free_channels
        self.linear_head = nn.Linear(features, 3 * self.n_columns, bias=False)
        nn.init.zeros_(self.linear_head.weight)
        if init_basis is not None:
            self._init_from_bases(np.asarray(init_basis, np.float64), features)
        in_dim = 3 + 6 * frequencies + features
        blocks, width = [], in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.point_net = nn.Sequential(*blocks)
        self.basis_head = nn.Linear(hidden, 3 * self.n_columns)
        nn.init.normal_(self.basis_head.weight, std=1e-3)
        nn.init.zeros_(self.basis_head.bias)
        self.code_net = nn.Sequential(nn.Linear(n_shape + n_expr, 64), nn.SiLU(), nn.Linear(64, free_channels))
        nn.init.zeros_(self.code_net[2].weight)      # the nonlinear channels start silent
        nn.init.zeros_(self.code_net[2].bias)

    def _init_from_bases(self, bases: np.ndarray, features: int) -> None:
        """Table and linear head from the SVD of the model's bases (V, 3, K): a rank-C start."""
        V, _, K = bases.shape
        U, S, Vt = np.linalg.svd(bases.reshape(V, 3 * K), full_matrices=False)
        c = min(features, len(S))
        table = np.zeros((V, features))
        table[:, :c] = U[:, :c] * math.sqrt(V)
        head = np.zeros((3, self.n_columns, features))
        head[:, :K, :c] = (S[:c, None] * Vt[:c]).T.reshape(3, K, c) / (math.sqrt(V) * OUTPUT_SCALE)
        with torch.no_grad():
            self.vertex_features.copy_(torch.as_tensor(table, dtype=torch.float32))
            self.linear_head.weight.copy_(torch.as_tensor(head.reshape(3 * self.n_columns, features),
                                                          dtype=torch.float32))

    # -- pieces -------------------------------------------------------------------
    def point_input(self, points: SurfacePoints) -> torch.Tensor:
        p = points.blend(self.template)
        q = (p - self.centre) / self.extent
        angles = q[..., None] * self.frequencies                              # (N, 3, F)
        fourier = torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)
        return torch.cat([q, fourier, points.blend(self.vertex_features)], -1)

    def point_basis(self, points: SurfacePoints) -> torch.Tensor:
        """(N, 3, n_columns): the per-point basis G(p), independent of the codes."""
        x = self.point_input(points)
        f = x[..., -self.vertex_features.shape[1]:]
        g = self.linear_head(f) + self.basis_head(self.point_net(x))
        return g.reshape(-1, 3, self.n_columns)

    def code_vector(self, shape: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        """(B, n_columns): identity, expression, 1, and the nonlinear channels."""
        z = torch.cat([shape, expr], -1)
        ones = torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)
        return torch.cat([z, ones, self.code_net(z)], -1)

    def deform(self, basis: torch.Tensor, points: SurfacePoints, shape: torch.Tensor, expr: torch.Tensor):
        """Points (B, N, 3) from a precomputed ``point_basis`` (reuse it for many codes)."""
        offsets = torch.einsum("nck,bk->bnc", basis, self.code_vector(shape, expr))
        return points.blend(self.template)[None] + OUTPUT_SCALE * offsets

    def forward(self, points: SurfacePoints, shape: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        return self.deform(self.point_basis(points), points, shape, expr)

    def vertices(self, shape: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        """(B, V, 3): the deformed mesh in the model's topology."""
        pts = vertex_points(self.template.shape[0], self.template.device)
        return self(pts, shape, expr)

    # -- files ----------------------------------------------------------------------
    def state_for_file(self) -> dict:
        """Config + weights; the per-vertex table is stored as float16 (half the file, ~0.01 mm)."""
        state = {}
        for k, v in self.state_dict().items():
            v = v.detach().cpu()
            state[k] = v.half() if k == "vertex_features" else v
        return {"config": dict(self.config), "state": state}

    @classmethod
    def from_state(cls, data: dict) -> "SurfaceDeformer":
        cfg = dict(data["config"])
        state = data["state"]
        net = cls(state["template"], cfg["n_shape"], cfg["n_expr"], features=cfg["features"], hidden=cfg["hidden"],
                  layers=cfg["layers"], free_channels=cfg["free_channels"], frequencies=cfg["frequencies"])
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return net

    def clone(self) -> "SurfaceDeformer":
        return copy.deepcopy(self)


@dataclass
class DeformerInfo:
    model_name: str
    fingerprint: str
    steps: int
    seconds: float
    device: str
    rms_mm: float           # on held-out codes, at the vertices
    max_mm: float


def _model_displacement_basis(model: MorphableModel, device) -> torch.Tensor:
    """(V, 3, Ks + Ke) the model's linear bases (what DS must learn)."""
    B = np.concatenate([model.shape_basis, model.expr_basis], 2).astype(np.float32)
    return torch.as_tensor(B, device=device)


def evaluate(net: SurfaceDeformer, model: MorphableModel, n_codes: int = 16, seed: int = 123) -> dict:
    """Vertex error (mm) of DS against the model itself on random codes it was not trained on."""
    device = net.template.device
    g = torch.Generator().manual_seed(seed)
    s, e = sample_codes(model, n_codes, g)
    layer = model.layer(device)
    with torch.no_grad():
        truth = layer.shaped(s.to(device), e.to(device))
        basis = net.point_basis(vertex_points(model.n_vertices, device))
        errs = []
        for i in range(n_codes):       # one code at a time keeps memory at one head
            pred = net.deform(basis, vertex_points(model.n_vertices, device), s[i:i + 1].to(device),
                              e[i:i + 1].to(device))
            errs.append(((pred - truth[i:i + 1]).norm(dim=-1) * 1000.0).cpu())
    err = torch.cat(errs)
    return {"rms_mm": float(err.pow(2).mean().sqrt()), "median_mm": float(err.median()),
            "p99_mm": float(torch.quantile(err.flatten()[::7], 0.99)), "max_mm": float(err.max())}


def train_surface_deformer(model: MorphableModel, steps: int = 2000, device="cpu", seed: int = 0,
                           n_codes: int = 16, n_vertex_points: int = 2048, n_inside_points: int = 2048,
                           lr: float = 1e-3, progress=None, **net_args) -> tuple:
    """Pretrain DS to reproduce ``model`` on random codes at random vertices and in-triangle points.
    Returns ``(net, DeformerInfo)``. Cancellable through ``progress``."""
    progress = ensure_progress(progress)
    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    template = torch.as_tensor(model.v_template, dtype=torch.float32)
    bases = _model_displacement_basis(model, device)
    net = SurfaceDeformer(template, model.n_shape, model.n_expr, init_basis=bases.cpu().numpy(), **net_args).to(device)
    bases = bases.reshape(model.n_vertices, -1)       # (V, 3K)
    # the factorised start is already good: small steps on it, larger ones on the MLP that refines it
    factor = [net.vertex_features, net.linear_head.weight]
    factor_ids = {id(p) for p in factor}
    rest = [p for p in net.parameters() if id(p) not in factor_ids]
    groups = [{"params": factor, "lr": lr * 0.1}, {"params": rest, "lr": lr}]
    opt = torch.optim.Adam(groups)
    if steps >= 20:   # warm up, then anneal; a few steps (tests, timing) just use the base rates
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr * 0.1, lr], total_steps=steps, pct_start=0.1)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    t0 = time.perf_counter()
    K = model.n_shape + model.n_expr
    for step in range(steps):
        pts = mixed_points(model.v_template, model.faces, n_vertex_points, n_inside_points, rng).to(device)
        s, e = sample_codes(model, n_codes, g)
        s, e = s.to(device), e.to(device)
        with torch.no_grad():
            target_basis = pts.blend(bases).reshape(-1, 3, K)
            target = torch.einsum("nck,bk->bnc", target_basis, torch.cat([s, e], -1))
        pred = net(pts, s, e) - pts.blend(net.template)[None]
        loss = ((pred - target) * (1.0 / OUTPUT_SCALE)).pow(2).sum(-1).mean()      # cm^2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            progress.update(f"Training the surface deformer ({step + 1}/{steps}, "
                            f"RMS {10.0 * float(loss.detach()) ** 0.5:.2f} mm)", (step + 1) / steps)
    seconds = time.perf_counter() - t0
    net.eval()
    ev = evaluate(net, model)
    return net, DeformerInfo(model.name, model_fingerprint(model), steps, seconds, str(device), ev["rms_mm"], ev["max_mm"])


# -- files and the cache -------------------------------------------------------------
def save_atomic(data: dict, path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half a file where one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def save_deformer(net: SurfaceDeformer, path, model: MorphableModel, info: Optional[DeformerInfo] = None) -> Path:
    data = {"format": FORMAT, "model_name": model.name, "fingerprint": model_fingerprint(model),
            **net.state_for_file()}
    if info is not None:
        data["info"] = {k: v for k, v in info.__dict__.items()}
    return save_atomic(data, path)


def load_deformer_file(path) -> dict:
    """Read a deformer (or style) file safely: tensors and plain values only, no code."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No such file: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # noqa: BLE001 - any unreadable file is the same user error
        raise ModelFileError(f"{path.name} is not a FaceForge network file (or it is damaged): {exc}") from exc
    if not isinstance(data, dict) or "state" not in data or "config" not in data:
        raise ModelFileError(f"{path.name} is not a FaceForge network file.")
    return data


def load_deformer(path, model: Optional[MorphableModel] = None) -> SurfaceDeformer:
    data = load_deformer_file(path)
    if data.get("format") != FORMAT:
        raise ModelFileError(f"{Path(path).name} is not a surface deformer (format {data.get('format')!r}).")
    if model is not None and data.get("fingerprint") != model_fingerprint(model):
        raise ModelFileError(f"{Path(path).name} was trained for the model {data.get('model_name')!r}, "
                             f"not for {model.name!r}; train one for this model with "
                             f"`faceforge train-deformer`.")
    net = SurfaceDeformer.from_state(data)
    net.eval()
    return net


def weights_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"


def cache_dir() -> Path:
    """Where networks trained on demand are kept: $FACEFORGE_CACHE_DIR, else ~/.cache/faceforge."""
    env = os.environ.get("FACEFORGE_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "faceforge"
    return base / "deformers"


def shipped_deformer_path(model: MorphableModel) -> Optional[Path]:
    p = weights_dir() / f"surface_deformer_{model.name}.pt"
    return p if p.is_file() else None


def cached_deformer_path(model: MorphableModel) -> Path:
    return cache_dir() / f"{model.name}-{model_fingerprint(model)}.pt"


def deformer_for(model: MorphableModel, train_missing: bool = False, device="cpu", progress=None,
                 steps: int = 2000) -> SurfaceDeformer:
    """DS for ``model``: the shipped one (default model), else the cached one, else trained now
    (``train_missing``) and cached, else a clear error saying how to train it."""
    for p in (shipped_deformer_path(model), cached_deformer_path(model)):
        if p is not None and p.is_file():
            data = load_deformer_file(p)
            if data.get("fingerprint") == model_fingerprint(model):
                net = SurfaceDeformer.from_state(data)
                net.eval()
                return net.to(device)
    if not train_missing:
        raise FaceForgeError(f"No surface deformer for the model {model.name!r} yet. Train it once "
                             f"(minutes on a CPU): `faceforge train-deformer --model {model.source or model.name}`.")
    net, info = train_surface_deformer(model, steps=steps, device=device, progress=progress)
    save_deformer(net, cached_deformer_path(model), model, info)
    return net
