"""Optional hard rasterisation through pytorch3d's MeshRasterizer (used only when it imports).

pytorch3d is slower than the torch rasteriser on the CPU (measured here: ~1.7 s forward for a
10k-face mesh at 256x256) and cannot be installed on every machine, so it is opt-in.
The OpenCV camera maps onto a screen-space PerspectiveCameras (in_ndc=False) with
R = diag(-1, -1, 1): pytorch3d's view space has +X left and +Y up, and its screen-space
projection then gives back u = f x / z + cx, v = f y / z + cy with pixel centres at +0.5.
"""

from __future__ import annotations

import torch

from .camera import batch_scalar
from .rasterizer import BACKGROUND_DEPTH, Fragments, _as_faces, _prepare_faces

try:  # a missing package, or a binary built against another torch, both mean "not available"
    from pytorch3d.renderer import MeshRasterizer, PerspectiveCameras, RasterizationSettings
    from pytorch3d.structures import Meshes
    _IMPORT_ERROR = None
except Exception as exc:  # noqa: BLE001
    _IMPORT_ERROR = exc


def available() -> bool:
    return _IMPORT_ERROR is None


def opencv_cameras(focal, cx, cy, height: int, width: int, batch: int, like: torch.Tensor):
    """PerspectiveCameras equal to the OpenCV pinhole (focal, cx, cy) for camera-space points."""
    per_image = lambda value: batch_scalar(value, like).reshape(-1).expand(batch)  # noqa: E731
    focal_length = per_image(focal)[:, None].expand(batch, 2)
    principal_point = torch.stack((per_image(cx), per_image(cy)), 1)
    flip_xy = torch.diag(torch.tensor([-1.0, -1.0, 1.0], device=like.device, dtype=like.dtype))
    return PerspectiveCameras(
        focal_length=focal_length, principal_point=principal_point,
        R=flip_xy.expand(batch, 3, 3), T=torch.zeros(batch, 3, device=like.device, dtype=like.dtype),
        in_ndc=False, image_size=torch.tensor([[height, width]] * batch, device=like.device),
        device=like.device,
    )


def rasterize(verts_cam, faces, focal, cx, cy, height: int, width: int, cull_backfaces: bool = False) -> Fragments:
    """Same contract as ``rasterizer.rasterize`` (same skipped faces, same 3D back-face test)."""
    if not available():
        raise RuntimeError(f"pytorch3d is not importable here: {_IMPORT_ERROR}")
    B, V, _ = verts_cam.shape
    H, W = int(height), int(width)
    faces = _as_faces(faces, verts_cam.device)
    F = faces.shape[0]
    _, _, _, drawable = _prepare_faces(verts_cam, faces, focal, cx, cy, cull_backfaces)
    drawable = drawable.reshape(B, F)
    # per-image face subsets so that pytorch3d skips exactly the faces our rasteriser skips
    kept_ids = [drawable[b].nonzero().squeeze(1) for b in range(B)]
    verts32 = verts_cam.float()             # pytorch3d's rasteriser kernels are float32 only
    meshes = Meshes(verts=list(verts32.unbind(0)), faces=[faces[ids] for ids in kept_ids])
    settings = RasterizationSettings(
        image_size=(H, W), blur_radius=0.0, faces_per_pixel=1, perspective_correct=True,
        cull_backfaces=False, bin_size=0 if verts_cam.device.type == "cpu" else None,
    )
    rasterizer = MeshRasterizer(cameras=opencv_cameras(focal, cx, cy, H, W, B, verts32), raster_settings=settings)
    frags = rasterizer(meshes)
    packed_to_face = torch.cat(kept_ids + [torch.zeros(1, dtype=torch.long, device=faces.device)])  # never empty
    packed = frags.pix_to_face[..., 0]
    mask = packed >= 0
    pix_to_face = torch.where(mask, packed_to_face[packed.clamp_min(0)], torch.full_like(packed, -1))
    bary = torch.where(mask[..., None], frags.bary_coords[..., 0, :], torch.zeros_like(frags.bary_coords[..., 0, :]))
    depth = torch.where(mask, frags.zbuf[..., 0], torch.full_like(frags.zbuf[..., 0], BACKGROUND_DEPTH))
    return Fragments(pix_to_face, bary.to(verts_cam.dtype), depth.to(verts_cam.dtype), mask)
