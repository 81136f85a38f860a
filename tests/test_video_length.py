"""A video whose header claims more frames than decode (a truncated mp4): the tracker counts what decodes,
says so once, keeps frame ranges coherent with that count, reports each kind of face gap once with
counts that add up, and the Blender scene covers the decoded frames only.

The clip: 60 frames of scikit-image's astronaut portrait, moving a little, with a 2-frame and a
16-frame stretch of blank wall; its moov atom moved before the media data (as ``faststart`` does)
and the file then cut short, so the header still says 60 frames while about 42 decode.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.scene import head_builder  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.track.shots import runs  # noqa: E402
from core.track.smoothing import fill_gaps  # noqa: E402
from core.track.tracker import gap_warnings, track_video  # noqa: E402
from core.track.video import open_frames  # noqa: E402

pytestmark = pytest.mark.blender

HEADER_FRAMES = 60
SHORT_GAP = (10, 12)      # interpolated (max_gap is 12)
LONG_GAP = (20, 36)       # hidden


def _boxes(buf, start, end):
    """Top-level ISO-BMFF boxes of buf[start:end]: (type, box start, payload start, box end)."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[i:i + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", buf[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        yield kind, i, i + head, i + size
        i += size


def _faststart(data: bytes) -> bytes:
    """The moov atom moved in front of mdat, chunk offsets (stco/co64) shifted to match."""
    top = list(_boxes(data, 0, len(data)))
    _, m0, _, m1 = next(b for b in top if b[0] == b"moov")
    moov = bytearray(data[m0:m1])

    def shift(s, e):
        for kind, _, body, end in _boxes(moov, s, e):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                shift(body, end)
            elif kind in (b"stco", b"co64"):
                n = struct.unpack(">I", moov[body + 4:body + 8])[0]
                size, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
                for k in range(n):
                    o = body + 8 + k * size
                    moov[o:o + size] = struct.pack(fmt, struct.unpack(fmt, moov[o:o + size])[0] + len(moov))
    shift(8, len(moov))
    mdat = next(b for b in top if b[0] == b"mdat")
    rest = b"".join(data[b[1]:b[3]] for b in top if b[1] >= mdat[1] and b[0] != b"moov")
    return data[:mdat[1]] + bytes(moov) + rest


def decoded_count(path) -> tuple:
    """(header's frame count, frames that decode), read here with OpenCV directly."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    header, n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return header, n


@pytest.fixture(scope="module")
def truncated_clip(tmp_path_factory):
    import cv2
    from skimage import data

    folder = tmp_path_factory.mktemp("truncated")
    full = folder / "full.mp4"
    face = cv2.resize(data.astronaut()[:, :, ::-1], (320, 320), interpolation=cv2.INTER_AREA)
    w = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 320))
    for i in range(HEADER_FRAMES):
        if SHORT_GAP[0] <= i < SHORT_GAP[1] or LONG_GAP[0] <= i < LONG_GAP[1]:
            frame = np.full_like(face, 90)                      # a wall: no face
        else:
            M = np.float32([[1, 0, 3 * np.sin(i / 4)], [0, 1, 2 * np.cos(i / 5)]])
            frame = cv2.warpAffine(face, M, (320, 320), borderMode=cv2.BORDER_REFLECT)
        w.write(frame)
    w.release()
    moved = _faststart(full.read_bytes())
    assert decoded_count_of_bytes(folder / "moved.mp4", moved) == (HEADER_FRAMES, HEADER_FRAMES)
    _, _, body, end = next(b for b in _boxes(moved, 0, len(moved)) if b[0] == b"mdat")
    clip = folder / "cut.mp4"
    clip.write_bytes(moved[: body + int(0.6 * (end - body))])   # the tail of the media data is gone
    header, decoded = decoded_count(clip)
    # the case of the issue: the header still claims every frame, the data holds fewer
    assert header == HEADER_FRAMES and LONG_GAP[1] + 2 <= decoded < HEADER_FRAMES, (header, decoded)
    return clip, decoded


def decoded_count_of_bytes(path: Path, data: bytes) -> tuple:
    path.write_bytes(data)
    return decoded_count(path)


# ----------------------------------------------------------------------------- the frame source
def test_frame_source_counts_what_decodes(truncated_clip):
    clip, decoded = truncated_clip
    src = open_frames(clip)
    assert src.n_frames == HEADER_FRAMES and src.length_warning() == ""     # nothing read yet: the header's word
    indices = [i for i, _ in src.frames()]
    assert indices == list(range(decoded))
    assert src.n_frames == decoded
    assert src.length_warning() == f"The video's header says {HEADER_FRAMES} frames but {decoded} decode"
    # sequential skipping lands on the same frame as reading through
    import cv2
    cap = cv2.VideoCapture(str(clip))
    for _ in range(7):
        cap.read()
    want = cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)
    cap.release()
    np.testing.assert_array_equal(open_frames(clip).read(7), want)
    with pytest.raises(InputError, match=f"header says {HEADER_FRAMES} frames but {decoded} decode"):
        open_frames(clip).read(decoded + 3)


# ----------------------------------------------------------------------------- the tracker
@pytest.fixture(scope="module")
def track(truncated_clip):
    return track_video(truncated_clip[0], "builtin", "cpu")


def test_track_has_the_decoded_length_and_one_clear_warning(track, truncated_clip):
    _, decoded = truncated_clip
    assert track.n_frames == decoded and track.timings["frames"] == decoded
    length = [w for w in track.warnings if "header" in w]
    assert length == [f"The video's header says {HEADER_FRAMES} frames but {decoded} decode; tracking {decoded}."]
    # no frame past the data is reported as "no face"
    assert not any(f"-{HEADER_FRAMES - 1}" in w for w in track.warnings), track.warnings
    # gaps: one message per kind, counts that add up to the frames without a face
    missing = int((~track.valid).sum())
    assert not track.valid[SHORT_GAP[0]:SHORT_GAP[1]].any() and not track.valid[LONG_GAP[0]:LONG_GAP[1]].any()
    short = [w for w in track.warnings if "interpolated" in w]
    held = [w for w in track.warnings if "hidden" in w]
    assert len(short) == 1 and len(held) == 1, track.warnings
    n_short = int(short[0].split("No face in ")[1].split(" frame")[0])
    n_held = int(held[0].split("(")[1].split(" frame")[0])
    assert n_short + n_held == missing
    assert f"frames {LONG_GAP[0]}-{LONG_GAP[1] - 1} ({LONG_GAP[1] - LONG_GAP[0]} frames)" in held[0]
    assert np.isfinite(track.expr).all()


def test_frame_ranges_are_checked_against_the_decoded_count(truncated_clip, track):
    clip, decoded = truncated_clip
    # a range past the data: a clear error naming both counts, not "no face in frames ..."
    with pytest.raises(InputError, match=(rf"cut\.mp4 has {decoded} decodable frames \(its header says "
                                          rf"{HEADER_FRAMES}\), so the frame range {decoded + 2}-{HEADER_FRAMES} "
                                          r"holds none; tracking needs 2 or more")):
        track_video(clip, "builtin", "cpu", frame_range=(decoded + 2, HEADER_FRAMES))
    with pytest.raises(InputError, match="fewer than 2 frames"):
        track_video(clip, "builtin", "cpu", frame_range=(5, 6))


def test_gap_warnings_count_every_missing_frame_once():
    valid = np.ones(40, bool)
    valid[:2] = False          # clip start: hidden even though short
    valid[10:13] = False       # short: interpolated
    valid[20:35] = False       # long: hidden
    valid[38:] = False         # clip end: hidden
    _, held = fill_gaps(np.zeros((40, 1)), valid, max_gap=12)
    assert held == [(0, 2), (20, 35), (38, 40)]
    assert held == runs(~np.isin(np.arange(40), np.arange(40)[np.r_[2:20, 35:38]]))   # = outside the segments
    msgs = gap_warnings(valid, held, start=100, max_gap=12)
    assert msgs == ["No face in 3 frames in short gaps (at most 12 frames each): the pose is interpolated there.",
                    "No face in frames 100-101, 120-134, 138-139 (19 frames): the head is hidden there (keyed "
                    "visibility): a gap this long is never bridged."]
    assert gap_warnings(np.ones(5, bool), [], 0, 12) == []


# ----------------------------------------------------------------------------- the Blender scene
def test_blender_scene_spans_the_decoded_frames(truncated_clip, empty_scene):
    clip, decoded = truncated_clip
    res = bpy.ops.faceforge.track_video(filepath=str(clip), model="builtin", device="CPU", save_track=False)
    assert res == {"FINISHED"}
    scene = bpy.context.scene
    head = head_builder.find_head(bpy.context)
    # clip frames 0..decoded-1 -> Blender frames 1..decoded (frame = clip frame + 1)
    assert (scene.frame_start, scene.frame_end) == (1, decoded)
    assert list(head["faceforge_frames"]) == [0, decoded]
    import json
    warnings = json.loads(head["faceforge_warnings"])
    assert sum("header says" in w for w in warnings) == 1
    assert sum("interpolated" in w for w in warnings) == 1 and sum("hidden" in w for w in warnings) == 1
    message = bpy.context.window_manager.faceforge_job.last_message
    assert f"animated over {decoded} frames (scene frames 1-{decoded}" in message
