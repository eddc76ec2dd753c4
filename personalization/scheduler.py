"""When the server should start a background training run: pure decision logic.

Training a project adapter takes the machine's CPU or GPU for a long while, so it runs
only when it is worth it (enough new or changed project code), not too often (an
interval, start to start, which failed runs respect too), and when the user is not
typing. The server feeds in events and asks `due()`; the clock is injectable so tests
need no sleeping. Thread-safe: the file watcher notes changes from its own thread.

Times are on the injected clock (monotonic by default); a ``last_run_at`` carried over
from an earlier server must be converted to it by the caller.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    min_changed_bytes: int = 20_000  # new or changed project code since the last run
    min_interval_s: float = 6 * 3600  # not more often than this between runs (start to start)
    idle_s: float = 120.0  # only when the editor has been idle this long (no typing)


def format_duration(seconds: float) -> str:
    """A short, rounded-up duration: "45 s", "12 min", "3.2 h"."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds)} s"


def _kb(nbytes: int) -> str:
    return f"{nbytes / 1000:.1f}"


class TrainingScheduler:
    """Decides when a background training run is due; see the module docstring."""

    def __init__(
        self,
        settings: ScheduleSettings,
        clock: Callable[[], float] = time.monotonic,
        last_run_at: float | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._last_run_at = last_run_at
        self._changed_bytes = 0
        self._bytes_in_run = 0
        # A server that just started has a user about to type: idle counts from here.
        self._last_activity = clock()
        self._paused = False
        self._running = False
        self._requested = False

    # -- settings and state -------------------------------------------------------------

    @property
    def settings(self) -> ScheduleSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: ScheduleSettings) -> None:
        self.configure(settings)

    def configure(self, settings: ScheduleSettings) -> None:
        with self._lock:
            self._settings = settings

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def running(self) -> bool:
        return self._running

    @property
    def changed_bytes(self) -> int:
        return self._changed_bytes

    @property
    def last_run_at(self) -> float | None:
        return self._last_run_at

    # -- events ---------------------------------------------------------------------------

    def note_change(self, nbytes: int) -> None:
        """Project code changed or was added (``nbytes`` of it)."""
        if nbytes <= 0:
            return
        with self._lock:
            self._changed_bytes += nbytes

    def note_activity(self) -> None:
        """The user typed or asked for a completion."""
        now = self._clock()
        with self._lock:
            self._last_activity = now

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def request(self) -> None:
        """A manual trigger: due at once, whatever the bytes, interval and idle time
        (but still not while paused or running)."""
        with self._lock:
            self._requested = True

    def started(self) -> None:
        """A run began: what changed so far is now being trained on."""
        now = self._clock()
        with self._lock:
            self._running = True
            self._bytes_in_run = self._changed_bytes
            self._changed_bytes = 0
            self._last_run_at = now
            self._requested = False

    def finished(self, ok: bool) -> None:
        """A run ended. last_run_at stays at its start either way, so a failing run is
        not retried before the interval; the code it did not learn counts again."""
        with self._lock:
            self._running = False
            if not ok:
                self._changed_bytes += self._bytes_in_run
            self._bytes_in_run = 0

    # -- decision ---------------------------------------------------------------------

    def due(self) -> bool:
        return self.why_not() == ""

    def why_not(self) -> str:
        """Why no run is due, for a person ("" when one is due)."""
        now = self._clock()
        with self._lock:
            s = self._settings
            if self._paused:
                return "paused"
            if self._running:
                return "training now"
            if self._requested:
                return ""
            if self._changed_bytes < s.min_changed_bytes:
                more = s.min_changed_bytes - self._changed_bytes
                return (
                    f"waiting for {_kb(more)} KB more changed code "
                    f"({_kb(self._changed_bytes)} of {_kb(s.min_changed_bytes)} KB)"
                )
            if self._last_run_at is not None:
                wait = self._last_run_at + s.min_interval_s - now
                if wait > 0:
                    return f"next run allowed in {format_duration(wait)}"
            idle_wait = self._last_activity + s.idle_s - now
            if idle_wait > 0:
                return f"waiting for the editor to be idle ({format_duration(idle_wait)})"
            return ""

    def status(self) -> dict[str, Any]:
        """For the server's status report."""
        why = self.why_not()
        with self._lock:
            return {
                "paused": self._paused,
                "running": self._running,
                "changed_bytes": self._changed_bytes,
                "requested": self._requested,
                "due": why == "",
                "why_not": why,
            }
