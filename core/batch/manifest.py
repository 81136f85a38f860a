"""What a batch is made of: jobs read from a manifest (TOML or CSV) or found in a folder.

A job is one run of a FaceForge pipeline through the ``faceforge`` command, with its own output folder:

    kind      photo (reconstruct) | photos (reconstruct-photos) | track | implicit | apply-style
    inputs    the files it reads (a photo; photos or one folder of them; a video; head.blend + style)
    model     'ict', 'facemask' or a model file      device   auto | cpu | cuda
    options   the command's own settings (track: start, end, refine; photos: texture_size; ...)
    outputs   which of fbx / glb / blend to write (the kind's report files are always written)

TOML (read with ``tomllib``: data only, nothing in the file runs)::

    [defaults]                     # optional: applies to every job
    model = "facemask"
    outputs = ["fbx", "glb"]

    [[job]]
    kind = "track"
    input = "clips/take01.mp4"     # relative paths are relative to the manifest
    name = "take01"                # optional: the output folder's name (default: the input's stem)
    options = { start = 0, end = 120 }

CSV: a header row, then one job a row. Columns ``kind``, ``input`` (several separated by ``;``),
``name``, ``model``, ``device``, ``outputs`` (``fbx;glb``); every other column is an option of the
job's kind (an empty cell leaves it unset).

A folder: every video in it is a ``track`` job, every photo a ``photo`` job, and every subfolder
holding photos is a ``photos`` job (one person per subfolder).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .ledger import LEDGER_NAME

OUTPUT_KINDS = ("fbx", "glb", "blend")
DEFAULT_OUTPUTS = OUTPUT_KINDS
DEVICES = ("auto", "cpu", "cuda")

# kind -> the CLI command, how many inputs it takes (min, max; None = any) and its options with their types
KINDS = {
    "photo": dict(command="reconstruct", inputs=(1, 1), model=True,
                  options={"face": int}),
    "photos": dict(command="reconstruct-photos", inputs=(1, None), model=True,
                   options={"texture_size": int}),
    "track": dict(command="track", inputs=(1, 1), model=True,
                  options={"start": int, "end": int, "refine": bool}),
    "implicit": dict(command="implicit", inputs=(1, 1), model=True,
                     options={"steps": int, "size": int, "frames": int, "resolution": int, "track_file": Path}),
    "apply-style": dict(command="apply-style", inputs=(2, 2), model=False, options={}),
}
ALIASES = {"reconstruct": "photo", "reconstruct-photos": "photos", "apply_style": "apply-style"}
JOB_KEYS = {"kind", "input", "inputs", "name", "model", "device", "outputs", "options"}
CSV_KEYS = {"kind", "input", "inputs", "name", "model", "device", "outputs"}
RESERVED = "report_files"      # the output folder's own (the report's thumbnails); .staging starts with a dot
NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class JobSpec:
    name: str
    kind: str
    inputs: tuple
    model: str = "ict"
    device: str = "auto"
    options: dict = field(default_factory=dict)
    outputs: tuple = DEFAULT_OUTPUTS

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "inputs": list(self.inputs), "model": self.model,
                "device": self.device, "options": dict(sorted(self.options.items())), "outputs": list(self.outputs)}

    def cli_args(self, out: str, device: str = None) -> list:
        """The ``faceforge`` arguments that run this job, writing into the folder ``out``."""
        info = KINDS[self.kind]
        args = [info["command"], *self.inputs]
        names = {"fbx": ("--out", "head.fbx"), "glb": ("--glb", "head.glb"), "blend": ("--blend", "head.blend")}
        for kind in self.outputs:
            flag, file = names[kind]
            args += [flag, f"{out}/{file}"]
        if info["model"]:
            args += ["--model", self.model]
        args += ["--device", device or self.device]
        if self.kind == "photo":
            args += ["--report-dir", out]             # params.json, overlay.png
        elif self.kind == "track":
            args += ["--track-file", f"{out}/head.fftrack.npz"]
        elif self.kind == "implicit":
            args += ["--checkpoint", f"{out}/head.ffimplicit.pt"]
        for key, value in sorted(self.options.items()):
            flag = "--" + key.replace("_", "-")
            if key in ("start", "end") and self.kind == "track":
                flag = "--" + key
            if isinstance(value, bool):
                if value:
                    args.append(flag)
            else:
                args += [flag, str(value)]
        return args


def _clean_name(text: str) -> str:
    name = NAME_OK.sub("_", text).strip("._")
    return name or "job"


def _coerce(value, kind, key: str, where: str, base: Path):
    """A manifest value as the option's type, with a message naming the job when it cannot be."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{where}: option '{key}' must be true or false, got '{value}'.")
    if kind is int:
        if isinstance(value, bool):
            raise InputError(f"{where}: option '{key}' must be a whole number, got '{value}'.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or number != int(number):
            raise InputError(f"{where}: option '{key}' must be a whole number, got '{value}'.")
        if number < 0:
            raise InputError(f"{where}: option '{key}' must be 0 or more, got {int(number)}.")
        return int(number)
    if kind is Path:
        return str((base / str(value)).resolve())
    return value


def make_job(raw: dict, base: Path, where: str, defaults: dict = None) -> JobSpec:
    """One job from a manifest's table/row (``defaults`` under it); errors name ``where`` it came from."""
    data = dict(defaults or {})
    options = dict(data.pop("options", {}) or {})
    for key, value in raw.items():
        if key == "options":
            if not isinstance(value, dict):
                raise InputError(f"{where}: 'options' must be a table (options = {{ start = 0 }}).")
            options.update(value)
        else:
            data[key] = value
    unknown = sorted(set(data) - JOB_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; a job has "
                         + ", ".join(sorted(JOB_KEYS)) + ".")
    kind = str(data.get("kind", "")).strip().lower()
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise InputError(f"{where}: kind must be one of {', '.join(KINDS)}, got '{data.get('kind', '')}'.")
    info = KINDS[kind]
    inputs = data.get("inputs", data.get("input"))
    if "input" in data and "inputs" in data:
        raise InputError(f"{where}: give 'input' or 'inputs', not both.")
    if isinstance(inputs, str):
        inputs = [p for p in (s.strip() for s in inputs.split(";")) if p]
    if not inputs or not isinstance(inputs, (list, tuple)) or not all(isinstance(p, str) and p for p in inputs):
        raise InputError(f"{where}: no input file (input = \"photo.jpg\", or inputs = [...]).")
    paths = [str((base / p).expanduser().resolve()) for p in inputs]
    lo, hi = info["inputs"]
    if len(paths) < lo or (hi is not None and len(paths) > hi):
        want = f"{lo}" if lo == hi else f"at least {lo}"
        raise InputError(f"{where}: a '{kind}' job takes {want} input(s), got {len(paths)}.")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{where}: input '{missing[0]}' does not exist.")
    allowed = info["options"]
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise InputError(f"{where}: option(s) {', '.join(bad)} do not apply to a '{kind}' job"
                         + (f" (it takes {', '.join(sorted(allowed))})." if allowed else " (it takes none)."))
    options = {k: _coerce(v, allowed[k], k, where, base) for k, v in options.items() if v != ""}
    if kind == "track" and options.get("end") and options["end"] < options.get("start", 0) + 2:
        raise InputError(f"{where}: 'end' must be at least 'start' + 2 (it is exclusive; 0 = the whole clip).")
    model = str(data.get("model", "ict") or "ict").strip()
    if model.lower() not in ("ict", "facemask", "builtin"):
        model = str((base / model).expanduser().resolve())
        if not Path(model).is_file():
            raise InputError(f"{where}: model file '{model}' does not exist.")
    device = str(data.get("device", "auto") or "auto").strip().lower()
    if device not in DEVICES:
        raise InputError(f"{where}: device must be one of {', '.join(DEVICES)}, got '{device}'.")
    outputs = data.get("outputs", DEFAULT_OUTPUTS)
    if isinstance(outputs, str):
        outputs = [o for o in re.split(r"[;,\s]+", outputs) if o]
    outputs = tuple(str(o).strip().lower().lstrip(".") for o in outputs)
    if not outputs or any(o not in OUTPUT_KINDS for o in outputs):
        raise InputError(f"{where}: outputs must be some of {', '.join(OUTPUT_KINDS)}, got {list(outputs)}.")
    name = str(data.get("name") or Path(paths[0]).stem.split(".")[0])
    return JobSpec(name=_clean_name(name), kind=kind, inputs=tuple(paths), model=model, device=device,
                   options=options, outputs=tuple(dict.fromkeys(outputs)))


def unique_names(jobs: list, explicit: set) -> list:
    """Output folders must differ: a repeated default name gets -2, -3...; a repeated explicit one is an error."""
    seen, out = {RESERVED}, []
    for job in jobs:
        name = job.name
        if name.lower() in seen:
            if name in explicit and name.lower() != RESERVED:
                raise InputError(f"Two jobs are named '{name}': each job needs its own output folder.")
            n = 2
            while f"{name}-{n}".lower() in seen:
                n += 1
            name = f"{name}-{n}"
            job = JobSpec(name=name, kind=job.kind, inputs=job.inputs, model=job.model, device=job.device,
                          options=job.options, outputs=job.outputs)
        seen.add(name.lower())
        out.append(job)
    return out


def read_toml(path, overrides: dict = None) -> list:
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path.name} is not valid TOML: {e}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read the manifest {path}: {e}.") from None
    unknown = sorted(set(data) - {"defaults", "job", "jobs"})
    if unknown:
        raise InputError(f"{path.name}: unknown table(s) {', '.join(unknown)}; a manifest has [defaults] and "
                         "[[job]] entries.")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InputError(f"{path.name}: [defaults] must be a table.")
    defaults = {**defaults, **(overrides or {})}
    rows = data.get("job", data.get("jobs", []))
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path.name}: no jobs: add [[job]] entries (kind = ..., input = ...).")
    jobs, explicit = [], set()
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InputError(f"{path.name}: job {i} is not a table.")
        if row.get("name"):
            explicit.add(_clean_name(str(row["name"])))
        jobs.append(make_job(row, path.parent, f"{path.name}, job {i}", defaults))
    return unique_names(jobs, explicit)


def read_csv(path, overrides: dict = None) -> list:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"Cannot read the manifest {path}: {e}.") from None
    if not rows:
        raise InputError(f"{path.name}: no jobs (a header row 'kind,input,...' and one row per job).")
    if None in rows[0] or "kind" not in rows[0] or not ({"input", "inputs"} & set(rows[0])):
        raise InputError(f"{path.name}: the header must name the columns 'kind' and 'input' (and no row may have "
                         "more cells than the header).")
    jobs, explicit = [], set()
    for i, row in enumerate(rows, 2):
        if None in row:
            raise InputError(f"{path.name}, line {i}: more cells than the header has columns.")
        if not any((v or "").strip() for v in row.values()):
            continue
        job = {k: v.strip() for k, v in row.items() if k in CSV_KEYS and (v or "").strip()}
        job["options"] = {k: v.strip() for k, v in row.items() if k not in CSV_KEYS and (v or "").strip()}
        if job.get("name"):
            explicit.add(_clean_name(job["name"]))
        jobs.append(make_job(job, path.parent, f"{path.name}, line {i}", overrides))
    return unique_names(jobs, explicit)


def discover(folder, overrides: dict = None) -> list:
    """A folder's jobs: videos -> track, photos -> photo, subfolders of photos -> photos (one person each)."""
    from ..detect.images import SUPPORTED_SUFFIXES
    from ..track.video import VIDEO_SUFFIXES

    folder = Path(folder).expanduser().resolve()
    jobs = []
    for item in sorted(folder.iterdir()):
        if item.name.startswith("."):
            continue
        suffix = item.suffix.lower()
        if item.is_file() and suffix in VIDEO_SUFFIXES:
            jobs.append({"kind": "track", "input": str(item)})
        elif item.is_file() and suffix in SUPPORTED_SUFFIXES:
            jobs.append({"kind": "photo", "input": str(item)})
        elif item.is_dir():
            if (item / LEDGER_NAME).exists():
                continue        # a batch's own output folder (its thumbnails are not a photo set)
            photos = [p for p in item.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]
            if photos:
                jobs.append({"kind": "photos", "input": str(item), "name": item.name})
    if not jobs:
        raise InputError(f"No videos, photos or folders of photos in {folder}: nothing to do.")
    return unique_names([make_job(j, folder, f"{folder.name}/{Path(j['input']).name}", overrides)
                          for j in jobs], set())


def load_jobs(source, overrides: dict = None) -> list:
    """Jobs from a manifest (.toml / .csv) or a folder; ``overrides`` (model, device, outputs) apply to all
    jobs that do not set them themselves (for a folder: to all)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"'{source}' does not exist: give a folder of clips/photos or a .toml/.csv manifest.")
    if path.is_dir():
        return discover(path, overrides)
    if path.suffix.lower() == ".toml":
        return read_toml(path, overrides)
    if path.suffix.lower() == ".csv":
        return read_csv(path, overrides)
    raise InputError(f"'{path.name}' is neither a folder nor a .toml/.csv manifest.")


def write_toml(jobs, path) -> str:
    """A manifest for ``jobs`` (what the Blender panel writes); strings are JSON-quoted, which TOML accepts."""
    lines = ["# FaceForge batch manifest: faceforge batch THIS_FILE --out FOLDER", ""]
    for job in jobs:
        d = job.as_dict() if isinstance(job, JobSpec) else dict(job)
        lines.append("[[job]]")
        for key in ("name", "kind", "model", "device"):
            if d.get(key):
                lines.append(f"{key} = {json.dumps(str(d[key]))}")
        lines.append("inputs = [" + ", ".join(json.dumps(str(p)) for p in d["inputs"]) + "]")
        if d.get("outputs"):
            lines.append("outputs = [" + ", ".join(json.dumps(o) for o in d["outputs"]) + "]")
        opts = d.get("options") or {}
        if opts:
            lines.append("options = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items()) + " }")
        lines.append("")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return str(path)
