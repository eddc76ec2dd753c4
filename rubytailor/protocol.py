"""rubytailor's own LSP messages, defined once for the server, its client and the tests.

``rubytailor/inlineStream`` (request) streams one suggestion as ``rubytailor/partial``
notifications and answers with a ``StreamResult``; ``rubytailor/status`` answers with
what the server is running. Every stream ends with exactly one partial with
``done: true``, sent before the response; the partials' texts concatenate to the
result's ``text``. Standard LSP methods come from lsprotocol.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

STREAM_METHOD = "rubytailor/inlineStream"
PARTIAL_METHOD = "rubytailor/partial"
STATUS_METHOD = "rubytailor/status"


class Partial(TypedDict):
    """Params of ``rubytailor/partial``."""

    id: Any  # the stream id: the request's ``id`` param, else its JSON-RPC id
    seq: int  # 0, 1, 2, ... within the stream
    text: str  # the delta to append
    done: bool


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
