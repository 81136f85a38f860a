"""The "Batch" sub-panel: a list of jobs (photos, photo sets, videos), where their files go, how Ray runs
them; Run Batch starts ``faceforge batch`` as its own process and the panel follows its ledger."""

from __future__ import annotations

import os

import bpy

from ..operators import batch as batch_ops
from ..widgets import hint as _hint
from .panels import _Step


class FACEFORGE_PT_batch(_Step, bpy.types.Panel):
    bl_idname = "FACEFORGE_PT_batch"
    bl_label = "Batch"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def register(cls):
        batch_ops.register_settings()          # the panel's settings (Scene.faceforge_batch) come and go with it

    @classmethod
    def unregister(cls):
        batch_ops.unregister_settings()

    @classmethod
    def poll(cls, context):
        return hasattr(context.scene, "faceforge") and hasattr(context.scene, "faceforge_batch")

    def draw_header(self, context):
        self.layout.label(icon="SEQ_STRIP_DUPLICATE")

    def draw(self, context):
        layout = self.layout
        settings = context.scene.faceforge_batch
        row = layout.row(align=True)
        row.operator("faceforge.batch_add", text="Add Files", icon="ADD")
        op = row.operator("faceforge.batch_add", text="Add Set", icon="FILE_FOLDER")
        op.as_set = True
        box = layout.box()
        if not settings.items:
            _hint(box, "No jobs yet: add photos, videos or a folder of photos of one person")
        col = box.column(align=True)
        for i, item in enumerate(settings.items):
            r = col.row(align=True)
            parts = [p for p in item.path.split(";") if p]
            name = os.path.basename(os.path.normpath(parts[0])) if parts else "?"
            if len(parts) > 1:
                name += f" +{len(parts) - 1}"
            r.prop(item, "kind", text="", icon_only=True)
            r.label(text=name)
            r.operator("faceforge.batch_remove", text="", icon="X", emboss=False).index = i
        if len(settings.items) > 1:
            box.operator("faceforge.batch_remove", text="Clear", icon="TRASH").index = -1
        layout.prop(settings, "out_dir", text="Output")
        row = layout.row(align=True)
        row.prop(settings, "write_fbx", toggle=True)
        row.prop(settings, "write_glb", toggle=True)
        row.prop(settings, "write_blend", toggle=True)
        col = layout.column(align=True)
        col.prop(settings, "address", text="Cluster")
        if not settings.address.strip():
            col.label(text="Empty: local Ray", icon="INFO")
        row = col.row(align=True)
        row.prop(settings, "cpus_per_job", text="CPUs")
        row.prop(settings, "gpus_per_job", text="GPUs")
        col.prop(settings, "max_retries", text="Retries per Job")
        col.prop(settings, "timeout", text="Time Limit (s)")
        run = batch_ops.current_run()
        if run is not None and run.running:
            if hasattr(layout, "progress"):          # Blender 4.0+
                layout.progress(factor=_fraction(run), text=run.text())
            else:
                layout.label(text=run.text(), icon="SORTTIME")
            layout.operator("faceforge.batch_stop", icon="CANCEL")
        else:
            layout.operator("faceforge.batch_run", icon="PLAY")
            if run is not None and run.message:
                _hint(layout, run.message, icon="CHECKMARK" if run.returncode == 0 else "INFO")
        row = layout.row(align=True)
        row.operator("faceforge.batch_import", icon="IMPORT", text="Import")
        row.operator("faceforge.batch_report", icon="URL", text="Report")


def _fraction(run) -> float:
    c = run.counts
    finished = sum(c.get(s, 0) for s in ("done", "failed", "crashed", "timeout"))
    return finished / max(1, run.total)


CLASSES = (FACEFORGE_PT_batch,)
