"""Small drawing helpers shared by the sidebar panels and the add-on preferences.

Its own module so that ``preferences`` and ``ui.panels`` both use it without importing each other."""

import textwrap

from . import runner

WRAP = 30   # characters per line in a default-width sidebar


def wrap(text: str, width: int) -> list:
    out = []
    for para in str(text).splitlines() or [""]:
        out.extend(textwrap.wrap(para, width) or [""])
    return out


def hint(layout, text: str, icon: str = "INFO", alert: bool = False) -> None:
    col = layout.column(align=True)
    col.alert = alert
    for i, line in enumerate(wrap(text, WRAP)):
        col.label(text=line, icon=icon if i == 0 else "BLANK1")


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
