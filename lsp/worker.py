"""A single daemon worker thread with a ThreadPoolExecutor-like ``submit``.

The model runs on one thread because backends are not thread-safe. A daemon thread,
unlike ThreadPoolExecutor's workers (joined at interpreter exit), never holds up the
server's exit: an editor closing during a model load of several seconds must not
leave a process behind. Generation needs no cleanup, so dropping it at exit is safe.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Worker:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` after the jobs before it; cancelling a queued job skips it."""
        if self._closed:
            raise RuntimeError("the worker is shut down")
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Stop taking jobs; the thread ends after its current one (or with the process)."""
        self._closed = True
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
