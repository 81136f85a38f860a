"""FaceForge engine: bpy-free (torch + numpy).

Inside this package only relative imports are used, so the Blender add-on can
vendor it as ``faceforge.core`` without clashing with another add-on's ``core``.
"""

__version__ = "0.1.0"
