"""Per-scene settings (``scene.faceforge``): the workflow's inputs, saved with the .blend file."""

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

TEXTURE_SIZE_ITEMS = (
    ("512", "512", "512 x 512 pixels: quick"),
    ("1024", "1024", "1024 x 1024 pixels"),
    ("2048", "2048", "2048 x 2048 pixels: sharpest, slowest to bake"),
)

MODEL_ITEMS = (
    ("FULL_HEAD", "Full Head", "ICT-FaceKit's full head, shipped with the add-on: eyes, teeth, UVs, quads, "
                               "ARKit-named expressions (the default)"),
    ("BUILTIN", "Face Mask", "A light 468-vertex face mask, shipped with the add-on: fastest, face only"),
    ("CUSTOM", "Custom", "The model file set in the add-on preferences (FLAME .pkl or FaceForge .npz)"),
)
# the engine's name for each embedded choice
MODEL_NAMES = {"FULL_HEAD": "ict", "BUILTIN": "facemask"}
# names the engine reads as embedded models rather than file paths (core/models/builtin.py ALIASES)
EMBEDDED_MODEL_NAMES = ("", "default", "ict", "ict_facekit", "facemask", "builtin")


def _photo_changed(self, context):
    # a face number belongs to one photo: a new photo starts from the automatic choice
    self.face_index = -1
    self.faces_found = 0


class FaceForgeSceneSettings(bpy.types.PropertyGroup):
    model_source: EnumProperty(
        name="Model",
        description="Which morphable head model the next reconstruction fits",
        items=MODEL_ITEMS,
        default="FULL_HEAD",
    )
    photo_path: StringProperty(
        name="Photo",
        description="A photo of one face, looking roughly at the camera (jpg, png, ...)",
        subtype="FILE_PATH",
        default="",
        update=_photo_changed,
    )
    face_index: IntProperty(
        name="Face",
        description="Which face of the photo to reconstruct, counted from the left starting at 0; -1 takes the "
                    "most confident one",
        min=-1, default=-1,
    )
    faces_found: IntProperty(
        name="Faces Found",
        description="How many faces the last reconstruction found in the photo (the Face choice shows when "
                    "there were several)",
        min=0, default=0,
    )
    photos_dir: StringProperty(
        name="Photos",
        description="A folder with several photos of one person (different angles): one textured head",
        subtype="DIR_PATH",
        default="",
    )
    texture_size: EnumProperty(
        name="Texture Size",
        description="Size of the skin texture baked from the photos",
        items=TEXTURE_SIZE_ITEMS,
        default="1024",
    )
    video_path: StringProperty(
        name="Video",
        description="A video of one face (mp4, mov, avi, mkv) or a folder of frames, for Track Video",
        subtype="FILE_PATH",
        default="",
    )
    track_frame_start: IntProperty(
        name="Start",
        description="First clip frame to track (counted from 0; the scene shows it at frame start + 1)",
        min=0, default=0,
    )
    track_frame_end: IntProperty(
        name="End",
        description="Clip frame to stop before (exclusive); 0 tracks to the end of the clip",
        min=0, default=0,
    )
    track_refine: BoolProperty(
        name="Photometric Refinement",
        description="Also match the pixels on every frame (slower)",
        default=False,
    )
    track_save: BoolProperty(
        name="Save Track File",
        description="Write <video>.fftrack.npz next to the .blend file (or in the temp folder) to re-import "
                    "later without tracking again; existing files are never overwritten",
        default=True,
    )
    track_path: StringProperty(
        name="Track File",
        description="The last track file written or imported",
        subtype="FILE_PATH",
        default="",
    )
    style_path: StringProperty(
        name="Style",
        description="A style learned with Learn Style (.ffstyle.pt): what Apply Style puts on a head",
        subtype="FILE_PATH",
        default="",
    )
    style_iterations: IntProperty(
        name="Iterations",
        description="Fine-tuning steps when learning a style (LeGO uses about 100)",
        min=1, max=5000, default=100,
    )


def register_props():
    bpy.types.Scene.faceforge = PointerProperty(type=FaceForgeSceneSettings)


def unregister_props():
    if hasattr(bpy.types.Scene, "faceforge"):
        del bpy.types.Scene.faceforge


CLASSES = (FaceForgeSceneSettings,)
