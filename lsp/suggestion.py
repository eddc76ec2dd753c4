"""The path every completion request shares: snapshot, checks, model thread, log line.

``suggest`` is called by the three completion handlers (inline, completion, stream).
It never raises for a document it cannot complete; it answers None and logs why.
Cancellation: ``$/cancelRequest`` cancels the handler's task, and a newer request on
the same document and channel cancels the older one's token; either way the model
thread stops within one token. A superseded request gets an empty (cancelled)
answer, a cancelled one the JSON-RPC error RequestCancelled (-32800) from pygls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from rubytailor.errors import DocumentError
from rubytailor.lsp.snapshot import Snapshot
from rubytailor.model.backends import adapter_of
from rubytailor.model.pipeline import CompletionRequest, CompletionResult

if TYPE_CHECKING:
    from rubytailor.lsp.server import RubytailorServer

logger = logging.getLogger(__name__)
request_log = logging.getLogger("rubytailor.requests")

INLINE = "inline"
COMPLETION = "completion"


@dataclass(frozen=True)
class Suggestion:
    snapshot: Snapshot
    offset: int  # cursor, as an index into snapshot.text
    result: CompletionResult


async def suggest(
    ls: RubytailorServer,
    uri: str,
    line: int,
    character: int,
    *,
    channel: str,
    method: str,
    on_partial: Callable[[str], None] | None = None,
) -> Suggestion | None:
    started = time.perf_counter()
    ls.prewarmer.preempt()  # a real request goes first
    await ls.wait_for_settings()
    settings = ls.settings
    if not settings.enable:
        _log_skip(method, uri, None, "disabled", started)
        return None
    snapshot = ls.snapshot(uri)
    if snapshot is None:
        _log_skip(method, uri, None, "unknown document (not opened with didOpen)", started)
        return None
    try:
        offset = snapshot.offset_at(line, character)
    except DocumentError as exc:
        _log_skip(method, uri, snapshot.version, f"bad position: {exc}", started)
        raise JsonRpcInvalidParams(str(exc)) from exc
    reason = unsuitable(ls, snapshot)
    if reason is not None:
        _log_skip(method, uri, snapshot.version, reason, started)
        return None

    request = completion_request(ls, snapshot, offset)
    key = (uri, channel)
    token = ls.inflight.begin(key)
    # Typed-through and repeated requests are answered here on the loop, without
    # queueing behind a generation that is still winding down on the model thread.
    cached = ls.completer.cached(request)
    if cached is not None:
        ls.inflight.end(key, token)
        _log_result(method, uri, snapshot.version, cached, started, _memory_state(ls))
        return Suggestion(snapshot=snapshot, offset=offset, result=cached)
    loop = asyncio.get_running_loop()

    def partial_from_worker(delta: str) -> None:
        # The model thread hands text over; the loop sends it, in order (FIFO).
        if on_partial is not None:
            loop.call_soon_threadsafe(on_partial, delta)

    future = ls.model_thread.submit(ls.completer.generate, request, partial_from_worker, token)
    try:
        result = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        token.cancel()
        _log_skip(method, uri, snapshot.version, "cancelled by the client", started)
        raise
    except Exception as exc:
        # pygls answers with an internal error and logs the traceback; the server goes on.
        _log_skip(method, uri, snapshot.version, f"failed: {exc!r}", started)
        raise
    finally:
        ls.inflight.end(key, token)
    if result.stop_reason == "no_model":
        ls.report_model_state()
    _log_result(method, uri, snapshot.version, result, started, _memory_state(ls))
    return Suggestion(snapshot=snapshot, offset=offset, result=result)


def completion_request(ls: RubytailorServer, snapshot: Snapshot, offset: int) -> CompletionRequest:
    """The pipeline's request for ``offset`` in ``snapshot``, under the current settings
    (also what pre-warming evaluates, so it warms exactly this prompt)."""
    settings = ls.settings
    return CompletionRequest(
        doc_key=snapshot.uri,
        version=snapshot.version,
        text=snapshot.text,
        offset=offset,
        max_lines=settings.max_lines,
        max_tokens=settings.max_tokens,
        max_prompt_tokens=settings.max_prompt_tokens,
        project_memory=settings.project_memory,
        memory_key=ls.workspace_memory.key_for(snapshot.uri) if ls.workspace_memory else None,
        min_confidence=settings.min_confidence,
    )


def _memory_state(ls: RubytailorServer) -> str:
    """The project memory for the log line: off, or its state and size."""
    status = ls.memory_status()  # also shows, once, a message when a cap left files out
    if status["state"] == "off":
        return "off"
    return f"{status['state']}:{status['files']}files/{status['tokens']}tokens"


def unsuitable(ls: RubytailorServer, snapshot: Snapshot) -> str | None:
    """Why a document gets no suggestions, or None."""
    text = snapshot.text
    limit = ls.settings.max_file_bytes
    try:
        size = len(text.encode("utf-8")) if len(text) <= limit else None
    except UnicodeEncodeError:
        return "the text is not valid Unicode (lone surrogates): binary content?"
    if size is None or size > limit:
        name = snapshot.uri.rsplit("/", 1)[-1]
        ls.show_once(
            types.MessageType.Warning,
            f"rubytailor: {name} is larger than maxFileBytes ({limit:,} bytes), so it gets "
            "no suggestions and no syntax diagnostics. Raise rubytailor.maxFileBytes to "
            "include it.",
            key=f"too-large:{snapshot.uri}",
        )
        return f"larger than maxFileBytes ({limit} bytes)"
    if "\x00" in text:
        return "the text contains NUL bytes: binary content, not Ruby"
    return None


def _log_skip(method: str, uri: str, version: int | None, reason: str, started: float) -> None:
    request_log.info(
        "%s uri=%s version=%s no suggestion: %s total_ms=%.1f",
        method,
        uri,
        version,
        reason,
        (time.perf_counter() - started) * 1000,
    )


def _log_result(
    method: str,
    uri: str,
    version: int | None,
    result: CompletionResult,
    started: float,
    memory_state: str,
) -> None:
    request_log.info(
        "%s uri=%s version=%s prompt_tokens=%d reused_tokens=%d generated_tokens=%d "
        "ttft_ms=%.1f gen_ms=%.1f total_ms=%.1f verdict=%s source=%s stop=%s chars=%d "
        "confidence=%s memory_share=%.2f drafts=%d/%d memory=%s adapter=%s model=%s",
        method,
        uri,
        version,
        result.prompt_tokens,
        result.reused_tokens,
        result.generated_tokens,
        result.ttft_ms or 0.0,
        result.total_ms,
        (time.perf_counter() - started) * 1000,
        result.verdict,
        result.source,
        result.stop_reason or "-",
        len(result.text),
        "-" if result.confidence is None else f"{result.confidence:.3f}",
        result.memory_share,
        result.accepted_drafts,
        result.drafted_tokens,
        memory_state,
        adapter_of(result.model_id),
        result.model_id,
    )
