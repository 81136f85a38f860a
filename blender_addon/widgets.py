"""Small drawing helpers shared by the sidebar panels and the add-on preferences.

Its own module so that ``preferences`` and ``ui.panels`` both use it without importing each other.

Text is wrapped to the width of the region being drawn, measured with Blender's own font (``blf``,
at the UI's text size and scale), so no line ends in Blender's "..." clipping. Paths inside a
message get a line of their own, shortened in the middle to fit, as a borderless button whose
tooltip is the full path (a label has no tooltip); clicking it copies the path.
"""

import re

import bpy

from . import runner

WRAP = 30   # characters per line when the region's width is unknown (a default-width sidebar)
# pixels (at UI scale 1) a label's text is narrower than its region: the panel's margins, the
# sidebar's tab strip and the icon column; measured on Blender 3.4's sidebar
LABEL_INSET = 84
CHAR_EM = 0.52      # average glyph width / font size, when blf cannot measure
BUTTON_PAD = 8      # pixels (at UI scale 1) a borderless button's text is narrower than a label's
PATH_OPERATOR = "faceforge.copy_path"
ELLIPSIS = "\u2026"

# a path in a message: quoted ('/a b/c.png'), or unquoted from a root (/x, ~/x, C:\x, //x) to a space
_PATH = re.compile(r"'((?:[A-Za-z]:|~|/)?[/\\][^']*)'|(?<![\w.'])((?:[A-Za-z]:|~)?[/\\][^\s,;'\"]*[^\s,;:.'\")])")


def ui_scale(context) -> float:
    prefs = getattr(context, "preferences", None)
    system = getattr(prefs, "system", None)
    scale = float(getattr(system, "ui_scale", 0.0) or 0.0)      # 0 without a window (background)
    if scale <= 0:
        scale = float(getattr(getattr(prefs, "view", None), "ui_scale", 1.0) or 1.0)
    return scale


def _blf_size(blf, size: float) -> None:
    try:
        blf.size(0, size)
    except TypeError:           # Blender 3.x: (fontid, size, dpi)
        blf.size(0, size, 72)


def text_measure(context):
    """A function giving a string's width in pixels as the UI draws it (blf at the widget text size)."""
    try:
        points = float(context.preferences.ui_styles[0].widget.points)
    except (AttributeError, IndexError):
        points = 11.0
    size = points * ui_scale(context)
    try:
        import blf
        _blf_size(blf, size)
        if blf.dimensions(0, "MMMM")[0] > 0:
            def measure(text):
                _blf_size(blf, size)        # other drawing code may have changed it since
                return blf.dimensions(0, text)[0]
            return measure
    except Exception:   # noqa: BLE001 - no font system (some background builds): estimate
        pass
    return lambda text: len(text) * CHAR_EM * size


def line_space(context, inset: float = LABEL_INSET):
    """(width, measure) for wrapping a label in the region being drawn; ``(WRAP, len)`` if it is unknown."""
    region = getattr(context, "region", None)
    width = getattr(region, "width", 0) or 0
    if width <= 1:
        return WRAP, len
    scale = ui_scale(context)
    return max(40.0 * scale, width - inset * scale), text_measure(context)


def _split_long(word: str, width, measure) -> list:
    """Pieces of a word too long for one line, broken after path separators where possible."""
    out, rest = [], word
    while rest and measure(rest) > width:
        cut = 1
        while cut < len(rest) and measure(rest[:cut + 1]) <= width:
            cut += 1
        seps = [i + 1 for i in range(cut) if rest[i] in "/\\"]
        if seps and seps[-1] > cut // 2:
            cut = seps[-1]
        out.append(rest[:cut])
        rest = rest[cut:]
    return out + ([rest] if rest else [])


def wrap(text: str, width, measure=len) -> list:
    """Lines of ``text`` no wider than ``width`` as ``measure`` counts (characters by default, pixels with
    a blf measure); a word wider than a line is broken (after a slash when it is a path)."""
    out = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split():
            candidate = f"{line} {word}" if line else word
            if measure(candidate) <= width:
                line = candidate
                continue
            if line:
                out.append(line)
            pieces = _split_long(word, width, measure)
            out.extend(pieces[:-1])
            line = pieces[-1] if pieces else ""
        out.append(line)
    return out


def shorten_path(path: str, width, measure=len) -> str:
    """``path`` if it fits ``width``, else its start and end around an ellipsis, cut at folder boundaries:
    the file name always, then as many whole folders from both ends as fit. A name too long on its
    own is shown alone, its two ends kept (the extension included)."""
    path = str(path)
    if measure(path) <= width:
        return path
    seps = [i for i, ch in enumerate(path) if ch in "/\\"]
    best, kept = None, -1
    for t in reversed(seps):                          # the tail starts at separator t (kept)
        for h in [0] + [i + 1 for i in seps if i < t]:    # the head ends after a separator (or is empty)
            candidate = path[:h] + ELLIPSIS + path[t:]
            n = h + len(path) - t
            if n > kept and measure(candidate) <= width:
                best, kept = candidate, n
    if best is not None:
        return best
    name = path[seps[-1] + 1:] if seps else path      # the name is what tells files apart: its two ends
    keep = len(name) - 1
    while keep > 1:
        a = (keep + 1) // 2
        candidate = name[:a] + ELLIPSIS + name[len(name) - (keep - a):]
        if measure(candidate) <= width:
            return candidate
        keep -= 1
    return name[:1] + ELLIPSIS


def split_paths(text: str) -> list:
    """``[("text", str) | ("path", str)]``: the message with its file paths taken out (text between two
    paths that is only punctuation, like ", ", is dropped)."""
    text = str(text)
    out, pos = [], 0
    for m in _PATH.finditer(text):
        path = m.group(1) or m.group(2)
        before = text[pos:m.start()]
        if before.strip(" ,;:"):
            out.append(("text", before.strip()))
        out.append(("path", path))
        pos = m.end()
    rest = text[pos:]
    if rest.strip(" ,;:.") or not out:
        out.append(("text", rest.strip()))
    return out


def draw_path(layout, path: str, width=None, measure=len, icon: str = "FILE_FOLDER") -> None:
    """One line: ``path`` shortened to fit, as a borderless button whose tooltip is the full path."""
    if width is None:
        width, measure = line_space(bpy.context)
    # a button pads its text a little more than a label does
    inner = width - (BUTTON_PAD * ui_scale(bpy.context) if measure is not len else 1)
    op = layout.operator(PATH_OPERATOR, text=shorten_path(path, inner, measure), icon=icon, emboss=False)
    op.path = str(path)


def hint(layout, text: str, icon: str = "INFO", alert: bool = False) -> None:
    """A message as labels wrapped to the region's width, its paths as lines of their own (``draw_path``)."""
    width, measure = line_space(bpy.context)
    col = layout.column(align=True)
    col.alert = alert
    first = True
    for kind, piece in split_paths(text):
        if kind == "path":
            draw_path(col, piece, width, measure, icon=icon if first else "FILE_FOLDER")
            first = False
            continue
        for line in wrap(piece, width, measure):
            col.label(text=line, icon=icon if first else "BLANK1")
            first = False


def last_warnings(st) -> list:
    """The last job's warnings (``FaceForgeJobStatus.last_warnings``, one per line)."""
    return [w for w in getattr(st, "last_warnings", "").split("\n") if w.strip()]


def draw_job_status(layout, context) -> None:
    """Progress bar + Cancel while a job runs; how the last one ended otherwise. Shared with the preferences."""
    st = runner.status(context)
    if st is None:
        return
    if st.running:
        box = layout.box()
        box.label(text=f"{st.label}…", icon="SORTTIME")
        box.label(text="Cancelling…" if st.cancelling else st.stage.capitalize())
        row = box.row(align=True)
        if hasattr(row, "progress"):        # Blender 4.0+
            row.progress(factor=st.fraction, type="BAR", text=f"{round(100 * st.fraction)}%")
        else:                               # 3.x: a percentage slider that ignores edits
            row.prop(st, "percent", text="", slider=True)
        row.operator("faceforge.cancel_job", text="", icon="CANCEL")
        sub = box.row()
        sub.enabled = False
        sub.label(text=(f"ETA {st.eta} · " if st.eta else "") + ("" if st.cancelling else "Esc to cancel"))
    elif st.last_state:
        icon = {"FINISHED": "CHECKMARK", "CANCELLED": "CANCEL", "FAILED": "ERROR"}.get(st.last_state, "INFO")
        hint(layout, st.last_message, icon=icon, alert=st.last_state == "FAILED")
        for warning in last_warnings(st):
            hint(layout, warning, icon="ERROR")
