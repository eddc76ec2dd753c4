"""Pre-warming: evaluate the prompt where the cursor rests before anyone asks.

A client sends ``rubytailor/prewarm`` (rubytailor/protocol.py) when a document is
opened or focused, or the cursor moves. If nothing else happens for ``IDLE_S`` (no
keystroke, no request), the model thread evaluates the prompt a suggestion at that
position would send (``model/pipeline.py:prewarm``), so the KV cache holds it and the
first suggestion there costs a few tokens instead of a whole prompt. Any real request,
and any edit, pre-empts it: a pending one is dropped, a running one stops within one
small batch (the backend's ``prefill_batch``, 15-20 ms). Everything here runs on the
event loop except the prefill itself.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rubytailor.errors import DocumentError
from rubytailor.lsp.suggestion import completion_request, unsuitable
from rubytailor.model.backends.base import CancelToken

if TYPE_CHECKING:
    from rubytailor.lsp.server import RubytailorServer

logger = logging.getLogger(__name__)

# How long the editor must be quiet after the cursor comes to rest (typing is faster).
IDLE_S = 0.3


@dataclass
class PrewarmCounts:
    """For rubytailor/status: what pre-warming did since the server started."""

    scheduled: int = 0
    done: int = 0  # prompts evaluated to the end (or found already in the cache)
    preempted: int = 0  # dropped or stopped: a newer position, a request or an edit
    tokens: int = 0  # prompt tokens evaluated


class Prewarmer:
    def __init__(self, server: RubytailorServer) -> None:
        self._server = server
        self._timer: asyncio.TimerHandle | None = None
        self._running: tuple[CancelToken, Future[int]] | None = None
        self.counts = PrewarmCounts()

    def schedule(self, uri: str, line: int, character: int) -> None:
        """The cursor rests at (line, character) of ``uri``: pre-warm there once idle."""
        self.preempt()
        self.counts.scheduled += 1
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(IDLE_S, self._start, uri, line, character)

    def preempt(self) -> None:
        """A real request or an edit: drop the pending pre-warm, stop the running one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.counts.preempted += 1
        if self._running is not None:
            token, future = self._running
            if not future.done():
                token.cancel()
            self._running = None

    def _start(self, uri: str, line: int, character: int) -> None:
        self._timer = None
        server = self._server
        settings = server.settings
        # (The settings are checked now: the client's arrive after the first notifications.)
        if not (server.settings_ready.is_set() and settings.prewarm and settings.enable):
            return
        snapshot = server.snapshot(uri)
        # What gets no suggestions (too large, binary) is not worth warming either.
        if snapshot is None or unsuitable(server, snapshot) is not None:
            return
        try:
            request = completion_request(server, snapshot, snapshot.offset_at(line, character))
        except DocumentError as exc:
            logger.debug("not pre-warming %s: %s", uri, exc)
            return
        token = CancelToken()
        future = server.model_thread.submit(server.completer.prewarm, request, token)
        self._running = (token, future)
        future.add_done_callback(lambda f: self._finished(token, f))

    def _finished(self, token: CancelToken, future: Future[int]) -> None:
        # On the model thread: only counters, no protocol.
        if future.cancelled() or future.exception() is not None:
            return
        tokens = future.result()
        self.counts.tokens += tokens
        if token.cancelled:
            self.counts.preempted += 1
        else:
            self.counts.done += 1
        logger.debug("pre-warmed %d prompt tokens%s", tokens, " (pre-empted)" * token.cancelled)
