"""The ``rubytailor/partial`` notifications of one ``rubytailor/inlineStream`` request.

Wire format: ``{"id": <stream id>, "seq": 0, 1, 2, ..., "text": <delta>, "done": bool}``.
Deltas are appended by the client; every stream ends with exactly one notification
with ``done: true`` (its text may be ""), sent before the request's response, also
when the request was cancelled or failed. The texts of a stream concatenate to the
final suggestion. Once a stream has sent text, its notifications carry the
``suggestion_id`` that its result will carry (lsp/events.py), so that a client can
report a suggestion it showed, or that was accepted, before it finished streaming.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from rubytailor.lsp.events import SUGGESTIONS
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
        self.suggestion_id: str | None = None  # given with the first text

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
        if self.suggestion_id is not None:
            # Without a result (cancelled, failed) what was sent is the suggestion.
            SUGGESTIONS.settle(self.suggestion_id, self.sent)

    def ensure_id(self) -> str:
        """The stream's suggestion id, given out now if it has none yet."""
        if self.suggestion_id is None:
            self.suggestion_id = SUGGESTIONS.new_id()
            SUGGESTIONS.open(self.suggestion_id)
        return self.suggestion_id

    def _emit(self, text: str, *, done: bool) -> None:
        payload: Partial = {"id": self.stream_id, "seq": self._seq, "text": text, "done": done}
        self._seq += 1
        self.sent += text
        if self.sent:
            payload["suggestion_id"] = self.ensure_id()
        self._notifier.notify(PARTIAL_METHOD, payload)
