"""One interface for every linear head model (built-in, FLAME, user .npz).

Conventions (shared by every loader, the fitter and the Blender side):
- Units are metres; model space is y-up, +z pointing out of the face (FLAME's convention).
- Bases are (V, 3, K) and scaled so that coefficients are ~N(0, 1): the fitter's
  regulariser is a plain squared norm, whatever the model.
- Optional joints follow FLAME: joint 0 is the root (its rotation is the global head
  rotation, which FaceForge keeps outside the model as a rigid transform); the other
  joints (e.g. neck, jaw, eyeballs) are posed with axis-angle vectors through linear blend
  skinning plus pose-corrective blendshapes.
- ``landmarks`` maps points of the face detector (mediapipe's 478) onto the surface as
  (triangle, barycentric) pairs, so any topology can be fitted to detections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..errors import ModelFileError


@dataclass
class JointRig:
    names: list                     # J names, e.g. ["root", "neck", "jaw", "eye_L", "eye_R"]
    parents: np.ndarray             # (J,) int64, -1 for the root
    regressor: np.ndarray           # (J, V) float32: joint locations = regressor @ vertices
    weights: np.ndarray             # (V, J) float32 skinning weights, rows sum to 1
    posedirs: Optional[np.ndarray] = None  # (9*(J-1), V, 3) pose correctives (FLAME), or None


@dataclass
class LandmarkEmbedding:
    detector_index: np.ndarray      # (L,) int64: which detector point (0..477) each landmark is
    face_index: np.ndarray          # (L,) int64: triangle the landmark lies on
    bary: np.ndarray                # (L, 3) float32 barycentric coordinates in that triangle
    method: str = "given"           # how it was found ("identity", "render-detect", ...)
    error_mm: Optional[float] = None  # self-check error reported by the finder, if known
    point_error_mm: Optional[np.ndarray] = None  # (L,) per-point self-check error, if known


@dataclass
class ModelParts:
    """Named regions of a multi-part head (ICT-FaceKit: face, head and neck, teeth, eyeballs...).

    Only the ``skin`` parts (the outer surface a camera sees: face, scalp, neck) take part in
    landmark correspondence, silhouettes and photometric terms; the other parts follow the same
    bases and are only shown (Blender, exports). ``material`` groups parts into material slots."""
    names: list                     # P part names
    vertex_part: np.ndarray         # (V,) int: the part of each vertex
    skin: np.ndarray                # (P,) bool: part belongs to the outer skin
    material: list                  # P material names (parts sharing one share a slot)


@dataclass
class Polygons:
    """The model's own polygons (quads, n-gons) for Blender, with per-corner UVs (seams allowed).

    ``faces`` (triangles) is what the renderer and fitter use; ``face_polygon`` says which polygon
    each triangle came from, so per-polygon data (parts, materials) reaches triangles."""
    sizes: np.ndarray               # (P,) corners per polygon
    vertices: np.ndarray            # (sum(sizes),) vertex index of each corner, polygon by polygon
    uv: Optional[np.ndarray] = None  # (sum(sizes), 2) per-corner UVs
    face_polygon: Optional[np.ndarray] = None  # (F,) polygon of each triangle

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)


@dataclass
class MorphableModel:
    name: str
    v_template: np.ndarray          # (V, 3) float32
    faces: np.ndarray               # (F, 3) int64
    shape_basis: np.ndarray         # (V, 3, Ks) float32
    expr_basis: np.ndarray          # (V, 3, Ke) float32
    expr_names: list                # Ke names (become Blender shape-key names)
    albedo_mean: Optional[np.ndarray] = None   # (V, 3) in [0, 1]
    albedo_basis: Optional[np.ndarray] = None  # (V, 3, Ka)
    joints: Optional[JointRig] = None
    landmarks: Optional[LandmarkEmbedding] = None
    uv: Optional[np.ndarray] = None            # (V, 2) per-vertex UVs, if the model has them
    parts: Optional[ModelParts] = None         # named regions (None: the whole mesh is skin)
    polygons: Optional[Polygons] = None        # quads/n-gons + corner UVs (None: triangles only)
    source: str = ""                            # path or description, for reports
    notes: dict = field(default_factory=dict)   # free-form provenance (how it was built)

    # ------------------------------------------------------------------ sizes
    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shape_basis.shape[2])

    @property
    def n_expr(self) -> int:
        return int(self.expr_basis.shape[2])

    @property
    def n_albedo(self) -> int:
        return 0 if self.albedo_basis is None else int(self.albedo_basis.shape[2])

    @property
    def n_pose_joints(self) -> int:
        """Joints FaceForge poses (all but the root)."""
        return 0 if self.joints is None else len(self.joints.names) - 1

    def summary(self) -> dict:
        return {
            "name": self.name,
            "vertices": self.n_vertices,
            "triangles": int(self.faces.shape[0]),
            "identity_components": self.n_shape,
            "expression_components": self.n_expr,
            "albedo_components": self.n_albedo,
            "joints": [] if self.joints is None else list(self.joints.names),
            "landmarks": 0 if self.landmarks is None else int(len(self.landmarks.face_index)),
            "landmark_method": None if self.landmarks is None else self.landmarks.method,
        }

    @property
    def expr_range(self) -> Optional[tuple]:
        """(lo, hi) for blendshape models whose expression weights live in a range (ICT-FaceKit,
        ARKit: 0..1; from notes["expr_range"]); None for PCA expression spaces (~N(0, 1))."""
        r = self.notes.get("expr_range") if isinstance(self.notes, dict) else None
        return None if r is None else (float(r[0]), float(r[1]))

    # ------------------------------------------------------------------ parts
    def skin_vertex_mask(self) -> np.ndarray:
        """(V,) bool: vertices of the outer skin (all of them for a single-part model)."""
        if self.parts is None:
            return np.ones(self.n_vertices, bool)
        return np.asarray(self.parts.skin, bool)[self.parts.vertex_part]

    def skin_faces(self) -> np.ndarray:
        """Indices of the triangles on the outer skin (every triangle for a single-part model)."""
        if self.parts is None:
            return np.arange(len(self.faces))
        return np.nonzero(self.skin_vertex_mask()[self.faces].all(1))[0]

    def face_parts(self) -> Optional[np.ndarray]:
        """(F,) part of each triangle, or None for a single-part model."""
        return None if self.parts is None else np.asarray(self.parts.vertex_part)[self.faces[:, 0]]

    def corner_uv(self) -> Optional[np.ndarray]:
        """(F, 3, 2) UVs per triangle corner from the polygons' corner UVs (or per-vertex UVs)."""
        if self.polygons is not None and self.polygons.uv is not None and self.polygons.face_polygon is not None:
            return self.polygons.uv[self._triangle_corners()].astype(np.float32)
        if self.uv is not None:
            return self.uv[self.faces].astype(np.float32)
        return None

    def _triangle_corners(self) -> np.ndarray:
        """(F, 3) index into the polygons' corner arrays for each triangle corner."""
        pg = self.polygons
        starts = pg.starts[pg.face_polygon]                                       # (F,)
        corners = starts[:, None] + np.arange(int(pg.sizes.max()))[None]          # candidate corners
        corners = np.minimum(corners, len(pg.vertices) - 1)
        cand_v = pg.vertices[corners]                                             # (F, maxsize)
        out = np.empty(self.faces.shape, np.int64)
        for c in range(3):
            hit = (cand_v == self.faces[:, c:c + 1]) & (np.arange(corners.shape[1])[None] < pg.sizes[pg.face_polygon][:, None])
            out[:, c] = corners[np.arange(len(corners)), hit.argmax(1)]
        return out

    # ------------------------------------------------------------- validation
    def validate(self) -> "MorphableModel":
        """Check every array against the others; raise ModelFileError naming the first mismatch."""
        V = self.v_template.shape[0] if self.v_template.ndim == 2 else -1

        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ModelFileError(f"Model '{self.name}' ({self.source or 'in memory'}): {what}")

        need(self.v_template.ndim == 2 and self.v_template.shape[1] == 3 and V >= 3,
             f"template vertices must be (V, 3), got {self.v_template.shape}")
        need(self.faces.ndim == 2 and self.faces.shape[1] == 3 and len(self.faces) > 0,
             f"triangles must be (F, 3), got {self.faces.shape}")
        need(int(self.faces.min()) >= 0 and int(self.faces.max()) < V,
             f"triangle indices must lie in [0, {V}), got [{self.faces.min()}, {self.faces.max()}]")
        for label, basis in (("identity", self.shape_basis), ("expression", self.expr_basis)):
            need(basis.ndim == 3 and basis.shape[:2] == (V, 3),
                 f"{label} basis must be (V={V}, 3, K), got {basis.shape}")
        need(len(self.expr_names) == self.n_expr,
             f"{self.n_expr} expression components but {len(self.expr_names)} names")
        need(len(set(self.expr_names)) == len(self.expr_names), "expression names must be unique")
        if self.albedo_mean is not None:
            need(self.albedo_mean.shape == (V, 3), f"albedo mean must be (V, 3), got {self.albedo_mean.shape}")
        if self.albedo_basis is not None:
            need(self.albedo_mean is not None, "albedo basis without an albedo mean")
            need(self.albedo_basis.ndim == 3 and self.albedo_basis.shape[:2] == (V, 3),
                 f"albedo basis must be (V, 3, K), got {self.albedo_basis.shape}")
        if self.uv is not None:
            need(self.uv.shape == (V, 2), f"UVs must be (V, 2), got {self.uv.shape}")
        if self.parts is not None:
            p = self.parts
            P = len(p.names)
            need(np.asarray(p.vertex_part).shape == (V,), f"vertex parts must be (V={V},), got {np.shape(p.vertex_part)}")
            need(P > 0 and int(np.min(p.vertex_part)) >= 0 and int(np.max(p.vertex_part)) < P,
                 f"vertex parts must index the {P} part names")
            need(np.asarray(p.skin).shape == (P,) and len(p.material) == P,
                 f"part skin flags and materials must have one entry per part ({P})")
            need(bool(np.asarray(p.skin).any()), "at least one part must be skin")
        if self.polygons is not None:
            pg = self.polygons
            N = int(np.sum(pg.sizes))
            need(pg.sizes.ndim == 1 and int(pg.sizes.min()) >= 3, "polygons need at least 3 corners each")
            need(pg.vertices.shape == (N,), f"polygon corners must be (sum(sizes)={N},), got {pg.vertices.shape}")
            need(int(pg.vertices.min()) >= 0 and int(pg.vertices.max()) < V, "polygon corner indices out of range")
            if pg.uv is not None:
                need(pg.uv.shape == (N, 2), f"polygon UVs must be ({N}, 2), got {pg.uv.shape}")
            if pg.face_polygon is not None:
                need(pg.face_polygon.shape == (len(self.faces),), "face_polygon must have one entry per triangle")
                need(int(pg.face_polygon.min()) >= 0 and int(pg.face_polygon.max()) < len(pg.sizes),
                     "face_polygon indices out of range")
        if self.joints is not None:
            j = self.joints
            J = len(j.names)
            need(J >= 1 and j.parents.shape == (J,) and j.parents[0] == -1,
                 "joint parents must be (J,) with the root first (-1)")
            need(all(0 <= j.parents[i] < i for i in range(1, J)),
                 "every joint's parent must come before it")
            need(j.regressor.shape == (J, V), f"joint regressor must be (J={J}, V={V}), got {j.regressor.shape}")
            need(j.weights.shape == (V, J), f"skinning weights must be (V={V}, J={J}), got {j.weights.shape}")
            if j.posedirs is not None:
                need(j.posedirs.shape == (9 * (J - 1), V, 3),
                     f"pose correctives must be ({9 * (J - 1)}, V, 3), got {j.posedirs.shape}")
        if self.landmarks is not None:
            lm = self.landmarks
            L = len(lm.face_index)
            need(lm.detector_index.shape == (L,) and lm.bary.shape == (L, 3),
                 "landmark embedding arrays disagree in length")
            need(L == 0 or (int(lm.face_index.min()) >= 0 and int(lm.face_index.max()) < len(self.faces)),
                 "landmark triangles out of range")
        for label, arr in (("template", self.v_template), ("identity basis", self.shape_basis),
                           ("expression basis", self.expr_basis)):
            need(bool(np.isfinite(arr).all()), f"{label} contains NaN or infinite values")
        return self

    # ------------------------------------------------------------------ torch
    def layer(self, device="cpu", n_shape: Optional[int] = None, n_expr: Optional[int] = None,
              n_albedo: Optional[int] = None) -> "MorphableLayer":
        """A torch module evaluating this model on ``device`` (optionally with truncated bases)."""
        return MorphableLayer(self, device, n_shape, n_expr, n_albedo)


# ---------------------------------------------------------------------------- torch side
def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, batched: (..., 3) -> (..., 3, 3); smooth at zero."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    k = aa / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(aa.shape[:-1] + (3, 3))
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(K.shape)
    return eye + s * K + (1 - c) * (K @ K)


class MorphableLayer(torch.nn.Module):
    """Evaluates a MorphableModel in torch. Inputs are batched (B, K); outputs (B, V, 3)."""

    def __init__(self, model: MorphableModel, device="cpu", n_shape=None, n_expr=None, n_albedo=None):
        super().__init__()
        self.model = model
        ks = model.n_shape if n_shape is None else min(n_shape, model.n_shape)
        ke = model.n_expr if n_expr is None else min(n_expr, model.n_expr)
        ka = model.n_albedo if n_albedo is None else min(n_albedo, model.n_albedo)
        self.n_shape, self.n_expr, self.n_albedo = ks, ke, ka
        V = model.n_vertices
        f32 = dict(dtype=torch.float32, device=device)
        self.register_buffer("v_template", torch.as_tensor(model.v_template, **f32))
        self.register_buffer("faces", torch.as_tensor(model.faces, dtype=torch.long, device=device))
        self.expr_range = model.expr_range
        # the outer skin's triangles: what photometric and silhouette terms render (teeth, eyeballs and
        # the mouth socket are inside the head; a camera sees them only through the openings)
        self.register_buffer("fit_faces", torch.as_tensor(model.faces[model.skin_faces()], dtype=torch.long,
                                                          device=device))
        # (V*3, K) so a batch of coefficients is one matmul
        self.register_buffer("shape_basis", torch.as_tensor(model.shape_basis[:, :, :ks], **f32).reshape(V * 3, ks))
        self.register_buffer("expr_basis", torch.as_tensor(model.expr_basis[:, :, :ke], **f32).reshape(V * 3, ke))
        albedo_mean = model.albedo_mean if model.albedo_mean is not None else np.full((V, 3), 0.6, np.float32)
        self.register_buffer("albedo_mean", torch.as_tensor(albedo_mean, **f32))
        if ka > 0:
            self.register_buffer("albedo_basis", torch.as_tensor(model.albedo_basis[:, :, :ka], **f32).reshape(V * 3, ka))
        else:
            self.albedo_basis = None
        j = model.joints
        if j is not None:
            self.parents = [int(p) for p in j.parents]
            self.register_buffer("j_regressor", torch.as_tensor(j.regressor, **f32))
            self.register_buffer("lbs_weights", torch.as_tensor(j.weights, **f32))
            if j.posedirs is not None:
                self.register_buffer("posedirs", torch.as_tensor(j.posedirs, **f32).reshape(-1, V * 3))
            else:
                self.posedirs = None
        lm = model.landmarks
        if lm is not None:
            self.register_buffer("lm_faces", torch.as_tensor(model.faces[lm.face_index], dtype=torch.long, device=device))
            self.register_buffer("lm_bary", torch.as_tensor(lm.bary, **f32))
            self.register_buffer("lm_detector_index", torch.as_tensor(lm.detector_index, dtype=torch.long, device=device))

    @property
    def device(self) -> torch.device:
        return self.v_template.device

    @property
    def n_pose_joints(self) -> int:
        return self.model.n_pose_joints

    def zeros(self, batch: int = 1) -> dict:
        """Neutral coefficients for a batch: a convenient starting point for fits."""
        z = lambda k: torch.zeros(batch, k, device=self.device)  # noqa: E731
        return {"shape": z(self.n_shape), "expr": z(self.n_expr),
                "joint_pose": torch.zeros(batch, self.n_pose_joints, 3, device=self.device)}

    def shaped(self, shape: torch.Tensor, expr: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Template + identity (+ expression) offsets, no joints: (B, V, 3)."""
        B = shape.shape[0]
        offsets = shape @ self.shape_basis.T
        if expr is not None and self.n_expr > 0:
            offsets = offsets + expr @ self.expr_basis.T
        return self.v_template[None] + offsets.reshape(B, -1, 3)

    def forward(self, shape: torch.Tensor, expr: Optional[torch.Tensor] = None,
                joint_pose: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Vertices in model space: (B, V, 3). ``joint_pose`` is (B, J-1, 3) axis-angle."""
        v = self.shaped(shape, expr)
        if self.model.joints is None or joint_pose is None:
            return v
        return self.skin(v, joint_pose)

    def skin(self, v_shaped: torch.Tensor, joint_pose: torch.Tensor) -> torch.Tensor:
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v_shaped)
        return self.skin_with_joints(v_shaped, joints, joint_pose)

    def skin_with_joints(self, v_shaped: torch.Tensor, joints: torch.Tensor, joint_pose: torch.Tensor) -> torch.Tensor:
        """LBS of (B, V, 3) rest vertices given rest joint locations (B, J, 3) and poses (B, J-1, 3)."""
        B, V, _ = v_shaped.shape
        J = len(self.parents)
        rot = axis_angle_to_matrix(joint_pose)                              # (B, J-1, 3, 3)
        eye = torch.eye(3, device=v_shaped.device).expand(B, 1, 3, 3)
        rot = torch.cat([eye, rot], 1)                                      # root stays unrotated
        v = v_shaped
        if self.posedirs is not None:
            feat = (rot[:, 1:] - torch.eye(3, device=v.device)).reshape(B, -1)
            v = v + (feat @ self.posedirs).reshape(B, V, 3)
        # forward kinematics: world transform of each joint
        rel = joints.clone()
        rel[:, 1:] = joints[:, 1:] - joints[:, self.parents[1:]]
        local = torch.zeros(B, J, 4, 4, device=v.device)
        local[:, :, :3, :3] = rot
        local[:, :, :3, 3] = rel
        local[:, :, 3, 3] = 1.0
        world = [local[:, 0]]
        for i in range(1, J):
            world.append(world[self.parents[i]] @ local[:, i])
        world = torch.stack(world, 1)                                        # (B, J, 4, 4)
        # remove the rest-pose joint location so transforms act on rest-pose vertices
        rest = torch.einsum("bjik,bjk->bji", world[:, :, :3, :3], joints)
        world = world.clone()
        world[:, :, :3, 3] = world[:, :, :3, 3] - rest
        T = torch.einsum("vj,bjik->bvik", self.lbs_weights, world)           # (B, V, 4, 4)
        return torch.einsum("bvik,bvk->bvi", T[:, :, :3, :3], v) + T[:, :, :3, 3]

    def expr_bound_penalty(self, expr: torch.Tensor) -> torch.Tensor:
        """Squared distance of expression weights outside the model's range (0 for PCA models):
        fitters add it with a large weight so blendshape weights stay where artists expect them."""
        if self.expr_range is None:
            return expr.new_zeros(())
        lo, hi = self.expr_range
        return (torch.relu(lo - expr) ** 2).sum() + (torch.relu(expr - hi) ** 2).sum()

    def landmark_layer(self) -> "LandmarkLayer":
        """A cheap evaluator of the landmarks alone (cost independent of the mesh size)."""
        return LandmarkLayer(self)

    def albedo(self, coeffs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-vertex albedo (B, V, 3) in [0, 1] from albedo coefficients (or the mean)."""
        if coeffs is None or self.albedo_basis is None:
            return self.albedo_mean[None]
        B = coeffs.shape[0]
        return (self.albedo_mean[None] + (coeffs @ self.albedo_basis.T).reshape(B, -1, 3)).clamp(0.0, 1.0)

    def landmarks(self, verts: torch.Tensor) -> torch.Tensor:
        """Landmark positions (B, L, 3) on posed vertices (B, V, 3)."""
        if self.model.landmarks is None:
            raise ModelFileError(f"Model '{self.model.name}' has no landmark correspondences yet.")
        tri = verts[:, self.lm_faces]                                        # (B, L, 3, 3)
        return (tri * self.lm_bary[None, :, :, None]).sum(2)


class LandmarkLayer(torch.nn.Module):
    """Evaluates only the landmark points of a MorphableLayer, exactly.

    Tracking and landmark fitting never need the full mesh: the bases (and skinning weights,
    pose correctives) are restricted to the vertices of the landmark triangles, and the joint
    regressor is folded into the bases, so a 5k-vertex FLAME costs about what the 468-vertex
    built-in model does, and thousands of frames can be evaluated in one batch."""

    def __init__(self, full: MorphableLayer, faces: Optional[torch.Tensor] = None, bary: Optional[torch.Tensor] = None):
        """``faces`` (P, 3) vertex ids and ``bary`` (P, 3): any surface points instead of the model's
        landmarks (artists' pins use the same restricted evaluation)."""
        super().__init__()
        if faces is None and full.model.landmarks is None:
            raise ModelFileError(f"Model '{full.model.name}' has no landmark correspondences yet.")
        self.full = full
        self.n_shape, self.n_expr = full.n_shape, full.n_expr
        lm_faces = full.lm_faces if faces is None else faces                 # (L, 3) vertex ids
        ids, inverse = torch.unique(lm_faces.reshape(-1), return_inverse=True)
        self.register_buffer("local_faces", inverse.reshape(-1, 3))
        self.register_buffer("lm_bary", full.lm_bary if bary is None else bary)
        # points that are the vertices themselves, in order (silhouette.point_layer): no barycentric blend
        self.points_are_vertices = bool(
            len(ids) == len(self.local_faces) and (self.local_faces == torch.arange(len(ids), device=ids.device)[:, None]).all()
            and (self.lm_bary[:, 0] == 1).all() and (self.lm_bary[:, 1:] == 0).all())
        V = full.model.n_vertices
        S = len(ids)
        rows = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).reshape(-1)   # (S*3,)
        self.register_buffer("v_template", full.v_template[ids])
        self.register_buffer("shape_basis", full.shape_basis[rows])
        self.register_buffer("expr_basis", full.expr_basis[rows])
        self.has_joints = full.model.joints is not None
        if self.has_joints:
            self.parents = full.parents
            J = len(full.parents)
            reg = full.j_regressor                                            # (J, V)
            self.register_buffer("j_template", reg @ full.v_template)
            self.register_buffer("j_shape", torch.einsum("jv,vck->jck", reg, full.shape_basis.reshape(V, 3, -1)).reshape(J * 3, -1))
            self.register_buffer("j_expr", torch.einsum("jv,vck->jck", reg, full.expr_basis.reshape(V, 3, -1)).reshape(J * 3, -1))
            self.register_buffer("lbs_weights", full.lbs_weights[ids])
            if full.posedirs is not None:
                self.register_buffer("posedirs", full.posedirs.reshape(-1, V, 3)[:, ids].reshape(-1, S * 3))
            else:
                self.posedirs = None

    @property
    def device(self):
        return self.v_template.device

    @property
    def n_pose_joints(self) -> int:
        return self.full.n_pose_joints

    def forward(self, shape, expr=None, joint_pose=None):
        """(B, L, 3) landmarks in model space; same inputs as MorphableLayer.forward."""
        B = max(shape.shape[0], 1 if expr is None else expr.shape[0])
        off = shape @ self.shape_basis.T
        if expr is not None and self.n_expr > 0:
            off = off + expr @ self.expr_basis.T
        v = self.v_template[None] + off.expand(B, -1).reshape(B, -1, 3)
        if self.has_joints and joint_pose is not None:
            j_off = shape @ self.j_shape.T
            if expr is not None and self.n_expr > 0:
                j_off = j_off + expr @ self.j_expr.T
            joints = self.j_template[None] + j_off.expand(B, -1).reshape(B, -1, 3)
            v = MorphableLayer.skin_with_joints(self, v, joints, joint_pose)
        if self.points_are_vertices:
            return v
        tri = v[:, self.local_faces]                                          # (B, L, 3, 3)
        return (tri * self.lm_bary[None, :, :, None]).sum(2)
