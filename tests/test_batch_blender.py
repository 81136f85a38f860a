"""The Batch sub-panel's operators through the bpy module: jobs added from files, Run Batch writes the
manifest and starts `faceforge batch` as its own process (a local Ray instance), the panel's timer
follows the ledger to the end, and Import Results brings the finished head in."""

from __future__ import annotations

import shutil
import time

import bpy
import pytest

import blender_addon
from tests.blender_support import addon_registered, empty_scene  # noqa: F401  (fixtures)
from tests.media import feat_data

pytest.importorskip("ray")
pytestmark = pytest.mark.blender


@pytest.fixture
def fresh_file_after():
    """The test changes the scene's model choice and imports heads: leave a factory-fresh file behind."""
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)


def test_batch_panel_runs_the_cli_and_imports_the_results(empty_scene, fresh_file_after, tmp_path):
    import cv2
    import skimage.data

    from core.batch import load_jobs

    batch = blender_addon.operators.batch
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(feat_data() / "single_face.jpg", media / "man.jpg")
    cv2.imwrite(str(media / "coffee.png"), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))   # no face
    scene = bpy.context.scene
    scene.faceforge.model_source = "BUILTIN"          # the panel's model choice: the light face mask
    settings = scene.faceforge_batch
    bpy.ops.faceforge.batch_add(directory=str(media), files=[{"name": "man.jpg"}, {"name": "coffee.png"}])
    assert [(i.kind, i.path) for i in settings.items] == [("photo", str(media / "man.jpg")),
                                                           ("photo", str(media / "coffee.png"))]
    out = tmp_path / "out"
    settings.out_dir = str(out)
    settings.write_fbx = False
    assert bpy.ops.faceforge.batch_run.poll()
    assert bpy.ops.faceforge.batch_run() == {"FINISHED"}
    assert not bpy.ops.faceforge.batch_run.poll(), "one batch at a time"

    jobs = load_jobs(out / "manifest.toml")
    assert [(j.name, j.kind, j.model, j.outputs) for j in jobs] == [
        ("man", "photo", "facemask", ("glb", "blend")), ("coffee", "photo", "facemask", ("glb", "blend"))]

    # what bpy.app.timers does in a window: follow the batch once a second until its process ends
    deadline = time.monotonic() + 240
    while batch.poll_batch() is not None:
        assert time.monotonic() < deadline, (out / "batch.log").read_text()[-3000:]
        time.sleep(0.5)
    run = batch.current_run()
    log = (out / "batch.log").read_text()
    assert run.returncode == 1, log[-3000:]            # one job failed: exit code 1
    assert run.counts == {"done": 1, "failed": 1}, log[-3000:]
    assert run.message.startswith("Finished: 1 done, 1 failed")
    assert "No face found" in log and (out / "report.html").is_file()

    assert bpy.ops.faceforge.batch_import() == {"FINISHED"}
    collection = bpy.data.collections["man"]
    meshes = [o for o in collection.objects if o.type == "MESH"]
    assert meshes and len(meshes[0].data.vertices) == 468       # the face mask (its GLB splits UV seams: 490)
    assert "coffee" not in bpy.data.collections
    assert bpy.ops.faceforge.batch_import() == {"FINISHED"}       # again: nothing twice
    assert len([c for c in bpy.data.collections if c.name.startswith("man")]) == 1


def test_stop_ends_the_batch_cleanly_and_says_so(empty_scene, fresh_file_after, tmp_path):
    from core.batch import read_progress

    batch = blender_addon.operators.batch
    shutil.copy(feat_data() / "single_face.mp4", tmp_path / "clip.mp4")
    bpy.context.scene.faceforge.model_source = "BUILTIN"
    settings = bpy.context.scene.faceforge_batch
    bpy.ops.faceforge.batch_add(directory=str(tmp_path), files=[{"name": "clip.mp4"}])
    assert [i.kind for i in settings.items] == ["track"]
    out = tmp_path / "out"
    settings.out_dir = str(out)
    settings.write_fbx = settings.write_blend = False
    assert bpy.ops.faceforge.batch_run() == {"FINISHED"}
    deadline = time.monotonic() + 120
    while read_progress(out).get("running", 0) < 1:
        assert time.monotonic() < deadline and batch.poll_batch() is not None
        time.sleep(0.2)
    time.sleep(1.0)
    assert bpy.ops.faceforge.batch_stop() == {"FINISHED"}
    while batch.poll_batch() is not None:
        assert time.monotonic() < deadline + 60
        time.sleep(0.3)
    run = batch.current_run()
    assert run.returncode == 130, (out / "batch.log").read_text()[-3000:]
    assert run.message.startswith("Stopped: 0 done") and run.counts == {"cancelled": 1}
    assert not (out / "clip").exists() and not bpy.ops.faceforge.batch_stop.poll()
    assert bpy.ops.faceforge.batch_run.poll()                  # free to run (continue) again
