"""Render posed heads with Blender itself (bpy, Workbench engine): ground-truth photos for benchmarks.

The point is independence: the likeness benchmark (benchmarks/bench_likeness.py) must not judge
FaceForge on images drawn by FaceForge's own rasteriser, whose conventions (projection, pixel
centres, shading) the fitter shares. Workbench is Blender's fast deterministic engine and runs
headless on a CPU-only machine (software OpenGL); EEVEE would need a GPU context.

Runs as its own process: bpy and torch in one interpreter hang at exit (ENVIRONMENT.md), and the
renders need nothing from torch.

    .venv/bin/python tools/blender_render_heads.py JOB.npz

JOB.npz (written by ``write_job`` below):
  faces    (F, 3) int   triangles shared by all heads
  vertices (S, V, 3)    one posed-in-model-space head per subject (identity + expression), metres
  colors   (S, V, 3)    per-vertex albedo in [0, 1], sRGB
  R, t     (N, 3, 3), (N, 3)  per render: model space -> Blender camera space (camera at the
                        origin looking down -Z, +Y up; so OpenCV pixels are u = W/2 + f X / -Z,
                        v = H/2 - f Y / -Z with f = lens_mm / 36 * W)
  meta     JSON: {"renders": [{"head", "lens_mm", "width", "height", "light", "light_rotation_deg",
                 "shadow", "bg_top", "bg_bottom", "path"}, ...]}
Each render is written as an RGB PNG: the head over a vertical gradient from bg_top to bg_bottom.
"""

import json
import os
import sys

import numpy as np

SENSOR_MM = 36.0          # full-frame width: lens_mm is then the 35 mm-equivalent focal length
# Blender's world is Z-up and its studio lights assume it: camera space (looking down -Z, +Y up)
# goes to a world where the camera looks along +Y with +Z up, so world-space lights sit where a
# studio would put them and their rotation turns them about the vertical
CAM_TO_WORLD = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])


def write_job(path, faces, vertices, colors, R, t, renders: list) -> None:
    np.savez(path, faces=np.asarray(faces, np.int32), vertices=np.asarray(vertices, np.float32),
             colors=np.asarray(colors, np.float32), R=np.asarray(R, np.float32), t=np.asarray(t, np.float32),
             meta=json.dumps({"renders": renders}))


def focal_px(lens_mm: float, width: int) -> float:
    return lens_mm / SENSOR_MM * width


def _setup_scene(bpy, Matrix):
    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    cam = bpy.data.cameras.new("cam")
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = SENSOR_MM
    cam.clip_start, cam.clip_end = 0.01, 100.0
    cam_obj = bpy.data.objects.new("cam", cam)
    scene.collection.objects.link(cam_obj)
    M = np.eye(4)
    M[:3, :3] = CAM_TO_WORLD
    cam_obj.matrix_world = Matrix(M.tolist())
    scene.camera = cam_obj
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True            # the gradient goes in afterwards, from the alpha
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.display.render_aa = "8"
    scene.view_settings.view_transform = "Standard"  # vertex colours come out as given, no filmic curve
    shading = scene.display.shading
    shading.color_type = "VERTEX"
    shading.light = "STUDIO"
    shading.use_world_space_lighting = True         # the light stays put while the head turns
    shading.show_specular_highlight = True
    return scene, cam


def _head_object(bpy, name, faces, vertices, colors):
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.reshape(-1))
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.reshape(-1))
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    mesh.update(calc_edges=True)
    mesh.validate()
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
    # BYTE_COLOR stores sRGB: Workbench shades in linear and the Standard view converts back
    attr = mesh.color_attributes.new("albedo", "BYTE_COLOR", "POINT")
    rgba = np.concatenate([np.clip(colors, 0, 1), np.ones((len(colors), 1))], 1).astype(np.float32)
    attr.data.foreach_set("color_srgb", rgba.reshape(-1))
    mesh.color_attributes.active_color = attr
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _composite(rgba_path, out_path, top, bottom):
    import cv2

    img = cv2.imread(rgba_path, cv2.IMREAD_UNCHANGED)          # BGRA, straight alpha
    H = img.shape[0]
    ramp = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None, None]
    bg = (1 - ramp) * np.float32(top)[::-1] + ramp * np.float32(bottom)[::-1]   # RGB -> BGR
    a = img[..., 3:4].astype(np.float32) / 255
    out = img[..., :3].astype(np.float32) * a + bg * 255 * (1 - a)
    cv2.imwrite(out_path, np.clip(out + 0.5, 0, 255).astype(np.uint8))
    os.remove(rgba_path)


def render_job(job_path) -> None:
    import bpy
    from mathutils import Matrix

    job = np.load(job_path)
    renders = json.loads(str(job["meta"]))["renders"]
    faces, verts, colors, R, t = job["faces"], job["vertices"], job["colors"], job["R"], job["t"]
    scene, cam = _setup_scene(bpy, Matrix)
    shading = scene.display.shading
    objects = {}
    for i, r in enumerate(renders):
        h = int(r["head"])
        if h not in objects:
            objects[h] = _head_object(bpy, f"head{h}", faces, verts[h], colors[h])
        for k, obj in objects.items():
            obj.hide_render = k != h
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = CAM_TO_WORLD @ R[i], CAM_TO_WORLD @ t[i]
        objects[h].matrix_world = Matrix(M.tolist())
        scene.render.resolution_x, scene.render.resolution_y = int(r["width"]), int(r["height"])
        cam.lens = float(r["lens_mm"])
        shading.studio_light = r["light"]
        shading.studiolight_rotate_z = np.radians(float(r["light_rotation_deg"]))
        shading.show_shadows = bool(r["shadow"])
        scene.display.shadow_shift = 0.1
        scene.display.shading.shadow_intensity = 0.35
        tmp = r["path"] + ".rgba.png"
        scene.render.filepath = tmp
        bpy.ops.render.render(write_still=True)
        _composite(tmp, r["path"], r["bg_top"], r["bg_bottom"])


if __name__ == "__main__":
    code = 0
    try:
        render_job(sys.argv[1])
    except Exception as exc:                # the caller reads the exit code and stderr
        import traceback

        traceback.print_exc()
        print(f"blender_render_heads: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)                          # bpy can hang in its destructors at interpreter exit
