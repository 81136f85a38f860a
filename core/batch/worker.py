"""One batch job on a Ray worker: the ``faceforge`` command in a child process, its folder moved into place
at once.

Why a child process per job, not the pipeline inside the Ray worker:

- bpy is a whole Blender in the process: one scene, one main thread, and (with torch and the glTF
  exporter) a destructor that can deadlock at interpreter exit. A fresh ``faceforge`` process per job
  starts from an empty scene, never shares Blender state with the next job, and ends with ``os._exit``
  as the CLI always does; a long-lived Ray worker holding bpy would carry all of that between jobs.
- A job can be stopped for real: at its time limit the child's whole process group is killed (a
  thread stuck in torch or in Blender's exporter cannot be interrupted inside a worker). The child
  also dies with its worker (``PR_SET_PDEATHSIG``), so when Ray's worker is killed (a crash, Ctrl+C,
  ``ray.cancel``) nothing keeps writing, and Ray's retry starts the job again from scratch.
- The same code path as a single run: a batch job *is* ``faceforge track ...``, so its files are
  exactly what one run writes (the test compares vertices). The price is the start-up of one process
  (~3-5 s of imports per job), small against a tracked clip.

This module uses the standard library only and no relative imports: the runner sends it to the
workers by value (cloudpickle), so a cluster node needs Ray and a FaceForge install (for the command)
but never imports this package by name. Workers never touch the ledger (SQLite): they return a dict,
and the driver records it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

OUT_TOKEN = "@OUT@"          # stands for the job's private working folder in the command's arguments
PYTHON_TOKEN = "@PYTHON@"    # stands for the worker's own Python (the command's first word, usually)
ERROR_PREFIX = "faceforge: error:"
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC


def _die_with_parent(libc) -> None:
    """In the child, before exec: SIGKILL it when the worker that started it dies (Linux only)."""
    if libc:
        try:
            libc.prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG
        except Exception:
            pass


def _error_message(log_path: str, code: int) -> tuple:
    """The command's own error line (``faceforge: error: ...``) and the log's tail."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 20000))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        tail = ""
    errors = [line[len(ERROR_PREFIX):].strip() for line in tail.splitlines() if line.startswith(ERROR_PREFIX)]
    message = errors[-1] if errors else f"the faceforge command exited with code {code}"
    return message, tail[-4000:]


def run_job(payload: dict) -> dict:
    """Run one job; return its record. Raises only when the command itself crashed (killed by a signal,
    e.g. out of memory): Ray then retries the job, as it does when this worker dies."""
    name = payload["name"]
    job_stage = os.path.join(payload["staging"], name)
    os.makedirs(job_stage, exist_ok=True)
    attempt = 1 + sum(1 for d in os.listdir(job_stage) if d.startswith("attempt-"))
    work = os.path.join(job_stage, f"attempt-{attempt}-{os.getpid()}")
    os.makedirs(work)
    with open(os.path.join(work, "worker.pid"), "w") as f:   # who runs it (the test kills this process)
        f.write(str(os.getpid()))
    args = [a.replace(OUT_TOKEN, work) for a in payload["args"]]
    argv = [sys.executable if a == PYTHON_TOKEN else a for a in payload["command"]] + args
    env = dict(os.environ)
    threads = str(max(1, int(payload.get("threads", 1))))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"})
    env.update(payload.get("env", {}))
    timeout = payload.get("timeout_s") or None
    log_path = os.path.join(work, "log.txt")
    record = {"name": name, "attempt": attempt, "host": socket.gethostname(), "worker_pid": os.getpid(),
              "argv": argv, "started": time.time()}
    libc = _libc()
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        # own session: a terminal's Ctrl+C goes to the driver, which stops the batch; the job is killed
        # by its group at the time limit and by PDEATHSIG when the worker goes
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=work, start_new_session=True, preexec_fn=lambda: _die_with_parent(libc))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    record.update(seconds=time.monotonic() - t0, finished=time.time(), returncode=code)
    if code is None:
        _, tail = _error_message(log_path, -1)
        shutil.rmtree(work, ignore_errors=True)
        return {**record, "state": "timeout", "log_tail": tail,
                "error": f"stopped at the time limit ({timeout:g} s); nothing of it was kept"}
    if code < 0:
        _, tail = _error_message(log_path, code)
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"the faceforge command of job '{name}' was killed by signal {-code} "
                           f"(out of memory?); log tail:\n{tail[-1500:]}")
    if code != 0:
        message, tail = _error_message(log_path, code)
        shutil.rmtree(work, ignore_errors=True)
        return {**record, "state": "failed", "error": message, "log_tail": tail}
    os.remove(os.path.join(work, "worker.pid"))
    _, tail = _error_message(log_path, 0)
    files = sorted(f for f in os.listdir(work) if not f.startswith("."))
    info = {k: v for k, v in record.items()}
    info.update(job=payload.get("spec", {}), input_hash=payload.get("input_hash", ""), files=files)
    with open(os.path.join(work, "job.json"), "w") as f:
        json.dump(info, f, indent=1)
    files = sorted(files + ["job.json"])
    final = payload["final"]
    # the whole folder appears at once: a previous result is moved aside first, then the new one renamed in
    old = None
    if os.path.lexists(final):
        old = os.path.join(job_stage, f"previous-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    shutil.rmtree(job_stage, ignore_errors=True)      # earlier attempts of this job, the previous result
    return {**record, "state": "done", "error": "", "files": files, "log_tail": tail[-1500:]}


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
