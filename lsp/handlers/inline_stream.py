"""rubytailor/inlineStream: the suggestion streamed as rubytailor/partial notifications.

Params: ``{textDocument: {uri}, position: {line, character}, id?}``; ``id`` defaults to
the request's JSON-RPC id. See lsp/streaming.py for the notifications and
lsp/response.py for the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pygls.exceptions import JsonRpcInvalidParams

from rubytailor.lsp import response
from rubytailor.lsp.server import RubytailorServer
from rubytailor.lsp.settings_sync import plain
from rubytailor.lsp.streaming import PartialStream
from rubytailor.lsp.suggestion import INLINE, suggest
from rubytailor.protocol import STREAM_METHOD, StreamResult


async def inline_stream(ls: RubytailorServer, params: Any) -> StreamResult:
    uri, line, character, stream_id = _parse(plain(params))
    if stream_id is None:
        stream_id = ls.protocol.msg_id
    stream = PartialStream(ls.protocol, stream_id)
    try:
        suggestion = await suggest(
            ls,
            uri,
            line,
            character,
            channel=INLINE,
            method=STREAM_METHOD,
            on_partial=stream.send,
        )
        result = response.stream_result(stream_id, suggestion, stream)
        stream.finish(suggestion.result.final_delta if suggestion else "")
        return result
    finally:
        # Cancelled or failed: the client still gets its done=true.
        stream.finish()


def register(server: RubytailorServer) -> None:
    server.feature(STREAM_METHOD)(inline_stream)


def _parse(params: Any) -> tuple[str, int, int, Any]:
    try:
        uri = params["textDocument"]["uri"]
        line = params["position"]["line"]
        character = params["position"]["character"]
    except (KeyError, TypeError) as exc:
        raise JsonRpcInvalidParams(
            f"{STREAM_METHOD} needs {{textDocument: {{uri}}, position: {{line, character}}}}"
        ) from exc
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (line, character))
    if not isinstance(uri, str) or not ints:
        raise JsonRpcInvalidParams(
            f"{STREAM_METHOD}: uri must be a string, line/character integers"
        )
    stream_id = params.get("id") if isinstance(params, Mapping) else None
    return uri, line, character, stream_id
