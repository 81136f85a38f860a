"""Fixtures shared by the tests that drive the add-on through the bpy module.

Import them into a test module (``from tests.blender_support import addon_registered,
empty_scene``); they are not in conftest.py so tests that never touch Blender do not import bpy.
"""

import bpy
import pytest

import blender_addon


@pytest.fixture(scope="module", autouse=True)
def addon_registered():
    """The add-on registered for the module's tests (left as found afterwards)."""
    was = hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo")
    if not was:
        blender_addon.register()
    yield
    if not was and hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo"):
        blender_addon.unregister()


@pytest.fixture
def empty_scene():
    """A factory-fresh empty file and no job left running from an earlier test."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.runner._set_active(None)
    yield bpy.context
    blender_addon.runner._set_active(None)
