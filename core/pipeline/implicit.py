"""Video -> implicit head -> tracked meshes of one topology (what "Implicit Head from Video" runs).

1. the clip's track: a saved track file, or tracked now (``track_video``);
2. the frames used for training: up to ``max_frames`` valid frames spread over the clip, each cropped
   to a square around the tracked head and resized to ``size`` pixels (intrinsics follow), with a
   person mask (mediapipe's selfie segmentation: hair included);
3. training (``implicit.train``), resumable from ``checkpoint``;
4. the canonical surface (octree extraction + marching cubes) moved into every tracked frame.

``preview_frame`` renders the learned head for any frame of the clip from its checkpoint alone (the
checkpoint keeps the head's box and the track's cameras and codes), by direct surface rendering.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import FaceForgeError
from ..jobs import ensure_progress


@dataclass
class ImplicitResult:
    meshes: "object"            # implicit.meshing.TrackedMeshes (training frames)
    track: "object"             # the clip's Track
    frame_indices: np.ndarray   # track frames the meshes belong to
    report: "object"            # implicit.train.TrainReport
    extraction: dict
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def _crop_box(track, model, frames, margin: float = 0.06) -> tuple:
    """One square crop (x0, y0, side) holding the tracked head (+ hair margin) in every chosen frame."""
    from ..track.tracker import track_vertices
    verts = track_vertices(track, model, frames=frames, device="cpu", camera_space=True)   # (n, V, 3)
    verts = np.asarray(verts)
    lo, hi = verts.min(1), verts.max(1)
    pad = margin * np.array([1.0, 1.0, 0.0])
    corners = []
    for a, b in zip(lo - pad, hi + pad):
        for x in (a[0], b[0]):
            for y in (a[1], b[1]):
                z = a[2]
                corners.append([track.focal * x / z + track.cx, track.focal * y / z + track.cy])
    c = np.asarray(corners)
    x0, y0 = c.min(0)
    x1, y1 = c.max(0)
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - side / 2, cy - side / 2, side


def build_data(video, track, model, size: int = 96, max_frames: int = 40, progress=None):
    """The trainer's ImplicitData from a clip and its track (plus the chosen track frame indices)."""
    import cv2

    from ..fit.silhouette import person_mask
    from ..implicit.train import ImplicitData
    from ..track.video import open_frames
    progress = ensure_progress(progress)
    valid = np.flatnonzero(track.valid)
    if len(valid) < 2:
        raise FaceForgeError("The clip has fewer than 2 tracked frames with a face: nothing to learn a head from.")
    chosen = valid[np.linspace(0, len(valid) - 1, min(max_frames, len(valid))).round().astype(int)]
    chosen = np.unique(chosen)
    x0, y0, side = _crop_box(track, model, chosen)
    scale = size / side
    wanted = set(int(i) for i in chosen)
    images, masks = {}, {}
    source = open_frames(video, track.fps)
    for index, frame in source.frames(track.frame_start, track.frame_start + track.n_frames):
        i = index - track.frame_start
        if i in wanted:
            M = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float64)
            crop = cv2.warpAffine(frame, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
            mask = person_mask(frame)
            if mask is None:
                raise FaceForgeError("mediapipe's selfie segmentation is not available: the implicit head needs "
                                     "person masks.")
            masks[i] = cv2.warpAffine(mask, M, (size, size), flags=cv2.INTER_LINEAR)
            images[i] = crop.astype(np.float32) / 255.0
            progress.update(f"Reading frames and masks ({len(images)}/{len(wanted)})", len(images) / len(wanted))
        if len(images) == len(wanted):
            break
    chosen = np.array([i for i in chosen if i in images])
    import torch
    layer = model.layer("cpu")
    with torch.no_grad():
        neutral = layer.shaped(torch.as_tensor(track.shape[None]))[0].numpy()
        posed = layer.shaped(torch.as_tensor(track.shape[None]).expand(len(chosen), -1),
                             torch.as_tensor(track.expr[chosen])).numpy()
    skin = model.skin_vertex_mask()
    keep = np.nonzero(skin)[0]
    remap = np.full(model.n_vertices, -1)
    remap[keep] = np.arange(len(keep))
    faces = remap[model.faces[model.skin_faces()]]
    data = ImplicitData(images=np.stack([images[i] for i in chosen]), masks=np.stack([masks[i] for i in chosen]),
                        rotation=track.rotation[chosen].astype(np.float32),
                        translation=track.translation[chosen].astype(np.float32),
                        expr=track.expr[chosen].astype(np.float32), focal=float(track.focal * scale),
                        cx=float((track.cx - x0) * scale), cy=float((track.cy - y0) * scale),
                        neutral=neutral[keep].astype(np.float32), posed=posed[:, keep].astype(np.float32),
                        faces=faces)
    return data, chosen


def clip_record(track, chosen: np.ndarray) -> dict:
    """What a Preview needs of the clip, stored in the checkpoint (tensors, numbers and strings only, so
    it loads with ``weights_only=True``): the training frames and every frame's camera and codes."""
    import torch
    H, W = track.image_size
    return {"frames": torch.as_tensor(np.asarray(chosen, np.int64)),
            "rotation": torch.as_tensor(track.rotation, dtype=torch.float32),
            "translation": torch.as_tensor(track.translation, dtype=torch.float32),
            "expr": torch.as_tensor(track.expr, dtype=torch.float32),
            "valid": torch.as_tensor(np.asarray(track.valid, bool)),
            "focal": float(track.focal), "cx": float(track.cx), "cy": float(track.cy), "height": int(H),
            "width": int(W), "fps": float(track.fps), "frame_start": int(track.frame_start),
            "video": str(track.video_path or "")}


def implicit_head_from_data(data, config=None, device="cpu", progress=None, checkpoint: Optional[str] = None,
                            resolution: int = 128, invert: bool = True, clip: Optional[dict] = None):
    """Train on ``data``, extract the canonical surface, move it into every training frame (``invert``;
    else ``meshes`` is ``(verts, faces)`` of the canonical surface). ``clip``: see ``clip_record``."""
    import torch

    from ..implicit.extract import extract_surface
    from ..implicit.meshing import track_meshes
    from ..implicit.train import train
    progress = ensure_progress(progress)
    timings = {}
    t0 = time.perf_counter()
    head, box, grid, report = train(data, config, device=device, progress=progress.sub(0.0, 0.8),
                                    checkpoint=checkpoint, clip=clip)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    progress.update("Extracting the surface", 0.8)

    def sdf(x):
        with torch.no_grad():
            return head.canonical_sdf(x.to(box.lo.device)).cpu()

    verts, faces, stats = extract_surface(sdf, box.lo.cpu().numpy(), box.hi.cpu().numpy(), resolution=resolution)
    if len(verts) == 0:
        raise FaceForgeError("The learned head has no surface inside its box: training failed (try more steps).")
    verts, faces = largest_component(verts, faces)
    timings["extract_s"] = time.perf_counter() - t0
    if not invert:
        return head, box, (verts, faces), report, stats, timings
    t0 = time.perf_counter()
    meshes = track_meshes(head, verts, faces, data.expr, data.neutral, data.posed, progress=progress.sub(0.85, 1.0))
    timings["inversion_s"] = time.perf_counter() - t0
    return head, box, meshes, report, stats, timings


def clip_meshes(head, verts: np.ndarray, faces: np.ndarray, track, model, trained: np.ndarray, neutral: np.ndarray,
                progress=None):
    """The canonical mesh moved into EVERY frame of the clip, not only the ``trained`` ones (their clip
    indices): latents between training frames are interpolated, the tracked morphable head of each
    frame starts the inversion."""
    import torch

    from ..implicit.meshing import track_meshes
    frames = np.arange(track.n_frames)
    lat = head.latents.detach().cpu().numpy()
    latents = np.stack([np.interp(frames, trained, lat[:, j]) for j in range(lat.shape[1])], 1).astype(np.float32)
    layer = model.layer("cpu")
    with torch.no_grad():
        posed = layer.shaped(torch.as_tensor(track.shape[None]).expand(len(frames), -1),
                             torch.as_tensor(track.expr)).numpy()[:, model.skin_vertex_mask()]
    return track_meshes(head, verts, faces, track.expr.astype(np.float32), neutral, posed, progress=progress,
                        latents=latents)


def largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple:
    """Keep the biggest connected piece (marching cubes can leave specks where the SDF is unsure)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(verts)
    f = np.asarray(faces)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    _, label = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)
    big = np.bincount(label).argmax()
    keep = label == big
    remap = np.full(n, -1)
    remap[keep] = np.arange(keep.sum())
    f2 = remap[f]
    f2 = f2[(f2 >= 0).all(1)]
    return verts[keep], f2


def implicit_head_from_video(video, model=None, track_path: Optional[str] = None, device="auto", progress=None,
                             checkpoint: Optional[str] = None, config=None, size: int = 96, max_frames: int = 40,
                             resolution: int = 128, frame_range=None) -> ImplicitResult:
    """The whole job: track (or read ``track_path``), build the training data, train (resuming from
    ``checkpoint``), extract and move the mesh into every training frame."""
    from ..device import resolve_device
    from ..models import load_model
    from ..track.track_file import check_model, load_track
    from ..track.tracker import track_video
    progress = ensure_progress(progress)
    dev = resolve_device(device)
    timings = {}
    t0 = time.perf_counter()
    if track_path:
        track = load_track(track_path)
        if Path(str(track.video_path)).name != Path(str(video)).name:
            raise FaceForgeError(f"The track file {Path(track_path).name} is of '{Path(str(track.video_path)).name}', "
                                 f"not of '{Path(str(video)).name}': choose this video's track or leave it empty.")
        from ..models import embedded_name
        mm = load_model(model if model else (track.model_name if embedded_name(track.model_name)
                                             else track.model_source))
        check_model(track, mm)
    else:
        mm = load_model(model)
        track = track_video(video, mm, dev, progress.sub(0.0, 0.15), None, frame_range)
    timings["track_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data, chosen = build_data(video, track, mm, size=size, max_frames=max_frames, progress=progress.sub(0.15, 0.2))
    timings["data_s"] = time.perf_counter() - t0
    head, _, (verts, faces), report, stats, more = implicit_head_from_data(
        data, config, device=dev, progress=progress.sub(0.2, 0.85), checkpoint=checkpoint, resolution=resolution,
        invert=False, clip=clip_record(track, chosen))
    timings.update(more)
    t0 = time.perf_counter()
    meshes = clip_meshes(head, verts, faces, track, mm, chosen, data.neutral, progress=progress.sub(0.85, 1.0))
    timings["inversion_s"] = time.perf_counter() - t0
    return ImplicitResult(meshes=meshes, track=track, frame_indices=np.arange(track.n_frames), report=report,
                          extraction=stats, timings=timings, warnings=list(getattr(track, "warnings", []) or []))


def implicit_head_job(video, name: str, steps: int, progress=None, **kwargs) -> tuple:
    """What the Blender operator needs, as one call (it may run in a child process): the job
    (``implicit_head_from_video``, ``steps`` training steps) and its rig. Returns (rig, result, basis)."""
    from ..implicit.train import TrainConfig
    result = implicit_head_from_video(video, progress=progress, config=TrainConfig(steps=steps), **kwargs)
    rig, basis = implicit_rig(result, name=name)
    return rig, result, basis


def implicit_rig(result: ImplicitResult, name: str = "ImplicitHead", tolerance_mm: float = 0.5,
                 max_components: int = 64):
    """One animated object: the tracked meshes as a PCA blendshape basis with keyed weights, the head's
    motion on a root bone (relative to the first face frame, as tracked heads), the clip's camera."""
    from ..implicit.sequence import compress_sequence, sequence_head_rig
    from ..rig import CameraSpec
    track = result.track
    ref = int(np.flatnonzero(track.valid)[0]) if track.valid.any() else 0
    R0 = track.rotation[ref].astype(np.float64)
    t0 = track.translation[ref].astype(np.float64)
    frames = result.frame_indices
    root_R = np.einsum("ji,tjk->tik", R0, track.rotation[frames].astype(np.float64))
    root_t = np.einsum("ji,tj->ti", R0, track.translation[frames].astype(np.float64) - t0)
    # the meshes are in head space already (the tracked pose was undone by training): compress them as
    # they are, and give the rig the clip's head motion as its root motion
    basis = compress_sequence(result.meshes.frames, max_components=max_components, tolerance_mm=tolerance_mm)
    basis.rotation, basis.translation = root_R.astype(np.float32), root_t.astype(np.float32)
    H, W = track.image_size
    camera = CameraSpec(focal_px=float(track.focal), width=int(W), height=int(H), rotation=R0, translation=t0,
                        cx=float(track.cx), cy=float(track.cy), image_path=track.video_path)
    rig = sequence_head_rig(basis, result.meshes.faces, name=name, vertex_colors=result.meshes.colours,
                            fps=float(track.fps), frame_start=int(track.frame_start) + int(frames[0]), camera=camera,
                            video_path=track.video_path,
                            metadata={"implicit": {"train_steps": result.report.steps,
                                                   "train_s": round(result.timings.get("train_s", 0.0), 1),
                                                   "inversion_residual_mm": float(result.meshes.residual_mm.mean())}})
    return rig, basis


@dataclass
class Preview:
    frame: int                  # clip frame (0 = the track's first frame)
    rgb: np.ndarray             # (H, W, 3) float in [0, 1], the head alone
    alpha: np.ndarray           # (H, W) 1 where the head is
    composite: np.ndarray       # (H, W, 3) the head over the video frame (grey when the video is unreadable)
    seconds: float              # rendering time
    trained_frame: bool         # a training frame (else its codes are interpolated)
    note: str = ""


def preview_frame(checkpoint, frame: int, width: int = 256, device="cpu", video: Optional[str] = None) -> Preview:
    """The learned head for ``frame`` of the clip, as the tracked camera saw it, ``width`` pixels wide.

    The frame's per-frame codes (deformation latent, appearance code, SH light) are interpolated
    between the training frames around it; its expression and head pose are the track's."""
    import cv2
    import torch

    from ..device import resolve_device
    from ..implicit.render import Box, OccupancyGrid, render_surface
    from ..implicit.train import head_from_checkpoint, load_checkpoint
    saved = load_checkpoint(checkpoint)
    clip = saved.get("clip")
    if clip is None or "box" not in saved:
        raise FaceForgeError(f"{Path(str(checkpoint)).name} was written before previews were possible or by a run "
                             f"that did not finish its first save: train again (it resumes) to preview it.")
    n = int(clip["expr"].shape[0])
    if not 0 <= int(frame) < n:
        raise FaceForgeError(f"Frame {frame} is outside the clip's {n} tracked frames (0-{n - 1}).")
    dev = torch.device(resolve_device(device))
    head = head_from_checkpoint(saved, dev)
    box = Box(saved["box"]["lo"], saved["box"]["hi"]).to(dev)
    trained = clip["frames"].numpy()
    head.interpolate_codes(trained, frame, slot=0)      # drawn as slot 0 of this private head
    grid = OccupancyGrid(box, 32)
    grid.update(head.canonical_sdf, margin=0.02)
    H, W = int(clip["height"]), int(clip["width"])
    scale = width / W
    h = max(1, int(round(H * scale)))
    t0 = time.perf_counter()
    rgb, alpha, _ = render_surface(head, 0, clip["expr"][frame], clip["rotation"][frame], clip["translation"][frame],
                                   clip["focal"] * scale, clip["cx"] * scale, clip["cy"] * scale, h, width, box, grid)
    seconds = time.perf_counter() - t0
    rgb, alpha = rgb.cpu().numpy(), alpha.cpu().numpy()
    background, note = None, ""
    path = video or clip.get("video")
    if path:
        try:
            from ..track.video import open_frames
            index = int(clip["frame_start"]) + int(frame)
            for _, image in open_frames(path, clip["fps"]).frames(index, index + 1):
                background = cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001 - the preview still shows the head
            note = f"the video frame could not be read ({exc})"
    if background is None:
        background = np.full((h, width, 3), 0.25, np.float32)
        note = note or "no video frame behind the head"
    composite = rgb * alpha[..., None] + background * (1.0 - alpha[..., None])
    if not bool(clip["valid"][frame]):
        note = "; ".join(x for x in (note, "no face was tracked in this frame: its pose is interpolated") if x)
    return Preview(frame=int(frame), rgb=rgb, alpha=alpha, composite=composite.astype(np.float32), seconds=seconds,
                   trained_frame=bool(np.isin(frame, trained)), note=note)
