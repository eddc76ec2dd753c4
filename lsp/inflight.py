"""Which completion is in flight for each document, so a newer keystroke cancels it.

Keys are (uri, channel). Inline suggestions (``textDocument/inlineCompletion`` and
``rubytailor/inlineStream``) share one channel and ``textDocument/completion`` has its
own: VS Code asks both for the same keystroke, and they must not cancel each other
(the second is answered from the suggestion cache once the first is done).
"""

from __future__ import annotations

import logging

from rubytailor.model.backends.base import CancelToken

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class InFlight:
    def __init__(self) -> None:
        self._tokens: dict[Key, CancelToken] = {}

    def begin(self, key: Key) -> CancelToken:
        """A token for a new request; the previous request under ``key`` is cancelled."""
        previous = self._tokens.get(key)
        if previous is not None:
            logger.debug("superseding the %s request for %s", key[1], key[0])
            previous.cancel()
        token = CancelToken()
        self._tokens[key] = token
        return token

    def end(self, key: Key, token: CancelToken) -> None:
        if self._tokens.get(key) is token:
            del self._tokens[key]

    def cancel_all(self) -> None:
        for token in self._tokens.values():
            token.cancel()
        self._tokens.clear()
