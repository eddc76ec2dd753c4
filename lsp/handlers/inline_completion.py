"""textDocument/inlineCompletion (LSP 3.18): the suggestion as ghost text at the cursor."""

from __future__ import annotations

from lsprotocol import types

from rubytailor.lsp import response
from rubytailor.lsp.server import RubytailorServer
from rubytailor.lsp.suggestion import INLINE, suggest


async def inline_completion(
    ls: RubytailorServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    position = params.position
    suggestion = await suggest(
        ls,
        params.text_document.uri,
        position.line,
        position.character,
        channel=INLINE,
        method=types.TEXT_DOCUMENT_INLINE_COMPLETION,
    )
    return response.inline_list(suggestion)


def register(server: RubytailorServer) -> None:
    # Without the options object the capability is never advertised.
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(
        inline_completion
    )
