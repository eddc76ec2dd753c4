"""textDocument/completion: the suggestion's first line as one item marked as AI."""

from __future__ import annotations

from lsprotocol import types

from rubytailor.lsp import response
from rubytailor.lsp.server import RubytailorServer
from rubytailor.lsp.suggestion import COMPLETION, suggest


async def completion(ls: RubytailorServer, params: types.CompletionParams) -> types.CompletionList:
    position = params.position
    suggestion = await suggest(
        ls,
        params.text_document.uri,
        position.line,
        position.character,
        channel=COMPLETION,
        method=types.TEXT_DOCUMENT_COMPLETION,
    )
    return response.completion_list(suggestion, _label_details_support(ls))


def register(server: RubytailorServer) -> None:
    server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)


def _label_details_support(ls: RubytailorServer) -> bool:
    document = ls.client_capabilities.text_document
    item = document.completion.completion_item if document and document.completion else None
    return bool(item and item.label_details_support)
