"""Headless FaceForge: photo -> rigged head files, driving the add-on's own operators.

Inside Blender (arguments after ``--``)::

    blender -b --factory-startup --python blender_addon/cli.py -- reconstruct photo.jpg --out head.fbx

With Blender as a Python module (``pip install bpy``), as the ``faceforge`` console command
(``pip install -e .`` maps this file to ``faceforge.cli``) or by path::

    faceforge reconstruct photo.jpg --out head.fbx --glb head.glb --blend head.blend
    faceforge reconstruct-photos front.jpg left.jpg right.jpg --out head.fbx --texture-size 2048
    faceforge track clip.mp4 --out head.fbx --glb head.glb --start 0 --end 240 --track-file clip.fftrack.npz
    faceforge import-track clip.fftrack.npz --out head.fbx
    faceforge import-arkit head.blend take.csv --out head.fbx      (or a photo instead of head.blend)
    faceforge implicit clip.mp4 --track-file clip.fftrack.npz --steps 3000 --out head.fbx --glb head.glb
    faceforge preview-implicit head.ffimplicit.pt --frame 40 --out frame40.png
    python blender_addon/cli.py reconstruct photo.jpg --out head.fbx
    faceforge model-info generic_model.pkl
    faceforge batch clips/ --out results/          (or a .toml/.csv manifest; --address auto for a Ray cluster)

Progress lines go to stdout, errors to stderr. Exit codes: 0 success, 1 FaceForge error,
2 usage error. The process ends with ``os._exit`` because bpy + torch (+ the glTF exporter)
can hang at interpreter exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import threading
import traceback
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_HERE = Path(__file__).resolve().parent
PROG = "faceforge"


class UsageError(Exception):
    pass


# the native libraries' log lines (mediapipe's TF-Lite delegate, absl/glog warnings) that say nothing a
# user can act on; --verbose keeps them
NATIVE_NOISE = re.compile(r"^(INFO: Created TensorFlow Lite|WARNING: All log messages before absl::InitializeLog"
                          r"|[IWE]\d{4} [\d:.]+ +\d+ [\w./-]+\.(cc|h):\d+\])")


# Blender echoes every operator report on stdout ("Info: ...", "Warning: ...", "Error: ...") and its FBX
# and glTF exporters announce themselves (blank lines included): the command says each result,
# warning and error once, in its own words
BLENDER_ECHO = re.compile(r"^(Info|Warning|Error): |^FBX export starting|^export finished in [\d.]+ sec"
                          r"|^INFO Draco mesh compression|^\d\d:\d\d:\d\d \| (INFO|WARNING): |^\s*$")


class FilteredFd:
    """Filter lines matching ``pattern`` out of a file descriptor (1 or 2, where C and C++ libraries
    write too): the descriptor becomes a pipe whose lines a thread copies to the real one unless they
    match. Python's own prints go through it as well, so messages keep their order."""

    def __init__(self, fd: int, pattern: "re.Pattern"):
        self.fd, self.pattern = fd, pattern
        self.stream = sys.stdout if fd == 1 else sys.stderr

    def __enter__(self):
        self.stream.flush()
        self.real = os.dup(self.fd)
        read, write = os.pipe()
        os.dup2(write, self.fd)
        os.close(write)
        self.thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self.thread.start()
        return self

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not self.pattern.search(line.decode("utf-8", "replace")):
                    os.write(self.real, line)

    def __exit__(self, *exc):
        self.stream.flush()
        os.dup2(self.real, self.fd)                            # closes the pipe's last writer: the pump ends
        self.thread.join(timeout=5)
        os.close(self.real)
        return False


class QuietNativeLogs(FilteredFd):
    """stderr without NATIVE_NOISE (the native libraries' own log level is lowered too)."""

    def __init__(self):
        super().__init__(2, NATIVE_NOISE)

    def __enter__(self):
        os.environ.setdefault("GLOG_minloglevel", "2")        # what glog itself lets us silence
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return super().__enter__()


def remove_blender_session_dir() -> None:
    """Blender deletes its session temp folder (``bpy.app.tempdir``, /tmp/blender_XXXX) at exit, but the
    command ends with ``os._exit`` (see the module docstring), which skips that: remove it here."""
    bpy = sys.modules.get("bpy")
    path = getattr(getattr(bpy, "app", None), "tempdir", "") if bpy is not None else ""
    if path and os.path.basename(os.path.normpath(path)).startswith("blender_") and os.path.isdir(path):
        import shutil
        shutil.rmtree(path, ignore_errors=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 without raising SystemExit through Blender
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="FaceForge without the Blender UI: photos and videos become rigged "
                                            "(animated) heads.",
                     epilog="Inside Blender: blender -b --python cli.py -- reconstruct photo.jpg --out head.fbx")
    parser.add_argument("--verbose", action="store_true",
                        help="keep the native libraries' log lines (TF-Lite, absl) on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    r = sub.add_parser("reconstruct", help="fit the head model to one photo and export the rigged head",
                       description="Fit the head model to one photo and export the rigged head.")
    r.add_argument("photo", help="photo of one face (jpg, png, ...)")
    r.add_argument("--out", metavar="HEAD.fbx", help="write an FBX rig (mesh, shape keys, armature)")
    r.add_argument("--glb", metavar="HEAD.glb", help="write a binary glTF (morph targets, skin)")
    r.add_argument("--blend", metavar="HEAD.blend", help="save the scene as a .blend file")
    r.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    r.add_argument("--model", default="ict",
                   help="'ict' (default: the full head), 'facemask' (light face mask) or a FLAME .pkl / "
                        "FaceForge .npz model file")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)")
    r.add_argument("--report-dir", metavar="DIR", help="also write params.json and overlay.png here")
    r.add_argument("--face", type=int, default=None, metavar="N",
                   help="which face of a photo with several: 0-based, counted from the left (default: the most "
                        "confident)")
    p = sub.add_parser("reconstruct-photos", help="fit one textured head to several photos of one person",
                       description="Fit one head to several photos of the same person (files or a folder): shared "
                                   "identity, a skin texture baked from all photos, a camera per photo.")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos of one person, or one folder of photos")
    _add_outputs(p, "the textured rig (mesh, UVs + texture, shape keys, armature)")
    p.add_argument("--texture-size", type=int, default=1024, choices=(256, 512, 1024, 2048, 4096),
                   help="skin texture size in pixels (default 1024)")
    _add_engine_args(p)
    t = sub.add_parser("track", help="track a video and export the animated head",
                       description="Track the face through a video (or a folder of frames): one identity, "
                                   "expressions and head motion on every frame; export the animated rig.")
    t.add_argument("video", help="video file (mp4, mov, avi, mkv, ...) or a folder of frames")
    _add_outputs(t, "the animated rig (mesh, shape keys + their animation, armature + its motion)")
    t.add_argument("--start", type=int, default=0, metavar="N", help="first clip frame to track (from 0; default 0)")
    t.add_argument("--end", type=int, default=0, metavar="M",
                   help="clip frame to stop before (exclusive); 0 = to the end of the clip (default)")
    t.add_argument("--refine", action="store_true", help="photometric refinement on every frame (slower)")
    t.add_argument("--track-file", metavar="CLIP.fftrack.npz",
                   help="save the track here (re-import with import-track); a number is added if it exists")
    _add_engine_args(t)
    i = sub.add_parser("import-track", help="build the animated head from a saved track (no re-tracking)",
                       description="Build the animated head from a .fftrack.npz written by 'track' or the add-on, "
                                   "and export it.")
    i.add_argument("track", help="a .fftrack.npz track file")
    _add_outputs(i, "the animated rig")
    i.add_argument("--model", default="", help="the track's own model by default; else 'builtin' or a model file")
    a = sub.add_parser("import-arkit", help="animate a head with an ARKit recording (Live Link Face CSV)",
                       description="Key an ARKit blendshape recording (the CSV Live Link Face writes) on a FaceForge "
                                   "head: a .blend file holding one (its active or first head), or a photo to "
                                   "reconstruct first. Export the animated rig.")
    a.add_argument("head", metavar="HEAD", help="a .blend file with a FaceForge head, or a photo of a face")
    a.add_argument("recording", metavar="RECORDING.csv", help="the take's .csv from Live Link Face")
    _add_outputs(a, "the animated rig")
    a.add_argument("--start", type=int, default=None, metavar="N",
                   help="scene frame of the recording's first frame (default: the scene's current frame)")
    a.add_argument("--fps", type=float, default=0.0, help="the recording's frame rate (default: from its timecodes)")
    a.add_argument("--no-head-rotation", action="store_true", help="key the shape keys only")
    _add_engine_args(a)
    im = sub.add_parser("implicit", help="learn the whole head (hair included) from a video as a neural surface",
                        description="Implicit Head from Video: track the clip (or read --track-file), learn the "
                                    "person's head as a neural SDF, extract it once and move it into every frame; "
                                    "export one animated mesh of a single topology. Training is saved to "
                                    "--checkpoint and resumes from it (after a crash or Ctrl+C, run again).")
    im.add_argument("video", help="video file or a folder of frames")
    _add_outputs(im, "one mesh, its per-frame shapes as keyed blendshapes, the head motion on a root bone")
    im.add_argument("--track-file", metavar="CLIP.fftrack.npz", default="",
                    help="a saved track of this video (default: track it first)")
    im.add_argument("--checkpoint", metavar="HEAD.ffimplicit.pt", default="",
                    help="training checkpoint to write / resume (default: beside the first output)")
    im.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    im.add_argument("--size", type=int, default=96, help="training crop size in pixels (default 96)")
    im.add_argument("--frames", type=int, default=40, help="training frames spread over the clip (default 40)")
    im.add_argument("--resolution", type=int, default=128, help="surface extraction cells per axis (default 128)")
    _add_engine_args(im)
    pv = sub.add_parser("preview-implicit", help="render a learned implicit head at one frame (PNG)",
                        description="Render the head in an implicit-head checkpoint at one clip frame from the "
                                    "tracked camera, over the video frame when it can be read.")
    pv.add_argument("checkpoint", metavar="HEAD.ffimplicit.pt")
    pv.add_argument("--frame", type=int, default=0, help="clip frame, counted from the track's first (default 0)")
    pv.add_argument("--width", type=int, default=320, help="image width in pixels (default 320)")
    pv.add_argument("--out", metavar="FRAME.png", required=True, help="the PNG to write")
    pv.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pv.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)")
    st = sub.add_parser("apply-style", help="put a learned style (.ffstyle.pt) on a FaceForge head and export it",
                        description="Open a .blend holding a FaceForge head (its active or first head), add the "
                                    "stylized copy (stylized shape keys, same rig and animation) and export it.")
    st.add_argument("head", metavar="HEAD.blend", help="a .blend file with a FaceForge head")
    st.add_argument("style", metavar="STYLE.ffstyle.pt", help="a style from Learn Style")
    _add_outputs(st, "the stylized rig")
    st.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)")
    d = sub.add_parser("train-deformer", help="train the surface deformer a model needs for styles (once per model)",
                       description="Pretrain the surface deformation network DS for a model (the default model's "
                                   "ships with FaceForge) and cache it where Learn Style finds it.")
    d.add_argument("--model", required=True, help="'facemask' or a FLAME .pkl / FaceForge .npz model file")
    d.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    d.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)")
    d.add_argument("--out", metavar="FILE.pt", help="also write the network here (default: only the cache)")
    m = sub.add_parser("model-info", help="load a model file and print its size (what the Validate button does)",
                       description="Load a FLAME .pkl or FaceForge .npz model (finding its landmarks) and print "
                                   "its vertices, identity / expression sizes and joints.")
    m.add_argument("model", help="'builtin' or a model file")
    _add_batch_parser(sub)
    return parser


def _add_outputs(p, what: str) -> None:
    p.add_argument("--out", metavar="HEAD.fbx", help=f"write an FBX: {what}")
    p.add_argument("--glb", metavar="HEAD.glb", help="write a binary glTF (morph targets, skin, animation if any)")
    p.add_argument("--blend", metavar="HEAD.blend", help="save the scene as a .blend file")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")


def _add_engine_args(p) -> None:
    p.add_argument("--model", default="ict",
                   help="'ict' (default: the full head), 'facemask' (light face mask) or a FLAME .pkl / "
                        "FaceForge .npz model file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)")


def script_argv(argv=None) -> list:
    """The script's own arguments from a full ``sys.argv``: after '--' inside Blender, else after argv[0]
    (the script path or the ``faceforge`` command)."""
    argv = list(sys.argv if argv is None else argv)
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    if not argv or Path(argv[0]).name.lower().startswith("blender"):
        return []   # Blender's own command line, no '--': nothing for us
    return argv[1:]


def addon_package():
    """The add-on package this file belongs to, imported (``faceforge`` or, run by path, ``blender_addon``)."""
    if __package__:
        return importlib.import_module(__package__)
    # run as a script: import our folder as a package from its parent directory
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]  # no top-level 'engine', 'ui'...
    sys.path.insert(0, str(_HERE.parent))
    return importlib.import_module(_HERE.name)


def register_addon():
    """Register the add-on (unless Blender already has it enabled)."""
    import bpy
    if hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo"):
        return None
    pkg = addon_package()
    pkg.register()
    return pkg


def _check_ext(parser, value, ext, flag):
    if value is not None and not value.lower().endswith(ext):
        parser.error(f"{flag} must name a {ext} file, got '{value}'")


def _size(path: str) -> str:
    n = os.path.getsize(path)
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _clear_startup_scene(bpy) -> None:
    """Start from an empty scene (the startup file's cube, light and camera are not wanted)."""
    ids = list(bpy.data.objects) + list(bpy.data.meshes) + list(bpy.data.cameras) + list(bpy.data.lights) \
        + list(bpy.data.materials)
    if ids:
        bpy.data.batch_remove(ids)


def _check_outputs(parser, args, extra=()) -> None:
    if not [p for p in (args.out, args.glb, args.blend, *extra) if p]:
        parser.error("nothing to write: give " + ("--out, --glb, --blend and/or --report-dir" if extra
                                                  else "--out, --glb and/or --blend"))
    _check_ext(parser, args.out, ".fbx", "--out")
    _check_ext(parser, args.glb, ".glb", "--glb")
    _check_ext(parser, args.blend, ".blend", "--blend")
    if not getattr(args, "overwrite", False):
        existing = [p for p in (args.out, args.glb, args.blend) if p and os.path.exists(p)]
        if existing:
            parser.error(f"{existing[0]} already exists: pass --overwrite to replace it (nothing was written)")


def _embedded(model: str) -> bool:
    """An embedded model's name ('ict', the default full head; 'facemask'/'builtin'), not a file."""
    properties = importlib.import_module(addon_package().__name__ + ".properties")
    return model.strip().lower() in properties.EMBEDDED_MODEL_NAMES


def _model_arg(model: str) -> str:
    return model if _embedded(model) else os.path.abspath(model)


def _run_operator(bpy, call) -> bool:
    """Run a FaceForge operator (EXEC: inline, progress lines); False after printing its error."""
    try:
        call()
    except RuntimeError as e:
        print(f"{PROG}: error: {_op_error(e)}", file=sys.stderr)
        return False
    job = bpy.context.window_manager.faceforge_job
    print(f"FaceForge: {job.last_message}", flush=True)
    for warning in job.last_warnings.split("\n") if job.last_warnings else ():
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    return True


def _atomic(path: str, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``: a failed or
    killed export never leaves a half-written file where the user's was."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(os.path.dirname(path), f".{stem}.{os.getpid()}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_outputs(bpy, args, extra_files=()) -> int:
    written = []
    try:
        if args.out:
            path = os.path.abspath(args.out)
            _atomic(path, lambda tmp: bpy.ops.faceforge.export_fbx(filepath=tmp))
            written.append(path)
        if args.glb:
            path = os.path.abspath(args.glb)
            _atomic(path, lambda tmp: bpy.ops.faceforge.export_gltf(filepath=tmp))
            written.append(path)
        if args.blend:
            path = os.path.abspath(args.blend)
            # copy=True: the session never takes the temporary name as its own file path
            _atomic(path, lambda tmp: bpy.ops.wm.save_as_mainfile(filepath=tmp, copy=True))
            written.append(path)
    except RuntimeError as e:
        print(f"{PROG}: error: {_op_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    written += [p for p in extra_files if p and os.path.isfile(p)]
    for path in written:
        print(f"FaceForge: wrote {path} ({_size(path)})", flush=True)
    return EXIT_OK


def reconstruct(args, parser) -> int:
    import bpy
    photo = os.path.abspath(args.photo)
    _check_outputs(parser, args, extra=(args.report_dir,))
    if args.face is not None and args.face < 0:
        parser.error(f"--face counts faces from 0 (the leftmost), got {args.face}")
    register_addon()
    _clear_startup_scene(bpy)
    print(f"FaceForge: reconstructing {photo} (model {args.model}, device {args.device})", flush=True)
    report_dir = os.path.abspath(args.report_dir) if args.report_dir else ""
    # EXEC: the job runs inline (synchronously) and prints progress lines
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.reconstruct_photo(
            filepath=photo, model=_model_arg(args.model), device=args.device.upper(), output_dir=report_dir,
            face_index=-1 if args.face is None else args.face)):
        return EXIT_ERROR
    extra = [os.path.join(report_dir, n) for n in ("params.json", "overlay.png", "faces.png")] if report_dir else []
    return _write_outputs(bpy, args, extra)


def reconstruct_photos(args, parser) -> int:
    import bpy
    _check_outputs(parser, args)
    photos = [os.path.abspath(p) for p in args.photos]
    if len(photos) == 1 and os.path.isdir(photos[0]):
        kwargs = dict(directory=photos[0])
    else:
        folder = os.path.dirname(photos[0])
        kwargs = dict(directory=folder, files=[{"name": p if os.path.dirname(p) != folder else os.path.basename(p)}
                                               for p in photos])
    register_addon()
    _clear_startup_scene(bpy)
    print(f"FaceForge: reconstructing from {len(photos)} input(s) (model {args.model}, device {args.device}, "
          f"texture {args.texture_size} px)", flush=True)
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.reconstruct_photos(
            model=_model_arg(args.model), device=args.device.upper(), texture_size=args.texture_size, **kwargs)):
        return EXIT_ERROR
    return _write_outputs(bpy, args)


def track(args, parser) -> int:
    import bpy
    _check_outputs(parser, args)
    if args.start < 0 or args.end < 0:
        parser.error("--start and --end must be 0 or more")
    if args.end and args.end < args.start + 2:
        parser.error("--end must be at least --start + 2 (end is exclusive; 0 = to the end of the clip)")
    if args.track_file and not args.track_file.lower().endswith(".fftrack.npz"):
        parser.error(f"--track-file must name a .fftrack.npz file, got '{args.track_file}'")
    video = os.path.abspath(args.video)
    register_addon()
    _clear_startup_scene(bpy)
    print(f"FaceForge: tracking {video} (frames {args.start}-{args.end or 'end'}, model {args.model}, "
          f"device {args.device}{', refined' if args.refine else ''})", flush=True)
    track_file = os.path.abspath(args.track_file) if args.track_file else ""
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.track_video(
            filepath=video, model=_model_arg(args.model), device=args.device.upper(), frame_start=args.start,
            frame_end=args.end, refine=args.refine, save_track=bool(track_file), track_file=track_file)):
        return EXIT_ERROR
    saved = bpy.context.scene.faceforge.track_path if track_file else ""
    return _write_outputs(bpy, args, [saved])


def implicit(args, parser) -> int:
    import bpy
    _check_outputs(parser, args)
    if min(args.steps, args.size, args.frames, args.resolution) < 2:
        parser.error("--steps, --size, --frames and --resolution must be at least 2")
    if args.track_file and not os.path.isfile(args.track_file):
        parser.error(f"--track-file {args.track_file} does not exist")
    video = os.path.abspath(args.video)
    first = next(p for p in (args.out, args.glb, args.blend) if p)
    checkpoint = os.path.abspath(args.checkpoint or os.path.splitext(first)[0] + ".ffimplicit.pt")
    register_addon()
    _clear_startup_scene(bpy)
    print(f"FaceForge: implicit head from {video} ({args.steps} steps, {args.frames} frames at {args.size} px, "
          f"checkpoint {checkpoint})", flush=True)
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.implicit_head_from_video(
            filepath=video, track_file=os.path.abspath(args.track_file) if args.track_file else "",
            model=_model_arg(args.model), device=args.device.upper(), steps=args.steps, size=args.size,
            max_frames=args.frames, resolution=args.resolution, checkpoint=checkpoint)):
        return EXIT_ERROR
    return _write_outputs(bpy, args, [checkpoint])


def preview_implicit(args, parser) -> int:
    import cv2
    import numpy as np
    _check_ext(parser, args.out, ".png", "--out")
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"{args.out} already exists: pass --overwrite to replace it (nothing was written)")
    if args.width < 16:
        parser.error("--width must be at least 16")
    engine = importlib.import_module(f"{addon_package().__name__}.engine")
    core = engine.core
    implicit_mod = importlib.import_module(f"{core.__name__}.pipeline.implicit")
    try:
        p = implicit_mod.preview_frame(os.path.abspath(args.checkpoint), args.frame, width=args.width,
                                       device=args.device)
    except core.errors.FaceForgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    out = os.path.abspath(args.out)
    img = (np.clip(p.composite, 0, 1) * 255).round().astype(np.uint8)[..., ::-1]

    def write_png(tmp):
        if not cv2.imwrite(tmp, img):
            raise OSError(f"could not write {out}")
    _atomic(out, write_png)
    print(f"FaceForge: frame {p.frame} rendered in {p.seconds:.2f} s -> {out}"
          + (f" ({p.note})" if p.note else ""), flush=True)
    return EXIT_OK


def import_track(args, parser) -> int:
    import bpy
    _check_outputs(parser, args)
    path = os.path.abspath(args.track)
    register_addon()
    _clear_startup_scene(bpy)
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.import_track(filepath=path,
                                                                      model=_model_arg(args.model))):
        return EXIT_ERROR
    return _write_outputs(bpy, args)


def import_arkit(args, parser) -> int:
    import bpy
    _check_outputs(parser, args)
    if args.fps < 0:
        parser.error("--fps must be positive (0 = from the recording's timecodes)")
    head, recording = os.path.abspath(args.head), os.path.abspath(args.recording)
    if head.lower().endswith(".blend"):
        if not _open_blend(bpy, head):
            return EXIT_ERROR
    else:   # a photo: reconstruct the head first
        register_addon()
        _clear_startup_scene(bpy)
        print(f"FaceForge: reconstructing {head} (model {args.model}, device {args.device})", flush=True)
        if not _run_operator(bpy, lambda: bpy.ops.faceforge.reconstruct_photo(
                filepath=head, model=_model_arg(args.model), device=args.device.upper())):
            return EXIT_ERROR
    start = dict(use_current_frame=True) if args.start is None else dict(use_current_frame=False,
                                                                           frame_start=args.start)
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.import_arkit_recording(
            filepath=recording, fps=args.fps, head_rotation=not args.no_head_rotation, **start)):
        return EXIT_ERROR
    return _write_outputs(bpy, args)


def apply_style(args, parser) -> int:
    import bpy
    _check_outputs(parser, args)
    head, style = os.path.abspath(args.head), os.path.abspath(args.style)
    if not head.lower().endswith(".blend"):
        print(f"{PROG}: error: '{head}' is not a .blend file.", file=sys.stderr)
        return EXIT_ERROR
    if not _open_blend(bpy, head):
        return EXIT_ERROR
    prefs = importlib.import_module(addon_package().__name__ + ".preferences").get_prefs()
    if prefs is not None:
        prefs.device = args.device.upper()
    if not _run_operator(bpy, lambda: bpy.ops.faceforge.apply_style(filepath=style)):
        return EXIT_ERROR
    return _write_outputs(bpy, args)


def train_deformer(args) -> int:
    import json
    engine = importlib.import_module(f"{addon_package().__name__}.engine")
    engine.block_triton()
    core = engine.core
    models = importlib.import_module(f"{core.__name__}.models")
    deformer = importlib.import_module(f"{core.__name__}.stylize.deformer")
    jobs = importlib.import_module(f"{core.__name__}.jobs")
    device = importlib.import_module(f"{core.__name__}.device").resolve_device(args.device)
    spec = args.model if _embedded(args.model) else os.path.abspath(args.model)
    try:
        model = models.load_model(spec)
        progress = jobs.Progress(lambda stage, f: print(f"\r{stage}   ", end="", flush=True))
        net, info = deformer.train_surface_deformer(model, steps=args.steps, device=device, progress=progress)
        print()
        paths = [deformer.save_deformer(net, deformer.cached_deformer_path(model), model, info)]
        if args.out:
            paths.append(deformer.save_deformer(net, os.path.abspath(args.out), model, info))
    except core.errors.FaceForgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps({"model": model.name, "steps": info.steps, "device": info.device,
                      "seconds": round(info.seconds, 1), "held_out_rms_mm": round(info.rms_mm, 3),
                      "held_out_max_mm": round(info.max_mm, 3), "written": [str(p) for p in paths]}, indent=1))
    return EXIT_OK


def _open_blend(bpy, path: str) -> bool:
    """Open a .blend holding a FaceForge head and register the add-on; False after printing why not."""
    if not os.path.isfile(path):
        print(f"{PROG}: error: the .blend file '{path}' does not exist.", file=sys.stderr)
        return False
    try:
        bpy.ops.wm.open_mainfile(filepath=path)
    except RuntimeError as e:
        print(f"{PROG}: error: cannot open '{path}': {_op_error(e)}", file=sys.stderr)
        return False
    register_addon()
    return True


def _op_error(e: RuntimeError) -> str:
    """bpy.ops errors read 'Error: <report>' (or 'Operator ... poll() <why>'): keep the message."""
    return str(e).strip().removeprefix("Error: ").strip()


def model_info(args) -> int:
    import json
    engine = importlib.import_module(f"{addon_package().__name__}.engine")
    engine.block_triton()
    core = engine.core
    models = importlib.import_module(f"{core.__name__}.models")
    spec = args.model if _embedded(args.model) else os.path.abspath(args.model)
    try:
        summary = models.load_model(spec).summary()
    except core.errors.FaceForgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def _add_batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="run many jobs (clips, photos, photo sets) on Ray, resumable",
                       description="Run a folder of clips / photos / photo folders, or a manifest (.toml / .csv: one "
                                   "job a row), through FaceForge on Ray: a local instance by default, an existing "
                                   "cluster with --address. Each job writes its own folder in --out at once; the "
                                   "ledger (batch.sqlite there) makes a re-run skip finished work. Ctrl+C stops "
                                   "cleanly; run the same command again to continue.")
    b.add_argument("source", metavar="FOLDER_OR_MANIFEST",
                   help="a folder (videos -> track, photos -> photo, subfolders of photos -> photos) or a manifest")
    b.add_argument("--out", metavar="DIR", required=True, help="output folder (one subfolder per job, the ledger, "
                                                              "report.md / report.html)")
    b.add_argument("--address", default=None, help="Ray cluster: 'auto' or 'ray://host:port' (default: start a "
                                                   "local Ray instance on this machine)")
    b.add_argument("--cpus-per-job", type=float, default=1.0, help="CPUs each job asks Ray for (default 1)")
    b.add_argument("--gpus-per-job", type=float, default=0.0,
                   help="GPUs each job asks Ray for (default 0; a job with a GPU share runs on cuda)")
    b.add_argument("--max-retries", type=int, default=2,
                   help="retries of a job whose worker died or whose command crashed (default 2)")
    b.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="stop a job after this many seconds and report it (default 0: no limit)")
    b.add_argument("--num-cpus", type=int, default=None,
                   help="cores the local Ray instance may use (default: all; ignored with --address)")
    b.add_argument("--model", default=None, help="model for jobs that name none (default 'ict')")
    b.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="device for jobs that name none (default auto: cuda when the job has a GPU share)")
    b.add_argument("--outputs", default=None, metavar="fbx,glb,blend",
                   help="which rig files each job writes (default all three)")
    b.add_argument("--retry-failed", action="store_true",
                   help="also re-run jobs that failed before on unchanged inputs")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished job)")


def _batch_job_command(engine) -> tuple:
    """How a Ray worker runs one job (the same command a single run is), and the paths its Python needs.
    Inside Blender's own executable each job is a background Blender; with the bpy module, this script."""
    cli = str(Path(__file__).resolve())
    if "bpy" in sys.modules and engine.in_blender_binary():
        import bpy
        deps = importlib.import_module(addon_package().__name__ + ".dependencies")
        deps.add_deps_to_path()
        return [bpy.app.binary_path, "-b", "--factory-startup", "--python", cli, "--"], [str(deps.deps_dir())]
    return ["@PYTHON@", cli], []


def batch(args, parser) -> int:
    engine = importlib.import_module(f"{addon_package().__name__}.engine")
    core = engine.core
    batch_mod = importlib.import_module(f"{core.__name__}.batch")
    if args.cpus_per_job <= 0 and args.gpus_per_job <= 0:
        parser.error("--cpus-per-job and --gpus-per-job cannot both be 0")
    if args.cpus_per_job < 0 or args.gpus_per_job < 0 or args.max_retries < 0 or args.timeout < 0:
        parser.error("--cpus-per-job, --gpus-per-job, --max-retries and --timeout must be 0 or more")
    if args.num_cpus is not None and args.num_cpus < 1:
        parser.error("--num-cpus must be at least 1")
    overrides = {k: v for k, v in (("model", args.model), ("device", args.device), ("outputs", args.outputs))
                 if v is not None}
    command, python_path = _batch_job_command(engine)
    try:
        jobs = batch_mod.load_jobs(args.source, overrides)
    except core.errors.FaceForgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    options = batch_mod.BatchOptions(address=args.address, cpus_per_job=args.cpus_per_job,
                                     gpus_per_job=args.gpus_per_job, max_retries=args.max_retries,
                                     timeout_s=args.timeout, num_cpus=args.num_cpus, retry_failed=args.retry_failed,
                                     verbose=args.verbose)
    where = args.address or f"a local Ray instance ({args.num_cpus or os.cpu_count()} CPUs)"
    print(f"FaceForge: batch of {len(jobs)} job(s) from {args.source} on {where} -> {os.path.abspath(args.out)}",
          flush=True)
    show = _BatchProgress(quiet=args.no_progress)
    try:
        summary = batch_mod.run_batch(jobs, args.out, options, cli_command=command, on_update=show,
                                      python_path=python_path)
    except core.errors.FaceForgeError as e:
        show.close()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:     # a second Ctrl+C, or one before the jobs started: the ledger is consistent
        show.close()
        print("FaceForge: stopped; run the same command again to continue.", flush=True)
        return 130
    show.close()
    width = max([len(r["name"]) for r in summary.rows] + [3])
    print(f"{'job':<{width}}  {'kind':<11} {'state':<9} {'time s':>7} {'tries':>5}  error")
    for r in summary.rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else ""
        error = (r["error"] or "").splitlines()[0][:100] if r["error"] else ""
        print(f"{r['name']:<{width}}  {r['kind']:<11} {r['state']:<9} {secs:>7} {r['attempts'] or 0:>5}  {error}")
    print("FaceForge: " + ", ".join(f"{k}: {v}" for k, v in summary.as_dict().items()), flush=True)
    print(f"FaceForge: report {summary.report.get('report.html', '')}", flush=True)
    if summary.interrupted:
        print("FaceForge: stopped; run the same command again to continue.", flush=True)
        return 130
    return EXIT_OK if summary.ok and not summary.skipped_failed else EXIT_ERROR


class _BatchProgress:
    """The batch's live line: a tqdm bar (done / failed / running, ETA), or a line per finished job."""

    def __init__(self, quiet: bool = False):
        self.bar, self.quiet, self.last = None, quiet, None

    def __call__(self, c: dict) -> None:
        finished = c["done"] + c["failed"] + c["crashed"] + c["timeout"]
        todo = c["total"] - c["skipped"] - c["skipped_failed"]
        text = (f"done {c['done']}, failed {c['failed'] + c['crashed'] + c['timeout']}, running {c['running']}"
                + (f", skipped {c['skipped'] + c['skipped_failed']}" if c["skipped"] + c["skipped_failed"] else ""))
        if self.quiet or not todo:
            if finished != self.last:
                print(f"FaceForge: {finished}/{todo} jobs: {text}", flush=True)
            self.last = finished
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=todo, unit="job", desc="FaceForge batch", dynamic_ncols=True)
        self.bar.n = finished
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(args=None) -> int:
    """Run one command; ``args`` are the command's own arguments (default: from sys.argv)."""
    parser = build_parser()
    try:
        args = parser.parse_args(script_argv() if args is None else list(args))
        if args.command == "reconstruct":
            return reconstruct(args, parser)
        if args.command == "reconstruct-photos":
            return reconstruct_photos(args, parser)
        if args.command == "track":
            return track(args, parser)
        if args.command == "import-track":
            return import_track(args, parser)
        if args.command == "implicit":
            return implicit(args, parser)
        if args.command == "preview-implicit":
            return preview_implicit(args, parser)
        if args.command == "import-arkit":
            return import_arkit(args, parser)
        if args.command == "model-info":
            return model_info(args)
        if args.command == "apply-style":
            return apply_style(args, parser)
        if args.command == "train-deformer":
            return train_deformer(args)
        if args.command == "batch":
            return batch(args, parser)
        parser.error(f"unknown command {args.command}")
    except UsageError:
        return EXIT_USAGE
    except SystemExit as e:  # --help / --version
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else EXIT_USAGE
    except Exception:
        traceback.print_exc()
        print(f"{PROG}: error: unexpected failure (see the traceback above)", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_USAGE


def console_main() -> None:
    """The ``faceforge`` console command (see pyproject.toml)."""
    argv = script_argv()
    if "--verbose" in argv:
        code = main(argv)
    else:
        with QuietNativeLogs(), FilteredFd(1, BLENDER_ECHO):
            code = main(argv)
    remove_blender_session_dir()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
