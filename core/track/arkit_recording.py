"""ARKit blendshape recordings (the CSV Epic's Live Link Face app writes) and how they drive a head.

File format (one take of Live Link Face)::

    Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
        LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll
    18:10:21:43.483,61,0.112,0.034,...

- ``Timecode`` is ``hh:mm:ss:ff.sss``: ``ff`` counts frames at the recording's rate (0 .. fps-1)
  and ``.sss`` is a fraction of a frame. The rate is not written anywhere: it is inferred as the
  standard rate that makes the timecodes evenly spaced across second boundaries (or given).
- The 52 blendshape values are 0..1; head and eye angles are radians. The app writes some columns
  out of Apple's order (``JawRight`` before ``JawLeft``), so columns are found by name,
  case-insensitively; extra columns (``BlendShapeCount``, anything else) are ignored.

Head rotation, in FaceForge model space (x to the model's left, y up, +z out of the face):
``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (yaw applied last, as heading / elevation / bank), with

- positive **yaw** turning the face toward its own left (+z toward +x),
- positive **pitch** tipping the face down, chin toward the chest (+z toward -y),
- positive **roll** tilting the top of the head toward its own right shoulder (+y toward -x).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..models.arkit import ARKIT_NAMES, COMBINED, arkit_name

HEAD_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll")
EYE_COLUMNS = (("LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll"), ("RightEyeYaw", "RightEyePitch", "RightEyeRoll"))
# timecode rates a recording may count frames at; the smallest consistent one wins
STANDARD_RATES = (24, 25, 30, 48, 50, 60, 72, 90, 100, 120, 240)
DEFAULT_FPS = 60.0          # Live Link Face's capture rate, used when a file has no timecodes
_STEPS = (0.25, 1 / 3, 0.5, 1.0, 2.0, 3.0, 4.0)   # timecode frames between rows in practice
_DAY = 24 * 3600
_TIMECODE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;.](\d+)(\.\d+)?\s*$")
_LOWER = {n.lower(): n for n in ARKIT_NAMES}


@dataclass
class ArkitRecording:
    """One take: every ARKit channel per frame (Apple's order), head / eye angles, timing."""
    path: str
    names: list                         # ARKIT_NAMES: the columns of ``values``
    values: np.ndarray                  # (T, 52) float32; channels the file lacks are 0
    missing: list                       # ARKit channels the file has no column for
    times: np.ndarray                   # (T,) seconds since the first row
    fps: float                          # the recording's frame rate
    fps_inferred: bool                  # False when given by the caller
    timecodes: Optional[list] = None    # the rows' timecode strings (None: the file has none)
    head: Optional[np.ndarray] = None   # (T, 3) yaw, pitch, roll in radians
    eyes: Optional[np.ndarray] = None   # (T, 2, 3) left / right eye yaw, pitch, roll in radians
    warnings: list = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(len(self.values))

    @property
    def channels(self) -> list:
        """The ARKit channels the file has, in Apple's order."""
        return [n for n in self.names if n not in self.missing]

    def channel(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def frame_offsets(self, fps: Optional[float] = None) -> np.ndarray:
        """(T,) each row's frame at ``fps`` (default: the recording's) counted from the first row.

        At the recording's own rate rows land on whole frames (subframe jitter in the timecodes is
        dropped) unless that would put two rows on one frame; at another rate they are retimed."""
        f = self.times * float(self.fps)
        whole = np.round(f)
        if len(f) < 2 or np.all(np.diff(whole) > 0):
            f = whole
        return f if fps is None else f * (float(fps) / float(self.fps))


# ----------------------------------------------------------------------------- reading
def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"ARKit recording not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"Cannot read the ARKit recording {path}: {exc}") from exc
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):   # "Unicode text" saved by spreadsheets
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    elif b"\x00" not in raw[:65536]:
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            pass
    raise InputError(f"{path.name} is not a text CSV file (it looks binary, or is not UTF-8 text): "
                     "choose the .csv that Live Link Face wrote for the take.")


def _delimiter(line: str) -> str:
    # Live Link Face writes commas; a spreadsheet in some locales re-saves with ';' or tabs
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _column_name(header: str) -> Optional[str]:
    """A header cell -> the ARKit name it holds (``EyeBlinkLeft``, ``eyeBlink_L`` ...), else None."""
    key = header.strip().lower()
    if key in _LOWER:
        return _LOWER[key]
    for suffix, side in (("_l", "left"), ("_r", "right")):
        if key.endswith(suffix) and key[:-2] + side in _LOWER:
            return _LOWER[key[:-2] + side]
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numbers(rows, lines, header, cols, name) -> np.ndarray:
    """The cells of ``cols`` as float64 (rows, len(cols)); a bad cell is named by line and column."""
    cells = [[r[j].strip() for j in cols] for r in rows]
    try:
        out = np.array(cells, dtype=np.float64).reshape(len(rows), len(cols))
    except ValueError:
        out = None
    if out is not None and np.isfinite(out).all():
        return out
    for i, row in enumerate(cells):
        for k, cell in enumerate(row):
            try:
                ok = np.isfinite(float(cell))
            except ValueError:
                ok = False
            if not ok:
                shown = f"'{cell}'" if cell else "an empty cell"
                raise InputError(f"{name}, line {lines[i]}, column '{header[cols[k]].strip()}' (column {cols[k] + 1}): "
                                 f"{shown} is not a number.")
    raise InputError(f"{name}: some values are not numbers.")   # (the loop above names the cell first)


def _timing(timecodes, lines, fps, name) -> tuple:
    """Timecode strings -> (seconds since the first row, fps, inferred?, warnings)."""
    sec, frame = np.empty(len(timecodes)), np.empty(len(timecodes))
    kinds = set()
    for i, tc in enumerate(timecodes):
        m = _TIMECODE.match(tc)
        if m is not None:
            h, mi, s, f = (int(g) for g in m.groups()[:4])
            sec[i] = h * 3600 + mi * 60 + s
            frame[i] = f + (float(m.group(5)) if m.group(5) else 0.0)
            kinds.add("timecode")
        elif _is_number(tc) and np.isfinite(float(tc)):          # plain seconds
            sec[i], frame[i] = float(tc), 0.0
            kinds.add("seconds")
        else:
            raise InputError(f"{name}, line {lines[i]}: timecode '{tc}' is not hh:mm:ss:ff (as Live Link Face "
                             "writes it) nor a number of seconds.")
        if len(kinds) > 1:
            raise InputError(f"{name}, line {lines[i]}: timecode '{tc}' mixes hh:mm:ss:ff timecodes with plain "
                             "seconds in one column.")
    plain = kinds == {"seconds"}
    warnings = []
    if plain:
        t = sec - sec[0]
    elif fps:
        if frame.max() >= fps:
            raise InputError(f"{name}: timecode frame numbers go up to {int(frame.max())}, so the recording was "
                             f"made at more than the {fps:g} fps given.")
        t = sec - sec[0] + (frame - frame[0]) / fps
    else:
        # the timecode rate: the smallest standard rate above every frame number whose timecodes are
        # evenly spaced across second boundaries (a wrong one jumps at each wrap of the frame number)
        top = int(np.floor(frame.max()))
        rates = [r for r in STANDARD_RATES if r > top]
        if not rates:
            raise InputError(f"{name}: timecode frame numbers go up to {top}, above every usual frame rate; "
                             "give the recording's frame rate.")
        best = None
        for r in rates:
            n = sec * r + frame
            d = np.diff(n)
            bad = int(np.sum(np.abs(d - np.median(d)) > 0.25 * max(np.median(d), 1e-9))) if len(d) else 0
            if best is None or bad < best[0]:
                best = (bad, r)
        rate = best[1]
        if len(timecodes) > 1 and sec.max() == sec.min():
            warnings.append(f"The recording lasts under a second: its frame rate ({rate} fps) is a guess from its "
                            "frame numbers; give it if it is different.")
        t = sec - sec[0] + (frame - frame[0]) / rate
    # a take that runs past midnight starts its timecodes again at 00:00:00
    d = np.diff(t)
    d[d < -_DAY / 2] += _DAY
    t = np.concatenate([[0.0], np.cumsum(d)])
    bad = np.nonzero(d <= 0)[0]
    if len(bad):
        i = int(bad[0]) + 1
        raise InputError(f"{name}, line {lines[i]}: timecode {timecodes[i]} does not come after "
                         f"{timecodes[i - 1]} (line {lines[i - 1]}): the rows must be in time order, one per frame.")
    inferred = not fps
    if not fps:
        if plain:
            fps = 1.0 / float(np.median(d)) if len(d) else DEFAULT_FPS
        else:   # rows per second: the timecode rate, or more when rows carry subframes (.5 at 60 rows/s on 30)
            step = float(np.median(np.diff(sec * rate + frame))) if len(d) else 1.0
            nice = min(_STEPS, key=lambda s: abs(step - s))
            fps = rate / (nice if abs(step - nice) < 0.2 * nice else step)   # subframe jitter is not a rate
        snapped = [r for r in STANDARD_RATES + (23.976, 29.97, 59.94) if abs(fps - r) < 0.01 * r]
        fps = float(min(snapped, key=lambda r: abs(fps - r))) if snapped else float(fps)
    return t, float(fps), inferred, warnings


def load_recording(path, fps: Optional[float] = None) -> ArkitRecording:
    """Read an ARKit blendshape CSV (Live Link Face's, or any with ARKit-named columns).

    ``fps``: the recording's frame rate (the rate its timecodes count frames in); None infers it.
    Raises ``InputError`` with the line and column of anything it cannot use."""
    path = Path(path)
    name = path.name
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise InputError(f"The frame rate must be a positive number, got {fps}.")
    text = _read_text(path)
    lines_all = text.splitlines()
    first = next((i for i, ln in enumerate(lines_all) if ln.strip()), None)
    if first is None:
        raise InputError(f"{name} is empty: a Live Link Face recording starts with a header line "
                         "(Timecode,BlendShapeCount,EyeBlinkLeft,...) followed by one line per frame.")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(lines_all[first]))
    header, rows, lines = None, [], []
    try:
        for row in reader:
            if not any(c.strip() for c in row):
                continue                                   # blank lines (e.g. at the end)
            if header is None:
                header = row
                continue
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise InputError(f"{name}, line {reader.line_num}: not valid CSV ({exc}).") from exc
    header_line = first + 1

    # columns by name
    arkit_cols, head_cols, eye_cols, time_col, warnings = {}, {}, {}, None, []
    lowered = [h.strip().lower() for h in header]
    for j, h in enumerate(header):
        a = _column_name(h)
        if a is not None:
            if a in arkit_cols:
                warnings.append(f"Column '{h.strip()}' repeats {a}: the first one is used.")
            else:
                arkit_cols[a] = j
    for wanted, out in ((HEAD_COLUMNS, head_cols), (EYE_COLUMNS[0] + EYE_COLUMNS[1], eye_cols)):
        for col in wanted:
            if col.lower() in lowered:
                out[col] = lowered.index(col.lower())
    if "timecode" in lowered:
        time_col = lowered.index("timecode")
    if not arkit_cols:
        if all(_is_number(h) for h in header if h.strip()):
            raise InputError(f"{name} has no header line: line {header_line} is numbers. A Live Link Face CSV "
                             "starts with Timecode,BlendShapeCount,EyeBlinkLeft,... naming its columns.")
        shown = ", ".join(h.strip() for h in header[:6]) + (", ..." if len(header) > 6 else "")
        raise InputError(f"{name} has no ARKit blendshape column (its header reads: {shown}). Expected the "
                         "columns Live Link Face writes: EyeBlinkLeft, JawOpen, MouthSmileLeft, ... "
                         "(ARKit's 52 names).")
    if not rows:
        raise InputError(f"{name} has a header but no frames: the take is empty.")
    width = len(header)
    for row, ln in zip(rows, lines):
        if len(row) != width and not (len(row) > width and not any(c.strip() for c in row[width:])):
            raise InputError(f"{name}, line {ln} has {len(row)} values but the header (line {header_line}) names "
                             f"{width} columns: the file is truncated or was edited by hand.")

    T = len(rows)
    order = [a for a in ARKIT_NAMES if a in arkit_cols]
    values = np.zeros((T, len(ARKIT_NAMES)), np.float32)
    got = _numbers(rows, lines, header, [arkit_cols[a] for a in order], name)
    values[:, [ARKIT_NAMES.index(a) for a in order]] = got
    missing = [a for a in ARKIT_NAMES if a not in arkit_cols]

    head = None
    if len(head_cols) == 3:
        head = _numbers(rows, lines, header, [head_cols[c] for c in HEAD_COLUMNS], name).astype(np.float32)
    elif head_cols:
        warnings.append(f"Head rotation needs {', '.join(HEAD_COLUMNS)}; the file has only "
                        f"{', '.join(head_cols)}: no head rotation.")
    eyes = None
    if len(eye_cols) == 6:
        eyes = _numbers(rows, lines, header, [eye_cols[c] for c in EYE_COLUMNS[0] + EYE_COLUMNS[1]], name)
        eyes = eyes.reshape(T, 2, 3).astype(np.float32)

    timecodes = None
    if time_col is not None:
        timecodes = [r[time_col].strip() for r in rows]
        times, rate, inferred, more = _timing(timecodes, lines, fps, name)
        warnings += more
    else:
        rate = float(fps) if fps else DEFAULT_FPS
        inferred = not fps
        times = np.arange(T, dtype=np.float64) / rate
        if inferred:
            warnings.append(f"{name} has no Timecode column: one row per frame at {DEFAULT_FPS:g} fps assumed; "
                            "give the frame rate if it is different.")
    return ArkitRecording(path=str(path), names=list(ARKIT_NAMES), values=values, missing=missing, times=times,
                          fps=rate, fps_inferred=inferred, timecodes=timecodes, head=head, eyes=eyes,
                          warnings=warnings)


# ----------------------------------------------------------------------------- onto a head's shape keys
def arkit_targets(key_names) -> dict:
    """ARKit channel -> the shape keys it drives on a head whose keys are ``key_names``.

    A key named exactly as the channel wins; else the ICT-style ``_L``/``_R`` variant
    (``eyeBlink_L`` for ``eyeBlinkLeft``), else a case-insensitive match; ``browInnerUp`` and
    ``cheekPuff`` drive the combined key if the head has one, else both halves (never both, which
    would double the motion). Raises ``InputError`` when no key has an ARKit name."""
    keys = [str(k) for k in key_names]
    have = set(keys)
    alias, lower = {}, {}
    for k in keys:
        a = arkit_name(k)
        if a != k and a in ARKIT_NAMES:
            alias.setdefault(a, k)
        lower.setdefault(k.lower(), k)
    out = {}
    for a in ARKIT_NAMES:
        if a in have:
            out[a] = [a]
        elif a in COMBINED and all(h in have for h in COMBINED[a]):
            out[a] = list(COMBINED[a])
        elif a in alias:
            out[a] = [alias[a]]
        elif a.lower() in lower:
            out[a] = [lower[a.lower()]]
    if not out:
        shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} keys)" if len(keys) > 6 else "")
        raise InputError(
            f"The head's shape keys ({shown or 'none'}) have no ARKit names (eyeBlinkLeft, jawOpen, ...), so an "
            "ARKit recording cannot drive them. Build the head with the default model (ICT-FaceKit, ARKit-named "
            "expressions), or rename its shape keys to ARKit names.")
    return out


@dataclass
class KeyDrive:
    """A recording mapped onto one head: the values to key on each of its shape keys."""
    keys: list                  # shape-key names that receive a channel
    channels: list              # the ARKit channel each of ``keys`` receives
    values: np.ndarray          # (T, len(keys)) float32
    unused: list                # channels in the recording that no shape key receives (tongueOut on ICT heads)
    not_recorded: list          # channels the head has keys for but the recording lacks (those keys stay as they are)


def drive_shape_keys(recording: ArkitRecording, key_names) -> KeyDrive:
    """Map ``recording`` onto the shape keys ``key_names`` (see ``arkit_targets``)."""
    targets = arkit_targets(key_names)
    present = set(recording.channels)
    keys, channels, cols = [], [], []
    for a, ks in targets.items():
        if a not in present:
            continue
        for k in ks:
            keys.append(k)
            channels.append(a)
            cols.append(recording.names.index(a))
    if not keys:
        raise InputError(f"None of the recording's channels ({', '.join(recording.channels)}) has a shape key on "
                         f"this head (it has {', '.join(sorted(targets))}).")
    return KeyDrive(keys=keys, channels=channels, values=recording.values[:, cols].copy(),
                    unused=[a for a in recording.channels if a not in targets],
                    not_recorded=[a for a in targets if a not in present])


# ----------------------------------------------------------------------------- head rotation
def head_rotations(yaw_pitch_roll) -> np.ndarray:
    """(T, 3) yaw, pitch, roll in radians -> (T, 3, 3) rotations in model space (see the module docstring)."""
    a = np.asarray(yaw_pitch_roll, dtype=np.float64).reshape(-1, 3)
    cy, sy = np.cos(a[:, 0]), np.sin(a[:, 0])
    cp, sp = np.cos(a[:, 1]), np.sin(a[:, 1])
    cr, sr = np.cos(a[:, 2]), np.sin(a[:, 2])
    one, zero = np.ones_like(cy), np.zeros_like(cy)
    Ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], 1)
    Rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], 1)
    Rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], 1)
    return Ry @ Rx @ Rz
