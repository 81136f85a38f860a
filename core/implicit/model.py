"""The per-person implicit head (after MonoNPHM and NeRFace): three small MLPs and per-frame codes.

Spaces: *observed* = the model space of one frame (the tracked head pose undone, so only the
expression moves points); *canonical* = the person's neutral head. For a frame t:

    x_c, f = x + D(x, e_t, l_t)        backward deformation: expression code e_t (tracked), latent l_t
    s, h  = G(x_c, f)                   signed distance (metres, negative inside) and a feature
    rgb   = A(h, P(x_c), n, a_t) * SH_t(n)   albedo from the feature, the canonical point, the normal and an
                                        appearance code, shaded

D returns extra features f that feed G (MonoNPHM reports they matter: they let geometry that
the deformation cannot explain, e.g. hair swinging, still depend on the frame).

The albedo net also sees the canonical point's own Fourier features P(x_c) (as IDR's rendering
network sees x): through the geometry feature alone, skin detail (brows, lips, eyes) came out blurred.

Positional encoding of the geometry net: Fourier features on a CPU (cheap, smooth); a multiresolution
hash grid (Instant-NGP, ``HashGrid``, plain torch) on a GPU, where its many small table lookups are
cheap and it learns detail in far fewer steps. ``TrainConfig.encoding`` = "auto" picks by device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class Fourier(nn.Module):
    """x -> [x, sin(2^k pi x), cos(2^k pi x)] for k < n (inputs scaled to about [-1, 1] first)."""

    def __init__(self, n_frequencies: int, centre, scale: float):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(1, 3))
        self.scale = float(scale)
        self.register_buffer("freq", (2.0 ** torch.arange(n_frequencies).float()) * math.pi)
        self.out_dim = 3 + 6 * n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = (x - self.centre) / self.scale
        a = q[..., None] * self.freq
        return torch.cat([q, a.sin().flatten(-2), a.cos().flatten(-2)], -1)


class HashGrid(nn.Module):
    """Multiresolution hash encoding (Mueller et al. 2022): at each of ``levels`` grid resolutions from
    ``base`` to ``finest`` cells across the box, the trilinear blend of learned feature vectors stored at
    the 8 surrounding grid corners (hashed into a table of 2^log2_size entries per level when the grid
    has more corners). Plain torch: differentiable twice (the eikonal term) on any device. Output:
    [x scaled, level features], like ``Fourier``."""

    PRIMES = (1, 2654435761, 805459861)

    def __init__(self, centre, scale: float, levels: int = 12, features: int = 2, log2_size: int = 16,
                 base: int = 16, finest: int = 512):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(1, 3))
        self.scale = float(scale)
        growth = math.exp((math.log(finest) - math.log(base)) / max(levels - 1, 1))
        self.resolutions = [int(math.floor(base * growth ** i + 1e-6)) for i in range(levels)]
        self.size = 2 ** log2_size
        self.tables = nn.Parameter(torch.empty(levels, self.size, features).uniform_(-1e-4, 1e-4))
        corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
        self.register_buffer("corners", corners)
        self.out_dim = 3 + levels * features

    def _index(self, ijk: torch.Tensor, res: int) -> torch.Tensor:
        if (res + 1) ** 3 <= self.size:                      # coarse levels: one entry per corner, no hashing
            return (ijk[..., 0] * (res + 1) + ijk[..., 1]) * (res + 1) + ijk[..., 2]
        h = ijk[..., 0] * self.PRIMES[0] ^ ijk[..., 1] * self.PRIMES[1] ^ ijk[..., 2] * self.PRIMES[2]
        return h % self.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = (x - self.centre) / self.scale
        u = ((q + 1.0) * 0.5).clamp(0.0, 1.0)                 # [0, 1] across the box
        outs = [q]
        for level, res in enumerate(self.resolutions):
            p = u * res
            base = p.detach().floor().clamp(max=res - 1)
            f = p - base                                        # (N, 3) position in the cell (carries the gradient)
            ijk = base.long()[:, None, :] + self.corners[None]  # (N, 8, 3)
            feats = self.tables[level][self._index(ijk, res)]   # (N, 8, F)
            c = self.corners[None].to(f.dtype)
            w = (c * f[:, None, :] + (1 - c) * (1 - f[:, None, :])).prod(-1)    # (N, 8) trilinear weights
            outs.append((w[..., None] * feats).sum(1))
        return torch.cat(outs, -1)


def _mlp(inp: int, hidden: int, layers: int, out: int, act=None) -> nn.Sequential:
    mods, w = [], inp
    for _ in range(layers):
        mods += [nn.Linear(w, hidden), act() if act is not None else nn.Softplus(beta=100)]
        w = hidden
    mods.append(nn.Linear(w, out))
    return nn.Sequential(*mods)


@dataclass
class ImplicitConfig:
    n_frames: int
    n_expr: int
    centre: tuple                 # of the head's box (model space, metres)
    half_size: float              # half the box's largest side
    latent_dim: int = 8           # per-frame deformation latent
    appearance_dim: int = 8       # per-frame appearance code
    deform_features: int = 8
    geometry_features: int = 32
    hidden: int = 128
    geometry_layers: int = 3
    deform_layers: int = 2
    geometry_frequencies: int = 6
    deform_frequencies: int = 4
    colour_frequencies: int = 8   # of the canonical point, into the albedo net (0: none, as before)
    encoding: str = "fourier"     # of the geometry net: "fourier" or "hash" (HashGrid)


class ImplicitHead(nn.Module):
    def __init__(self, cfg: ImplicitConfig):
        super().__init__()
        self.cfg = cfg
        self.pe_deform = Fourier(cfg.deform_frequencies, cfg.centre, cfg.half_size)
        if cfg.encoding == "hash":
            self.pe_geometry = HashGrid(cfg.centre, cfg.half_size)
        elif cfg.encoding == "fourier":
            self.pe_geometry = Fourier(cfg.geometry_frequencies, cfg.centre, cfg.half_size)
        else:
            raise ValueError(f"unknown encoding {cfg.encoding!r}: 'fourier' or 'hash'")
        self.deform = _mlp(self.pe_deform.out_dim + cfg.n_expr + cfg.latent_dim, cfg.hidden, cfg.deform_layers,
                           3 + cfg.deform_features, act=nn.SiLU)
        with torch.no_grad():                       # starts as the identity map
            self.deform[-1].weight.mul_(0.01)
            self.deform[-1].bias.zero_()
        self.geometry = _mlp(self.pe_geometry.out_dim + cfg.deform_features, cfg.hidden, cfg.geometry_layers,
                             1 + cfg.geometry_features)
        self.pe_colour = Fourier(cfg.colour_frequencies, cfg.centre, cfg.half_size) if cfg.colour_frequencies else None
        colour_in = self.pe_colour.out_dim if self.pe_colour is not None else 0
        self.appearance = _mlp(cfg.geometry_features + colour_in + 3 + cfg.appearance_dim, 64, 2, 3, act=nn.SiLU)
        self.latents = nn.Parameter(torch.zeros(cfg.n_frames, cfg.latent_dim))
        self.appearance_codes = nn.Parameter(torch.zeros(cfg.n_frames, cfg.appearance_dim))
        sh = torch.zeros(cfg.n_frames, 9, 3)
        sh[:, 0] = 1.0 / (math.pi * (1.0 / math.sqrt(4.0 * math.pi)))     # irradiance 1: albedo shows as is
        self.sh = nn.Parameter(sh)
        self.log_inv_s = nn.Parameter(torch.tensor(math.log(60.0)))       # NeuS sharpness (learned)

    # -- pieces ---------------------------------------------------------------------------
    def deformation(self, x: torch.Tensor, expr: torch.Tensor, latent: torch.Tensor):
        """(N, 3) observed points, (N, Ke) expressions, (N, L) latents -> canonical points, features."""
        out = self.deform(torch.cat([self.pe_deform(x), expr, latent], -1))
        return x + 0.05 * out[:, :3], out[:, 3:]

    def sdf(self, xc: torch.Tensor, features: torch.Tensor = None) -> tuple:
        """Canonical points -> (signed distance (N,), feature (N, C): the geometry net's, then P(x_c))."""
        if features is None:
            features = torch.zeros(xc.shape[0], self.cfg.deform_features, device=xc.device)
        out = self.geometry(torch.cat([self.pe_geometry(xc), features], -1))
        h = out[:, 1:] if self.pe_colour is None else torch.cat([out[:, 1:], self.pe_colour(xc)], -1)
        return out[:, 0], h

    def canonical_sdf(self, xc: torch.Tensor) -> torch.Tensor:
        """The neutral head's SDF (what extraction reads): the deformation features of the canonical frame."""
        zeros_e = torch.zeros(xc.shape[0], self.cfg.n_expr, device=xc.device)
        zeros_l = torch.zeros(xc.shape[0], self.cfg.latent_dim, device=xc.device)
        _, feats = self.deformation(xc, zeros_e, zeros_l)
        return self.sdf(xc, feats)[0]

    def colour(self, feature: torch.Tensor, normal: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        from ..render.shading import sh_basis
        albedo = torch.sigmoid(self.appearance(torch.cat([feature, normal, self.appearance_codes[frame]], -1)))
        irradiance = torch.einsum("nk,nkc->nc", sh_basis(normal), self.sh[frame])
        return albedo * irradiance.clamp_min(0.0)

    def albedo(self, feature: torch.Tensor, normal: torch.Tensor, frame: int = 0) -> torch.Tensor:
        code = self.appearance_codes[frame].expand(feature.shape[0], -1)
        return torch.sigmoid(self.appearance(torch.cat([feature, normal, code], -1)))

    @torch.no_grad()
    def interpolate_codes(self, trained, frame: float, slot: int = 0) -> None:
        """Write into frame ``slot`` the per-frame codes (deformation latent, appearance code, SH light) of
        clip frame ``frame``, linearly interpolated between the training frames ``trained`` (sorted clip
        indices, one per slot): how a frame that was not trained on is rendered or meshed."""
        import numpy as np
        trained = np.asarray(trained, np.float64)
        for table in (self.latents, self.appearance_codes, self.sh):
            flat = table.detach().reshape(len(trained), -1).cpu().numpy()
            row = np.array([np.interp(frame, trained, flat[:, j]) for j in range(flat.shape[1])], np.float32)
            table.data[slot] = torch.as_tensor(row, device=table.device).reshape(table.shape[1:])

    @property
    def inv_s(self) -> torch.Tensor:
        return self.log_inv_s.exp().clamp(1.0, 1e5)

    def observed(self, x: torch.Tensor, frame: torch.Tensor, expr: torch.Tensor, with_normals: bool = True):
        """Everything a renderer needs at observed points of frames ``frame`` (N,) with codes ``expr`` (N, Ke):
        ``(sdf, feature, normal (canonical-space gradient, unit), gradient (for the eikonal term))``."""
        if with_normals:
            x = x.requires_grad_(True)
        xc, f = self.deformation(x, expr, self.latents[frame])
        s, h = self.sdf(xc, f)
        if not with_normals:
            return s, h, None, None
        grad = torch.autograd.grad(s.sum(), x, create_graph=self.training)[0]
        return s, h, torch.nn.functional.normalize(grad, dim=-1), grad
