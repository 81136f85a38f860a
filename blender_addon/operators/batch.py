"""Batch from Blender: pick clips, photos and photo folders, write a manifest, run ``faceforge batch``.

The batch runs as a separate process (the CLI's ``batch`` command, on Ray), so Blender stays free
while hundreds of jobs run, and closing Blender does not lose them: the ledger in the output folder
keeps every finished job, and running the batch again continues. The panel shows the batch's
progress by reading that ledger (read-only) once a second; Stop sends the process Ctrl+C (a clean
stop). Import Results brings each finished job's head into the scene (its .blend when written, else
its GLB or FBX).
"""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..engine import core, in_blender_binary
from .reconstruct import IMAGE_GLOB, EngineOptions

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
KIND_ITEMS = (("photo", "Photo", "Reconstruct one photo", "IMAGE_DATA", 0),
              ("photos", "Photo Set", "One head from several photos of one person (a folder or files)",
               "FILE_FOLDER", 1),
              ("track", "Track", "Track a video", "FILE_MOVIE", 2))
MANIFEST_NAME = "manifest.toml"
LOG_NAME = "batch.log"


class FaceForgeBatchItem(bpy.types.PropertyGroup):
    path: StringProperty(name="Input", subtype="FILE_PATH")
    kind: EnumProperty(name="Kind", items=KIND_ITEMS, default="photo")


class FaceForgeBatchSettings(bpy.types.PropertyGroup):
    items: CollectionProperty(type=FaceForgeBatchItem)
    out_dir: StringProperty(name="Output Folder", subtype="DIR_PATH", default="//faceforge_batch/",
                            description="One folder per job, the ledger (batch.sqlite) and report.html go here")
    address: StringProperty(name="Ray Cluster", default="",
                            description="Empty: a local Ray instance on this computer; 'auto' or 'ray://host:port': "
                                        "an existing cluster (inputs and output folder on shared storage)")
    cpus_per_job: FloatProperty(name="CPUs per Job", default=1.0, min=0.0, soft_max=16.0)
    gpus_per_job: FloatProperty(name="GPUs per Job", default=0.0, min=0.0, soft_max=4.0)
    max_retries: IntProperty(name="Retries", default=2, min=0, max=20,
                             description="Retries of a job whose worker died or whose command crashed")
    timeout: FloatProperty(name="Time Limit (s)", default=0.0, min=0.0,
                           description="Stop a job after this many seconds and report it (0: no limit)")
    write_fbx: BoolProperty(name="FBX", default=True)
    write_glb: BoolProperty(name="GLB", default=True)
    write_blend: BoolProperty(name=".blend", default=True)

    @classmethod
    def register(cls):
        bpy.types.Scene.faceforge_batch = bpy.props.PointerProperty(type=cls)

    @classmethod
    def unregister(cls):
        if hasattr(bpy.types.Scene, "faceforge_batch"):
            del bpy.types.Scene.faceforge_batch


class BatchRun:
    """The batch process this Blender session started (one at a time) and what its ledger says."""

    def __init__(self, proc, out_dir: str, log_path: str, total: int):
        self.proc, self.out_dir, self.log_path, self.total = proc, out_dir, log_path, total
        self.started = time.monotonic()
        self.counts: dict = {}
        self.returncode = None
        self.message = ""

    @property
    def running(self) -> bool:
        return self.returncode is None

    def poll(self) -> bool:
        """Refresh from the ledger and the process; False once it ended."""
        self.counts = engine_batch().read_progress(self.out_dir) or self.counts
        code = self.proc.poll()
        if code is not None and self.returncode is None:
            self.returncode = code
            self.counts = engine_batch().read_progress(self.out_dir) or self.counts
            done, bad = self.counts.get("done", 0), sum(self.counts.get(s, 0) for s in ("failed", "crashed",
                                                                                          "timeout"))
            if code == 130:
                self.message = f"Stopped: {done} done; run the batch again to continue"
            elif code in (0, 1) and (done or bad):
                self.message = f"Finished: {done} done, {bad} failed (see the report)"
            else:
                self.message = f"The batch command failed (exit code {code}): see {self.log_path}"
        return self.returncode is None

    def text(self) -> str:
        c = self.counts
        finished = sum(c.get(s, 0) for s in ("done", "failed", "crashed", "timeout"))
        bad = finished - c.get("done", 0)
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.running and 0 < finished < self.total:
            eta = f", about {elapsed / finished * (self.total - finished) / 60:.0f} min left"
        return (f"{finished}/{self.total} jobs: {c.get('done', 0)} done, {bad} failed, "
                f"{c.get('running', 0)} running{eta}")


_RUN = None   # the current / last BatchRun


def engine_batch():
    """core.batch (bpy-free; it imports neither torch nor Ray)."""
    return importlib.import_module(f"{core.__name__}.batch")


def current_run():
    return _RUN


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def poll_batch():
    """bpy.app.timers callback: follow the batch until its process ends (then stop the timer)."""
    run = _RUN
    if run is None:
        return None
    alive = run.poll()
    _redraw()
    return 1.0 if alive else None


def batch_command(manifest: str, settings, out_dir: str) -> list:
    """The ``faceforge batch`` command line: in Blender's executable a background Blender runs the CLI
    script; with the bpy module, this Python does."""
    cli = str(Path(__file__).resolve().parent.parent / "cli.py")
    if in_blender_binary():
        head = [bpy.app.binary_path, "-b", "--factory-startup", "--python", cli, "--"]
    else:
        head = [sys.executable, cli]
    cmd = head + ["batch", manifest, "--out", out_dir, "--no-progress", "--cpus-per-job", f"{settings.cpus_per_job:g}",
                  "--gpus-per-job", f"{settings.gpus_per_job:g}", "--max-retries", str(settings.max_retries),
                  "--timeout", f"{settings.timeout:g}"]
    if settings.address.strip():
        cmd += ["--address", settings.address.strip()]
    return cmd


def _batch_settings(context):
    return getattr(context.scene, "faceforge_batch", None)


class FACEFORGE_OT_batch_add(bpy.types.Operator):
    bl_idname = "faceforge.batch_add"
    bl_label = "Add to Batch"
    bl_description = ("Add photos and videos to the batch (each its own job), or a folder of photos as one "
                      "photo set")
    bl_options = {"INTERNAL"}

    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: StringProperty(default=IMAGE_GLOB + ";" + ";".join(f"*{s}" for s in VIDEO_SUFFIXES),
                                options={"HIDDEN"})
    as_set: BoolProperty(name="Photos as One Set",
                         description="The chosen photos (or the folder) are one person: one textured head", default=False)

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        settings = _batch_settings(context)
        folder = bpy.path.abspath(self.directory)
        paths = [os.path.join(folder, f.name) for f in self.files if f.name]
        videos = [p for p in paths if p.lower().endswith(VIDEO_SUFFIXES)]
        photos = [p for p in paths if p not in videos]
        if not paths:                        # a folder was chosen: its photos are one person
            if not os.path.isdir(folder):
                self.report({"ERROR"}, "Choose photos or videos, or a folder of photos")
                return {"CANCELLED"}
            jobs = [("photos", folder)]
        elif self.as_set and len(photos) > 1:
            jobs = [("track", v) for v in videos] + [("photos", ";".join(photos))]
        else:
            jobs = [("track", v) for v in videos] + [("photo", p) for p in photos]
        for kind, path in jobs:
            item = settings.items.add()
            item.kind, item.path = kind, path
        self.report({"INFO"}, f"{len(jobs)} job(s) added to the batch")
        return {"FINISHED"}


class FACEFORGE_OT_batch_remove(bpy.types.Operator):
    bl_idname = "faceforge.batch_remove"
    bl_label = "Remove from Batch"
    bl_description = "Remove this job from the batch list (nothing on disk changes)"
    bl_options = {"INTERNAL"}

    index: IntProperty(default=-1)

    def execute(self, context):
        settings = _batch_settings(context)
        if self.index < 0:
            settings.items.clear()
        elif self.index < len(settings.items):
            settings.items.remove(self.index)
        return {"FINISHED"}


def manifest_jobs(settings, model: str, device: str) -> list:
    outputs = [k for k, on in (("fbx", settings.write_fbx), ("glb", settings.write_glb),
                               ("blend", settings.write_blend)) if on]
    return [{"kind": it.kind, "inputs": [bpy.path.abspath(p) for p in it.path.split(";") if p], "model": model,
             "device": device, "outputs": outputs} for it in settings.items]


class FACEFORGE_OT_batch_run(EngineOptions, bpy.types.Operator):
    bl_idname = "faceforge.batch_run"
    bl_label = "Run Batch"
    bl_description = ("Write the batch's manifest into the output folder and run it with 'faceforge batch' in a "
                      "separate process (on Ray): Blender stays free. Finished jobs are kept; running it again "
                      "continues where it stopped")
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        settings = _batch_settings(context)
        if settings is None:
            return False
        if _RUN is not None and _RUN.running:
            cls.poll_message_set("A batch is running") if hasattr(cls, "poll_message_set") else None
            return False
        return len(settings.items) > 0 and EngineOptions.job_poll.__func__(cls, context)

    def execute(self, context):
        global _RUN
        settings = _batch_settings(context)
        if not (settings.write_fbx or settings.write_glb or settings.write_blend):
            self.report({"ERROR"}, "Choose at least one file to write per job (FBX, GLB or .blend)")
            return {"CANCELLED"}
        if not settings.out_dir.strip():
            self.report({"ERROR"}, "Choose an output folder")
            return {"CANCELLED"}
        out_dir = os.path.abspath(bpy.path.abspath(settings.out_dir))
        if settings.out_dir.startswith("//") and not bpy.data.filepath:
            self.report({"ERROR"}, "Save the .blend first or choose an absolute output folder")
            return {"CANCELLED"}
        try:
            model = self.model_spec(context)
            device = self.device_name(context)
            jobs = [engine_batch().manifest.make_job(j, Path(out_dir), f"job {i + 1} ({Path(j['inputs'][0]).name})")
                    for i, j in enumerate(manifest_jobs(settings, model, device))]
            jobs = engine_batch().manifest.unique_names(jobs, set())
            os.makedirs(out_dir, exist_ok=True)
            manifest = engine_batch().write_toml(jobs, os.path.join(out_dir, MANIFEST_NAME))
        except (core.errors.FaceForgeError, OSError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        log_path = os.path.join(out_dir, LOG_NAME)
        cmd = batch_command(manifest, settings, out_dir)
        with open(log_path, "ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            # its own session: Blender's Ctrl+C or closing does not kill the batch; Stop asks it to end cleanly
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _RUN = BatchRun(proc, out_dir, log_path, len(jobs))
        if not bpy.app.timers.is_registered(poll_batch):
            bpy.app.timers.register(poll_batch, first_interval=1.0)
        self.report({"INFO"}, f"Batch of {len(jobs)} job(s) started -> {out_dir}")
        return {"FINISHED"}


class FACEFORGE_OT_batch_stop(bpy.types.Operator):
    bl_idname = "faceforge.batch_stop"
    bl_label = "Stop Batch"
    bl_description = "Stop the batch cleanly (as Ctrl+C does): finished jobs stay, the rest run next time"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return _RUN is not None and _RUN.running

    def execute(self, context):
        try:
            _RUN.proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
        self.report({"INFO"}, "Stopping the batch...")
        return {"FINISHED"}


def finished_jobs(out_dir: str) -> list:
    """(name, folder) of every job the ledger in ``out_dir`` records as done, its folder present."""
    path = Path(out_dir) / engine_batch().LEDGER_NAME
    if not path.is_file():
        return []
    ledger = engine_batch().Ledger(path)
    try:
        return [(r["name"], Path(out_dir) / r["name"]) for r in ledger.rows()
                if r["state"] == "done" and (Path(out_dir) / r["name"]).is_dir()]
    finally:
        ledger.close()


class FACEFORGE_OT_batch_import(bpy.types.Operator):
    bl_idname = "faceforge.batch_import"
    bl_label = "Import Results"
    bl_description = ("Bring every finished job's head into this file, one collection per job (from its .blend, "
                      "else its GLB or FBX)")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        settings = _batch_settings(context)
        return settings is not None and bool(settings.out_dir) and not (_RUN is not None and _RUN.running)

    def execute(self, context):
        out_dir = os.path.abspath(bpy.path.abspath(_batch_settings(context).out_dir))
        jobs = finished_jobs(out_dir)
        if not jobs:
            self.report({"WARNING"}, f"No finished jobs in {out_dir}")
            return {"CANCELLED"}
        imported = 0
        for name, folder in jobs:
            if name in bpy.data.collections:
                continue          # imported before
            collection = bpy.data.collections.new(name)
            context.scene.collection.children.link(collection)
            blend, glb, fbx = folder / "head.blend", folder / "head.glb", folder / "head.fbx"
            if blend.is_file():
                with bpy.data.libraries.load(str(blend), link=False) as (src, dst):
                    dst.objects = list(src.objects)
                for obj in dst.objects:
                    if obj is not None:
                        collection.objects.link(obj)
            else:
                layer = context.view_layer.layer_collection.children[collection.name]
                context.view_layer.active_layer_collection = layer
                if glb.is_file():
                    bpy.ops.import_scene.gltf(filepath=str(glb))
                elif fbx.is_file():
                    bpy.ops.import_scene.fbx(filepath=str(fbx))
            imported += 1
        self.report({"INFO"}, f"Imported {imported} job(s) from {out_dir}")
        return {"FINISHED"}


class FACEFORGE_OT_batch_report(bpy.types.Operator):
    bl_idname = "faceforge.batch_report"
    bl_label = "Open Report"
    bl_description = "Open the batch's report.html (every job's state, figures, thumbnail and error)"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        settings = _batch_settings(context)
        return settings is not None and os.path.isfile(
            os.path.join(bpy.path.abspath(settings.out_dir), "report.html"))

    def execute(self, context):
        path = os.path.abspath(os.path.join(bpy.path.abspath(_batch_settings(context).out_dir), "report.html"))
        bpy.ops.wm.url_open(url=Path(path).as_uri())
        return {"FINISHED"}


def register_settings() -> None:
    """Scene.faceforge_batch (called by the Batch panel's own register, so the add-on's lists of operators
    and panels stay operators and panels)."""
    for cls in SETTINGS:
        bpy.utils.register_class(cls)


def unregister_settings() -> None:
    for cls in reversed(SETTINGS):
        if cls.is_registered:
            bpy.utils.unregister_class(cls)


SETTINGS = (FaceForgeBatchItem, FaceForgeBatchSettings)
CLASSES = (FACEFORGE_OT_batch_add, FACEFORGE_OT_batch_remove, FACEFORGE_OT_batch_run, FACEFORGE_OT_batch_stop,
           FACEFORGE_OT_batch_import, FACEFORGE_OT_batch_report)
