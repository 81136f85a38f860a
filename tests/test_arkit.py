"""ARKit recordings (Live Link Face CSV): parsing good, partial and bad files; mapping onto a head's
shape keys (ARKit, ICT-style and PCA names); the head-rotation conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from core.models.arkit import ARKIT_NAMES, shape_key_layout
from core.track.arkit_recording import (DEFAULT_FPS, arkit_targets, drive_shape_keys, head_rotations,
                                        load_recording)

# Live Link Face writes a few columns out of Apple's order (JawRight before JawLeft, MouthRight before MouthLeft)
LLF_ORDER = list(ARKIT_NAMES)
for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")):
    i, j = LLF_ORDER.index(a), LLF_ORDER.index(b)
    LLF_ORDER[i], LLF_ORDER[j] = LLF_ORDER[j], LLF_ORDER[i]
HEAD = ["HeadYaw", "HeadPitch", "HeadRoll"]
EYES = ["LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]

# the default ICT head's expression components (ARKit names where one-to-one, ICT's own otherwise)
ICT_COMPONENTS = ([n for n in ARKIT_NAMES if n not in ("browInnerUp", "cheekPuff", "tongueOut")]
                  + ["browInnerUp_L", "browInnerUp_R", "cheekPuff_L", "cheekPuff_R",
                     "cheekRaiser_L", "cheekRaiser_R", "PupilDilate_L", "PupilDilate_R"])
ICT_KEYS = shape_key_layout(ICT_COMPONENTS)[0]            # + the combined browInnerUp / cheekPuff keys


def timecode(frame: int, fps: int, start=(12, 34, 56, 0), sub: str = ".250") -> str:
    h, m, s, f = start
    n = ((h * 60 + m) * 60 + s) * fps + f + frame
    f, s_all = n % fps, n // fps
    return f"{s_all // 3600 % 24:02d}:{s_all // 60 % 60:02d}:{s_all % 60:02d}:{f:02d}{sub}"


def write_llf(path: Path, values, head=None, eyes=None, fps=60, start=(12, 34, 56, 50), columns=None,
              timecodes=None, extra_row=None) -> Path:
    """A Live Link Face-style CSV: Timecode, BlendShapeCount, capitalised ARKit columns, head + eye angles."""
    columns = LLF_ORDER if columns is None else columns
    T = len(values)
    header = ["Timecode", "BlendShapeCount"] + [c[0].upper() + c[1:] for c in columns]
    header += HEAD if head is not None else []
    header += EYES if eyes is not None else []
    lines = [",".join(header)]
    for t in range(T):
        tc = timecodes[t] if timecodes is not None else timecode(t, fps, start)
        row = [tc, "61"] + [f"{values[t][ARKIT_NAMES.index(c)]:.6f}" for c in columns]
        row += [f"{x:.6f}" for x in head[t]] if head is not None else []
        row += [f"{x:.6f}" for x in np.ravel(eyes[t])] if eyes is not None else []
        lines.append(",".join(row))
    if extra_row is not None:
        lines.append(extra_row)
    path.write_text("\n".join(lines) + "\n")
    return path


def random_take(T, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, size=(T, 52)).astype(np.float32)
    head = rng.uniform(-0.4, 0.4, size=(T, 3))
    eyes = rng.uniform(-0.3, 0.3, size=(T, 2, 3))
    return values, head, eyes


def rot(axis, angle):
    """Rotation by ``angle`` about a unit axis, right-handed (Rodrigues), independent of the module."""
    k = np.asarray(axis, float)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


# ----------------------------------------------------------------------------- good files
def test_reads_a_live_link_face_take(tmp_path):
    values, head, eyes = random_take(90)
    rec = load_recording(write_llf(tmp_path / "take.csv", values, head, eyes, fps=60))
    assert rec.n_frames == 90 and rec.names == ARKIT_NAMES and rec.missing == []
    assert rec.values.dtype == np.float32 and rec.values.shape == (90, 52)
    np.testing.assert_allclose(rec.values, values, atol=1e-6)          # by name, despite LLF's column order
    np.testing.assert_allclose(rec.channel("jawLeft"), values[:, ARKIT_NAMES.index("jawLeft")], atol=1e-6)
    np.testing.assert_allclose(rec.head, head, atol=1e-6)
    np.testing.assert_allclose(rec.eyes, eyes, atol=1e-6)
    assert rec.fps == 60 and rec.fps_inferred and rec.warnings == []
    np.testing.assert_allclose(rec.times, np.arange(90) / 60, atol=1e-9)
    np.testing.assert_array_equal(rec.frame_offsets(), np.arange(90))
    assert rec.timecodes[0] == "12:34:56:50.250" and rec.timecodes[10] == "12:34:57:00.250"


@pytest.mark.parametrize("fps", [24, 25, 30, 50, 60])
def test_frame_rate_is_inferred_from_the_timecodes(tmp_path, fps):
    values, _, _ = random_take(2 * fps + 7, seed=fps)
    rec = load_recording(write_llf(tmp_path / "take.csv", values, fps=fps, start=(1, 2, 3, 0)))
    assert rec.fps == fps and rec.fps_inferred
    np.testing.assert_array_equal(rec.frame_offsets(), np.arange(len(values)))


def test_subframes_and_jitter(tmp_path):
    # 60 rows a second on a 30 fps timecode: the rows carry .0 / .5 subframes
    T = 100
    tcs = [timecode(t // 2, 30, (0, 0, 1, 20), ".%03d" % (500 * (t % 2))) for t in range(T)]
    rec = load_recording(write_llf(tmp_path / "half.csv", random_take(T)[0], timecodes=tcs))
    assert rec.fps == 60
    np.testing.assert_array_equal(rec.frame_offsets(), np.arange(T))
    # real takes jitter in the subframe: rows still land on whole frames at the inferred rate
    rng = np.random.default_rng(1)
    tcs = [timecode(t, 60, (0, 0, 1, 40), ".%03d" % rng.integers(300, 700)) for t in range(T)]
    rec = load_recording(write_llf(tmp_path / "jitter.csv", random_take(T)[0], timecodes=tcs))
    assert rec.fps == 60
    np.testing.assert_array_equal(rec.frame_offsets(), np.arange(T))
    np.testing.assert_allclose(rec.frame_offsets(24), np.arange(T) * 0.4)   # retimed to another scene rate


def test_frame_rate_override_and_short_takes(tmp_path):
    values, _, _ = random_take(10)
    path = write_llf(tmp_path / "short.csv", values, fps=60, start=(0, 0, 0, 20))   # frames 20..29 of one second
    rec = load_recording(path)
    assert rec.fps == 30 and any("under a second" in w for w in rec.warnings)       # a guess, and said so
    rec = load_recording(path, fps=60)
    assert rec.fps == 60 and not rec.fps_inferred
    np.testing.assert_allclose(rec.times, np.arange(10) / 60, atol=1e-9)
    path = write_llf(tmp_path / "long.csv", random_take(70)[0], fps=60, start=(0, 0, 0, 50))
    with pytest.raises(InputError, match=r"frame numbers go up to 59.*more than the 30 fps given"):
        load_recording(path, fps=30)
    with pytest.raises(InputError, match="positive"):
        load_recording(path, fps=-1)


def test_timecodes_across_midnight(tmp_path):
    values, _, _ = random_take(30)
    rec = load_recording(write_llf(tmp_path / "late.csv", values, fps=30, start=(23, 59, 59, 15)))
    assert rec.timecodes[-1].startswith("00:00:00:")
    np.testing.assert_allclose(rec.times, np.arange(30) / 30, atol=1e-9)


def test_partial_and_reordered_columns(tmp_path):
    values, head, _ = random_take(12)
    cols = ["jawOpen", "eyeBlinkLeft", "browInnerUp", "mouthSmileRight"]
    path = tmp_path / "partial.csv"
    lines = ["Notes,HEADYAW,jawopen,EYEBLINKLEFT,Timecode,BrowInnerUp,mouthSmile_R,HeadPitch,HeadRoll"]
    for t in range(12):
        v = [values[t][ARKIT_NAMES.index(c)] for c in cols]
        lines.append(f"take one,{head[t, 0]},{v[0]},{v[1]},{timecode(t, 60, (0, 0, 1, 55))},{v[2]},{v[3]},"
                     f"{head[t, 1]},{head[t, 2]}")
    path.write_text("\r\n".join(lines) + "\r\n\r\n")          # CRLF and a trailing blank line
    rec = load_recording(path)
    assert sorted(rec.channels) == sorted(cols) and len(rec.missing) == 48 and "tongueOut" in rec.missing
    for c in cols:
        np.testing.assert_allclose(rec.channel(c), values[:, ARKIT_NAMES.index(c)], atol=1e-6)
    assert np.all(rec.channel("cheekPuff") == 0)
    np.testing.assert_allclose(rec.head, head, atol=1e-6)
    assert rec.eyes is None and rec.fps == 60 and rec.warnings == []


def test_no_timecode_no_head_semicolons_and_bom(tmp_path):
    values, _, _ = random_take(5)
    path = tmp_path / "excel.csv"
    rows = [";".join(["EyeBlinkLeft", "JawOpen", "HeadYaw"])]
    rows += [";".join(f"{values[t][ARKIT_NAMES.index(c)]:.4f}" for c in ("eyeBlinkLeft", "jawOpen")) + ";0.1"
             for t in range(5)]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode())
    rec = load_recording(path)
    assert rec.channels == ["eyeBlinkLeft", "jawOpen"] and rec.timecodes is None
    assert rec.head is None and any("HeadPitch" in w for w in rec.warnings)        # partial head: said so
    assert rec.fps == DEFAULT_FPS and any("no Timecode column" in w for w in rec.warnings)
    np.testing.assert_allclose(rec.channel("jawOpen"), values[:, ARKIT_NAMES.index("jawOpen")], atol=1e-4)
    assert load_recording(path, fps=24).fps == 24
    # spreadsheets' "Unicode text" (UTF-16) reads too
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("\n".join(rows).encode("utf-16"))
    np.testing.assert_array_equal(load_recording(utf16).values, rec.values)


# ----------------------------------------------------------------------------- bad files
HEADER = "Timecode,BlendShapeCount,EyeBlinkLeft,JawOpen"


@pytest.mark.parametrize("content, match", [
    ("", "is empty"),
    ("\n\n  \n", "is empty"),
    (HEADER + "\n", "header but no frames"),
    ("0.1,0.2,0.3\n0.4,0.5,0.6\n", "has no header line: line 1 is numbers"),
    ("name,age\nbob,3\n", r"no ARKit blendshape column \(its header reads: name, age\)"),
    (HEADER + "\n00:00:00:01.0,61,0.1,0.2\n00:00:00:02.0,61,0.1,abc\n",
     r"line 3, column 'JawOpen' \(column 4\): 'abc' is not a number"),
    (HEADER + "\n00:00:00:01.0,61,0.1,0.2\n00:00:00:02.0,61,,0.2\n", r"line 3, column 'EyeBlinkLeft'.*an empty cell"),
    (HEADER + "\n00:00:00:01.0,61,0.1,nan\n", "line 2, column 'JawOpen'.*'nan' is not a number"),
    (HEADER + "\n00:00:00:01.0,61,0.1,0.2\n00:00:00:02.0,61,0.1\n",
     r"line 3 has 3 values but the header \(line 1\) names 4 columns"),
    (HEADER + "\n00:00:00:05.0,61,0.1,0.2\n00:00:00:04.0,61,0.1,0.2\n",
     r"line 3: timecode 00:00:00:04.0 does not come after 00:00:00:05.0 \(line 2\)"),
    (HEADER + "\n00:00:00:05.0,61,0.1,0.2\n00:00:00:05.0,61,0.1,0.2\n", "does not come after"),
    (HEADER + "\nyesterday,61,0.1,0.2\n", "line 2: timecode 'yesterday' is not hh:mm:ss:ff"),
    (HEADER + "\n00:00:00:250.0,61,0.1,0.2\n", "frame numbers go up to 250"),
    (HEADER + "\n00:00:00:01.0,61,0.1,0.2\n0.5,61,0.1,0.2\n", "line 3: timecode '0.5' mixes"),
])
def test_bad_csv_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "take.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_recording(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_recording(tmp_path / "nope.csv")
    png = tmp_path / "photo.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(InputError, match="not a text CSV"):
        load_recording(png)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"EyeBlinkLeft\n0.1\xff\xfe\n")
    with pytest.raises(InputError, match="not a text CSV"):
        load_recording(latin)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match="not found"):
        load_recording(tmp_path / "dir.csv")


# ----------------------------------------------------------------------------- onto a head's shape keys
def test_mapping_onto_the_default_ict_head(tmp_path):
    values, head, _ = random_take(20)
    rec = load_recording(write_llf(tmp_path / "take.csv", values, head))
    drive = drive_shape_keys(rec, ICT_KEYS)
    assert drive.unused == ["tongueOut"] and drive.not_recorded == []
    assert sorted(drive.keys) == sorted(n for n in ARKIT_NAMES if n != "tongueOut")   # combined keys, not halves
    assert not {"browInnerUp_L", "browInnerUp_R", "cheekPuff_L", "cheekRaiser_L", "PupilDilate_L"} & set(drive.keys)
    assert drive.values.shape == (20, 51) and drive.values.dtype == np.float32
    for key, channel in zip(drive.keys, drive.channels):
        assert key == channel
        np.testing.assert_array_equal(drive.values[:, drive.keys.index(key)], rec.channel(channel))


def test_mapping_onto_ict_names_without_combined_keys():
    # ICT's raw names: _L/_R suffixes, browInnerUp / cheekPuff only as halves
    keys = ["eyeBlink_L", "eyeBlink_R", "jawOpen", "browInnerUp_L", "browInnerUp_R", "cheekRaiser_L"]
    targets = arkit_targets(keys)
    assert targets == {"eyeBlinkLeft": ["eyeBlink_L"], "eyeBlinkRight": ["eyeBlink_R"], "jawOpen": ["jawOpen"],
                       "browInnerUp": ["browInnerUp_L", "browInnerUp_R"]}          # both halves, same value
    # an exact ARKit name beats its alias (never both: that would double the motion); case is forgiven
    assert arkit_targets(["eyeBlink_L", "eyeBlinkLeft", "JAWOPEN"]) == {"eyeBlinkLeft": ["eyeBlinkLeft"],
                                                                        "jawOpen": ["JAWOPEN"]}


def test_mapping_reports_what_the_recording_lacks(tmp_path):
    values, _, _ = random_take(4)
    rec = load_recording(write_llf(tmp_path / "two.csv", values, columns=["jawOpen", "browInnerUp", "tongueOut"]))
    drive = drive_shape_keys(rec, ["eyeBlinkLeft", "jawOpen", "browInnerUp_L", "browInnerUp_R"])
    assert drive.keys == ["jawOpen", "browInnerUp_L", "browInnerUp_R"]
    assert drive.channels == ["jawOpen", "browInnerUp", "browInnerUp"]
    assert drive.unused == ["tongueOut"] and drive.not_recorded == ["eyeBlinkLeft"]
    np.testing.assert_array_equal(drive.values[:, 1], drive.values[:, 2])
    only_tongue = load_recording(write_llf(tmp_path / "tongue.csv", values, columns=["tongueOut"]))
    with pytest.raises(InputError, match=r"None of the recording's channels \(tongueOut\) has a shape key"):
        drive_shape_keys(only_tongue, ICT_KEYS)


@pytest.mark.parametrize("keys", [[f"expr_{i:02d}" for i in range(24)],          # the face-mask head's PCA keys
                                  ["jaw_open", "smile", "brow_raise"], []])
def test_heads_without_arkit_keys_are_refused(tmp_path, keys):
    rec = load_recording(write_llf(tmp_path / "take.csv", random_take(3)[0]))
    with pytest.raises(InputError, match="have no ARKit names .*default model") as err:
        drive_shape_keys(rec, keys)
    assert (keys[0] if keys else "none") in str(err.value)
    if len(keys) > 6:
        assert "(24 keys)" in str(err.value)


# ----------------------------------------------------------------------------- head rotation
def test_head_rotation_conventions():
    forward, up, left = np.array([0, 0, 1.0]), np.array([0, 1.0, 0]), np.array([1.0, 0, 0])
    R = head_rotations([[0.0, 0.0, 0.0], [0.4, 0, 0], [0, 0.4, 0], [0, 0, 0.4]])
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-12)
    yaw, pitch, roll = R[1], R[2], R[3]
    assert (yaw @ forward)[0] > 0.3 and abs((yaw @ up) - up).max() < 1e-12          # face turns to its left
    assert (pitch @ forward)[1] < -0.3 and abs((pitch @ left) - left).max() < 1e-12  # face tips down
    assert (roll @ up)[0] < -0.3 and abs((roll @ forward) - forward).max() < 1e-12   # top toward its right shoulder
    # composition: yaw last (heading / elevation / bank); every one a proper rotation
    rng = np.random.default_rng(0)
    ypr = rng.uniform(-1, 1, size=(16, 3))
    R = head_rotations(ypr)
    for (y, p, r), Ri in zip(ypr, R):
        np.testing.assert_allclose(Ri, rot(up, y) @ rot(left, p) @ rot(forward, r), atol=1e-12)
    np.testing.assert_allclose(R @ np.transpose(R, (0, 2, 1)), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


def test_timecodes_in_plain_seconds(tmp_path):
    path = tmp_path / "seconds.csv"
    path.write_text("Timecode,JawOpen\n" + "".join(f"{10 + t / 30:.5f},{t / 10}\n" for t in range(8)))
    rec = load_recording(path)
    assert rec.fps == 30 and rec.fps_inferred
    np.testing.assert_array_equal(rec.frame_offsets(), np.arange(8))
    np.testing.assert_allclose(rec.channel("jawOpen"), np.arange(8) / 10, atol=1e-6)
