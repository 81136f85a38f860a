"""The progress/cancel protocol every long pipeline takes.

A pipeline function receives a ``Progress`` and calls ``progress.update(stage, fraction)``
between steps; ``update`` raises ``JobCancelled`` once ``cancel()`` was called (from any
thread). The Blender runner, the CLI and the tests each provide their own subclass
(or callback) to show the figures; the engine never prints or touches the UI itself.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .errors import JobCancelled

ProgressCallback = Callable[[str, float], None]


class Progress:
    """Thread-safe progress state with cooperative cancellation."""

    def __init__(self, callback: Optional[ProgressCallback] = None):
        self._callback = callback
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.stage = "starting"
        self.fraction = 0.0
        self.started = time.monotonic()

    # -- called by the engine ---------------------------------------------------
    def update(self, stage: str, fraction: float) -> None:
        """Record progress of ``stage`` in [0, 1]; raise JobCancelled if cancel was asked."""
        with self._lock:
            self.stage = stage
            self.fraction = min(max(float(fraction), 0.0), 1.0)
        if self._callback is not None:
            self._callback(stage, self.fraction)
        self.check()

    def record(self, stage: str, fraction: float) -> None:
        """Set the figures without calling back or checking for cancel (progress relayed from
        another process: the UI reads them; the other process does the cancelling)."""
        with self._lock:
            self.stage = stage
            self.fraction = min(max(float(fraction), 0.0), 1.0)

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def sub(self, start: float, end: float) -> "SubProgress":
        """A view that maps this job's [0, 1] onto [start, end] of the parent."""
        return SubProgress(self, start, end)

    # -- called by the UI -------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def eta_seconds(self) -> Optional[float]:
        with self._lock:
            f = self.fraction
        if f <= 0.02:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed * (1.0 - f) / f


class SubProgress:
    """Forwards to a parent Progress with the fraction rescaled (for nested stages)."""

    def __init__(self, parent, start: float, end: float):
        self.parent, self.start, self.end = parent, start, end

    def update(self, stage: str, fraction: float) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        self.parent.update(stage, self.start + (self.end - self.start) * f)

    def check(self) -> None:
        self.parent.check()

    def sub(self, start: float, end: float) -> "SubProgress":
        return SubProgress(self, start, end)

    @property
    def cancelled(self) -> bool:
        return self.parent.cancelled


def ensure_progress(progress) -> "Progress | SubProgress":
    """Pipelines accept ``None`` for 'nobody is watching'."""
    return progress if progress is not None else Progress()
