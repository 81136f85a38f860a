"""Training the implicit head on a tracked clip.

1. **Pretraining**: the SDF learns the tracked morphable model's neutral head (signed distance to
   its skin) so training starts from a head, not a sphere.
2. **Training**, per step one frame and a batch of its pixels:
   - photometric: rendered colour vs the image (L1), on every sampled pixel;
   - silhouette: rendered opacity vs the person mask (binary cross-entropy);
   - correspondence (the keypoint term, on every model vertex rather than 478 points): the tracked
     morphable head's vertices in this frame, sent through the backward deformation, must land on
     the same vertices of the neutral head;
   - eikonal on the evaluated samples; per-frame latents kept small and temporally smooth.
   Every ``grid_every`` steps the occupancy grid is refreshed from the canonical SDF.

Checkpoints (``torch.save`` of tensors and numbers, read back with ``weights_only=True``) are written
every ``checkpoint_every`` steps, so a cancelled or crashed run resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import FaceForgeError, ModelFileError
from ..jobs import ensure_progress
from .model import ImplicitConfig, ImplicitHead
from .render import Box, OccupancyGrid, camera_rays, render_rays

CHECKPOINT_FORMAT = "faceforge-implicit-head/1"
TABLE_LR_SCALE = 10.0          # hash-grid tables learn 10x faster than the networks (Instant-NGP: 1e-2)


@dataclass
class ImplicitData:
    """A tracked clip as the trainer sees it (all arrays per frame; model space = metres, y up)."""
    images: np.ndarray           # (T, H, W, 3) float32 in [0, 1]
    masks: np.ndarray            # (T, H, W) float32 in [0, 1] (person / hair)
    rotation: np.ndarray         # (T, 3, 3) model -> camera (OpenCV)
    translation: np.ndarray      # (T, 3)
    expr: np.ndarray             # (T, Ke) tracked expression codes
    focal: float
    cx: float
    cy: float
    neutral: np.ndarray          # (V, 3) the tracked identity's neutral morphable head
    posed: np.ndarray            # (T, V, 3) the tracked morphable head per frame (model space, no head pose)
    faces: np.ndarray            # (F, 3) its skin triangles

    @property
    def n_frames(self) -> int:
        return int(self.images.shape[0])


@dataclass
class TrainConfig:
    steps: int = 1500
    pretrain_steps: int = 300
    rays: int = 768
    samples: int = 48
    lr: float = 2e-3
    sharpness_lr_scale: float = 10.0    # of the NeuS sharpness log(inv_s), relative to lr
    encoding: str = "auto"              # geometry encoding: "fourier", "hash", "auto" (hash on CUDA, else Fourier)
    photometric_weight: float = 1.0
    silhouette_weight: float = 0.3
    correspondence_weight: float = 1.0
    eikonal_weight: float = 0.05
    latent_weight: float = 1e-3
    smooth_weight: float = 1e-2
    grid_every: int = 100
    checkpoint_every: int = 200
    hair_margin: float = 0.06     # the box reaches this far beyond the morphable head (hair)
    neck_cut: float = 0.002       # the box's floor lies this far above the neck's open end (1 cm left a
                                  # row of the neck unrendered at 48 px: held-out PSNR 24.25 -> 24.52 dB at 2 mm)
    seed: int = 0


@dataclass
class TrainReport:
    steps: int = 0
    seconds: float = 0.0
    pretrain_seconds: float = 0.0
    steps_per_second: float = 0.0
    rendered_fraction: float = 1.0      # of ray samples sent through the networks (occupancy grid)
    losses: dict = field(default_factory=dict)
    resumed_from: int = 0


def head_box(neutral: np.ndarray, margin: float, neck_cut: float = 0.002) -> Box:
    lo = torch.as_tensor(neutral.min(0) - margin, dtype=torch.float32)
    hi = torch.as_tensor(neutral.max(0) + margin, dtype=torch.float32)
    hi[2] = float(neutral[:, 2].max()) + 0.02          # little in front of the face
    # the neck's open end lies just outside the box (``neck_cut`` above it): below it there is no
    # surface to learn, and an open end inside the box would make the SDF's sign there a guess (a cap)
    lo[1] = float(neutral[:, 1].min()) + neck_cut
    return Box(lo, hi)


def make_head(data: ImplicitData, cfg: TrainConfig, device="cpu") -> tuple:
    box = head_box(data.neutral, cfg.hair_margin, cfg.neck_cut)
    centre = ((box.lo + box.hi) / 2).tolist()
    half = float(((box.hi - box.lo) / 2).max())
    encoding = cfg.encoding
    if encoding == "auto":
        encoding = "hash" if torch.device(device).type == "cuda" else "fourier"
    head = ImplicitHead(ImplicitConfig(n_frames=data.n_frames, n_expr=data.expr.shape[1], centre=tuple(centre),
                                       half_size=half, encoding=encoding)).to(device)
    return head, box.to(device)


# -- pretraining to the morphable head's SDF -------------------------------------------------------
def mesh_sdf_samples(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator, box: Box):
    """Points near and around a mesh with approximate signed distances (closest dense surface sample,
    sign from its normal): enough to start the SDF as the right head."""
    from scipy.spatial import cKDTree

    from ..render.shading import vertex_normals
    from ..stylize.surface import sample_surface
    pts = sample_surface(verts, faces, 60000, rng)
    vt = torch.as_tensor(verts, dtype=torch.float32)
    surf = pts.blend(vt).numpy()
    normals = pts.blend(vertex_normals(vt[None], faces)[0]).numpy()
    tree = cKDTree(surf)
    lo, hi = box.lo.cpu().numpy(), box.hi.cpu().numpy()
    near = surf[rng.integers(0, len(surf), n // 2)] + rng.normal(scale=0.01, size=(n // 2, 3))
    far = lo + rng.random((n - n // 2, 3)) * (hi - lo)
    q = np.concatenate([near, far])
    d, i = tree.query(q)
    sign = np.sign(((q - surf[i]) * normals[i]).sum(1))
    sign[sign == 0] = 1.0
    return torch.as_tensor(q, dtype=torch.float32), torch.as_tensor(d * sign, dtype=torch.float32)


def pretrain(head: ImplicitHead, data: ImplicitData, box: Box, steps: int, progress=None, seed: int = 0) -> float:
    progress = ensure_progress(progress)
    device = box.lo.device
    rng = np.random.default_rng(seed)
    q, s = mesh_sdf_samples(data.neutral, data.faces, 60000, rng, box)
    q, s = q.to(device), s.to(device)
    tables = list(head.pe_geometry.parameters())           # a hash grid's tables (none for Fourier features)
    groups = [{"params": list(head.geometry.parameters())}]
    if tables:
        groups.append({"params": tables, "lr": 1e-3 * TABLE_LR_SCALE})
    opt = torch.optim.Adam(groups, lr=1e-3)
    t0 = time.perf_counter()
    for it in range(steps):
        pick = torch.as_tensor(rng.integers(0, len(q), 4096), device=device)
        pred = head.canonical_sdf(q[pick])
        loss = (pred - s[pick]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == steps - 1:
            progress.update(f"Pretraining the head to the tracked model ({it + 1}/{steps})", (it + 1) / steps)
    return time.perf_counter() - t0


# -- checkpoints --------------------------------------------------------------------------------------
def save_checkpoint(path, head: ImplicitHead, opt, step: int, report: TrainReport, box: Optional[Box] = None,
                    clip: Optional[dict] = None) -> None:
    """``box`` and ``clip`` (the track's cameras and codes, see ``pipeline.implicit.clip_record``) let a
    Preview render any frame of the clip from the checkpoint alone."""
    from ..stylize.deformer import save_atomic
    data = {"format": CHECKPOINT_FORMAT, "step": int(step), "config": asdict(head.cfg),
            "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizer": opt.state_dict(), "report": {k: v for k, v in asdict(report).items() if k != "losses"}}
    if box is not None:
        data["box"] = {"lo": box.lo.detach().cpu(), "hi": box.hi.detach().cpu()}
    if clip is not None:
        data["clip"] = clip
    save_atomic(data, path)


def load_checkpoint(path) -> dict:
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged or foreign file: one message
        raise ModelFileError(f"{Path(path).name} is not an implicit-head checkpoint FaceForge can read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{Path(path).name} is not an implicit-head checkpoint.")
    return data


def head_from_checkpoint(path, device="cpu") -> ImplicitHead:
    """The trained head of a checkpoint file (or of one already read with ``load_checkpoint``)."""
    data = path if isinstance(path, dict) else load_checkpoint(path)
    cfg = dict(data["config"])
    cfg["centre"] = tuple(cfg["centre"])
    cfg.setdefault("colour_frequencies", 0)          # checkpoints from before the albedo net saw the point
    cfg.setdefault("encoding", "fourier")
    head = ImplicitHead(ImplicitConfig(**cfg))
    head.load_state_dict(data["state"])
    return head.to(device).eval()


# -- training -----------------------------------------------------------------------------------------
def train(data: ImplicitData, cfg: Optional[TrainConfig] = None, device="cpu", progress=None,
          checkpoint: Optional[str] = None, clip: Optional[dict] = None) -> tuple:
    """Train (or resume from ``checkpoint`` when it exists) and return ``(head, box, grid, report)``.
    ``clip`` is stored in every checkpoint (what a Preview needs besides the head)."""
    cfg = cfg or TrainConfig()
    progress = ensure_progress(progress)
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if data.n_frames < 2:
        raise FaceForgeError("The implicit head needs at least 2 tracked frames.")
    head, box = make_head(data, cfg, device)
    # NeuS's sharpness gets its own, faster learning rate: at the base rate it grew from 60 to only ~80
    # in 400 steps, a surface blurred over ~1.3 cm that smeared every colour (brows, lips, eyes)
    # (and a hash grid's tables learn at Instant-NGP's rate, 10x the networks')
    sharp = [head.log_inv_s]
    tables = list(head.pe_geometry.parameters())
    special = {id(p) for p in sharp + tables}
    rest = [p for p in head.parameters() if id(p) not in special]
    groups = [{"params": rest}, {"params": sharp, "lr": cfg.lr * cfg.sharpness_lr_scale}]
    if tables:
        groups.append({"params": tables, "lr": cfg.lr * TABLE_LR_SCALE})
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    report = TrainReport()
    start = 0
    if checkpoint and Path(checkpoint).is_file():
        saved = load_checkpoint(checkpoint)
        if saved["config"]["n_frames"] != data.n_frames or saved["config"]["n_expr"] != data.expr.shape[1]:
            raise FaceForgeError(f"The checkpoint {checkpoint} belongs to another clip or model; delete it to "
                                 f"start over.")
        if saved["config"].get("encoding", "fourier") != head.cfg.encoding:
            raise FaceForgeError(f"The checkpoint {checkpoint} was trained with the {saved['config'].get('encoding', 'fourier')} "
                                 f"encoding, this run uses {head.cfg.encoding} (it follows the device): train on the "
                                 f"same device, or delete the checkpoint to start over.")
        if saved["config"].get("colour_frequencies", 0) != head.cfg.colour_frequencies:
            raise FaceForgeError(f"The checkpoint {checkpoint} was written by an older FaceForge whose head network "
                                 f"differs; delete it to start over.")
        head.load_state_dict(saved["state"])
        opt.load_state_dict(saved["optimizer"])
        start = int(saved["step"])
        report.resumed_from = start
        report.pretrain_seconds = float(saved["report"].get("pretrain_seconds", 0.0))
    else:
        report.pretrain_seconds = pretrain(head, data, box, cfg.pretrain_steps, progress.sub(0.0, 0.15), cfg.seed)
    train_progress = progress.sub(0.15, 1.0)

    T, H, W = data.images.shape[:3]
    images = torch.as_tensor(data.images, device=device)
    masks = torch.as_tensor(data.masks, dtype=torch.float32, device=device)
    R = torch.as_tensor(data.rotation, dtype=torch.float32, device=device)
    t = torch.as_tensor(data.translation, dtype=torch.float32, device=device)
    E = torch.as_tensor(data.expr, dtype=torch.float32, device=device)
    posed = torch.as_tensor(data.posed, dtype=torch.float32, device=device)
    neutral = torch.as_tensor(data.neutral, dtype=torch.float32, device=device)
    grid = OccupancyGrid(box, 32)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** ((start + s) / max(cfg.steps, 1)))
    t0 = time.perf_counter()
    evaluated = total = 0
    last = {}
    for step in range(start, cfg.steps):
        if step % cfg.grid_every == 0 or step == start:
            head.eval()
            grid.update(head.canonical_sdf, margin=0.02)
            head.train()
        f = int(rng.integers(0, T))
        pix = torch.as_tensor(np.stack([rng.integers(0, W, cfg.rays), rng.integers(0, H, cfg.rays)], 1),
                              dtype=torch.float32, device=device)
        o, d = camera_rays(pix, data.focal, data.cx, data.cy, R[f], t[f])
        out = render_rays(head, o, d, f, E[f], box, n_samples=cfg.samples, grid=grid)
        px = pix.long()
        target = images[f, px[:, 1], px[:, 0]]
        target_mask = masks[f, px[:, 1], px[:, 0]]
        terms = {"photometric": cfg.photometric_weight * (out.rgb - target).abs().mean(),
                 "silhouette": cfg.silhouette_weight * torch.nn.functional.binary_cross_entropy(
                     out.opacity.clamp(1e-4, 1 - 1e-4), target_mask)}
        if out.gradients is not None and len(out.gradients):
            terms["eikonal"] = cfg.eikonal_weight * (out.gradients.norm(dim=-1) - 1.0).pow(2).mean()
        vi = torch.as_tensor(rng.integers(0, posed.shape[1], 1024), device=device)
        xc, _ = head.deformation(posed[f, vi], E[f].expand(len(vi), -1), head.latents[f].expand(len(vi), -1))
        terms["correspondence"] = cfg.correspondence_weight * ((xc - neutral[vi]) * 100.0).pow(2).sum(-1).mean()
        lat = head.latents
        terms["latent"] = cfg.latent_weight * lat.pow(2).sum(-1).mean() + \
            cfg.smooth_weight * (lat[1:] - lat[:-1]).pow(2).sum(-1).mean()
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        evaluated += out.evaluated
        total += out.total
        last = {k: float(v.detach()) for k, v in terms.items()}
        if checkpoint and (step + 1) % cfg.checkpoint_every == 0:
            report.steps = step + 1
            save_checkpoint(checkpoint, head, opt, step + 1, report, box, clip)
        if step % 10 == 0 or step == cfg.steps - 1:
            train_progress.update(f"Training the implicit head ({step + 1}/{cfg.steps}, "
                                  f"photometric {last['photometric']:.3f})", (step + 1 - start) / max(1, cfg.steps - start))
    seconds = time.perf_counter() - t0
    report.steps = cfg.steps
    report.seconds = seconds
    report.steps_per_second = (cfg.steps - start) / max(seconds, 1e-9)
    report.rendered_fraction = evaluated / max(total, 1)
    report.losses = last
    if checkpoint:
        save_checkpoint(checkpoint, head, opt, cfg.steps, report, box, clip)
    head.eval()
    grid.update(head.canonical_sdf, margin=0.02)
    return head, box, grid, report


def data_from_synthetic(model, clip) -> ImplicitData:
    """The trainer's view of a synthetic clip, with its true poses and expression codes as the 'track'."""
    neutral = model.v_template + np.einsum("vck,k->vc", model.shape_basis, clip.shape)
    posed = neutral[None] + np.einsum("vck,tk->tvc", model.expr_basis, clip.expr)
    skin = model.skin_vertex_mask()
    keep = np.nonzero(skin)[0]
    remap = np.full(model.n_vertices, -1)
    remap[keep] = np.arange(len(keep))
    faces = remap[model.faces[model.skin_faces()]]
    return ImplicitData(images=clip.images, masks=clip.masks.astype(np.float32), rotation=clip.rotation,
                        translation=clip.translation, expr=clip.expr, focal=clip.focal, cx=clip.cx, cy=clip.cy,
                        neutral=neutral[keep].astype(np.float32), posed=posed[:, keep].astype(np.float32),
                        faces=faces)
