"""One mechanism for every long FaceForge job: run engine work off Blender's main thread.

A capability (photo reconstruction today; video tracking, multi-photo, stylization later) is

1. ``work(progress) -> result``: engine code only (a core pipeline call). It runs in a worker
   thread, never touches ``bpy``, and calls ``progress.update(stage, fraction)`` between steps;
   that call raises ``JobCancelled`` once the user cancelled.
2. ``finish(context, result) -> message``: builds the scene from the result, on the main
   thread, all or nothing (a failure rolls every new datablock back).
3. a thin operator: ``class MyOp(JobOperator, bpy.types.Operator)`` whose ``prepare(context)``
   reads its properties and returns ``work``, and whose ``finish`` is (2).

``JobOperator`` does the rest. Clicked in the UI (INVOKE), the job runs in the background while a
modal operator polls it from a window-manager timer: a job whose ``work`` carries an
``engine_call`` (``engine_process.EngineCall``: the heavy engine jobs) runs in a child Python
process, others in a worker thread (see engine_process for why a child: a Python thread next to
Blender's UI crashes forced redraws). The timer mirrors stage / percentage / ETA into
``WindowManager.faceforge_job`` (the sidebar's progress bar) and the status bar, and cancels on
Esc or the panel's Cancel button. Called from a script (EXEC), in ``--background``, or with
``synchronous=True``, the same job runs inline and prints progress lines. Only one job runs at
a time; a finished job is one undo step (the operator's UNDO flag), a cancelled or failed one
leaves the scene exactly as it was.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, FloatProperty, StringProperty

from . import engine_process
from .engine import core
from .scene.rollback import SceneSnapshot

POLL_INTERVAL_S = 0.1     # how often the modal operator looks at the worker
# how often the progress shown may change: each change redraws the sidebar and the status bar, which
# costs Blender ~0.1 s on a 2-core machine drawing in software (timer gaps p95 145 ms refreshing as
# the text changed, about twice a second; 54 ms with no refresh at all)
UI_REFRESH_S = 2.0
CANCEL_GRACE_S = 3.0      # a worker that ignores cancel this long is abandoned (its result dropped)

RUNNING, FINISHED, CANCELLED, FAILED = "RUNNING", "FINISHED", "CANCELLED", "FAILED"

Work = Callable[[Any], Any]


# ----------------------------------------------------------------------------- the job (bpy-free)
class Job:
    """Runs ``work(progress)`` once, in a thread or inline, and records how it ended."""

    def __init__(self, label: str, work: Work, callback=None):
        self.label = label
        self.work = work
        self.progress = core.jobs.Progress(callback)
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.traceback = ""
        self.cancel_requested_at: Optional[float] = None
        self.abandoned = False
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- running
    def start(self) -> "Job":
        self._thread = threading.Thread(target=self._run, name=f"FaceForge: {self.label}", daemon=True)
        self._thread.start()
        return self

    def run_inline(self) -> "Job":
        self._run()
        return self

    def _run(self) -> None:
        try:
            self.result = self.work(self.progress)
        except BaseException as e:  # noqa: BLE001 - reported on the main thread
            self.error = e
            if not isinstance(e, core.errors.FaceForgeError):
                self.traceback = traceback.format_exc()
        finally:
            self._done.set()

    # -- control (any thread)
    def cancel(self) -> None:
        if self.cancel_requested_at is None:
            self.cancel_requested_at = time.monotonic()
        self.progress.cancel()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    @property
    def cancelling(self) -> bool:
        return self.cancel_requested_at is not None

    def overdue(self, grace: float = None) -> bool:
        """Cancel was asked ``grace`` seconds ago and the worker is still busy (no progress call)."""
        grace = CANCEL_GRACE_S if grace is None else grace
        return self.cancelling and not self.done and time.monotonic() - self.cancel_requested_at > grace

    def outcome(self) -> str:
        """FINISHED / CANCELLED / FAILED once done (a cancel request beats a late result)."""
        if self.abandoned or self.cancelling or isinstance(self.error, core.errors.JobCancelled):
            return CANCELLED
        return FAILED if self.error is not None else FINISHED

    def error_message(self) -> str:
        e = self.error
        if isinstance(e, core.errors.FaceForgeError):
            return str(e.args[0]) if e.args else type(e).__name__
        return (f"{self.label} failed unexpectedly ({type(e).__name__}: {e}). "
                "Nothing was changed; see the console for details.")


_last_child_pid: Optional[int] = None


class ChildJob(Job):
    """A job whose work is an ``engine_process.EngineCall``, run in the engine's child Python process
    (see engine_process for why). Nothing runs in a thread: ``done`` (asked by the modal operator's
    timer on the main thread) reads the child's messages without blocking; ``cancel`` kills the child
    (the next job starts a fresh one); a finished job leaves it, warm, for the next."""

    def start(self) -> "ChildJob":
        global _last_child_pid
        self._child = engine_process.engine_for(str(Path(core.__file__).resolve().parent), core.__name__,
                                                engine_threads())
        _last_child_pid = self._child.process.pid        # for diagnostics and the GUI test
        self._child.submit(self.work)
        return self

    def _pump(self) -> None:
        child = getattr(self, "_child", None)
        if child is None or self._done.is_set():
            return
        for message in child.poll():
            kind = message[0]
            if kind == "progress":
                self.progress.record(message[1], message[2])
            elif kind == "result":
                self.result = message[1]
                self._done.set()
            elif kind == "error":
                _, error, text, tb = message
                self.error = error if isinstance(error, BaseException) else RuntimeError(text)
                self.traceback = tb
                self._done.set()
            elif kind == "exit":
                if not self._done.is_set() and not self.cancelling:
                    self.error = RuntimeError(f"the engine process ended unexpectedly (exit code {message[1]})")
                engine_process.discard(child)
                self._done.set()
            if self._done.is_set():
                return

    @property
    def done(self) -> bool:
        self._pump()
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def cancel(self) -> None:
        super().cancel()
        child = getattr(self, "_child", None)
        if child is not None and not self._done.is_set():
            engine_process.discard(child)    # a killed child leaves nothing: outputs are written atomically
            self._done.set()


def engine_threads() -> int:
    """torch threads for a child engine process: leave Blender two cores (one at least for us)."""
    explicit = os.environ.get("FACEFORGE_TORCH_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return max(1, (os.cpu_count() or 2) - 2)


def use_child_process() -> bool:
    """Run engine calls in a child process (default on Linux and macOS); FACEFORGE_ENGINE_IN_THREAD=1
    keeps the worker thread. Windows keeps the thread for now: the child's message pipe is passed as
    an inherited descriptor and read without blocking, neither of which Python 3.11 does there."""
    return os.name == "posix" and os.environ.get("FACEFORGE_ENGINE_IN_THREAD", "") != "1"


# ----------------------------------------------------------------------------- one job at a time
_active: Optional[Job] = None


def active_job() -> Optional[Job]:
    return _active


def _set_active(job: Optional[Job]) -> None:
    global _active
    _active = job


def cancel_active() -> bool:
    job = _active
    if job is None:
        return False
    job.cancel()
    return True


def busy_message() -> str:
    job = _active
    return "" if job is None else f"FaceForge is busy ({job.label}): wait for it or cancel it first"


# ----------------------------------------------------------------------------- showing progress
def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def progress_text(stage: str, fraction: float, eta: Optional[float]) -> str:
    text = f"{stage.capitalize()} {int(round(100 * fraction))}%"
    eta_text = format_eta(eta)
    return f"{text} · ETA {eta_text}" if eta_text else text


class ProgressPrinter:
    """Progress callback for synchronous runs: one console line per stage and per 10 %."""

    def __init__(self, label: str = "", window_manager=None):
        self.label = label
        self.wm = window_manager      # GUI + synchronous: Blender is blocked, so show the cursor counter
        self._last = (None, -100)

    def __call__(self, stage: str, fraction: float) -> None:
        pct = int(round(100 * fraction))
        last_stage, last_pct = self._last
        if stage != last_stage or pct >= last_pct + 10 or (pct == 100 and last_pct != 100):
            print(f"FaceForge: {stage} {pct:3d}%", flush=True)
            self._last = (stage, pct)
        if self.wm is not None:
            self.wm.progress_update(pct)


class FaceForgeJobStatus(bpy.types.PropertyGroup):
    """``WindowManager.faceforge_job``: what the UI draws (not saved in .blend files, not undone)."""

    running: BoolProperty(name="Running", default=False)
    cancelling: BoolProperty(name="Cancelling", default=False)
    label: StringProperty(name="Job", default="")
    stage: StringProperty(name="Stage", default="")
    fraction: FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0, default=0.0)
    # Blender < 4.0 has no layout.progress(): a percentage slider that ignores edits reads as a bar
    percent: FloatProperty(name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, precision=0,
                           get=lambda self: 100.0 * self.fraction, set=lambda self, value: None)
    eta: StringProperty(name="ETA", default="")
    text: StringProperty(name="Progress Text", default="")
    # how the last job ended: shown under the workflow until the next one starts
    last_label: StringProperty(name="Last Job", default="")
    last_state: StringProperty(name="Last State", default="")
    last_message: StringProperty(name="Last Message", default="")
    # the last job's warnings, one per line: the panel lists them under its message
    last_warnings: StringProperty(name="Last Warnings", default="")


def status(context=None):
    context = context or bpy.context
    wm = getattr(context, "window_manager", None)
    return getattr(wm, "faceforge_job", None) if wm is not None else None


def publish(context, job: Job) -> None:
    """Copy the worker's progress into the UI state (main thread only). Only values that changed are
    written, the fraction in whole percents: every write of a property notifies Blender's UI and
    costs a redraw of what shows it."""
    st = status(context)
    if st is None:
        return
    p = job.progress
    eta = None if job.cancelling else p.eta_seconds()
    values = {
        "running": True, "cancelling": job.cancelling, "label": job.label,
        "stage": "cancelling" if job.cancelling else p.stage,
        "fraction": round(p.fraction, 2), "eta": format_eta(eta),
        "text": "Cancelling…" if job.cancelling else progress_text(p.stage, p.fraction, eta),
    }
    for name, value in values.items():
        old = getattr(st, name)
        if (abs(old - value) > 1e-4) if isinstance(value, float) else old != value:   # RNA floats are float32
            setattr(st, name, value)


def publish_end(context, job: Job, state: str, message: str, warnings=()) -> None:
    st = status(context)
    if st is None:
        return
    st.running = st.cancelling = False
    st.stage = st.eta = st.text = ""
    st.fraction = 0.0
    st.last_label, st.last_state, st.last_message = job.label, state, message
    st.last_warnings = "\n".join(str(w) for w in warnings)


def report_text(message: str, warnings) -> str:
    """The one line Blender's status bar and Info log show for a finished job: its message and, when
    there are any, its warnings (each warning is said once, here, not as separate reports)."""
    warnings = [str(w) for w in warnings]
    if not warnings:
        return message
    return f"{message} — {len(warnings)} warning{'s' if len(warnings) > 1 else ''}: " + " ".join(warnings)


def redraw(context) -> None:
    """Redraw where progress shows: 3D-view sidebars (not the viewport itself: that costs a
    full scene draw per tick), the preferences and the status bar."""
    wm = getattr(context, "window_manager", None)
    for window in (wm.windows if wm is not None else ()):
        screen = window.screen
        for area in (screen.areas if screen is not None else ()):
            if area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()
            elif area.type in {"PREFERENCES", "STATUSBAR"}:
                area.tag_redraw()


# ----------------------------------------------------------------------------- finishing (main thread)
def complete(context, job: Job, finish: Callable, changes_scene: bool = True) -> tuple:
    """Turn a finished job into ``(state, message)``; on success run ``finish`` all or nothing."""
    state = job.outcome()
    if state == CANCELLED:
        return CANCELLED, f"{job.label}: cancelled, nothing was changed."
    if state == FAILED:
        if job.traceback:
            print(job.traceback, flush=True)
        return FAILED, job.error_message()
    snap = SceneSnapshot(context) if changes_scene else None
    try:
        message = finish(context, job.result)
    except BaseException as e:  # noqa: BLE001
        if snap is not None:
            snap.rollback()
        if isinstance(e, core.errors.FaceForgeError):
            return FAILED, str(e.args[0]) if e.args else type(e).__name__
        traceback.print_exc()
        return FAILED, (f"{job.label} failed unexpectedly while building the result ({type(e).__name__}: {e}). "
                        "Nothing was changed; see the console for details.")
    return FINISHED, message or f"{job.label}: done."


# ----------------------------------------------------------------------------- the operator base
class JobOperator:
    """Mix-in for operators that run one engine job (see the module docstring).

    Subclasses set ``bl_idname``/``bl_label``/``bl_description``/``bl_options`` and implement
    ``prepare`` and ``finish``; optionally ``job_failed`` (e.g. to remember an error) and
    ``changes_scene = False`` for jobs that only report (no rollback snapshot needed).
    """

    changes_scene = True

    synchronous: BoolProperty(
        name="Synchronous",
        description="Run in the foreground, blocking Blender until done (scripts and --background always do)",
        default=False, options={"HIDDEN", "SKIP_SAVE"})

    # -- to implement ---------------------------------------------------------------------
    def prepare(self, context) -> Work:
        """Main thread: read properties and preferences, check inputs, return ``work(progress)``.

        Raise a ``FaceForgeError`` for anything the user must fix first."""
        raise NotImplementedError

    def finish(self, context, result) -> str:
        """Main thread: build the scene from ``result``; return the message to report."""
        raise NotImplementedError

    def job_failed(self, context, state: str, message: str) -> None:
        """Main thread: the job was cancelled or failed (the scene is already as it was)."""

    def job_succeeded(self, context, message: str) -> None:
        """Main thread: after ``finish`` succeeded."""

    def add_warnings(self, warnings, head=None) -> list:
        """Main thread, from ``finish``: warnings the user must see. They are reported once with the
        job's message (status bar + Info log), listed in the panel's result box, and kept on ``head``
        (``faceforge_warnings``) so the head's own panel can show them later."""
        warnings = [str(w) for w in (warnings or ())]
        self._warnings = getattr(self, "_warnings", []) + warnings
        if head is not None and warnings:
            head["faceforge_warnings"] = json.dumps(warnings)
        return warnings

    # -- poll -------------------------------------------------------------------------------
    @classmethod
    def poll(cls, context):
        if _active is not None:
            return _fail_poll(cls, busy_message())
        return cls.job_poll(context)

    @classmethod
    def job_poll(cls, context) -> bool:
        return True

    # -- synchronous --------------------------------------------------------------------------
    def execute(self, context):
        job = self._make_job(context, synchronous=True)
        if job is None:
            return {"CANCELLED"}
        wm = context.window_manager if not bpy.app.background else None
        if wm is not None:
            wm.progress_begin(0, 100)
        _set_active(job)
        try:
            job.run_inline()
        finally:
            _set_active(None)
            if wm is not None:
                wm.progress_end()
        return self._end(context, job)

    # -- in the background, with a modal operator polling --------------------------------------
    def invoke(self, context, event):
        if bpy.app.background or self.synchronous or context.window is None:
            return self.execute(context)
        job = self._make_job(context, synchronous=False)
        if job is None:
            return {"CANCELLED"}
        _set_active(job)
        job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_INTERVAL_S, window=context.window)
        self._workspace = context.workspace
        wm.modal_handler_add(self)
        publish(context, job)
        self._show_status(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = getattr(self, "_job", None)
        if job is None:
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            publish(context, job)
            self._show_status(context)
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}   # the user keeps working while the job runs
        return self.tick(context)

    def tick(self, context) -> set:
        """One poll of the worker: keep waiting, or end the modal run (the GUI's only path)."""
        job = self._job
        if not job.done and not job.overdue():
            # the shown progress changes at most every UI_REFRESH_S (at once on cancel), and only
            # when its text changed: each change costs Blender a redraw (see UI_REFRESH_S)
            now = time.monotonic()
            due = now - getattr(self, "_shown_at", 0.0) >= UI_REFRESH_S or job.cancelling
            st = status(context)
            if due or st is None or not st.running:
                before = None if st is None else (st.text, st.stage, st.cancelling)
                publish(context, job)
                if st is None or (st.text, st.stage, st.cancelling) != before:
                    self._shown_at = now
                    self._show_status(context)
                    redraw(context)
            return {"RUNNING_MODAL"}
        if not job.done:
            job.abandoned = True    # it ignored cancel: let the daemon thread end on its own
        self._stop_modal(context)
        return self._end(context, job)

    def cancel(self, context):
        """Blender ends the modal run (file loaded, window closed): stop the job, change nothing."""
        job = getattr(self, "_job", None)
        if job is not None:
            job.cancel()
            job.abandoned = True
            self._stop_modal(context)
            publish_end(context, job, CANCELLED, f"{job.label}: cancelled, nothing was changed.")

    # -- shared ---------------------------------------------------------------------------------
    def _make_job(self, context, synchronous: bool) -> Optional[Job]:
        try:
            work = self.prepare(context)
        except core.errors.FaceForgeError as e:
            message = str(e.args[0]) if e.args else type(e).__name__
            self.job_failed(context, FAILED, message)
            st = status(context)
            if st is not None:
                st.last_label, st.last_state, st.last_message = self.bl_label, FAILED, message
                st.last_warnings = ""
            self.report({"ERROR"}, message)
            return None
        self._warnings = []
        callback = None
        if synchronous:   # inline: console lines, plus the cursor counter when a window is blocked
            callback = ProgressPrinter(self.bl_label, None if bpy.app.background else context.window_manager)
        call = getattr(work, "engine_call", None)
        if not synchronous and call is not None and use_child_process():
            self._job = ChildJob(self.bl_label, call, callback)
        else:
            self._job = Job(self.bl_label, work, callback)
        return self._job

    def _end(self, context, job: Job) -> set:
        if _active is job:
            _set_active(None)
        state, message = complete(context, job, self.finish, self.changes_scene)
        warnings = getattr(self, "_warnings", []) if state == FINISHED else []
        publish_end(context, job, state, message, warnings)
        redraw(context)
        if state == FINISHED:
            self.job_succeeded(context, message)
            self.report({"WARNING"} if warnings else {"INFO"}, report_text(message, warnings))
            return {"FINISHED"}
        self.job_failed(context, state, message)
        self.report({"WARNING"} if state == CANCELLED else {"ERROR"}, message)
        return {"CANCELLED"}

    def _show_status(self, context) -> None:
        st = status(context)
        ws = getattr(self, "_workspace", None)
        if st is not None and ws is not None:
            try:
                ws.status_text_set(f"FaceForge: {st.label} — {st.text}   (Esc: cancel)")
            except (ReferenceError, RuntimeError):
                pass

    def _stop_modal(self, context) -> None:
        job = getattr(self, "_job", None)
        if job is not None and _active is job:
            _set_active(None)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None
        ws = getattr(self, "_workspace", None)
        if ws is not None:
            try:
                ws.status_text_set(None)
            except (ReferenceError, RuntimeError, TypeError):
                pass
            self._workspace = None


def _fail_poll(cls, message: str) -> bool:
    if message and hasattr(cls, "poll_message_set"):  # Blender 3.0+
        cls.poll_message_set(message)
    return False


# ----------------------------------------------------------------------------- cancel button
class FACEFORGE_OT_cancel_job(bpy.types.Operator):
    bl_idname = "faceforge.cancel_job"
    bl_label = "Cancel"
    bl_description = "Stop the running FaceForge job; the scene stays exactly as it was (Esc does the same)"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context):
        if _active is None:
            return _fail_poll(cls, "No FaceForge job is running")
        return True

    def execute(self, context):
        job = _active
        if job is None:
            return {"CANCELLED"}
        job.cancel()
        publish(context, job)
        redraw(context)
        return {"FINISHED"}


@persistent
def _cancel_on_file_load(*_args):
    """A job's result belongs to the file it was started in: loading another file cancels it."""
    cancel_active()


CLASSES = (FaceForgeJobStatus, FACEFORGE_OT_cancel_job)


def register_props() -> None:
    bpy.types.WindowManager.faceforge_job = bpy.props.PointerProperty(type=FaceForgeJobStatus)
    if _cancel_on_file_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_cancel_on_file_load)


def unregister_props() -> None:
    cancel_active()
    _set_active(None)
    engine_process.discard()                 # the warm engine process goes with the add-on
    if _cancel_on_file_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_file_load)
    if hasattr(bpy.types.WindowManager, "faceforge_job"):
        del bpy.types.WindowManager.faceforge_job
