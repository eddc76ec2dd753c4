"""Answering without the model: typing through a suggestion, and exact repeats.

Typing through. When the user types the first characters of the suggestion on
screen, the rest of it is still the answer: the last suggestion per document is kept
with the position it was made at, and a request whose prefix is that prefix plus a
start of the suggestion (same suffix) gets the remainder at once.

Exact repeats. An LRU keyed by document state (uri, prefix, suffix) serves a request
at a state seen before, e.g. after undo or moving the cursor back. Empty suggestions
are remembered too, so a position where the model had nothing does not run it again.

Memory. Documents can be megabytes, so no entry holds document text: a state is
``(len, hash)`` of prefix and suffix, with Python's string hash (64-bit SipHash,
salted per process). That is fast (about 2 ms for a 5 MB prefix, no encoding step) and
the cache never leaves the process, so the salt does not matter; a false match needs
equal lengths and a 64-bit collision. An entry is those few integers plus the
suggestion, so memory is about ``capacity`` x suggestion size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_State = tuple[int, int, int, int]  # len(prefix), hash(prefix), len(suffix), hash(suffix)


@dataclass(frozen=True)
class CacheHit:
    text: str
    kind: Literal["typed_through", "exact"]


@dataclass(frozen=True)
class _Last:
    """The last suggestion made in a document, and where."""

    prefix_len: int
    prefix_hash: int
    suffix_len: int
    suffix_hash: int
    text: str


class SuggestionCache:
    """Thread-safe: the server may look up on its event loop and remember from a worker."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._exact: OrderedDict[tuple[str, _State], str] = OrderedDict()
        self._last: OrderedDict[str, _Last] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, doc_key: str, prefix: str, suffix: str, suggestion: str) -> None:
        """Record the suggestion made at this state (also an empty one)."""
        state = _state(prefix, suffix)
        last = _Last(state[0], state[1], state[2], state[3], suggestion)
        with self._lock:
            _put(self._exact, (doc_key, state), suggestion, self._capacity)
            _put(self._last, doc_key, last, self._capacity)

    def lookup(self, doc_key: str, prefix: str, suffix: str) -> CacheHit | None:
        state = _state(prefix, suffix)
        with self._lock:
            exact = self._exact.get((doc_key, state))
            if exact is not None:
                self._exact.move_to_end((doc_key, state))
                return CacheHit(exact, "exact")
            last = self._last.get(doc_key)
        if last is None or (state[2], state[3]) != (last.suffix_len, last.suffix_hash):
            return None
        typed_len = len(prefix) - last.prefix_len
        if not 0 < typed_len < len(last.text):
            return None
        # Cheap test first; hash the (long) earlier part of the prefix only if it passes.
        if not last.text.startswith(prefix[last.prefix_len :]):
            return None
        if hash(prefix[: last.prefix_len]) != last.prefix_hash:
            return None
        return CacheHit(last.text[typed_len:], "typed_through")

    def forget(self, doc_key: str) -> None:
        """Drop what is known about a document, e.g. when it is closed."""
        with self._lock:
            self._last.pop(doc_key, None)
            for key in [k for k in self._exact if k[0] == doc_key]:
                del self._exact[key]

    def clear(self) -> None:
        """Drop everything, e.g. after the model or its adapter changed."""
        with self._lock:
            self._exact.clear()
            self._last.clear()


def _state(prefix: str, suffix: str) -> _State:
    return (len(prefix), hash(prefix), len(suffix), hash(suffix))


def _put(lru: OrderedDict[K, V], key: K, value: V, capacity: int) -> None:
    lru[key] = value
    lru.move_to_end(key)
    while len(lru) > capacity:
        lru.popitem(last=False)
