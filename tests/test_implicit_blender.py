"""Implicit Head from Video in Blender, end to end at a tiny scale (the plumbing, not the quality: a
synthetic clip saved as frames + its true track, a few training steps): one object with a single
topology whose blendshape weights are keyed on every clip frame, the clip's camera, a checkpoint
that the next run resumes from; a track of another video is refused with the scene untouched."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.core.implicit.synthetic import make_clip  # noqa: E402
from blender_addon.core.models.builtin import load_embedded  # noqa: E402
from blender_addon.core.track.track_file import Track, model_fingerprint, save_track  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def clip_on_disk(tmp_path, T=6, size=40):
    import cv2
    model = load_embedded("ict")
    clip = make_clip(model, n_frames=T, size=size, seed=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, img in enumerate(clip.images):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), (img[..., ::-1] * 255).astype(np.uint8))
    track = Track(video_path=str(folder), fps=25.0, frame_start=0, image_size=(size, size), model_name=model.name,
                  model_source=model.source, model_fingerprint=model_fingerprint(model), shape=clip.shape,
                  expr=clip.expr, joint_pose=np.zeros((T, 0, 3), np.float32), rotation=clip.rotation,
                  translation=clip.translation, focal=clip.focal, cx=clip.cx, cy=clip.cy, valid=np.ones(T, bool),
                  confidence=np.ones(T, np.float32))
    path = tmp_path / "frames.fftrack.npz"
    save_track(track, path)
    return folder, path, T


def test_implicit_head_from_video_builds_one_animated_object(empty_scene, tmp_path):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))    # the checkpoint goes beside it
    folder, track, T = clip_on_disk(tmp_path)
    kw = dict(filepath=str(folder), track_file=str(track), steps=60, size=24, max_frames=4, resolution=32)
    assert bpy.ops.faceforge.implicit_head_from_video(**kw) == {"FINISHED"}
    head = bpy.context.view_layer.objects.active
    assert head.type == "MESH" and head.get("faceforge_implicit_checkpoint") == str(tmp_path / "frames.ffimplicit.pt")
    keys = head.data.shape_keys
    names = [k.name for k in keys.key_blocks if k != keys.reference_key]
    assert names and all(n.startswith("pc") for n in names)
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (1, T)
    # keyed: every frame's shape differs (expressions change), the vertex count never does
    deps = bpy.context.evaluated_depsgraph_get()
    counts, shapes = set(), []
    for f in (1, T):
        scene.frame_set(f)
        me = head.evaluated_get(deps).to_mesh()
        co = np.zeros(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        counts.add(len(me.vertices))
        shapes.append(co)
        head.evaluated_get(deps).to_mesh_clear()
    assert len(counts) == 1 and np.abs(shapes[0] - shapes[1]).max() > 1e-5
    # Preview: the learned head at the current frame, from the checkpoint, into an image
    # (with the video moved away, so the head is drawn over plain grey and can be told from the frame)
    scene.frame_set(3)
    folder.rename(tmp_path / "moved")
    assert bpy.ops.faceforge.preview_implicit_head(width=48) == {"FINISHED"}
    (tmp_path / "moved").rename(folder)
    image = bpy.data.images["FaceForge Preview"]
    assert tuple(image.size) == (48, 48)
    px = np.array(image.pixels[:]).reshape(48, 48, 4)[::-1, :, :3]
    truth = make_clip(load_embedded("ict"), n_frames=T, size=40, seed=3).masks[2]     # scene frame 3 = clip frame 2
    import cv2
    truth = cv2.resize(truth.astype(np.uint8), (48, 48), interpolation=cv2.INTER_NEAREST) > 0
    grey = np.abs(px - 0.25).max(-1) < 1e-3                                            # no video frame: grey behind
    msg = bpy.context.window_manager.faceforge_job.last_message
    assert "frame 3" in msg and "could not be read" in msg
    head_px = ~grey                         # 60 steps at 24 px: a rough head, where the person is
    assert 0 < head_px.sum() and (head_px & truth).sum() / (head_px | truth).sum() > 0.5
    assert np.abs(np.argwhere(head_px).mean(0) - np.argwhere(truth).mean(0)).max() < 4.0
    # the checkpoint: a second run with more steps resumes where the first stopped
    assert bpy.ops.faceforge.implicit_head_from_video(**dict(kw, steps=64)) == {"FINISHED"}
    assert "resumed at step 60" in bpy.context.window_manager.faceforge_job.last_message


def test_a_track_of_another_video_is_refused(empty_scene, tmp_path):
    folder, track, _ = clip_on_disk(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    before = sorted(o.name for o in bpy.data.objects)
    with pytest.raises(RuntimeError, match="not of 'other'"):
        bpy.ops.faceforge.implicit_head_from_video(filepath=str(other), track_file=str(track), steps=2, size=16,
                                                   max_frames=2, resolution=32)
    assert sorted(o.name for o in bpy.data.objects) == before


def test_cli_implicit_head_then_preview(tmp_path):
    """``faceforge implicit`` writes the GLB and the checkpoint beside it; ``faceforge preview-implicit``
    renders a frame of it to a PNG and never overwrites one unless told."""
    import subprocess
    import sys

    import cv2
    from tests.test_addon import ROOT
    folder, track, T = clip_on_disk(tmp_path)
    cli = [sys.executable, str(ROOT / "blender_addon" / "cli.py")]
    glb = tmp_path / "out" / "head.glb"
    r = subprocess.run(cli + ["implicit", folder, "--track-file", track, "--steps", "30", "--size", "24", "--frames", "4",
                              "--resolution", "32", "--glb", glb], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    ck = tmp_path / "out" / "head.ffimplicit.pt"
    assert glb.stat().st_size > 10_000 and ck.is_file()
    png = tmp_path / "frame2.png"
    r = subprocess.run(cli + ["preview-implicit", ck, "--frame", "2", "--width", "40", "--out", png],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert cv2.imread(str(png)).shape == (40, 40, 3) and "frame 2 rendered" in r.stdout
    r = subprocess.run(cli + ["preview-implicit", ck, "--frame", "2", "--out", png], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = subprocess.run(cli + ["preview-implicit", ck, "--frame", str(T), "--out", tmp_path / "x.png"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "outside the clip" in r.stderr and not (tmp_path / "x.png").exists()
