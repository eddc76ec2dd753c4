"""didOpen, didChange, didClose: pygls keeps the text; these keep diagnostics current."""

from __future__ import annotations

from lsprotocol import types

from rubytailor.lsp.server import RubytailorServer


def register(server: RubytailorServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: RubytailorServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.diagnostics.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: RubytailorServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.diagnostics.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: RubytailorServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.diagnostics.clear(uri)
        ls.completer.forget(uri)
