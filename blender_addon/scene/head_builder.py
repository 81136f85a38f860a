"""Turn a core ``HeadRig`` (plain numpy arrays) into Blender data, in bulk and all-or-nothing.

Coordinate conversion lives in ONE place (``to_blender`` / ``MODEL_TO_BLENDER``): model space
is metres, y-up, +z out of the face; Blender's world is z-up with the face looking toward
-Y (the front view), so blender = (x, -z, y).
"""

from __future__ import annotations

import json
import os

import bpy
import numpy as np
from mathutils import Matrix, Quaternion

from .lookup import (CAMERA_HEAD_PROP, CAMERA_PROP, CAMERA_RESOLUTION_PROP, HEAD_PROP,  # noqa: F401
                     RIG_PROP, find_head, rig_of)  # (re-exported)
from .placement import (box_corners, camera_frustum_local, find_place, fit_clip_end, head_box, place_setup,
                        placement_head_points, scene_obstacles, transform_points)
from .rollback import SceneSnapshot

# model (x, y, z) -> Blender (x, -z, y); a proper rotation (det +1)
MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0],
                             [0.0, 0.0, -1.0],
                             [0.0, 1.0, 0.0]])


SENSOR_WIDTH_MM = 36.0


def to_blender(points: np.ndarray) -> np.ndarray:
    """(..., 3) model-space points/vectors -> Blender world axes."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def rotation_to_blender(rot: np.ndarray) -> np.ndarray:
    """A rotation expressed in model axes -> the same rotation in Blender axes."""
    return MODEL_TO_BLENDER @ np.asarray(rot, dtype=np.float64) @ MODEL_TO_BLENDER.T


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _errors():
    from ..engine import core
    return core.errors


def _core_module(name: str):
    import importlib

    from ..engine import core
    return importlib.import_module(f"{core.__name__}.{name}")


# ----------------------------------------------------------------------------- checks
def check_rig(rig) -> None:
    """Validate array shapes before anything is created; raise a FaceForge TopologyError."""
    err = _errors().TopologyError
    v = np.asarray(rig.vertices)
    f = np.asarray(rig.faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 3:
        raise err(f"Head '{rig.name}': vertices must be (V, 3), got {v.shape}.")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise err(f"Head '{rig.name}': faces must be (F, 3) triangles, got {f.shape}.")
    if f.min() < 0 or f.max() >= len(v):
        raise err(f"Head '{rig.name}': face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}].")
    if not np.isfinite(v).all():
        raise err(f"Head '{rig.name}': vertices contain NaN or infinite values.")
    K = len(rig.shape_key_names)
    d = np.asarray(rig.shape_key_deltas)
    if K and d.shape != (K, len(v), 3):
        raise err(f"Head '{rig.name}': {K} shape-key names but deltas of shape {d.shape} (want {(K, len(v), 3)}).")
    if len(np.asarray(rig.shape_key_values)) != K:
        raise err(f"Head '{rig.name}': {K} shape-key names but {len(rig.shape_key_values)} values.")
    if len(set(rig.shape_key_names)) != K or "Basis" in rig.shape_key_names:
        raise err(f"Head '{rig.name}': shape-key names must be unique and not 'Basis'.")
    if rig.vertex_colors is not None and np.asarray(rig.vertex_colors).shape != (len(v), 3):
        raise err(f"Head '{rig.name}': vertex colours must be (V, 3), got {np.asarray(rig.vertex_colors).shape}.")
    if rig.uv is not None and np.asarray(rig.uv).shape not in ((len(v), 2), (len(f), 3, 2)):
        raise err(f"Head '{rig.name}': UVs must be per vertex (V={len(v)}, 2) or per triangle corner "
                  f"(F={len(f)}, 3, 2), got {np.asarray(rig.uv).shape}.")
    tp = getattr(rig, "topology", None)
    if tp is not None:
        sizes, corners = np.asarray(tp.sizes), np.asarray(tp.vertices)
        if sizes.ndim != 1 or len(sizes) == 0 or sizes.min() < 3 or corners.shape != (int(sizes.sum()),):
            raise err(f"Head '{rig.name}': polygons need >= 3 corners each and one vertex per corner.")
        if corners.min() < 0 or corners.max() >= len(v):
            raise err(f"Head '{rig.name}': polygon corners must index the {len(v)} vertices.")
        if tp.uv is not None and np.asarray(tp.uv).shape != (len(corners), 2):
            raise err(f"Head '{rig.name}': polygon UVs must be ({len(corners)}, 2), got {np.shape(tp.uv)}.")
        mi = np.asarray(tp.material_index)
        if mi.shape != sizes.shape or mi.min() < 0 or mi.max() >= len(tp.material_names):
            raise err(f"Head '{rig.name}': every polygon needs a material slot among {len(tp.material_names)}.")
    b = rig.bones
    if b is not None:
        J = len(b.names)
        if J < 1 or np.asarray(b.parents).shape != (J,) or np.asarray(b.heads).shape != (J, 3):
            raise err(f"Head '{rig.name}': {J} bone names but parents {np.shape(b.parents)} / heads {np.shape(b.heads)}.")
        if any(not (0 <= int(b.parents[j]) < j) for j in range(1, J)) or int(b.parents[0]) != -1:
            raise err(f"Head '{rig.name}': bone 0 must be the root and every parent must come before its child.")
        if np.asarray(b.weights).shape != (len(v), J):
            raise err(f"Head '{rig.name}': skin weights must be (V={len(v)}, J={J}), got {np.shape(b.weights)}.")
        if b.pose is not None and np.asarray(b.pose).shape != (J - 1, 3):
            raise err(f"Head '{rig.name}': bone pose must be (J-1={J - 1}, 3), got {np.shape(b.pose)}.")
    a = rig.animation
    if a is not None:
        T = len(np.asarray(a.shape_key_values))
        checks = [("shape_key_values", a.shape_key_values, (T, K)), ("root_rotation", a.root_rotation, (T, 3, 3)),
                  ("root_translation", a.root_translation, (T, 3))]
        if a.joint_pose is not None and b is not None:
            checks.append(("joint_pose", a.joint_pose, (T, len(b.names) - 1, 3)))
        if T < 1:
            raise err(f"Head '{rig.name}': the animation has no frames.")
        if b is None:
            raise err(f"Head '{rig.name}': an animated head needs bones (the root bone carries the head motion).")
        for label, arr, want in checks:
            arr = np.asarray(arr)
            if arr.shape != want:
                raise err(f"Head '{rig.name}': animation {label} must be {want}, got {arr.shape}.")
            if not np.isfinite(arr).all():
                raise err(f"Head '{rig.name}': animation {label} contains NaN or infinite values.")


# ----------------------------------------------------------------------------- steps
def _make_mesh(rig, name: str):
    verts = np.ascontiguousarray(to_blender(rig.vertices), dtype=np.float32)
    tp = getattr(rig, "topology", None)
    if tp is not None:            # the model's own polygons (quads) with their corner UVs
        sizes = np.asarray(tp.sizes, dtype=np.int32)
        corners = np.ascontiguousarray(tp.vertices, dtype=np.int32)
        corner_uv = None if tp.uv is None else np.asarray(tp.uv, dtype=np.float32)
    else:                         # triangles; UVs per vertex (gathered through the faces) or per corner
        faces = np.ascontiguousarray(rig.faces, dtype=np.int32)
        sizes = np.full(len(faces), 3, dtype=np.int32)
        corners = faces.ravel()
        corner_uv = None
        if rig.uv is not None:
            uv = np.asarray(rig.uv, dtype=np.float32)
            corner_uv = uv.reshape(-1, 2) if uv.ndim == 3 else uv[corners]
    V, P = len(verts), len(sizes)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(V)
    mesh.vertices.foreach_set("co", verts.ravel())
    mesh.loops.add(len(corners))
    mesh.loops.foreach_set("vertex_index", corners)
    mesh.polygons.add(P)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    mesh.polygons.foreach_set("loop_start", starts)
    if not bpy.types.MeshPolygon.bl_rna.properties["loop_total"].is_readonly:  # Blender < 4.0
        mesh.polygons.foreach_set("loop_total", sizes)
    if tp is not None:
        mesh.polygons.foreach_set("material_index", np.asarray(tp.material_index, dtype=np.int32))
    mesh.update(calc_edges=True)
    if hasattr(mesh, "shade_smooth"):  # 4.1+
        mesh.shade_smooth()
    else:
        mesh.polygons.foreach_set("use_smooth", np.ones(P, dtype=bool))
    if corner_uv is not None:
        uv_layer = mesh.uv_layers.new(name="UVMap")
        uv_layer.data.foreach_set("uv", np.ascontiguousarray(corner_uv).ravel())
    if tp is not None and tp.uv_model is not None:     # the model's own layout, for its other assets
        model_layer = mesh.uv_layers.new(name="UVMap_model")
        model_layer.data.foreach_set("uv", np.ascontiguousarray(tp.uv_model, dtype=np.float32).ravel())
        mesh.uv_layers.active = mesh.uv_layers["UVMap"]
        if hasattr(mesh.uv_layers["UVMap"], "active_render"):
            mesh.uv_layers["UVMap"].active_render = True
    if rig.vertex_colors is not None:
        attr = mesh.color_attributes.new(name="albedo", type="FLOAT_COLOR", domain="POINT")
        rgba = np.ones((V, 4), dtype=np.float32)
        rgba[:, :3] = srgb_to_linear(rig.vertex_colors)  # FLOAT_COLOR stores scene-linear values
        if tp is not None:
            # glTF multiplies every primitive's colour by the mesh's vertex colours: keep them white
            # on parts whose material does not read them (textured skin, plain teeth, lashes...)
            reads = vertex_colour_slots(rig)
            slot_of_corner = np.repeat(np.asarray(tp.material_index), sizes)
            white = np.ones(V, dtype=bool)
            white[corners[np.isin(slot_of_corner, reads)]] = False
            rgba[white, :3] = 1.0
        attr.data.foreach_set("color", rgba.ravel())
        colors = mesh.color_attributes
        if hasattr(colors, "active_color_name"):
            colors.active_color_name = attr.name
        elif hasattr(colors, "active_color"):
            colors.active_color = attr
        if hasattr(colors, "render_color_index"):
            colors.render_color_index = list(colors).index(attr)
    mesh.validate(clean_customdata=False)
    return mesh


def _add_shape_keys(obj, rig) -> None:
    K = len(rig.shape_key_names)
    if K == 0:
        return
    basis = np.asarray(rig.vertices, dtype=np.float64)
    deltas = np.asarray(rig.shape_key_deltas, dtype=np.float64)
    values = np.asarray(rig.shape_key_values, dtype=np.float64)
    lo, hi = rig.slider_range()
    lo, hi = max(float(lo), -10.0), min(float(hi), 10.0)  # Blender's hard slider limits
    obj.shape_key_add(name="Basis", from_mix=False)
    for k, name in enumerate(rig.shape_key_names):
        key = obj.shape_key_add(name=str(name), from_mix=False)
        co = np.ascontiguousarray(to_blender(basis + deltas[k]), dtype=np.float32)
        key.data.foreach_set("co", co.ravel())
        key.slider_min = lo
        key.slider_max = hi
        key.value = float(np.clip(values[k], lo, hi))
    obj.data.shape_keys.use_relative = True
    obj.active_shape_key_index = 0


def _principled(nodes):
    for n in nodes:
        if n.type == "BSDF_PRINCIPLED":
            return n
    return nodes.new("ShaderNodeBsdfPrincipled")


# look of the parts that are not skin (material slot name -> sRGB colour, roughness, alpha); the eye
# occlusion film (a soft shadow in ICT's real-time shaders) needs a gradient texture to look right,
# so it starts invisible but stays in the mesh for artists who assign one
PART_LOOKS = {"mouth": ((0.45, 0.18, 0.18), 0.5, 1.0), "gums": ((0.62, 0.28, 0.30), 0.35, 1.0),
              "teeth": ((0.88, 0.86, 0.80), 0.3, 1.0), "eye": (None, 0.15, 1.0),
              "eye_wet": ((0.9, 0.9, 0.9), 0.05, 0.08), "eye_occlusion": ((0.8, 0.78, 0.76), 1.0, 0.0),
              "lashes": ((0.05, 0.04, 0.03), 0.8, 0.4)}     # ICT's lash strips: strands need a texture


def vertex_colour_slots(rig) -> list:
    """Material slots (indices into the rig's topology) whose shader reads the vertex colours: the
    eyes (sclera/iris colours), and the skin when it has no baked texture."""
    tp = rig.topology
    textured = bool(rig.texture_path and os.path.isfile(rig.texture_path))
    out = []
    for i, slot in enumerate(tp.material_names):
        if slot == "skin" and not textured:
            out.append(i)
        elif slot != "skin" and PART_LOOKS.get(slot, ((0.6, 0.6, 0.6), 0.5, 1.0))[0] is None:
            out.append(i)
    return out


def _new_material(name: str):
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # 5.0 creates the node tree itself; use_nodes is deprecated there
        mat.use_nodes = True
    return mat


def _set_alpha(mat, bsdf, alpha: float) -> None:
    """Alpha-blended surface (lashes, wet films) in every Blender version and in glTF exports."""
    if alpha >= 1.0:
        return
    if "Alpha" in bsdf.inputs:
        bsdf.inputs["Alpha"].default_value = alpha
    if hasattr(mat, "surface_render_method"):      # EEVEE Next (4.2+)
        mat.surface_render_method = "BLENDED"
    if hasattr(mat, "blend_method"):               # legacy EEVEE and the glTF exporter read this
        try:
            mat.blend_method = "BLEND"
        except TypeError:
            pass
    mat.diffuse_color = (*mat.diffuse_color[:3], alpha)


def _vertex_colour_node(mat, nodes, links, bsdf, colours) -> None:
    # solid-mode viewport colour: the mean colour (the nodes are for renders and exports)
    mean = srgb_to_linear(np.asarray(colours, dtype=np.float64).mean(0))
    mat.diffuse_color = (*mean.tolist(), 1.0)
    col = nodes.new("ShaderNodeVertexColor")  # "Color Attribute" node
    col.layer_name = "albedo"
    col.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(col.outputs["Color"], bsdf.inputs["Base Color"])


def _skin_material(rig, name: str, colours=None):
    mat = _new_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = _principled(nodes)
    if "Roughness" in bsdf.inputs:
        bsdf.inputs["Roughness"].default_value = 0.6
    has_uv = rig.uv is not None or getattr(rig, "topology", None) is not None
    texture = rig.texture_path if (rig.texture_path and has_uv and os.path.isfile(rig.texture_path)) else None
    if texture:
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = bpy.data.images.load(texture, check_existing=True)
        tex.location = (bsdf.location.x - 400, bsdf.location.y)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    elif colours is not None:
        _vertex_colour_node(mat, nodes, links, bsdf, colours)
    return mat


def _part_material(rig, slot: str, name: str):
    colour, roughness, alpha = PART_LOOKS.get(slot, ((0.6, 0.6, 0.6), 0.5, 1.0))
    mat = _new_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = _principled(nodes)
    if "Roughness" in bsdf.inputs:
        bsdf.inputs["Roughness"].default_value = roughness
    if colour is None and rig.vertex_colors is not None:      # eyes: sclera and iris from vertex colours
        _vertex_colour_node(mat, nodes, links, bsdf, rig.vertex_colors)
        mat.diffuse_color = (0.8, 0.78, 0.76, 1.0)            # solid viewport: the sclera's white
    else:
        rgb = srgb_to_linear(np.asarray(colour if colour is not None else (0.9, 0.9, 0.9)))
        bsdf.inputs["Base Color"].default_value = (*rgb.tolist(), 1.0)
        mat.diffuse_color = (*rgb.tolist(), 1.0)
    _set_alpha(mat, bsdf, alpha)
    return mat


def _add_material(obj, rig, name: str):
    """Material slots: one per part material of the model's topology (skin first), else one skin
    material. Returns the skin material."""
    tp = getattr(rig, "topology", None)
    if tp is None:
        mat = _skin_material(rig, name, rig.vertex_colors)
        obj.data.materials.append(mat)
        return mat
    skin = None
    base = name[:-5] if name.endswith("_skin") else name
    for slot in tp.material_names:
        if slot == "skin":
            mat = skin = _skin_material(rig, f"{base}_skin", rig.vertex_colors)
        else:
            mat = _part_material(rig, slot, f"{base}_{slot}")
        obj.data.materials.append(mat)
    return skin if skin is not None else obj.data.materials[0]


def _camera_pose(cam) -> tuple:
    """OpenCV extrinsics (model -> camera) -> Blender world (location, 3x3 rotation)."""
    R = np.asarray(cam.rotation, dtype=np.float64)
    t = np.asarray(cam.translation, dtype=np.float64).reshape(3)
    centre = -R.T @ t
    cam_to_model = R.T @ np.diag([1.0, -1.0, -1.0])  # Blender camera: x right, y up, looks down -z
    return MODEL_TO_BLENDER @ centre, MODEL_TO_BLENDER @ cam_to_model


def media_kind(path) -> str:
    """'image', 'movie' (a video file) or 'sequence' (a folder / glob of images) for a background; '' if none."""
    if not path:
        return ""
    p = str(path)
    if os.path.isdir(p) or any(ch in p for ch in "*?["):
        return "sequence"
    if not os.path.isfile(p):
        return ""
    if os.path.splitext(p)[1].lower() in _core_module("track.video").VIDEO_SUFFIXES:
        return "movie"
    return "image"


def _sequence_first_file(path: str) -> str:
    import glob
    suffixes = _core_module("detect.images").SUPPORTED_SUFFIXES
    pattern = os.path.join(path, "*") if os.path.isdir(path) else path
    files = sorted(f for f in glob.glob(pattern) if os.path.splitext(f)[1].lower() in suffixes)
    return files[0] if files else ""


def load_movie_clip(path: str):
    """A video file or an image sequence (folder / glob: its first image) as a MovieClip, or None.

    The clip keeps ``frame_start = 1``: clip frame c (0-based) shows at scene frame c + 1."""
    kind = media_kind(path)
    target = _sequence_first_file(path) if kind == "sequence" else path if kind == "movie" else ""
    if not target:
        return None
    try:
        clip = bpy.data.movieclips.load(target, check_existing=True)
    except RuntimeError:
        return None
    clip.frame_start = 1
    clip.frame_offset = 0
    return clip


def _add_background(cam_data, path) -> None:
    """Show a photo (image) or the clip (movie clip, follows the scene frame) behind the camera view."""
    kind = media_kind(path)
    if kind == "image":
        bg = cam_data.background_images.new()
        bg.source = "IMAGE"
        bg.image = bpy.data.images.load(path, check_existing=True)
    elif kind in ("movie", "sequence"):
        clip = load_movie_clip(path)
        if clip is None:
            return
        bg = cam_data.background_images.new()
        bg.source = "MOVIE_CLIP"
        bg.clip = clip
        bg.use_camera_clip = False
    else:
        return
    bg.alpha = 0.6
    cam_data.show_background_images = True


def _add_camera(context, spec, name: str, collection, head_obj=None, scene_camera: bool = True):
    """A camera that sees the head as ``spec`` (OpenCV pinhole) does, with its photo / video behind."""
    data = bpy.data.cameras.new(name)
    data.sensor_fit = "AUTO"
    data.sensor_width = SENSOR_WIDTH_MM
    size = float(max(spec.width, spec.height))
    data.lens = float(spec.focal_px) * SENSOR_WIDTH_MM / size
    if spec.cx is not None:
        data.shift_x = (spec.width / 2.0 - float(spec.cx)) / size
    if spec.cy is not None:
        data.shift_y = (float(spec.cy) - spec.height / 2.0) / size
    data.clip_start = 0.01
    data.clip_end = 100.0
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    loc, rot = _camera_pose(spec)
    m = Matrix(rot.tolist()).to_4x4()
    m.translation = loc.tolist()
    obj.matrix_world = m
    obj[CAMERA_PROP] = 1
    obj[CAMERA_RESOLUTION_PROP] = [int(spec.width), int(spec.height)]
    if head_obj is not None:
        obj[CAMERA_HEAD_PROP] = head_obj          # an ID reference: survives renames
    if spec.image_path:
        _add_background(data, spec.image_path)
    if scene_camera:
        obj["faceforge_primary"] = True
        scene = context.scene
        scene.render.resolution_x = int(spec.width)
        scene.render.resolution_y = int(spec.height)
        scene.camera = obj
    return obj


def _camera_name(spec, fallback: str) -> str:
    stem = os.path.splitext(os.path.basename(str(spec.image_path or "").rstrip("/\\")))[0]
    return f"{stem}_camera" if stem else fallback


def _bone_tails(heads: np.ndarray, parents: np.ndarray, length: float) -> np.ndarray:
    """Tail toward the only child if there is one, else a short offset along model +y (up)."""
    J = len(heads)
    tails = heads + np.array([0.0, length, 0.0])
    for j in range(J):
        children = [c for c in range(J) if parents[c] == j]
        if len(children) == 1:
            d = heads[children[0]] - heads[j]
            if np.linalg.norm(d) > 0.25 * length:
                tails[j] = heads[children[0]]
    return tails


def _edit_bones(context, arm_obj, fn) -> None:
    """Run ``fn(edit_bones)`` in edit mode on ``arm_obj`` and always return to object mode."""
    context.view_layer.objects.active = arm_obj
    with context.temp_override(active_object=arm_obj, object=arm_obj,
                               selected_objects=[arm_obj], selected_editable_objects=[arm_obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            fn(arm_obj.data.edit_bones)
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")


def _add_armature(context, mesh_obj, rig, name: str, collection):
    spec = rig.bones
    heads = np.asarray(spec.heads, dtype=np.float64)
    parents = np.asarray(spec.parents, dtype=np.int64)
    verts = np.asarray(rig.vertices, dtype=np.float64)
    extent = float(np.linalg.norm(verts.max(0) - verts.min(0)))
    length = max(0.01, 0.08 * extent)
    tails = _bone_tails(heads, parents, length)
    arm = bpy.data.armatures.new(name)
    arm_obj = bpy.data.objects.new(name, arm)
    collection.objects.link(arm_obj)
    arm_obj[RIG_PROP] = 1
    arm_obj.show_in_front = True
    if hasattr(arm, "display_type"):
        arm.display_type = "STICK"
    hb, tb = to_blender(heads), to_blender(tails)

    def build(edit_bones):
        made = []
        for j, bname in enumerate(spec.names):
            eb = edit_bones.new(str(bname))
            eb.head = hb[j].tolist()
            eb.tail = tb[j].tolist()
            eb.roll = 0.0
            if parents[j] >= 0:
                eb.parent = made[parents[j]]
                eb.use_connect = False
            made.append(eb)

    _edit_bones(context, arm_obj, build)

    # skin: vertex groups (one add() call per distinct weight value) + Armature modifier
    W = np.asarray(spec.weights, dtype=np.float32)
    for j, bname in enumerate(spec.names):
        vg = mesh_obj.vertex_groups.new(name=str(bname))
        idx = np.nonzero(W[:, j] > 1e-6)[0]
        if len(idx) == 0:
            continue
        vals, inv = np.unique(W[idx, j], return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.cumsum(np.bincount(inv, minlength=len(vals)))[:-1]
        for w, group in zip(vals, np.split(idx[order], bounds)):
            vg.add(group.tolist(), float(w), "REPLACE")
    mod = mesh_obj.modifiers.new(name="Armature", type="ARMATURE")
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mesh_obj.parent = arm_obj

    # pose: axis-angle in model axes, relative to the parent -> quaternion in each bone's rest frame
    if spec.pose is not None:
        pose = np.asarray(spec.pose, dtype=np.float64)
        for j in range(1, len(spec.names)):
            aa = pose[j - 1]
            theta = float(np.linalg.norm(aa))
            if theta < 1e-9:
                continue
            axis_world = MODEL_TO_BLENDER @ (aa / theta)
            pb = arm_obj.pose.bones[str(spec.names[j])]
            rest = np.array(pb.bone.matrix_local.to_3x3())
            axis_local = rest.T @ axis_world
            pb.rotation_mode = "QUATERNION"
            pb.rotation_quaternion = Quaternion(axis_local.tolist(), theta)
    return arm_obj


# ----------------------------------------------------------------------------- entry point
def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def _target_collection(context, name: str, head_name: str):
    """A new collection for this head (Blender numbers the name if it is taken) inside the shared
    ``name`` collection, so heads can be hidden one by one or all together."""
    parent = bpy.data.collections.get(name)
    if parent is None or parent.library is not None:
        parent = bpy.data.collections.new(name)
    scene_root = context.scene.collection
    if parent.name not in scene_root.children and not _nested_in(scene_root, parent):
        scene_root.children.link(parent)
    coll = bpy.data.collections.new(head_name)
    parent.children.link(coll)
    return coll


def _nested_in(parent, coll) -> bool:
    for child in parent.children:
        if child == coll or _nested_in(child, coll):
            return True
    return False


def build_head(context, rig, collection_name: str = "FaceForge") -> dict:
    """Create the head mesh (+ shape keys, material, camera, armature) from ``rig``.

    With ``rig.views`` (a multi-photo fit) every photo gets a camera named after it (``rig.camera``'s
    becomes the scene camera); with ``rig.animation`` (a tracked clip) the shape keys and bones are
    keyed per frame and the scene's fps and frame range follow the clip (see ``animation.py``).

    Each head gets its own collection inside ``collection_name`` and hangs, with its rig and
    cameras, from an empty at the 3D cursor, or at the nearest spot beside it where neither the
    head nor its cameras' views meet other objects (see ``placement.py``).

    Returns ``{"collection", "mesh", "material", "camera", "cameras", "armature", "actions", "origin",
    "location", "moved"}`` (camera/armature may be None; ``moved``: not at the cursor). On any
    exception everything created so far is removed and the scene settings (camera, resolution, fps,
    frame range, selection) are restored before the exception propagates.
    """
    check_rig(rig)
    if context.view_layer.objects.active is not None and context.view_layer.objects.active.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    snap = SceneSnapshot(context)
    try:
        obstacles = scene_obstacles(context)          # what is there before this head
        name = rig.name or "FaceForgeHead"
        coll = _target_collection(context, collection_name, name)
        mesh = _make_mesh(rig, name)
        obj = bpy.data.objects.new(name, mesh)
        coll.objects.link(obj)
        obj[HEAD_PROP] = 1
        obj["faceforge_model"] = str(rig.metadata.get("model", rig.name))
        obj["faceforge_params"] = json.dumps(rig.metadata, default=_json_default)
        _add_shape_keys(obj, rig)
        mat = _add_material(obj, rig, f"{name}_skin")
        cameras = []
        if rig.camera is not None:
            primary_name = _camera_name(rig.camera, f"{name}_camera") if rig.views else f"{name}_camera"
            cameras.append(_add_camera(context, rig.camera, primary_name, coll, obj))
            for spec in rig.views:
                cameras.append(_add_camera(context, spec, _camera_name(spec, f"{name}_camera"), coll, obj,
                                           scene_camera=False))
        cam = cameras[0] if cameras else None
        arm = _add_armature(context, obj, rig, f"{name}_rig", coll) if rig.bones is not None else None
        actions = {}
        if rig.animation is not None:
            from .animation import animate_head
            actions = animate_head(context, rig, obj, arm, MODEL_TO_BLENDER)   # keyed at the origin, then moved
        origin, location, moved = _place(context, rig, coll, name, [obj, arm] + cameras, cameras, obstacles)
        # finally: the new head is the (only) selection and the active object
        view_layer = context.view_layer
        for o in view_layer.objects:
            if o.select_get():
                o.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
    except BaseException:
        snap.rollback()
        raise
    return {"collection": coll, "mesh": obj, "material": mat, "camera": cam, "cameras": cameras,
            "armature": arm, "actions": actions, "origin": origin, "location": location, "moved": moved}


def _place(context, rig, coll, name, objects, cameras, obstacles) -> tuple:
    """Clip each camera just behind the head, find a free spot, hang everything from an empty there."""
    points = placement_head_points(rig, to_blender, MODEL_TO_BLENDER)     # every frame's box, Blender axes
    lo, hi = head_box(points)
    corners = box_corners(lo, hi)
    # the space behind the head a camera still shows: room for hair, a body, a backdrop built around it
    margin = max(0.3, float(np.linalg.norm(hi - lo)))
    frusta = []
    for cam in cameras:
        fit_clip_end(cam, corners, margin)
        frusta.append(transform_points(cam.matrix_world, camera_frustum_local(cam)))
    location, moved = find_place(context.scene.cursor.location, lo, hi, frusta, obstacles)
    origin = place_setup(context, coll, name, [o for o in objects if o is not None], lo, hi, location)
    context.view_layer.update()           # world matrices of the moved objects, for the caller
    return origin, tuple(float(x) for x in location), bool(moved)
