"""Where FaceForge writes files next to the user's work (bpy-light: only ``bpy.data.filepath``)."""

from __future__ import annotations

import os
import tempfile

import bpy

MULTI_SUFFIXES = (".fftrack.npz", ".ffstyle.pt")   # kept whole when a number is added


def split_name(path: str) -> tuple:
    """``/a/clip.fftrack.npz`` -> (``/a/clip``, ``.fftrack.npz``); ``/a/x.png`` -> (``/a/x``, ``.png``)."""
    low = path.lower()
    for suffix in MULTI_SUFFIXES:
        if low.endswith(suffix):
            return path[: -len(suffix)], path[-len(suffix):]
    return os.path.splitext(path)


def unique_path(path: str) -> str:
    """``path`` if nothing is there, else ``<stem>_1<ext>``, ``<stem>_2<ext>``, ...: never overwrite silently."""
    if not os.path.exists(path):
        return path
    stem, ext = split_name(path)
    n = 1
    while os.path.exists(f"{stem}_{n}{ext}"):
        n += 1
    return f"{stem}_{n}{ext}"


def blend_dir() -> str:
    """The saved .blend file's folder, or '' while the file is unsaved."""
    return os.path.dirname(bpy.data.filepath) if bpy.data.filepath else ""


def output_dir() -> str:
    """Next to the .blend file, else FaceForge's folder in the system temp folder (created)."""
    folder = blend_dir() or os.path.join(tempfile.gettempdir(), "faceforge")
    os.makedirs(folder, exist_ok=True)
    return folder


def media_stem(path: str) -> str:
    """A file's or folder's name without extension (``shots/`` -> ``shots``), for naming outputs."""
    base = os.path.basename(os.path.normpath(path)) if path else ""
    return bpy.path.clean_name(split_name(base)[0]) if base else "faceforge"
