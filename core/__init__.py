"""FaceForge engine: bpy-free (torch + numpy).

Inside this package only relative imports are used, so the Blender add-on can
vendor it as ``faceforge.core`` without clashing with another add-on's ``core``.
"""

__version__ = "0.1.0"

from .triton_guard import block_triton as _block_triton

_block_triton()   # before torch can import it: see triton_guard.py
