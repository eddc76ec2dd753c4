"""rubytailor's own LSP messages, defined once for the server, its client and the tests.

``rubytailor/inlineStream`` (request) streams one suggestion as ``rubytailor/partial``
notifications and answers with a ``StreamResult``; ``rubytailor/status`` answers with
what the server is running. Every stream ends with exactly one partial with
``done: true``, sent before the response; the partials' texts concatenate to the
result's ``text``. Standard LSP methods come from lsprotocol.

Suggestion events: every suggestion returned carries a ``suggestion_id`` (the stream's
result and its partials with text, the accept command of inline and completion items);
clients report what became of it with ``SHOW_METHOD``, ``PARTIAL_ACCEPT_METHOD`` and
``DISMISS_METHOD`` (notifications, ``SuggestionEvent`` params) and the command
``ACCEPT_COMMAND`` (``workspace/executeCommand``, arguments ``[{"suggestion_id": id}]``),
which the server appends to its local events file (lsp/events.py, `rubytailor stats`).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

STREAM_METHOD = "rubytailor/inlineStream"
PARTIAL_METHOD = "rubytailor/partial"
STATUS_METHOD = "rubytailor/status"
# Suggestion events, client -> server. The first two are named as Copilot's language
# server names them, so clients written for it report to rubytailor as well.
SHOW_METHOD = "textDocument/didShowCompletion"
PARTIAL_ACCEPT_METHOD = "textDocument/didPartiallyAcceptCompletion"
DISMISS_METHOD = "rubytailor/didDismissCompletion"
# Attached to every inline and completion item: clients run an item's command on accept.
ACCEPT_COMMAND = "rubytailor.didAcceptCompletion"
ACCEPT_TITLE = "rubytailor: accepted"
# Client -> server notification, ``PrewarmParams``: the cursor rests here (a document
# was opened or focused, or the cursor moved); the server evaluates that prompt when
# the editor has been idle a moment, so the first suggestion there starts warm.
PREWARM_METHOD = "rubytailor/prewarm"
# workspace/executeCommand: acceptance figures of this project, the last 30 days
# ({"text": the `rubytailor stats` table, "total": its total row}).
STATS_COMMAND = "rubytailor.stats"


class Partial(TypedDict):
    """Params of ``rubytailor/partial``."""

    id: Any  # the stream id: the request's ``id`` param, else its JSON-RPC id
    seq: int  # 0, 1, 2, ... within the stream
    text: str  # the delta to append
    done: bool
    # Once the stream has sent text: the id its result will carry, so that a client
    # can report a suggestion accepted before it finished streaming.
    suggestion_id: NotRequired[str]


class StreamPosition(TypedDict):
    line: int
    character: int


class StreamResult(TypedDict):
    """Result of ``rubytailor/inlineStream``; only the first five keys are always there."""

    id: Any
    text: str
    verdict: str  # a model.outcomes.Verdict value
    source: str  # a model.outcomes.Source value
    cancelled: bool
    version: NotRequired[int | None]
    position: NotRequired[StreamPosition]
    prompt_tokens: NotRequired[int]
    reused_tokens: NotRequired[int]
    generated_tokens: NotRequired[int]
    ttft_ms: NotRequired[float | None]
    total_ms: NotRequired[float]
    stop_reason: NotRequired[str]
    confidence: NotRequired[float | None]
    memory_share: NotRequired[float]
    model_id: NotRequired[str]
    adapter_id: NotRequired[str]
    suggestion_id: NotRequired[str]  # only with text, and not cancelled


class SuggestionRef(TypedDict):
    """The argument of ``ACCEPT_COMMAND``."""

    suggestion_id: str


class SuggestionEvent(TypedDict, total=False):
    """Params of the event notifications: the id, or (Copilot-style) the item as the
    client received it, its id in ``item.command.arguments[0].suggestion_id``."""

    suggestion_id: str
    item: dict[str, Any]
    acceptedLength: int  # PARTIAL_ACCEPT_METHOD only: characters from the suggestion's start


class PrewarmParams(TypedDict):
    """Params of ``PREWARM_METHOD`` (the shape of TextDocumentPositionParams)."""

    textDocument: dict[str, str]  # {"uri": ...}
    position: StreamPosition
