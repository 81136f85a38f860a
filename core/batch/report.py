"""A batch's figures and its report (Markdown + HTML, with a thumbnail per job).

Figures are read back from each job's own files, so they describe what was written: the GLB's mesh
(vertices, shape keys, animated frames), a photo fit's landmark error (params.json), a track's
frames (the .fftrack.npz, read without pickle).
"""

from __future__ import annotations

import html
import json
import struct
from pathlib import Path

import numpy as np

REPORT_FILES = "report_files"
COMPONENT = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_glb(path) -> tuple:
    """A binary glTF's JSON and its binary chunk."""
    data = Path(path).read_bytes()
    magic, _version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or length > len(data):
        raise ValueError(f"{path} is not a complete binary glTF file")
    offset, doc, blob = 12, None, b""
    while offset + 8 <= length:
        size, kind = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8: offset + 8 + size]
        if kind == 0x4E4F534A:
            doc = json.loads(chunk.decode("utf-8"))
        elif kind == 0x004E4942:
            blob = chunk
        offset += 8 + size
    if doc is None:
        raise ValueError(f"{path} has no JSON chunk")
    return doc, blob


def glb_accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(COMPONENT[acc["componentType"]])
    width = WIDTH[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    stride = view.get("byteStride", 0) or dtype.itemsize * width
    count = acc["count"]
    raw = np.frombuffer(blob, np.uint8, count=stride * (count - 1) + dtype.itemsize * width, offset=start)
    rows = np.lib.stride_tricks.as_strided(raw, (count, dtype.itemsize * width), (stride, 1))
    return np.ascontiguousarray(rows).view(dtype).reshape(count, width)


def glb_positions(path) -> np.ndarray:
    """The vertex positions of a GLB's first mesh (all its primitives, in order)."""
    doc, blob = read_glb(path)
    mesh = doc["meshes"][0]
    return np.concatenate([glb_accessor(doc, blob, p["attributes"]["POSITION"]) for p in mesh["primitives"]])


def glb_summary(path) -> dict:
    doc, blob = read_glb(path)
    meshes = doc.get("meshes", [])
    verts = sum(doc["accessors"][p["attributes"]["POSITION"]]["count"] for m in meshes for p in m["primitives"])
    targets = max((len(p.get("targets", [])) for m in meshes for p in m["primitives"]), default=0)
    frames = 0
    for anim in doc.get("animations", []):
        for sampler in anim.get("samplers", []):
            frames = max(frames, doc["accessors"][sampler["input"]]["count"])
    return {"vertices": int(verts), "shape_keys": int(targets), "animated_frames": int(frames)}


def job_figures(job_dir, kind: str) -> dict:
    """What the report shows for a finished job, from its files (missing files just leave figures out)."""
    job_dir = Path(job_dir)
    out = {}
    glb = job_dir / "head.glb"
    if glb.is_file():
        try:
            out.update(glb_summary(glb))
        except (ValueError, KeyError, IndexError, struct.error):
            pass
    params = job_dir / "params.json"
    if params.is_file():
        try:
            p = json.loads(params.read_text())
            out["landmark_error_px"] = p.get("landmark_error_px")
            if p.get("warnings"):
                out["warnings"] = len(p["warnings"])
        except (OSError, ValueError):
            pass
    track = job_dir / "head.fftrack.npz"
    if track.is_file():
        try:
            with np.load(track, allow_pickle=False) as z:
                if "valid" in z.files:
                    valid = z["valid"]
                    out["frames"] = int(valid.shape[0])
                    out["face_frames"] = int(np.count_nonzero(valid))
        except (OSError, ValueError):
            pass
    out["files_mb"] = round(sum(f.stat().st_size for f in job_dir.iterdir() if f.is_file()) / 1e6, 2)
    return out


def thumbnail(job_dir, spec: dict, dest, size: int = 160) -> str:
    """A small picture of the job: the fit's overlay for a photo, else its first input (a video's first
    frame of the tracked range, a set's first photo). '' when there is nothing to show."""
    import cv2

    job_dir = Path(job_dir)
    image = None
    overlay = job_dir / "overlay.png"
    if overlay.is_file():
        image = cv2.imread(str(overlay))
    elif spec["inputs"]:
        src = Path(spec["inputs"][0])
        if src.is_dir():
            photos = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            src = photos[0] if photos else None
        if src is not None and src.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
            image = cv2.imread(str(src))
        elif src is not None and src.is_file():
            cap = cv2.VideoCapture(str(src))
            start = int(spec.get("options", {}).get("start", 0) or 0)
            if start:
                cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            ok, frame = cap.read()
            cap.release()
            image = frame if ok else None
    if image is None:
        return ""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp{dest.suffix}")
    cv2.imwrite(str(tmp), small)
    tmp.replace(dest)
    return str(dest)


def _figure_text(fig: dict) -> str:
    parts = []
    if fig.get("vertices"):
        parts.append(f"{fig['vertices']} vertices")
    if fig.get("shape_keys"):
        parts.append(f"{fig['shape_keys']} shape keys")
    if fig.get("frames"):
        parts.append(f"{fig.get('face_frames', fig['frames'])}/{fig['frames']} frames with a face")
    if fig.get("landmark_error_px") is not None:
        parts.append(f"landmark error {fig['landmark_error_px']:.2f} px")
    if fig.get("files_mb") is not None:
        parts.append(f"{fig['files_mb']} MB")
    return ", ".join(parts)


def write_report(out_dir, rows: list, summary: dict) -> dict:
    """report.md and report.html in ``out_dir`` from the ledger's rows; written atomically."""
    out_dir = Path(out_dir)
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    overall = f"{len(rows)} jobs: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    this_run = "This run: " + ", ".join(f"{k}: {v}" for k, v in summary.items())
    lines = ["# FaceForge batch report", "", overall, "", this_run, "",
             "| | job | kind | state | time (s) | attempts | figures | error |",
             "|---|---|---|---|---|---|---|---|"]
    cells = []
    for r in rows:
        fig = json.loads(r.get("figures") or "{}")
        thumb = out_dir / REPORT_FILES / f"{r['name']}.jpg"
        rel = f"{REPORT_FILES}/{r['name']}.jpg" if thumb.is_file() else ""
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else ""
        error = (r.get("error") or "").replace("|", "/").replace("\n", " ")
        name = f"[{r['name']}]({r['name']}/)" if r["state"] == "done" else r["name"]
        lines.append(f"| {f'![]({rel})' if rel else ''} | {name} | {r['kind']} | {r['state']} | {secs} | "
                     f"{r.get('attempts') or 0} | {_figure_text(fig)} | {error} |")
        cells.append((rel, r, secs, fig))
    md = "\n".join(lines) + "\n"
    colour = {"done": "#2a7", "failed": "#c33", "timeout": "#c70", "cancelled": "#888", "pending": "#888",
              "running": "#37c"}
    rows_html = []
    for rel, r, secs, fig in cells:
        name = html.escape(r["name"])
        link = f'<a href="{name}/">{name}</a>' if r["state"] == "done" else name
        img = f'<img src="{html.escape(rel)}" height=80>' if rel else ""
        rows_html.append(
            f"<tr><td>{img}</td><td>{link}</td><td>{html.escape(r['kind'])}</td>"
            f"<td style='color:{colour.get(r['state'], '#000')}'><b>{html.escape(r['state'])}</b></td>"
            f"<td>{secs}</td><td>{r.get('attempts') or 0}</td><td>{html.escape(_figure_text(fig))}</td>"
            f"<td>{html.escape(r.get('error') or '')}</td></tr>\n")
    body = "".join(rows_html)
    page = ("<!doctype html><meta charset=utf-8><title>FaceForge batch report</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd;"
            "vertical-align:middle}</style><h1>FaceForge batch report</h1>"
            f"<p><b>{html.escape(overall)}</b></p><p>{html.escape(this_run)}</p>"
            "<table><tr><th></th><th>job</th><th>kind</th><th>state</th><th>time (s)</th><th>attempts</th>"
            f"<th>figures</th><th>error</th></tr>\n{body}</table>\n")
    paths = {}
    for name, text in (("report.md", md), ("report.html", page)):
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths[name] = str(path)
    return paths
