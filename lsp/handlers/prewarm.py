"""rubytailor/prewarm: the cursor rests somewhere; warm the model's cache there
(lsp/prewarm.py). Params that do not name a document and a position are logged and
ignored: a notification gets no answer, and a bad one must not cost anything."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rubytailor.lsp.server import RubytailorServer
from rubytailor.lsp.settings_sync import plain
from rubytailor.protocol import PREWARM_METHOD

logger = logging.getLogger(__name__)


def position_of(params: Any) -> tuple[str, int, int] | None:
    """(uri, line, character) from TextDocumentPositionParams-shaped params, or None."""
    if not isinstance(params, Mapping):
        return None
    document, position = params.get("textDocument"), params.get("position")
    if not isinstance(document, Mapping) or not isinstance(position, Mapping):
        return None
    uri, line, character = document.get("uri"), position.get("line"), position.get("character")
    if not isinstance(uri, str) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (line, character)
    ):
        return None
    return uri, line, character  # type: ignore[return-value]  # checked just above


def prewarm(ls: RubytailorServer, params: Any) -> None:
    found = position_of(plain(params))
    if found is None:
        logger.warning("%s: ignored, the params need textDocument.uri and position", PREWARM_METHOD)
        return
    ls.prewarmer.schedule(*found)


def register(server: RubytailorServer) -> None:
    server.feature(PREWARM_METHOD)(prewarm)
