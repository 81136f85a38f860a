"""A mesh sequence of one topology as a compact blendshape basis (PCA), ready for Blender.

The implicit head's tracked meshes share their vertices and faces; storing every frame as its own
shape key would cost T x V x 3 floats and make Blender slow. Instead, the per-frame offsets from the
mean shape are compressed with a PCA:

    frame_t  ~=  R_t @ (mean + sum_k weights[t, k] * components[k]) + t_t

where the optional rigid motion ``R_t, t_t`` (the tracked head pose) is taken out first, so the
basis only has to carry the deformation. ``K`` (the number of components) is the smallest for which
**every vertex of every frame** is within ``tolerance_mm`` of the input, capped at
``max_components``; the error actually reached is reported (mean and max over all vertices and
frames, in mm).

Each component is scaled so its weights span [-1, 1] over the clip: the component is then the
most extreme shape it takes, and Blender's shape-key sliders (limited to [-10, 10]) hold every value.
:func:`sequence_head_rig` describes the result as a :class:`~..rig.head_rig.HeadRig` with shape keys
``pc000, pc001, ...`` and a :class:`~..rig.head_rig.HeadAnimation` keying their weights and the head
motion per frame, which the add-on's scene builder turns into one animated object (and which the
FBX / glTF exporters carry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..rig.head_rig import BoneSpec, CameraSpec, HeadAnimation, HeadRig


@dataclass
class MeshSequenceBasis:
    mean: np.ndarray                    # (V, 3) rest shape: the mean of the frames in head space
    components: np.ndarray              # (K, V, 3) blendshape offsets (each at weight 1)
    weights: np.ndarray                 # (T, K) per-frame weights, each column spanning [-1, 1]
    rotation: Optional[np.ndarray]      # (T, 3, 3) head rotation per frame, or None (identity)
    translation: Optional[np.ndarray]   # (T, 3) head translation per frame, or None (zero)
    error_mean_mm: float                # mean vertex error over all frames (mm)
    error_max_mm: float                 # worst vertex error over all frames (mm)
    frame_error_max_mm: np.ndarray      # (T,) worst vertex error of each frame (mm)
    tolerance_mm: float
    variance_kept: float                # fraction of the offsets' variance the K components keep
    units_per_mm: float = 1e-3          # model units in one millimetre (metres: 1e-3)
    timings: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    def head_space(self, t: Optional[int] = None) -> np.ndarray:
        """Frame(s) without the rigid motion: (V, 3) for one frame, (T, V, 3) for all."""
        w = self.weights if t is None else self.weights[t][None]
        K, V = self.n_components, self.n_vertices
        out = self.mean[None] + (w @ self.components.reshape(K, V * 3)).reshape(len(w), V, 3)
        return out if t is None else out[0]

    def summary(self) -> dict:
        return {"frames": self.n_frames, "vertices": self.n_vertices, "components": self.n_components,
                "error_mean_mm": self.error_mean_mm, "error_max_mm": self.error_max_mm,
                "tolerance_mm": self.tolerance_mm, "variance_kept": self.variance_kept,
                "compression": self.compression_ratio(), "timings": dict(self.timings)}

    def compression_ratio(self) -> float:
        """Floats of the raw sequence / floats of the basis (mean, components, weights, motion)."""
        T, K, V = self.n_frames, self.n_components, self.n_vertices
        basis = V * 3 * (K + 1) + T * K + (T * 12 if self.rotation is not None else 0)
        return T * V * 3 / max(basis, 1)


def _sq_errors(R: np.ndarray, V: int) -> np.ndarray:
    """(T, V) squared vertex errors of a (T, V*3) residual."""
    R3 = R.reshape(len(R), V, 3)
    return np.einsum("tvc,tvc->tv", R3, R3)


def _update(resid: np.ndarray, W: np.ndarray, C: np.ndarray, sign: float, block: int = 32) -> None:
    """resid += sign * W @ C, in place, a block of frames at a time (no full-size temporary)."""
    buf = np.empty((min(block, len(resid)), resid.shape[1]), dtype=resid.dtype)
    for s in range(0, len(resid), block):
        n = min(block, len(resid) - s)
        np.matmul(W[s:s + n], C, out=buf[:n])
        if sign < 0:
            np.subtract(resid[s:s + n], buf[:n], out=resid[s:s + n])
        else:
            np.add(resid[s:s + n], buf[:n], out=resid[s:s + n])


def compress_sequence(frames: np.ndarray, max_components: int = 64, tolerance_mm: float = 0.5,
                      rotation: Optional[np.ndarray] = None, translation: Optional[np.ndarray] = None,
                      units_per_mm: float = 1e-3) -> MeshSequenceBasis:
    """PCA blendshape basis of a (T, V, 3) mesh sequence of one topology (see the module docstring).

    ``rotation`` (T, 3, 3) / ``translation`` (T, 3): the head's rigid motion per frame (model space,
    ``frame = R @ head_space + t``), taken out before the PCA and kept as the rig's root motion.
    ``units_per_mm``: model units in a millimetre (1e-3 for metres). ``K`` is the smallest number of
    components whose worst vertex error is within ``tolerance_mm`` (components are added in order
    until it is), at most ``max_components`` and at most T - 1; if the cap is hit the reported error
    is above the tolerance. The heavy products run in float32 (errors ~1e-8 of the head's size), the
    eigen-decomposition in float64.
    """
    t0 = time.perf_counter()
    src = np.asarray(frames)
    if src.ndim != 3 or src.shape[2] != 3 or src.shape[0] < 1 or src.shape[1] < 1:
        raise ValueError(f"frames must be (T, V, 3), got {src.shape}")
    T, V, _ = src.shape
    R = tr = None
    if rotation is not None or translation is not None:
        R = np.tile(np.eye(3), (T, 1, 1)) if rotation is None else np.asarray(rotation, dtype=np.float64)
        tr = np.zeros((T, 3)) if translation is None else np.asarray(translation, dtype=np.float64)
        if R.shape != (T, 3, 3) or tr.shape != (T, 3):
            raise ValueError(f"rotation must be (T, 3, 3) and translation (T, 3) for T={T}, got {R.shape}, {tr.shape}")
        P = np.empty((T, V, 3), dtype=np.float32)
        for i in range(T):                                           # head space: R^T (x - t), as rows
            np.matmul(src[i].astype(np.float32) - tr[i].astype(np.float32), R[i].astype(np.float32), out=P[i])
    else:
        P = np.array(src, dtype=np.float32)                          # our own copy: centred in place
    if not np.isfinite(P).all():
        raise ValueError("frames contain NaN or infinite values")
    mean = P.mean(0, dtype=np.float64)
    P -= mean.astype(np.float32)
    X = P.reshape(T, V * 3)
    scale = 1.0 / float(units_per_mm)
    tol = float(tolerance_mm) * float(units_per_mm)

    # PCA through the (T, T) Gram matrix (T << 3V)
    G = (X @ X.T).astype(np.float64)
    lam, U = np.linalg.eigh(G)
    order = np.argsort(lam)[::-1]
    lam, U = np.clip(lam[order], 0.0, None), U[:, order]
    rank = int((lam > lam[0] * 1e-10).sum()) if lam[0] > 0 else 0
    cap = max(0, min(int(max_components), rank, T - 1))
    sigma = np.sqrt(lam[:cap])
    W_all = (U[:, :cap] * sigma).astype(np.float32)                 # (T, cap) weights of unit components
    C_all = (U[:, :cap].T / np.maximum(sigma, 1e-300)[:, None]).astype(np.float32) @ X   # (cap, 3V)
    frame_sq = np.square(X).sum(1, dtype=np.float64)
    t1 = time.perf_counter()

    # smallest K whose worst vertex error meets the tolerance. The per-frame RMS error (cheap, from the
    # weights) is a lower bound of the worst vertex error, so no K below the first one whose RMS meets
    # the tolerance can pass: start there, add components to the residual (X, in place) in growing
    # blocks until it passes, then redo the last block one component at a time.
    rms_k = np.sqrt(np.maximum(frame_sq[:, None] - np.cumsum(W_all.astype(np.float64) ** 2, axis=1), 0.0) / V)
    rms = np.concatenate([np.sqrt(frame_sq / V)[:, None], rms_k], 1).max(0)                # K = 0..cap
    K = int(np.argmax(rms <= tol)) if (rms <= tol).any() else cap
    tol2 = tol * tol
    resid = X
    if K:
        _update(resid, W_all[:, :K], C_all[:K], -1.0)
    sq = _sq_errors(resid, V)
    checks = 1
    while sq.max() > tol2 and K < cap:
        k2 = min(cap, K + max(1, K // 4))
        _update(resid, W_all[:, K:k2], C_all[K:k2], -1.0)
        sq2 = _sq_errors(resid, V)
        checks += 1
        if sq2.max() <= tol2 and k2 - K > 1:
            _update(resid, W_all[:, K:k2], C_all[K:k2], +1.0)      # back, then one component at a time
            for k in range(K, k2):
                _update(resid, W_all[:, k:k + 1], C_all[k:k + 1], -1.0)
                sq = _sq_errors(resid, V)
                checks += 1
                K = k + 1
                if sq.max() <= tol2:
                    break
        else:
            sq, K = sq2, k2
    err = np.sqrt(sq.astype(np.float64))
    del resid, X, P
    t2 = time.perf_counter()

    W, Cm = W_all[:, :K].astype(np.float64), C_all[:K].astype(np.float64)
    span = np.abs(W).max(0) if K else np.zeros(0)
    span = np.where(span > 0, span, 1.0)
    flip = np.where(W[np.abs(W).argmax(0), np.arange(K)] < 0, -1.0, 1.0) if K else np.zeros(0)
    W = W / span * flip                                              # each column spans [-1, 1], peak at +1
    Cm = Cm * (span * flip)[:, None]
    total_var = float(frame_sq.sum())
    kept = float((lam[:K]).sum() / total_var) if total_var > 0 else 1.0
    return MeshSequenceBasis(
        mean=mean, components=Cm.reshape(K, V, 3), weights=W, rotation=R, translation=tr,
        error_mean_mm=float(err.mean() * scale), error_max_mm=float(err.max() * scale),
        frame_error_max_mm=err.max(1) * scale, tolerance_mm=float(tolerance_mm), variance_kept=kept,
        units_per_mm=float(units_per_mm),
        timings={"pca_s": t1 - t0, "choose_k_s": t2 - t1, "error_checks": checks, "total_s": time.perf_counter() - t0})


def reconstruct(basis: MeshSequenceBasis) -> np.ndarray:
    """(T, V, 3) frames from the basis, the rigid motion applied."""
    P = basis.head_space()
    if basis.rotation is not None:
        P = np.einsum("tij,tvj->tvi", basis.rotation, P) + basis.translation[:, None]
    return P


def sequence_head_rig(basis: MeshSequenceBasis, faces: np.ndarray, name: str = "ImplicitHead",
                      vertex_colors: Optional[np.ndarray] = None, uv: Optional[np.ndarray] = None,
                      texture_path: Optional[str] = None, fps: float = 25.0, frame_start: int = 0,
                      camera: Optional[CameraSpec] = None, video_path: Optional[str] = None,
                      metadata: Optional[dict] = None) -> HeadRig:
    """The basis as a HeadRig the add-on's scene builder turns into one animated object.

    Shape keys ``pc000 ..`` are the components (values keyed per frame from ``weights``); one root
    bone carries the head motion (identity without ``rotation`` / ``translation``); the rest shape
    is the mean. ``frame_start``: the clip frame of the first mesh (Blender frame = clip frame + 1).
    ``vertex_colors`` (V, 3) sRGB in [0, 1] (e.g. from the appearance network) become the
    "albedo" colour attribute the material reads."""
    T, K, V = basis.n_frames, basis.n_components, basis.n_vertices
    names = [f"pc{k:03d}" for k in range(K)]
    R = np.tile(np.eye(3), (T, 1, 1)) if basis.rotation is None else np.asarray(basis.rotation, np.float64)
    tr = np.zeros((T, 3)) if basis.translation is None else np.asarray(basis.translation, np.float64)
    mean = np.asarray(basis.mean, dtype=np.float64)
    root = 0.5 * (mean.min(0) + mean.max(0))
    bones = BoneSpec(names=["root"], parents=np.array([-1]), heads=root[None].copy(),
                     weights=np.ones((V, 1), dtype=np.float32))
    anim = HeadAnimation(fps=float(fps), frame_start=int(frame_start), shape_key_values=basis.weights.copy(),
                         root_rotation=R, root_translation=tr, valid=np.ones(T, dtype=bool), video_path=video_path)
    meta = {"model": "implicit", "kind": "mesh_sequence", "pca": basis.summary()}
    meta.update(metadata or {})
    return HeadRig(name=name, vertices=mean, faces=np.asarray(faces, dtype=np.int64), shape_key_names=names,
                   shape_key_deltas=basis.components, shape_key_values=basis.weights[0].copy() if T else np.zeros(K),
                   vertex_colors=None if vertex_colors is None else np.asarray(vertex_colors, dtype=np.float64),
                   uv=uv, texture_path=texture_path, bones=bones, camera=camera, animation=anim, metadata=meta)
