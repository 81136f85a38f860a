"""Headless FaceForge: photo -> rigged head files, driving the add-on's own operators.

Inside Blender (arguments after ``--``)::

    blender -b --factory-startup --python blender_addon/cli.py -- reconstruct photo.jpg --out head.fbx

With Blender as a Python module (``pip install bpy``)::

    python blender_addon/cli.py reconstruct photo.jpg --out head.fbx --glb head.glb --blend head.blend

Exit codes: 0 success, 1 FaceForge error (message on stderr), 2 usage error.
The process ends with ``os._exit`` because bpy + torch (+ the glTF exporter) can hang at exit.
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
PROG = "faceforge-blender"


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
    return parser


def script_argv(argv=None) -> list:
    """The script's own arguments: after '--' inside Blender, else after the script path."""
    argv = list(sys.argv if argv is None else argv)
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    if argv and argv[0] and Path(argv[0]).resolve() == Path(__file__).resolve():
        return argv[1:]
    return []


def register_addon():
    """Register the add-on this file belongs to (unless Blender already has it enabled)."""
    import bpy
    if hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo"):
        return None
    if __package__:
        pkg = importlib.import_module(__package__)
    else:  # run as a script: import our folder as a package from its parent directory
        sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]  # no top-level 'engine', 'ui'...
        sys.path.insert(0, str(_HERE.parent))
        pkg = importlib.import_module(_HERE.name)
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
    scene = bpy.context.scene
    print(f"FaceForge: reconstructing {photo} (model {args.model}, device {args.device})", flush=True)
    try:
        bpy.ops.faceforge.reconstruct_photo(filepath=photo, model=model, device=args.device.upper(),
                                            output_dir=os.path.abspath(args.report_dir) if args.report_dir else "")
    except RuntimeError as e:
        msg = scene.faceforge.last_error or str(e).removeprefix("Error: ").strip()
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    print(f"FaceForge: {scene.faceforge.status}", flush=True)
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
        print(f"{PROG}: error: {str(e).removeprefix('Error: ').strip()}", file=sys.stderr)
        return EXIT_ERROR
    if args.report_dir:
        for name in ("params.json", "overlay.png"):
            p = os.path.join(os.path.abspath(args.report_dir), name)
            if os.path.isfile(p):
                written.append(p)
    for path in written:
        print(f"FaceForge: wrote {path} ({_size(path)})", flush=True)
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(script_argv(argv))
        if args.command == "reconstruct":
            return reconstruct(args, parser)
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


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
