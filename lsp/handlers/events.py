"""What clients report about a suggestion, written to the events file (lsp/events.py).

  textDocument/didShowCompletion              shown       {suggestion_id} or {item}
  textDocument/didPartiallyAcceptCompletion   partial     the same plus acceptedLength
  rubytailor/didDismissCompletion             dismissed   {suggestion_id} or {item}
  workspace/executeCommand rubytailor.didAcceptCompletion [{suggestion_id}]   accepted

``item`` is an InlineCompletionItem as the client received it (Copilot's clients send
that): the id is in its accept command's first argument. Params that say no id are
logged at WARNING and ignored; nothing here ever fails a request or the server. The
command answers null: it runs as a side effect of accepting, with nothing to show.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from rubytailor import stats
from rubytailor.lsp.events import Event, EventRecorder, events_path, project_key
from rubytailor.lsp.server import RubytailorServer
from rubytailor.lsp.settings_sync import plain
from rubytailor.protocol import (
    ACCEPT_COMMAND,
    DISMISS_METHOD,
    PARTIAL_ACCEPT_METHOD,
    SHOW_METHOD,
    STATS_COMMAND,
)

logger = logging.getLogger(__name__)

STATS_DAYS = 30
# Ids are ours ("s42"); anything much longer is not one, and is not written to disk.
MAX_ID_CHARS = 64


def suggestion_id_of(params: Any) -> str | None:
    """The id in ``{suggestion_id}`` or ``{item: {command: {arguments: [{suggestion_id}]}}}``."""
    if not isinstance(params, Mapping):
        return None
    found = params.get("suggestion_id")
    if found is None and isinstance(item := params.get("item"), Mapping):
        command = item.get("command")
        arguments = command.get("arguments") if isinstance(command, Mapping) else None
        if isinstance(arguments, list) and arguments and isinstance(arguments[0], Mapping):
            found = arguments[0].get("suggestion_id")
    if isinstance(found, str) and 0 < len(found) <= MAX_ID_CHARS:
        return found
    return None


def accepted_length_of(params: Mapping[str, Any]) -> int | None:
    value = params.get("acceptedLength")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


async def _record(
    ls: RubytailorServer,
    recorder: EventRecorder,
    event: Event,
    method: str,
    params: Any,
    *,
    partial: bool = False,
) -> None:
    try:
        params = plain(params)
        suggestion_id = suggestion_id_of(params)
        length = accepted_length_of(params) if partial and suggestion_id else None
        if suggestion_id is None or (partial and length is None):
            needs = "suggestion_id (or item) and acceptedLength" if partial else "suggestion_id"
            logger.warning("%s: ignored, the params need %s: %.200r", method, needs, params)
            return
        await ls.wait_for_settings()  # the workspace's settings say whether events are on
        recorder.record(event, suggestion_id, length)
    except Exception:  # a report must never take anything else down
        logger.exception("%s: recording the event failed", method)


def _notification(
    recorder: EventRecorder, event: Event, method: str, *, partial: bool = False
) -> Callable[[RubytailorServer, Any], Awaitable[None]]:
    async def handler(ls: RubytailorServer, params: Any) -> None:
        await _record(ls, recorder, event, method, params, partial=partial)

    handler.__name__ = method.replace("/", "_")
    return handler


def register(server: RubytailorServer) -> None:
    recorder = EventRecorder(
        settings=lambda: server.settings,
        project=lambda: project_key(server.workspace_roots()),
    )
    server.feature(SHOW_METHOD)(_notification(recorder, "shown", SHOW_METHOD))
    server.feature(DISMISS_METHOD)(_notification(recorder, "dismissed", DISMISS_METHOD))
    server.feature(PARTIAL_ACCEPT_METHOD)(
        _notification(recorder, "partial", PARTIAL_ACCEPT_METHOD, partial=True)
    )

    # pygls passes the command's arguments after ``ls``.
    async def did_accept(ls: RubytailorServer, *arguments: Any) -> None:
        params = arguments[0] if len(arguments) == 1 else {"arguments": list(arguments)}
        await _record(ls, recorder, "accepted", ACCEPT_COMMAND, params)

    server.command(ACCEPT_COMMAND)(did_accept)

    async def project_stats(ls: RubytailorServer, *arguments: Any) -> dict[str, Any]:
        found = stats.report(events_path(), STATS_DAYS, project_key(ls.workspace_roots()))
        return {"text": "\n".join(found.lines()), "total": found.total}

    server.command(STATS_COMMAND)(project_stats)
