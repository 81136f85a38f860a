"""Headless FaceForge: photo -> rigged head files, driving the add-on's own operators.

Inside Blender (arguments after ``--``)::

    blender -b --factory-startup --python blender_addon/cli.py -- reconstruct photo.jpg --out head.fbx

With Blender as a Python module (``pip install bpy``), as the ``faceforge`` console command
(``pip install -e .`` maps this file to ``faceforge.cli``) or by path::

    faceforge reconstruct photo.jpg --out head.fbx --glb head.glb --blend head.blend
    python blender_addon/cli.py reconstruct photo.jpg --out head.fbx
    faceforge model-info generic_model.pkl

Progress lines go to stdout, errors to stderr. Exit codes: 0 success, 1 FaceForge error,
2 usage error. The process ends with ``os._exit`` because bpy + torch (+ the glTF exporter)
can hang at interpreter exit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_HERE = Path(__file__).resolve().parent
PROG = "faceforge"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 without raising SystemExit through Blender
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="FaceForge without the Blender UI: photos become rigged heads.",
                     epilog="Inside Blender: blender -b --python cli.py -- reconstruct photo.jpg --out head.fbx")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    r = sub.add_parser("reconstruct", help="fit the head model to one photo and export the rigged head",
                       description="Fit the head model to one photo and export the rigged head.")
    r.add_argument("photo", help="photo of one face (jpg, png, ...)")
    r.add_argument("--out", metavar="HEAD.fbx", help="write an FBX rig (mesh, shape keys, armature)")
    r.add_argument("--glb", metavar="HEAD.glb", help="write a binary glTF (morph targets, skin)")
    r.add_argument("--blend", metavar="HEAD.blend", help="save the scene as a .blend file")
    r.add_argument("--model", default="builtin",
                   help="'builtin' (default) or a FLAME .pkl / FaceForge .npz model file")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)")
    r.add_argument("--report-dir", metavar="DIR", help="also write params.json and overlay.png here")
    m = sub.add_parser("model-info", help="load a model file and print its size (what the Validate button does)",
                       description="Load a FLAME .pkl or FaceForge .npz model (finding its landmarks) and print "
                                   "its vertices, identity / expression sizes and joints.")
    m.add_argument("model", help="'builtin' or a model file")
    return parser


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


def reconstruct(args, parser) -> int:
    import bpy
    photo = os.path.abspath(args.photo)
    outputs = [p for p in (args.out, args.glb, args.blend, args.report_dir) if p]
    if not outputs:
        parser.error("nothing to write: give --out, --glb, --blend and/or --report-dir")
    _check_ext(parser, args.out, ".fbx", "--out")
    _check_ext(parser, args.glb, ".glb", "--glb")
    _check_ext(parser, args.blend, ".blend", "--blend")
    model = args.model if args.model == "builtin" else os.path.abspath(args.model)

    register_addon()
    _clear_startup_scene(bpy)
    print(f"FaceForge: reconstructing {photo} (model {args.model}, device {args.device})", flush=True)
    try:
        # EXEC: the job runs inline (synchronously) and prints progress lines
        bpy.ops.faceforge.reconstruct_photo(filepath=photo, model=model, device=args.device.upper(),
                                            output_dir=os.path.abspath(args.report_dir) if args.report_dir else "")
    except RuntimeError as e:
        print(f"{PROG}: error: {_op_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"FaceForge: {bpy.context.window_manager.faceforge_job.last_message}", flush=True)
    written = []
    try:
        if args.out:
            path = os.path.abspath(args.out)
            bpy.ops.faceforge.export_fbx(filepath=path)
            written.append(path)
        if args.glb:
            path = os.path.abspath(args.glb)
            bpy.ops.faceforge.export_gltf(filepath=path)
            written.append(path)
        if args.blend:
            path = os.path.abspath(args.blend)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            bpy.ops.wm.save_as_mainfile(filepath=path)
            written.append(path)
    except RuntimeError as e:
        print(f"{PROG}: error: {_op_error(e)}", file=sys.stderr)
        return EXIT_ERROR
    if args.report_dir:
        for name in ("params.json", "overlay.png"):
            p = os.path.join(os.path.abspath(args.report_dir), name)
            if os.path.isfile(p):
                written.append(p)
    for path in written:
        print(f"FaceForge: wrote {path} ({_size(path)})", flush=True)
    return EXIT_OK


def _op_error(e: RuntimeError) -> str:
    """bpy.ops errors read 'Error: <report>' (or 'Operator ... poll() <why>'): keep the message."""
    return str(e).strip().removeprefix("Error: ").strip()


def model_info(args) -> int:
    import json
    engine = importlib.import_module(f"{addon_package().__name__}.engine")
    engine.block_triton()
    core = engine.core
    models = importlib.import_module(f"{core.__name__}.models")
    spec = args.model if args.model == "builtin" else os.path.abspath(args.model)
    try:
        summary = models.load_model(spec).summary()
    except core.errors.FaceForgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def main(args=None) -> int:
    """Run one command; ``args`` are the command's own arguments (default: from sys.argv)."""
    parser = build_parser()
    try:
        args = parser.parse_args(script_argv() if args is None else list(args))
        if args.command == "reconstruct":
            return reconstruct(args, parser)
        if args.command == "model-info":
            return model_info(args)
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
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
