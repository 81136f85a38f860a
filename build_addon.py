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


def build_extension(pkg: Path, out: Path, version: str) -> Path:
    target = out / f"{PACKAGE}-{version}-extension.zip"
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
        ext = build_extension(pkg, out, version)
        check_zip(ext, "")
        legacy = build_legacy(pkg, out, version)
        check_zip(legacy, f"{PACKAGE}/")
    for p in (ext, legacy):
        print(f"{p}  {p.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
