"""The real server, except that the scripted backend raises on the completion "RAISE".

Lets a test force an unexpected exception inside a request handler and check that the
server answers with an error and keeps serving.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from rubytailor.cli import main
from rubytailor.model.backends.fake import FakeBackend

_original_stream = FakeBackend.stream


def _stream(self: FakeBackend, *args: Any, **kwargs: Any) -> Iterator[str]:
    for piece in _original_stream(self, *args, **kwargs):
        if piece.startswith("RAISE"):
            raise RuntimeError("scripted failure inside the backend")
        yield piece


FakeBackend.stream = _stream

if __name__ == "__main__":
    sys.exit(main())
