"""The ``rubytailor/partial`` notifications of one ``rubytailor/inlineStream`` request.

Wire format: ``{"id": <stream id>, "seq": 0, 1, 2, ..., "text": <delta>, "done": bool}``.
Deltas are appended by the client; every stream ends with exactly one notification
with ``done: true`` (its text may be ""), sent before the request's response, also
when the request was cancelled or failed. The texts of a stream concatenate to the
final suggestion.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from rubytailor.protocol import PARTIAL_METHOD, Partial

logger = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self, method: str, params: Any | None = None) -> None: ...


class PartialStream:
    """Numbers and sends the partials of one stream; call only on the event loop."""

    def __init__(self, notifier: Notifier, stream_id: Any) -> None:
        self._notifier = notifier
        self.stream_id = stream_id
        self._seq = 0
        self._done = False
        self.sent = ""

    @property
    def done(self) -> bool:
        return self._done

    def send(self, delta: str) -> None:
        """A validated piece of text; ignored once the stream is done or if empty."""
        if self._done or not delta:
            return
        self._emit(delta, done=False)

    def finish(self, delta: str = "") -> None:
        """The last notification (done=true); later calls do nothing."""
        if self._done:
            return
        self._emit(delta, done=True)
        self._done = True

    def _emit(self, text: str, *, done: bool) -> None:
        payload: Partial = {"id": self.stream_id, "seq": self._seq, "text": text, "done": done}
        self._seq += 1
        self.sent += text
        self._notifier.notify(PARTIAL_METHOD, payload)
