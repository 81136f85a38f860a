"""FaceForge: photos of a person become a rigged 3D head in Blender.

This folder is both a legacy add-on (``bl_info``, Blender 3.4+) and a 4.2+ extension
(``blender_manifest.toml``). Everything it bundles is imported relatively, so it works
as ``faceforge``, ``bl_ext.<repo>.faceforge`` or, in a source checkout, ``blender_addon``.
Registering needs neither torch nor numpy: missing packages are reported in the panel.
"""

bl_info = {
    "name": "FaceForge",
    "author": "FaceForge contributors",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D Viewport > Sidebar > FaceForge",
    "description": "Fit 3D morphable face models to photos and build a rigged head",
    "doc_url": "",
    "category": "Import-Export",
}

import bpy  # noqa: E402

from . import engine  # noqa: E402,F401  (exposes the engine as <package>.core)
from . import dependencies, operators, preferences, properties, runner, ui  # noqa: E402

CLASSES = preferences.CLASSES + properties.CLASSES + runner.CLASSES + operators.CLASSES + ui.CLASSES


def register():
    dependencies.add_deps_to_path()   # packages installed by "Install Dependencies" in an earlier session
    engine.block_triton()             # its LLVM crashes a process that also loaded Mesa's (see engine.py)
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_props()
    runner.register_props()


def unregister():
    runner.unregister_props()
    properties.unregister_props()
    for cls in reversed(CLASSES):
        if cls.is_registered:
            bpy.utils.unregister_class(cls)
