"""LSP handlers, one module per method or small group; each is a few lines that delegate."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rubytailor.lsp.server import RubytailorServer


def register_all(server: RubytailorServer) -> None:
    from rubytailor.lsp.handlers import (
        commands,
        completion,
        documents,
        events,
        inline_completion,
        inline_stream,
        lifecycle,
        prewarm,
        status,
        workspace,
    )

    for module in (
        lifecycle,
        documents,
        workspace,
        inline_completion,
        completion,
        inline_stream,
        status,
        commands,
        events,
        prewarm,
    ):
        module.register(server)
