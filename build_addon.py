#!/usr/bin/env python
"""Build FaceForge's Blender add-on packages.

    python build_addon.py [--out dist]

Produces
  dist/faceforge-<version>-extension.zip  Blender 4.2+ extension (manifest at the zip root), built and
                                          validated by Blender's own extension builder (blender_ext.py,
                                          shipped in the bpy wheel) when it is available
  dist/faceforge-<version>-legacy.zip     Blender 3.4+ legacy add-on (a top-level faceforge/ folder)

Both contain the add-on (blender_addon/) with the engine (core/) and its data (weights/) vendored
inside the package as faceforge/core and faceforge/weights.

Python packages: by default none are bundled; the add-on's "Install Dependencies" button (or pip)
puts them into Blender's Python. ``--bundle-wheels`` downloads the platform wheels of the small
engine packages (mediapipe, opencv and what they import; blender_addon/dependencies.py BUNDLED)
for this machine's platform and lists them in the extension manifest, which Blender 4.2+ installs
with the extension (``faceforge-<version>-extension-<platform>.zip``); only torch is then left to
install. ``--wheels DIR`` bundles the wheels already in DIR instead. The legacy zip never bundles
wheels (Blender 3.x cannot install them).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_SRC = ROOT / "blender_addon"
PACKAGE = "faceforge"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".git"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _ignore(_dir, names):
    return [n for n in names if n in SKIP_DIRS or Path(n).suffix in SKIP_SUFFIXES]


def stage(dest: Path) -> Path:
    """Copy blender_addon/ + core/ + weights/ into dest/faceforge/ and return that folder."""
    pkg = dest / PACKAGE
    shutil.copytree(ADDON_SRC, pkg, ignore=_ignore)
    shutil.copytree(ROOT / "core", pkg / "core", ignore=_ignore)
    if (ROOT / "weights").is_dir():
        shutil.copytree(ROOT / "weights", pkg / "weights", ignore=_ignore)
    else:
        (pkg / "weights").mkdir()
    return pkg


def absolute_import_problems(pkg: Path) -> list:
    """Imports that would break once vendored: absolute 'core'/'blender_addon' imports anywhere."""
    bad = []
    for py in sorted(pkg.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top in ("core", "blender_addon", "weights"):
                    bad.append(f"{py.relative_to(pkg)}:{node.lineno}: absolute import of '{n}'")
    return bad


def extension_builder() -> Path | None:
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if hits:
            return hits[-1]
    return None


def _run(cmd: list) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{out}")
    return out


def bundled_specs() -> list:
    """The pip specs of the wheels --bundle-wheels downloads (read without importing bpy)."""
    tree = ast.parse((ADDON_SRC / "dependencies.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BUNDLED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("dependencies.py has no BUNDLED list")


def download_wheels(dest: Path) -> Path:
    """pip download the BUNDLED wheels (binary, no dependencies: the list is complete) for this platform."""
    dest.mkdir(parents=True, exist_ok=True)
    print(_run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "-q",
                "--dest", str(dest), *bundled_specs()]) or f"downloaded {len(list(dest.glob('*.whl')))} wheels")
    return dest


def add_wheels(pkg: Path, wheel_dir: Path) -> str:
    """Copy wheels into the staged package and list them (+ their platforms) in its manifest."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no .whl files in {wheel_dir}")
    (pkg / "wheels").mkdir(exist_ok=True)
    for w in wheels:
        shutil.copy2(w, pkg / "wheels" / w.name)
    tags = {w.stem.split("-")[-1] for w in wheels} - {"any"}
    platforms = sorted({_blender_platform(t) for t in tags}) or []
    manifest = pkg / "blender_manifest.toml"
    text = manifest.read_text()
    extra = "\nwheels = [\n" + "".join(f'  "./wheels/{w.name}",\n' for w in wheels) + "]\n"
    if platforms:
        extra += "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]\n"
    head, sep, tail = text.partition("\n[")           # top-level keys must come before the first table
    manifest.write_text(head.rstrip() + "\n" + extra + sep + tail)
    print(f"bundled {len(wheels)} wheels for {', '.join(platforms) or 'all platforms'}")
    return "-" + "-".join(platforms) if len(platforms) == 1 else ""


def _blender_platform(wheel_platform: str) -> str:
    t = wheel_platform.lower()
    os_name = "windows" if t.startswith("win") else "macos" if t.startswith("macosx") else "linux"
    arch = "arm64" if ("arm64" in t or "aarch64" in t) else "x64"
    return f"{os_name}-{arch}"


def build_extension(pkg: Path, out: Path, version: str, suffix: str = "") -> Path:
    target = out / f"{PACKAGE}-{version}-extension{suffix}.zip"
    target.unlink(missing_ok=True)
    builder = extension_builder()
    if builder is None:
        print("warning: Blender's extension builder (bpy wheel) not found; writing the zip directly, unvalidated")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(pkg.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(pkg).as_posix())
        return target
    _run([sys.executable, str(builder), "build", "--source-dir", str(pkg), "--output-filepath", str(target)])
    print(_run([sys.executable, str(builder), "validate", str(target)]))
    return target


def build_legacy(pkg: Path, out: Path, version: str) -> Path:
    target = out / f"{PACKAGE}-{version}-legacy.zip"
    target.unlink(missing_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(pkg.rglob("*")):
            if f.is_file():
                zf.write(f, (Path(PACKAGE) / f.relative_to(pkg)).as_posix())
    return target


def check_zip(path: Path, prefix: str) -> None:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    required = [f"{prefix}__init__.py", f"{prefix}blender_manifest.toml", f"{prefix}engine.py",
                f"{prefix}core/__init__.py", f"{prefix}core/rig/head_rig.py"]
    missing = [n for n in required if n not in names]
    stray = [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    if missing or stray:
        raise SystemExit(f"{path.name}: missing {missing}, stray {stray}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist)")
    ap.add_argument("--bundle-wheels", action="store_true",
                    help="download and bundle the small engine packages' wheels (this platform) in the extension")
    ap.add_argument("--wheels", metavar="DIR", help="bundle the .whl files in DIR in the extension")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = tomllib.loads((ADDON_SRC / "blender_manifest.toml").read_text())
    version = manifest["version"]

    with tempfile.TemporaryDirectory(prefix="faceforge-build-") as tmp:
        pkg = stage(Path(tmp))
        problems = absolute_import_problems(pkg)
        if problems:
            print("error: absolute imports would break the vendored package:\n  " + "\n  ".join(problems))
            return 1
        print(f"staged {pkg} (no absolute core/blender_addon imports)")
        legacy = build_legacy(pkg, out, version)           # before wheels: 3.x cannot install them
        check_zip(legacy, f"{PACKAGE}/")
        suffix = ""
        if args.bundle_wheels or args.wheels:
            wheel_dir = Path(args.wheels) if args.wheels else download_wheels(out / "wheels")
            suffix = add_wheels(pkg, wheel_dir)
        ext = build_extension(pkg, out, version, suffix)
        check_zip(ext, "")
    for p in (ext, legacy):
        print(f"{p}  {p.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
