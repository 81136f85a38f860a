"""CLIP image losses for stylization (LeGO's CLIP reconstruction and directional terms).

CLIP comes from open_clip, with weights from a local checkpoint only (the preferences name it):
no registry FaceForge can reach ships CLIP weights, and nothing is downloaded at run time. The
architecture is open_clip's ``arch`` (default ViT-B-32), or the model config in a JSON file beside
the checkpoint (``<checkpoint>.json``, or ``open_clip_config.json`` as on the Hugging Face hub),
so any open_clip model works. Checkpoints are read with ``torch.load(weights_only=True)`` or
safetensors: a file can't run code.

Heads are rendered with FaceForge's differentiable rasterizer (grey clay, soft studio light, from
a few yaw angles) so the losses pass gradients to the vertices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import FaceForgeError, ModelFileError
from ..render import render
from ..render.shading import A0, A1, C0, C1

DEFAULT_ARCH = "ViT-B-32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipUnavailable(FaceForgeError):
    """No usable CLIP checkpoint: the CLIP terms are off (the message says why and what to do)."""


def _config_beside(path: Path) -> Optional[dict]:
    for cand in (path.with_suffix(".json"), path.with_name(path.name + ".json"), path.parent / "open_clip_config.json"):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
            except (OSError, ValueError) as exc:
                raise ModelFileError(f"{cand.name} beside the CLIP checkpoint is not valid JSON: {exc}") from exc
            cfg = data.get("model_cfg", data)
            if "vision_cfg" not in cfg or "embed_dim" not in cfg:
                raise ModelFileError(f"{cand.name} is not an open_clip model config (needs embed_dim, vision_cfg).")
            return cfg
    return None


def _read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - damaged, pickled code, not a checkpoint: one message
            raise ModelFileError(f"{path.name} is not a CLIP checkpoint FaceForge can read safely "
                                 f"(tensors only): {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelFileError(f"{path.name} holds no CLIP weights.")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


class ClipGuide:
    """CLIP's image tower with its input normalisation; images in, unit embeddings out."""

    def __init__(self, clip_model, image_size: int, name: str):
        self.model = clip_model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.image_size = int(image_size)
        self.name = name
        self.mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def to(self, device) -> "ClipGuide":
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, D) unit vectors (differentiable w.r.t. the images)."""
        x = images.permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                align_corners=False)
        x = (x - self.mean) / self.std
        return torch.nn.functional.normalize(self.model.encode_image(x), dim=-1)


def load_clip(checkpoint, arch: str = DEFAULT_ARCH, device="cpu") -> ClipGuide:
    """An open_clip model from a local checkpoint; ``ClipUnavailable`` / ``ModelFileError`` say why not."""
    if not checkpoint:
        raise ClipUnavailable("No CLIP checkpoint is set, so the CLIP terms are off (the geometric losses "
                              "still run). Set one in FaceForge's preferences (an open_clip ViT-B-32 .bin/.pt/"
                              ".safetensors file) to turn them on.")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ClipUnavailable(f"The CLIP checkpoint {path} does not exist, so the CLIP terms are off.")
    try:
        import open_clip
        from open_clip.model import CLIP
    except ImportError as exc:
        raise ClipUnavailable(f"open_clip is not installed ({exc}), so the CLIP terms are off.") from exc
    cfg = _config_beside(path)
    name = path.name
    if cfg is None:
        try:
            clip_model = open_clip.create_model(arch, pretrained=None, device="cpu")
        except Exception as exc:  # noqa: BLE001 - unknown architecture name
            raise ClipUnavailable(f"open_clip has no architecture {arch!r}: {exc}") from exc
        image_size = clip_model.visual.image_size
        name = f"{arch} ({path.name})"
    else:
        clip_model = CLIP(**cfg)
        image_size = cfg["vision_cfg"].get("image_size", 224)
    state = _read_state(path)
    missing, unexpected = clip_model.load_state_dict(state, strict=False)
    visual_missing = [k for k in missing if k.startswith("visual.")]
    if visual_missing or len(unexpected) > 0.5 * len(state):
        raise ModelFileError(f"{path.name} does not match the CLIP architecture {arch!r} ({len(visual_missing)} "
                             f"image weights missing, {len(unexpected)} unexpected); set the right architecture "
                             f"or put its open_clip config JSON beside it.")
    if isinstance(image_size, (tuple, list)):
        image_size = image_size[0]
    return ClipGuide(clip_model, int(image_size), name).to(device)


def clip_status(checkpoint, arch: str = DEFAULT_ARCH) -> tuple:
    """``(usable, message)`` for the panel, without loading the weights."""
    if not checkpoint:
        return False, "CLIP off: no checkpoint set in the preferences (geometric losses only)"
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        return False, f"CLIP off: {path.name} not found"
    return True, f"CLIP: {arch} from {path.name}"


# -- rendering heads for CLIP ------------------------------------------------------------
def clay_light(device=None) -> torch.Tensor:
    """(1, 9, 3) SH light: soft ambient plus a key light from the camera and a little above,
    so the shape reads in the render (flat ambient light would show only the outline)."""
    sh = torch.zeros(1, 9, 3, device=device)
    sh[:, 0] = 0.45 / (A0 * C0)
    sh[:, 2] = -0.45 / (A1 * C1)      # camera space: -z faces the camera
    sh[:, 1] = -0.2 / (A1 * C1)       # -y is up in OpenCV's camera
    return sh


class ClayCamera:
    """Fixed cameras around a head for CLIP renders (model space: metres, y up, +z out of the face)."""

    def __init__(self, template: np.ndarray, yaws_deg: Sequence[float] = (0.0, 35.0, -35.0), size: int = 224,
                 device="cpu"):
        v = np.asarray(template, np.float64)
        lo, hi = v.min(0), v.max(0)
        centre = 0.5 * (lo + hi)
        height = float(hi[1] - lo[1])
        distance = 4.0 * height
        self.size = int(size)
        self.focal = 0.85 * size * distance / height        # the head fills ~85% of the frame
        flip = np.diag([1.0, -1.0, -1.0])                    # model (y up, z to viewer) -> OpenCV camera
        rots, trans = [], []
        for yaw in yaws_deg:
            a = math.radians(yaw)
            ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
            R = flip @ ry
            rots.append(R)
            trans.append(np.array([0.0, 0.0, distance]) - R @ centre)
        self.rotation = torch.as_tensor(np.stack(rots), dtype=torch.float32, device=device)
        self.translation = torch.as_tensor(np.stack(trans), dtype=torch.float32, device=device)
        self.n_views = len(rots)

    def render(self, verts: torch.Tensor, faces: torch.Tensor, views: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(V, 3) model-space vertices -> (n, S, S, 3) clay images on white, differentiable."""
        idx = list(range(self.n_views)) if views is None else list(views)
        R, t = self.rotation[idx], self.translation[idx]
        cam = torch.einsum("bij,vj->bvi", R, verts) + t[:, None]
        albedo = torch.full((1, verts.shape[0], 3), 0.75, device=verts.device)
        sh = clay_light(verts.device)
        out = render(cam, faces, albedo, sh, self.focal, self.size / 2.0, self.size / 2.0, self.size, self.size,
                     backend="torch", cull_backfaces=True)
        mask = out.mask[..., None].to(out.image.dtype)
        return (out.image * mask + (1.0 - mask)).clamp(0.0, 1.0)
