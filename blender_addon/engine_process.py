"""Run an engine job in a child Python process instead of a thread of Blender's.

Why: while any Python thread runs inside Blender, a window redraw forced from Python
(``bpy.ops.screen.screenshot``, ``bpy.ops.wm.redraw_timer``) crashes Blender 3.4 — reproduced with
a ten-line add-on-free script whose thread only builds dicts (issue 12 item 8). A child process has
its own interpreter (and its own GIL): Blender's process keeps no Python thread of FaceForge's, and
the modal operator's timer polls the child's messages on the main thread without blocking. (The UI
lag of item 9 came mostly from redrawing the progress, see runner.UI_REFRESH_S; under load the
thread also cost the UI more: timer gaps p95 323 ms against 168-249 ms with the child.)

This module is bpy-free and runs in both processes:
- in Blender: ``EngineCall`` (a picklable description of the job: a ``core`` function and its
  arguments) and ``EngineProcess`` (starts the child, feeds it calls, polls its messages); the idle
  engine is kept for the next job (``engine_for``), so only the first job pays the imports;
- in the child (``python engine_process.py CORE_DIR CORE_NAME FD``): loads ``core`` under the same
  module name as in Blender (so results unpickle as the same classes), then runs each call it is
  sent with a ``Progress`` whose reports go back as messages, and sends the result or the error.

Messages are length-prefixed pickles on a private pipe between two processes of ours (never a
file a user supplies): ("progress", stage, fraction), ("result", value), ("error", exception or
None, message, traceback).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

_HEADER = struct.Struct("<Q")


class EngineCall:
    """``core.<module>.<function>(*args, progress=..., **kwargs)``, picklable; also runs inline."""

    def __init__(self, core_name: str, target: str, *args, **kwargs):
        self.core_name, self.target, self.args, self.kwargs = core_name, target, args, kwargs

    def function(self):
        module, name = self.target.split(":")
        return getattr(importlib.import_module(f"{self.core_name}.{module}"), name)

    def __call__(self, progress):
        return self.function()(*self.args, progress=progress, **self.kwargs)

    def __repr__(self) -> str:
        return f"EngineCall({self.target})"


# ----------------------------------------------------------------------------- framing
def _send(fd: int, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


class _Reader:
    """Non-blocking reader of framed messages from a pipe."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.eof = fd, bytearray(), False
        os.set_blocking(fd, False)

    def _read_available(self) -> None:
        while not self.eof:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self.buffer += chunk

    def messages(self, finish_within: float = 30.0) -> list:
        """Whole messages read so far. A message that has begun arriving is read to its end here
        (the child is writing it in one go): through a 64 KB pipe, one chunk per timer tick would
        take half a minute for a full head's result."""
        import select
        self._read_available()
        end = time.monotonic() + finish_within
        while not self.eof and len(self.buffer) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) >= _HEADER.size + n or time.monotonic() > end:
                break
            select.select([self.fd], [], [], 0.5)
            self._read_available()
        out = []
        while len(self.buffer) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + n:
                break
            # not a user's file: an anonymous pipe that only our own child process, started by this
            # process, writes to; what it pickled is the engine's own result
            out.append(pickle.loads(bytes(self.buffer[_HEADER.size:_HEADER.size + n])))
            del self.buffer[:_HEADER.size + n]
        return out


# ----------------------------------------------------------------------------- Blender's side
def python_executable() -> str:
    """The Python interpreter to start: Blender's own (``sys.executable`` since 2.92; older builds name
    the Blender binary there), else the first python3 on PATH."""
    exe = sys.executable or ""
    if exe and not Path(exe).name.lower().startswith("blender") and os.path.exists(exe):
        return exe
    import shutil
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("No Python interpreter found to run the FaceForge engine in")


class EngineProcess:
    """A child Python process that runs engine calls one after another; ``poll()`` (main thread)
    returns its new messages. It stays after a call, so the next job skips the imports (torch,
    mediapipe, the model: seconds); it leaves after IDLE_EXIT_S without work, with Blender, or when
    killed (a cancelled job)."""

    def __init__(self, core_dir: str, core_name: str, threads: Optional[int] = None):
        read, write = os.pipe()
        env = dict(os.environ)
        # the child sees the packages Blender sees (its site-packages, the add-on's dependency folder)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        env["PYTHONNOUSERSITE"] = "1"
        if threads:
            env.setdefault("FACEFORGE_TORCH_THREADS", str(threads))
        self.core_dir, self.core_name = core_dir, core_name
        try:
            self.process = subprocess.Popen(
                [python_executable(), "-s", __file__, core_dir, core_name, str(write)],
                stdin=subprocess.PIPE, pass_fds=(write,), env=env, close_fds=True)
        finally:
            os.close(write)
        self._reader = _Reader(read)
        self._read_fd = read
        self.busy = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and not self._reader.eof

    def submit(self, call: EngineCall) -> None:
        """Send one call (plain data only: the child cannot import this add-on's modules, which
        import bpy); its messages follow, ending with ("result", ...) or ("error", ...)."""
        data = pickle.dumps((call.target, call.args, call.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        self.busy = True
        try:
            self.process.stdin.write(_HEADER.pack(len(data)) + data)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass                                  # the child is gone: poll() reports it

    def poll(self) -> list:
        """New messages, then ("exit", returncode) once the child is gone and all was read."""
        out = self._reader.messages()
        if any(m[0] in ("result", "error") for m in out):
            self.busy = False
        if self._reader.eof and self.process.poll() is not None:
            out.append(("exit", self.process.returncode))
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.close()

    def close(self) -> None:
        if self._read_fd is not None:
            try:
                os.close(self._read_fd)
            except OSError:
                pass
            self._read_fd = None
            self._reader.eof = True
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


_engine: Optional[EngineProcess] = None


def engine_for(core_dir: str, core_name: str, threads: Optional[int] = None) -> EngineProcess:
    """The engine process to run the next job in: the idle one from the last job, or a new one."""
    global _engine
    e = _engine
    if e is None or not e.alive or e.busy or (e.core_dir, e.core_name) != (core_dir, core_name):
        if e is not None:
            e.kill()
        e = _engine = EngineProcess(core_dir, core_name, threads)
    return e


def discard(engine: Optional[EngineProcess] = None) -> None:
    """Kill ``engine`` (default: the kept one) and forget it: a cancelled job, or the add-on going."""
    global _engine
    target = engine or _engine
    if target is not None:
        target.kill()
    if target is _engine:
        _engine = None


# ----------------------------------------------------------------------------- the child
def _load_core(core_dir: str, name: str):
    """``core`` under the name it has in Blender, without importing the add-on package (bpy)."""
    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        # a namespace stand-in for the add-on package: only its ``core`` is ever imported here
        spec = importlib.util.spec_from_loader(parent, loader=None, is_package=True)
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = []
        sys.modules[parent] = pkg
    spec = importlib.util.spec_from_file_location(name, str(Path(core_dir) / "__init__.py"),
                                                  submodule_search_locations=[core_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if parent:
        setattr(sys.modules[parent], "core", module)
    return module


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when Blender goes (closed, crashed), so no orphan trains on."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)     # PR_SET_PDEATHSIG, SIGKILL
        except (OSError, AttributeError):
            pass


IDLE_EXIT_S = 600.0     # an engine left without work this long goes (its memory back to the user)


def _read_exactly(fd: int, n: int) -> Optional[bytes]:
    data = bytearray()
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _next_call(fd: int) -> Optional[tuple]:
    """The next (target, args, kwargs) from Blender, or None: stdin closed, or idle too long."""
    import select
    if not select.select([fd], [], [], IDLE_EXIT_S)[0]:
        return None
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(fd, _HEADER.unpack(header)[0])
    # not a user's file: the stdin pipe Blender's FaceForge opened to start this process; it pickled
    # plain data (a core function's name, paths, numbers, arrays)
    return None if data is None else pickle.loads(data)


def _run_call(core_name: str, fd: int, target: str, args, kwargs) -> None:
    try:
        call = EngineCall(core_name, target, *args, **kwargs)
        jobs = importlib.import_module(f"{core_name}.jobs")
        torch_threads = os.environ.get("FACEFORGE_TORCH_THREADS", "")

        def report(stage, fraction):
            _send(fd, ("progress", stage, float(fraction)))

        function = call.function()
        if torch_threads.isdigit() and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(torch_threads))
        result = function(*call.args, progress=jobs.Progress(report), **call.kwargs)
        _send(fd, ("result", result))
    except Exception as e:  # noqa: BLE001 - everything goes back to Blender
        errors = sys.modules.get(f"{core_name}.errors")
        known = errors is not None and isinstance(e, errors.FaceForgeError)
        tb = "" if known else traceback.format_exc()
        try:
            pickle.dumps(e)
            payload = e
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text is enough
            payload = None
        _send(fd, ("error", payload, f"{type(e).__name__}: {e}", tb))


def child_main(core_dir: str, core_name: str, fd: int) -> int:
    _die_with_parent()
    if hasattr(os, "nice"):
        try:
            os.nice(5)            # background work: Blender's UI keeps the CPU when both want it (a mild
                                  # step: at 15 a busy machine starved the engine twenty times over)
        except OSError:
            pass
    try:
        _load_core(core_dir, core_name)
    except Exception as e:  # noqa: BLE001
        _send(fd, ("error", None, f"the engine could not be loaded ({type(e).__name__}: {e})", traceback.format_exc()))
        return 1
    stdin = sys.stdin.fileno()
    while True:
        call = _next_call(stdin)
        if call is None:
            return 0
        try:
            _run_call(core_name, fd, *call)
        except OSError:           # Blender stopped reading (closed, or the job was cancelled)
            return 1


if __name__ == "__main__":
    code = child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)          # torch / mediapipe threads can hang a normal exit
