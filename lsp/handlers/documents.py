"""didOpen, didChange, didClose: pygls' workspace keeps the text (edits are applied by
lsp/document_sync.py, and a rejected didChange never reaches ``did_change``); these keep
diagnostics and the project memory current (an open document's unsaved text replaces
its file there)."""

from __future__ import annotations

from lsprotocol import types

from rubytailor.lsp.server import RubytailorServer


def did_open(ls: RubytailorServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.diagnostics.schedule(params.text_document.uri)
    ls.overlay_document(params.text_document.uri)


def did_change(ls: RubytailorServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.personalizer.note_activity()  # typing: the background trainer waits for idle
    ls.prewarmer.preempt()  # the prompt it was warming is out of date
    ls.diagnostics.schedule(params.text_document.uri)
    ls.overlay_document(params.text_document.uri)


def did_close(ls: RubytailorServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.diagnostics.clear(uri)
    ls.completer.forget(uri)
    if ls.workspace_memory is not None:
        ls.workspace_memory.overlay(uri, None)


def register(server: RubytailorServer) -> None:
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
