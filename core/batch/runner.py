"""The batch driver: jobs -> Ray tasks, the ledger kept up to date, a report at the end.

``run_batch(jobs, out_dir, BatchOptions(...), cli_command=[...])``

- Ray: a local instance by default (``address=None``: started here with ``num_cpus`` cores, no
  dashboard, a small object store, and shut down at the end), or an existing cluster
  (``address='auto'`` or ``'ray://host:port'``; it is left running). Each job is one task asking for
  ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs; a job that got a GPU runs on ``cuda``.
  On a cluster the inputs and ``out_dir`` must be on storage every node sees (the workers write the
  job folders), and each node needs FaceForge installed (the task runs the ``faceforge`` command).
- Resumable: the ledger (``out_dir/batch.sqlite``) skips jobs done with the same inputs, and jobs
  whose command failed on the same inputs (``retry_failed`` runs those too); a crashed, timed-out or
  interrupted job runs again next time.
- Faults: a bad input fails its own job (the command's message is recorded); a worker killed mid-job
  is retried by Ray (``max_retries``) on any worker; a job past ``timeout_s`` is killed and reported.
- Stopping: Ctrl+C (SIGINT) or ``progress.cancel()`` stops cleanly: running jobs are killed (their
  unfinished folders never appear), recorded as cancelled, and run next time.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import FaceForgeError, InputError, JobCancelled
from . import worker as worker_module
from .ledger import LEDGER_NAME, Ledger
from .manifest import JobSpec
from .report import REPORT_FILES, job_figures, thumbnail, write_report

STAGING = ".staging"
DRIVER_GRACE_S = 60.0      # past timeout_s + this, the driver itself cancels a task that did not come back


@dataclass
class BatchOptions:
    address: Optional[str] = None      # None: a local Ray instance; 'auto' / 'ray://host:port': a cluster
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    max_retries: int = 2               # Ray retries of a job whose worker (or command) died
    timeout_s: float = 0.0             # per job; 0 = no limit
    retry_failed: bool = False         # also re-run jobs that failed on unchanged inputs
    num_cpus: Optional[int] = None     # local instance only (default: all cores)
    object_store_mb: int = 200         # local instance only
    verbose: bool = False              # workers' log lines to the driver's console
    env: dict = field(default_factory=dict)   # extra environment for the jobs' commands


@dataclass
class BatchSummary:
    total: int
    skipped: int               # done before with the same inputs
    skipped_failed: int        # failed before on the same inputs (not retried without retry_failed)
    done: int
    failed: int
    timed_out: int
    cancelled: int
    seconds: float
    interrupted: bool
    out_dir: str
    report: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.timed_out or self.cancelled or self.interrupted)

    def as_dict(self) -> dict:
        return {"jobs": self.total, "skipped (already done)": self.skipped,
                "skipped (failed before, same inputs)": self.skipped_failed, "done": self.done,
                "failed": self.failed, "timed out": self.timed_out, "cancelled": self.cancelled,
                "seconds": round(self.seconds, 1)}


class _Interrupt:
    """First Ctrl+C: ask the loop to stop cleanly; a second one raises KeyboardInterrupt as usual."""

    def __init__(self, progress):
        self.progress = progress
        self.hit = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        print("\nFaceForge batch: stopping (Ctrl+C again to abort at once)...", file=sys.stderr, flush=True)

    @property
    def stop(self) -> bool:
        return self.hit or bool(getattr(self.progress, "cancelled", False))

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _job_device(spec: JobSpec, gpus_per_job: float) -> str:
    if spec.device != "auto":
        return spec.device
    return "cuda" if gpus_per_job > 0 else "cpu"   # a job with no GPU share must not take one of the cluster's


def start_ray(options: BatchOptions, python_path: list = ()):
    """ray.init for a batch; returns (ray, whether we started it and must shut it down)."""
    try:
        import ray
    except ImportError:
        raise FaceForgeError("Batch mode needs Ray: pip install 'ray==2.60.0' (see requirements.txt).") from None
    if ray.is_initialized():
        return ray, False
    if not options.verbose:       # Ray's own start-up notes (token auth, ...) are not the user's business
        import logging
        logging.getLogger("ray").setLevel(logging.ERROR)
    quiet = dict(log_to_driver=bool(options.verbose), include_dashboard=False, configure_logging=True,
                 logging_level="WARNING")
    if options.address in (None, "", "local"):
        paths = [p for p in dict.fromkeys([*python_path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]) if p]
        env = {"PYTHONPATH": os.pathsep.join(paths)} if python_path else {}
        ray.init(address="local", num_cpus=options.num_cpus or os.cpu_count() or 1,
                 object_store_memory=int(options.object_store_mb) * 1024 * 1024,
                 runtime_env={"env_vars": env} if env else None, **quiet)
    else:
        _check_reachable(options.address)
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise FaceForgeError(f"Cannot connect to the Ray cluster at '{options.address}': {e}") from None
    return ray, True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A head's host:port that does not answer fails now, with a message (ray.init would retry for minutes)."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise FaceForgeError(f"--address must be 'auto', 'host:port' or 'ray://host:port', got '{address}'.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise FaceForgeError(f"No Ray cluster answers at '{address}' ({e}). Start one there (ray start --head), "
                             "check the address, or leave --address out for a local instance.") from None


def _capacity(ray, options: BatchOptions) -> int:
    """How many jobs the cluster can run at once now (at least 1, so that a job waits rather than none runs)."""
    try:
        res = ray.cluster_resources()
    except Exception:
        return 1
    slots = int(res.get("CPU", 1) // max(options.cpus_per_job, 1e-6)) if options.cpus_per_job > 0 else 10 ** 6
    if options.gpus_per_job > 0:
        slots = min(slots, int(res.get("GPU", 0) // options.gpus_per_job))
    return max(1, slots)


def run_batch(jobs: list, out_dir, options: BatchOptions = None, cli_command: list = (), progress=None,
              on_update: Callable[[dict], None] = None, python_path: list = ()) -> BatchSummary:
    """Run ``jobs`` (JobSpec) on Ray into ``out_dir/<job name>/``; see the module docstring.

    ``cli_command``: the start of the command line that runs one job, ``'@PYTHON@'`` standing for the
    worker's own Python: ``['@PYTHON@', '/path/to/blender_addon/cli.py']`` (the bpy module), or
    ``['/path/to/blender', '-b', '--factory-startup', '--python', '/path/to/cli.py', '--']``.
    ``on_update`` gets a dict of counts (total, skipped, skipped_failed, done, failed, crashed, timeout,
    cancelled, running, pending) whenever one changes.
    ``python_path``: folders a local Ray's workers need on their path (the driver's own package root)."""
    options = options or BatchOptions()
    if not cli_command:
        raise ValueError("run_batch needs the command that runs one job (cli_command)")
    if options.cpus_per_job < 0 or options.gpus_per_job < 0 or options.max_retries < 0 or options.timeout_s < 0:
        raise InputError("--cpus-per-job, --gpus-per-job, --max-retries and --timeout must be 0 or more.")
    names = [j.name for j in jobs]
    if len(set(n.lower() for n in names)) != len(names):
        raise InputError("Two jobs share an output folder name: give them distinct names.")
    t0 = time.monotonic()
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with _FolderLock(out):
        return _run_batch(jobs, names, out, t0, options, cli_command, progress, on_update, python_path)


class _FolderLock:
    """One batch at a time per output folder (a second would clear the first one's working folders)."""

    def __init__(self, out: Path):
        self.path = out / ".batch.lock"
        self.handle = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:          # Windows: no advisory locks here; one batch per folder is on the user
            return self
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise InputError(f"Another batch is running into {self.path.parent}: wait for it, stop it, or choose "
                             "another output folder.") from None
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()          # releases the lock
        return False


def _run_batch(jobs, names, out: Path, t0: float, options, cli_command, progress, on_update,
               python_path) -> BatchSummary:
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)          # what an interrupted run or a killed job left
    ledger = Ledger(out / LEDGER_NAME)
    todo, skipped, skipped_failed = [], 0, 0
    for job in jobs:
        spec = job.as_dict()
        digest = ledger.input_hash(spec)
        settled = ledger.settled(job.name, digest, str(out / job.name), options.retry_failed)
        if settled:
            skipped += settled == "done"
            skipped_failed += settled == "failed"
            continue
        ledger.queue(job.name, job.kind, spec, digest)
        todo.append((job, spec, digest))
    counts = {"total": len(jobs), "skipped": skipped, "skipped_failed": skipped_failed, "done": 0, "failed": 0,
              "crashed": 0, "timeout": 0, "cancelled": 0, "running": 0, "pending": len(todo)}

    def changed():
        if on_update is not None:
            on_update(dict(counts))
        if progress is not None:
            finished = counts["done"] + counts["failed"] + counts["crashed"] + counts["timeout"]
            try:
                progress.update(f"{counts['done']} done, {finished - counts['done']} failed, "
                                f"{counts['running']} running", finished / max(1, len(todo)))
            except JobCancelled:
                pass            # the loop sees progress.cancelled and stops cleanly

    run_id = ledger.start_run(options.address or "local")
    interrupted = False
    changed()
    if todo:
        interrupted = _run_on_ray(todo, out, staging, ledger, options, list(cli_command), counts, changed,
                                  progress, python_path)
    shutil.rmtree(staging, ignore_errors=True)
    summary = BatchSummary(total=len(jobs), skipped=skipped, skipped_failed=skipped_failed, done=counts["done"],
                           failed=counts["failed"] + counts["crashed"],
                           timed_out=counts["timeout"], cancelled=counts["cancelled"],
                           seconds=time.monotonic() - t0, interrupted=interrupted, out_dir=str(out))
    ledger.end_run(run_id, len(todo), summary.done, summary.failed + summary.timed_out, skipped, interrupted)
    summary.rows = [r for r in ledger.rows() if r["name"] in set(names)]
    summary.report = write_report(out, summary.rows, summary.as_dict())
    ledger.close()
    return summary


def _run_on_ray(todo, out: Path, staging: Path, ledger: Ledger, options: BatchOptions, cli_command: list,
                counts: dict, changed, progress, python_path) -> bool:
    """Submit as many jobs as the cluster can run at once, record each as it comes back; True if stopped."""
    ray, owned = start_ray(options, python_path)
    from ray import cloudpickle
    # the task's code travels by value: a worker needs Ray and the faceforge command, not this package
    cloudpickle.register_pickle_by_value(worker_module)
    try:
        task = ray.remote(worker_module.run_job).options(
            num_cpus=options.cpus_per_job, num_gpus=options.gpus_per_job, max_retries=options.max_retries,
            retry_exceptions=True)   # run_job raises only when the command itself was killed
        queue = list(todo)
        running = {}                 # ref -> (job, spec, when it was seen starting)
        with _Interrupt(progress) as interrupt:
            while (queue or running) and not interrupt.stop:
                slots = _capacity(ray, options) if queue else 0
                while queue and len(running) < slots:
                    job, spec, digest = queue.pop(0)
                    payload = {"name": job.name, "staging": str(staging), "final": str(out / job.name),
                               "command": cli_command, "args": job.cli_args(
                                   worker_module.OUT_TOKEN, _job_device(job, options.gpus_per_job)),
                               "timeout_s": options.timeout_s, "threads": max(1, int(options.cpus_per_job)),
                               "env": dict(options.env), "spec": spec, "input_hash": digest}
                    running[task.remote(payload)] = (job, spec, None)     # None: not seen starting yet
                    ledger.started(job.name)
                    counts["pending"] -= 1
                    counts["running"] += 1
                    changed()
                if not running:
                    continue
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    job, spec, _ = running.pop(ref)
                    _record(ray, ref, job, spec, out, ledger, counts)
                    changed()
                if options.timeout_s:
                    # the worker enforces the limit; this is for a task that never came back at all. Its
                    # clock starts when the job's working folder appears (a task queued behind other work
                    # on a shared cluster has not started)
                    now = time.monotonic()
                    for ref, (job, spec, started) in list(running.items()):
                        if started is None:
                            if any(staging.glob(f"{glob.escape(job.name)}/attempt-*")):
                                running[ref] = (job, spec, now)
                            continue
                        if now - started > options.timeout_s + DRIVER_GRACE_S:
                            ray.cancel(ref, force=True)
                            running.pop(ref)
                            ledger.finished(job.name, "timeout", error=f"no answer within the time limit "
                                                                       f"({options.timeout_s:g} s); cancelled")
                            counts["running"] -= 1
                            counts["timeout"] += 1
                            changed()
            stopped = interrupt.stop and bool(queue or running)
            if stopped:
                for ref, (job, spec, _) in running.items():
                    ray.cancel(ref, force=True, recursive=True)
                    ledger.finished(job.name, "cancelled", error="interrupted; runs again next time")
                    counts["running"] -= 1
                    counts["cancelled"] += 1
                for job, spec, _ in queue:
                    ledger.finished(job.name, "cancelled", error="interrupted before it started; runs next time")
                    counts["pending"] -= 1
                    counts["cancelled"] += 1
                changed()
                # let the killed workers' commands go (PDEATHSIG) before their staging folders are removed
                if running:
                    ray.wait(list(running), num_returns=len(running), timeout=10)
            return stopped
    finally:
        cloudpickle.unregister_pickle_by_value(worker_module)
        if owned:
            ray.shutdown()


def _record(ray, ref, job: JobSpec, spec: dict, out: Path, ledger: Ledger, counts: dict) -> None:
    from ray.exceptions import RayError, RayTaskError

    counts["running"] -= 1
    try:
        result = ray.get(ref)
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        ledger.finished(job.name, "crashed", error=f"crashed on every attempt: {str(cause).splitlines()[0]}")
        counts["crashed"] += 1
        return
    except RayError as e:        # worker died on every attempt, node lost, cancelled ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        ledger.finished(job.name, "crashed", error=f"{type(e).__name__}: {first}")
        counts["crashed"] += 1
        return
    state = result["state"]
    figures = None
    if state == "done":
        job_dir = out / job.name
        figures = job_figures(job_dir, job.kind)
        try:
            thumbnail(job_dir, spec, out / REPORT_FILES / f"{job.name}.jpg")
        except Exception:       # a picture for the report is never worth failing a job over
            pass
    ledger.finished(job.name, state, error=result.get("error", ""), seconds=result.get("seconds"),
                    attempts=result.get("attempt"), host=result.get("host"), worker_pid=result.get("worker_pid"),
                    files=result.get("files"), figures=figures, log_tail=result.get("log_tail", ""),
                    started_at=result.get("started"))
    counts[state] += 1
