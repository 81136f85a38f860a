"""``faceforge.reconstruct_photos``: several photos of one person -> one textured, rigged head.

Same pattern as reconstruct.py. ``finish`` saves the baked skin texture (next to the .blend file as
``//<head>_albedo.png`` when the file is saved, never overwriting; otherwise in a temp folder and
packed into the .blend so nothing is lost), builds the head with its seam-aware UVs and an Image
Texture on the material, and adds one camera per photo (named after it, the photo behind it); the
most frontal photo's camera becomes the scene camera.
"""

import json
import os

import bpy
from bpy.props import BoolProperty, CollectionProperty, IntProperty, StringProperty

from ..engine import core, load_pipeline
from ..runner import JobOperator
from .reconstruct import IMAGE_GLOB, BrowseFirst, EngineOptions, pipeline_job, warnings_of

TEXTURE_SIZES = (256, 512, 1024, 2048, 4096)


class FACEFORGE_OT_reconstruct_photos(BrowseFirst, EngineOptions, JobOperator, bpy.types.Operator):
    bl_idname = "faceforge.reconstruct_photos"
    bl_label = "Reconstruct from Photos"
    bl_description = ("Fit one head to several photos of the same person (select several files, or a folder): "
                      "a shared identity, a skin texture baked from all photos and a camera per photo. "
                      "Runs in the background: Esc or Cancel stops it and changes nothing")
    bl_options = {"UNDO"}

    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(name="Folder", subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
                              description="The photos' folder (all its photos are used when no file is selected)")
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: StringProperty(default=IMAGE_GLOB, options={"HIDDEN", "SKIP_SAVE"})
    texture_size: IntProperty(name="Texture Size", default=0, min=0, max=4096, options={"SKIP_SAVE"},
                              description="Skin texture size in pixels (512, 1024 or 2048); 0 uses the panel's choice")

    def has_input(self) -> bool:
        return bool(self.directory or self._names())

    def _names(self) -> list:
        return [f.name for f in self.files if f.name]

    def inputs(self) -> list:
        folder = bpy.path.abspath(self.directory) if self.directory else ""
        names = self._names()
        if names:
            return [n if os.path.isabs(n) else os.path.join(folder, n) for n in names]
        return [folder] if folder else []

    def prepare(self, context):
        inputs = self.inputs()
        if not inputs:
            raise core.errors.InputError("No photos were given: select several photos of one person, or a folder.")
        for p in inputs:
            if not os.path.exists(p):
                raise core.errors.ImageReadError(f"The photo '{p}' does not exist.")
        size = int(self.texture_size or context.scene.faceforge.texture_size)
        if size not in TEXTURE_SIZES:
            raise core.errors.InputError(f"Texture size {size} is not supported; use 512, 1024 or 2048.")
        model, device = self.model_spec(context), self.device_name(context)
        self._inputs = inputs

        return pipeline_job(lambda: load_pipeline(), "reconstruct_photos", inputs, model=model, device=device,
                            texture_size=size)

    # -- scene (main thread, rolled back by the runner if anything raises) ---------------------
    def finish(self, context, result):
        from ..scene.placement import placement_note
        from ..scene.texture import build_textured_head
        pipeline, rec = load_pipeline(), result
        rig = rec.rig
        built, image, where = build_textured_head(context, rig, lambda path: pipeline.save_texture(rec, path))
        head = built["mesh"]
        head["faceforge_photos"] = json.dumps([str(p) for p in rec.image_paths])
        model_name = getattr(getattr(rec, "model", None), "name", None)
        if model_name:
            head["faceforge_model"] = str(model_name)
        self.add_warnings(warnings_of(rec), head)
        if len(self._inputs) == 1 and os.path.isdir(self._inputs[0]):
            context.scene.faceforge.photos_dir = self._inputs[0]
        w, h = image.size
        return (f"Built '{head.name}' from {len(rec.image_paths)} photos: {len(head.data.vertices)} vertices, "
                f"{w}x{h} texture {where}, {len(built['cameras'])} photo cameras") + placement_note(built)


CLASSES = (FACEFORGE_OT_reconstruct_photos,)
