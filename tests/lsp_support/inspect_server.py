"""The real server plus one test-only request, ``test/documentText {uri}``: the text the
server holds for an open document (null if it is not open, or stale after a rejected
edit). Lets end-to-end tests compare the server's text with the editor's."""

from __future__ import annotations

import sys
from typing import Any

from rubytailor.cli import main
from rubytailor.lsp import serve
from rubytailor.lsp.server import RubytailorServer, create_server
from rubytailor.lsp.settings_sync import plain

TEXT_METHOD = "test/documentText"


def _create_server(*args: Any, **kwargs: Any) -> RubytailorServer:
    server = create_server(*args, **kwargs)

    @server.feature(TEXT_METHOD)
    def document_text(ls: RubytailorServer, params: Any) -> str | None:
        snapshot = ls.snapshot(plain(params)["uri"])
        return None if snapshot is None else snapshot.text

    return server


serve.create_server = _create_server  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
