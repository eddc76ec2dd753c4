"""Suffix arrays over reversed token sequences: the searchable unit of the workspace index.

A ``Segment`` holds several files' token ids. Each file is stored reversed in one array,
``text``, with a separator (-1) before, between and after the files, so a suffix of
``text`` read forward is the original file read backward from some position. A suffix
starts with the reversed context exactly where the context ends in the original, and
the token that followed that occurrence is ``text[pos - 1]`` (a separator at a file's
end). The suffix array ``sa`` lists the suffixes in sorted order, so those starting with
the last n context tokens form one range of it, and each further context token narrows
the range with two binary searches: the longest match is found by growing the context.

Suffixes are sorted by their first ``depth`` tokens only (ties in any order), since no
query looks further back: prefix doubling with numpy, log2(depth) argsorts of int64
keys, whatever the repetition in the code (duplicated files included).

Memory, per token: ``text`` and the token after each suffix (int16 while ids fit),
``sa`` (int32) and each suffix's file (uint16 under 65,535 files): 10 bytes. Building
needs three int64 arrays on top, 24 bytes per token, for a moment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SEP = -1  # between files: never equal to a token id, so no match crosses it
# Below this many suffixes, each one's match is extended on its own (plain Python) instead
# of narrowing the range by binary search for every further token.
SMALL_RANGE = 48
# A usable occurrence is looked for among this many suffixes before scanning a whole range.
PROBE = 256
# After building a segment this large, hand the sort's freed work space back to the OS:
# glibc keeps freed blocks of this size in the heap, tens of MB for a big project.
TRIM_ABOVE = 1 << 18

IntArray = npt.NDArray[np.int64]
Found = tuple[int, IntArray, IntArray]  # match length, next token ids (ascending), counts
EMPTY = np.zeros(0, dtype=np.int64)
NOT_FOUND: Found = (0, EMPTY, EMPTY)


def sort_suffixes(text: npt.NDArray[np.integer], depth: int) -> npt.NDArray[np.int32]:
    """Positions of ``text``'s non-separator suffixes, sorted by their first ``depth`` tokens.

    ``text`` must end with at least ``depth`` separators, so no suffix's first ``depth``
    tokens run past the end. Prefix doubling: after the round with shift k, a suffix's
    rank orders its first 2k tokens.
    """
    rank = text.astype(np.int64) + 1  # the separator ranks lowest
    scale = int(rank.max()) + 1  # ranks are below this
    order: npt.NDArray[np.intp] | None = None
    k = 1
    while k < depth and scale < len(rank):  # else every prefix is distinct already
        key = rank * scale
        key[:-k] += rank[k:]
        order = np.argsort(key)
        # At most three arrays of 8 bytes per position: rank's buffer takes the sorted
        # keys, then key's the new ranks in sorted order, then rank's the new ranks.
        sorted_key = np.take(key, order, out=rank)
        fresh = key
        fresh[0] = 0
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=fresh[1:])
        np.cumsum(fresh, out=fresh)
        scale = int(fresh[-1]) + 1
        rank[order] = fresh
        del key, fresh, sorted_key
        k *= 2
    if order is None:
        order = np.argsort(rank)
    del rank
    order = order[text[order] != SEP]
    return order.astype(np.int32)


class Segment:
    """An immutable suffix array over a few files' token ids (see the module docstring)."""

    def __init__(self, files: Sequence[tuple[str, npt.NDArray[np.integer]]], depth: int) -> None:
        self.depth = depth
        self.keys: tuple[str, ...] = tuple(key for key, _ in files)
        self.lengths = np.array([len(ids) for _, ids in files], dtype=np.int64)
        # Layout: SEP, file 0 reversed, SEP, file 1 reversed, SEP, ..., then padding.
        self.starts = np.cumsum(self.lengths + 1) - self.lengths
        size = int(self.lengths.sum()) + len(files) + 1
        top = max((int(ids.max()) for _, ids in files if len(ids)), default=0)
        low = min((int(ids.min()) for _, ids in files if len(ids)), default=0)
        if low < 0:
            raise ValueError("token ids must be non-negative")
        text_type = np.int16 if top < np.iinfo(np.int16).max else np.int32
        self.text: npt.NDArray[np.signedinteger] = np.full(size + depth, SEP, dtype=text_type)
        for (_, ids), start in zip(files, self.starts, strict=True):
            self.text[start : start + len(ids)] = ids[::-1]
        self.sa = sort_suffixes(self.text, depth)
        # Where each first token's suffixes start: the first narrowing step is one lookup.
        first = self.text[self.sa]
        self.first_starts = np.searchsorted(first, np.arange(top + 2)).astype(np.int32)
        # The token after each suffix's occurrence (SEP: it ends its file), in suffix order,
        # so counting what follows a range reads two contiguous slices.
        self.following = self.text[self.sa.astype(np.intp) - 1]
        file_type = np.uint16 if len(files) < np.iinfo(np.uint16).max else np.int32
        self.fid = (np.searchsorted(self.starts, self.sa, side="right") - 1).astype(file_type)
        # bisect reads single items; memoryviews hand out Python ints far faster than numpy.
        self._text_items = self.text.data
        self._sa_items = self.sa.data
        self._fid_items = self.fid.data
        self._following_items = self.following.data
        self._first_items = self.first_starts.data
        if len(self.text) > TRIM_ABOVE:
            release_free_heap()

    @property
    def tokens(self) -> int:
        return len(self.sa)

    @property
    def nbytes(self) -> int:
        arrays: list[np.ndarray] = [self.text, self.sa, self.following, self.fid]
        arrays += [self.lengths, self.starts, self.first_starts]
        return sum(a.nbytes for a in arrays)

    def ids_of(self, index: int) -> IntArray:
        """The token ids of file ``index``, in their original order."""
        start = int(self.starts[index])
        return self.text[start : start + int(self.lengths[index])][::-1].astype(np.int64)

    def search(self, rev_context: list[int], usable: npt.NDArray[np.bool_]) -> Found:
        """Longest n with context[-n:] followed by a token in a usable file; next-token counts.

        ``rev_context``: the context's last tokens (at most ``depth``), most recent first;
        ``usable``: one flag per file of this segment.
        """
        if not rev_context or rev_context[0] + 1 >= len(self.first_starts):
            return NOT_FOUND
        lo, hi = self._first_items[rev_context[0]], self._first_items[rev_context[0] + 1]
        if lo == hi:
            return NOT_FOUND  # not even the last token occurs
        text, sa = self._text_items, self._sa_items
        n = 1
        ranges = [(lo, hi)]  # ranges[d - 1]: the suffixes starting with d context tokens
        while n < len(rev_context) and hi - lo > SMALL_RANGE:
            depth, token = n, rev_context[n]
            a = bisect_left(sa, token, lo, hi, key=lambda p: text[p + depth])
            b = bisect_right(sa, token, a, hi, key=lambda p: text[p + depth])
            if a == b:
                break
            lo, hi, n = a, b, n + 1
            ranges.append((lo, hi))
        if hi - lo <= SMALL_RANGE:
            found = self._extend(lo, hi, n, rev_context, usable)
            if found[0]:
                return found
        else:  # the context ran out, or no suffix continues it: all match exactly n tokens
            following = self._following(lo, hi, usable)
            if len(following):
                return n, *count(following)
        # Every occurrence of the longest context is excluded or ends a file: find the
        # longest shorter one that has a usable occurrence (usability only shrinks as
        # the context grows, so binary search over the recorded ranges).
        low, high, best = 1, n - 1, 0
        while low <= high:
            mid = (low + high) // 2
            if self._has_usable(*ranges[mid - 1], usable):
                best, low = mid, mid + 1
            else:
                high = mid - 1
        return (best, *count(self._following(*ranges[best - 1], usable))) if best else NOT_FOUND

    def _extend(
        self, lo: int, hi: int, n: int, rev_context: list[int], usable: npt.NDArray[np.bool_]
    ) -> Found:
        """Few suffixes, all matching n tokens: extend each match as far as it goes and
        count what follows the longest usable ones. Plain Python: numpy's per-call
        overhead would cost more than these few comparisons."""
        text, sa, fid, ok = self._text_items, self._sa_items, self._fid_items, usable.data
        best, tally = 0, {}
        for i in range(lo, hi):
            following = self._following_items[i]
            if following == SEP or not ok[fid[i]]:
                continue
            p, d = sa[i], n  # the padding after the text ends every match within depth
            while d < len(rev_context) and text[p + d] == rev_context[d]:
                d += 1
            if d > best:
                best, tally = d, {following: 1}
            elif d == best:
                tally[following] = tally.get(following, 0) + 1
        if not best:
            return NOT_FOUND
        ids = sorted(tally)
        return best, np.array(ids, dtype=np.int64), np.array([tally[t] for t in ids], np.int64)

    def _following(
        self, lo: int, hi: int, usable: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.integer]:
        """The tokens after the usable occurrences among suffixes lo..hi."""
        following = self.following[lo:hi]
        return following[usable[self.fid[lo:hi]] & (following != SEP)]

    def _has_usable(self, lo: int, hi: int, usable: npt.NDArray[np.bool_]) -> bool:
        """Any usable occurrence among suffixes lo..hi? (Looks at the first few first.)"""
        if hi - lo > PROBE and len(self._following(lo, lo + PROBE, usable)):
            return True
        return bool(len(self._following(lo, hi, usable)))


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do


def release_free_heap() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    else:
        log.debug("malloc_trim is not available; freed build memory stays in the heap")


def count(tokens: npt.NDArray[np.integer]) -> tuple[IntArray, IntArray]:
    """Distinct tokens (ascending) and how often each occurs."""
    if len(tokens) <= 16:  # the usual case; numpy's per-call overhead would dominate
        tally: dict[int, int] = {}
        for t in tokens.tolist():
            tally[t] = tally.get(t, 0) + 1
        ids = sorted(tally)
        return np.array(ids, dtype=np.int64), np.array([tally[t] for t in ids], dtype=np.int64)
    if len(tokens) <= 512:
        distinct, counts = np.unique(tokens, return_counts=True)
        return distinct.astype(np.int64), counts.astype(np.int64)
    counts = np.bincount(tokens)
    distinct = np.flatnonzero(counts)
    return distinct.astype(np.int64), counts[distinct].astype(np.int64)
