"""Prism syntax errors of open documents, published as LSP diagnostics.

Debounced per document (typing fires many changes; only the last matters), parsed on
a thread of its own with its own Prism instance, so a long file never blocks the event
loop or queues behind a generation. Results for a version the user has already edited
are dropped; the newer change has scheduled its own run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from lsprotocol import types

from rubytailor.errors import PrismError
from rubytailor.lsp.snapshot import Snapshot
from rubytailor.lsp.worker import Worker
from rubytailor.prism import Prism, SyntaxDiagnostic

if TYPE_CHECKING:
    from rubytailor.lsp.server import RubytailorServer

logger = logging.getLogger(__name__)

DEBOUNCE_S = 0.25
# For clients that open documents without a language id.
RUBY_SUFFIXES = (".rb", ".rake", ".gemspec", ".ru", ".rbs", "Gemfile", "Rakefile", ".jbuilder")
# A file with hundreds of errors is not Ruby; the first ones say enough.
MAX_DIAGNOSTICS = 100
SOURCE = "rubytailor (prism)"


class DiagnosticsPublisher:
    def __init__(self, ls: RubytailorServer, delay_s: float = DEBOUNCE_S) -> None:
        self._ls = ls
        self._delay_s = delay_s
        self._worker = Worker("rubytailor-prism")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._published: set[str] = set()
        self._prism: Prism | None = None
        self._prism_error: PrismError | None = None

    def schedule(self, uri: str) -> None:
        """Re-check ``uri`` after a quiet moment, replacing any pending check."""
        pending = self._tasks.pop(uri, None)
        if pending is not None:
            pending.cancel()
        if not self._ls.settings.diagnostics or not self._ls.is_ruby(uri):
            return
        task = asyncio.get_running_loop().create_task(self._run(uri))
        self._tasks[uri] = task
        task.add_done_callback(lambda t: self._forget(uri, t))

    def clear(self, uri: str) -> None:
        """The document closed (or diagnostics were turned off): withdraw what we sent."""
        pending = self._tasks.pop(uri, None)
        if pending is not None:
            pending.cancel()
        if uri in self._published:
            self._published.discard(uri)
            self._publish(uri, None, [])

    def refresh_all(self) -> None:
        for uri in self._ls.open_uris():
            if self._ls.settings.diagnostics:
                self.schedule(uri)
            else:
                self.clear(uri)

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._worker.shutdown()

    def _forget(self, uri: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(uri) is task:
            del self._tasks[uri]
        if not task.cancelled() and task.exception() is not None:
            logger.error("diagnostics for %s failed", uri, exc_info=task.exception())

    async def _run(self, uri: str) -> None:
        await asyncio.sleep(self._delay_s)
        snapshot = self._ls.snapshot(uri)
        if snapshot is None:
            return
        limit = self._ls.settings.max_file_bytes
        if len(snapshot.text) > limit or len(snapshot.text.encode("utf-8", "replace")) > limit:
            self.clear(uri)
            return
        diagnostics = await asyncio.wrap_future(self._worker.submit(self._compute, snapshot))
        if diagnostics is None:
            if self._prism_error is not None:
                self._ls.show_once(
                    types.MessageType.Warning,
                    f"rubytailor shows no syntax errors: {self._prism_error}",
                    key="prism-unavailable-diagnostics",
                )
            return
        if self._ls.document_version(uri) != snapshot.version:
            return
        self._published.add(uri)
        self._publish(uri, snapshot.version, diagnostics)

    def _compute(self, snapshot: Snapshot) -> list[types.Diagnostic] | None:
        """Runs on the Prism thread. None when Prism is unavailable (reported once)."""
        if self._prism is None and self._prism_error is None:
            try:
                self._prism = Prism.load()
            except PrismError as exc:
                self._prism_error = exc
                logger.warning("no syntax diagnostics: %s", exc)
        if self._prism is None:
            return None
        found = self._prism.errors(snapshot.text)
        return to_lsp(snapshot, found[:MAX_DIAGNOSTICS])

    def _publish(self, uri: str, version: int | None, diagnostics: list[types.Diagnostic]) -> None:
        self._ls.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=uri, version=version, diagnostics=diagnostics)
        )


def to_lsp(snapshot: Snapshot, found: list[SyntaxDiagnostic]) -> list[types.Diagnostic]:
    """Prism's byte offsets -> LSP ranges in the snapshot's position encoding."""
    encoded = snapshot.text.encode("utf-8", "surrogatepass")
    ascii_only = len(encoded) == len(snapshot.text)

    def char_index(byte_offset: int) -> int:
        if ascii_only:
            return min(byte_offset, len(snapshot.text))
        # "ignore" drops a character cut in half: an offset inside it maps to its start.
        return len(encoded[:byte_offset].decode("utf-8", "ignore"))

    result = []
    for diagnostic in found:
        start = char_index(diagnostic.start)
        end = char_index(diagnostic.start + diagnostic.length)
        (sl, sc), (el, ec) = snapshot.position_at(start), snapshot.position_at(end)
        warning = "warn" in str(diagnostic.level).lower()
        result.append(
            types.Diagnostic(
                range=types.Range(
                    start=types.Position(line=sl, character=sc),
                    end=types.Position(line=el, character=ec),
                ),
                message=diagnostic.message,
                severity=(
                    types.DiagnosticSeverity.Warning if warning else types.DiagnosticSeverity.Error
                ),
                source=SOURCE,
            )
        )
    return result
