"""The project as the model's memory: next-token predictions from where the context recurs.

Code repeats itself within a project: the same calls, names and idioms recur across
files. Each *source* (the open document, the rest of the workspace) finds the longest n
such that the last n context tokens occur in it followed by another token, and predicts
the next token by the counts of the tokens that followed every such occurrence. The
model's distribution is mixed with these (``mix``), each source weighted by how long its
match is: ``w(n) = SOURCE_WEIGHT_MAX * (1 - exp(-n / WEIGHT_LENGTH_SCALE))``, the sum
capped at ``MEMORY_WEIGHT_CAP``. On unseen Rails apps a prototype of this took line
completion exact match from 2.5 % to 20 %.

Workspace index (``WorkspaceIndex``). Suffix arrays over the reversed token ids
(``model/suffix_array.py``): growing the context narrows one binary-search range, so a
lookup costs a few dozen item reads per segment, not a pass over the project. Chosen by
measurement against the alternatives: a pure-Python suffix automaton needed about 450
bytes and 18 us per token to build (630 MB for a 1.4M-token project); hashed n-gram
tables need one entry per position per n. The suffix arrays take 10 bytes per token
(24 more while one builds) and 1-2 s per million tokens to build on one core; a lookup
in a 1.75M-token workspace costs about 0.1 ms (p95 0.25 ms) against a 9 ms forward pass
(``scripts/bench_project_memory.py``).

Updates, LSM-style. Segments are immutable. Changing a file builds a small segment for
it and masks the old version out (a tombstone in the owning segment's per-file ``alive``
flags); when there are more than ``MAX_SEGMENTS`` segments, or one is mostly
tombstones, the newest segments are merged into one, pulling in older ones while they
are no more than ``MERGE_FACTOR`` times the size merged so far (the merge cost stays
proportional to the change). Answers do not depend on how files are split into
segments, so an index updated file by file answers exactly as one built at once.

Threads. A query reads ``self._snapshot`` once (segments + alive flags + key locations,
never mutated) and takes no lock, so it never waits for a build. Writers build outside
the lock and swap a new snapshot in under it; merges run on a background thread and,
when they swap in, keep a file's merged copy alive only if no newer version or removal
arrived while they built.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from rubytailor.model.suffix_array import (
    NOT_FOUND,
    SEP,
    SMALL_RANGE,
    Found,
    IntArray,
    Segment,
    count,
)

log = logging.getLogger(__name__)

MAX_MATCH_LEN = 32  # longest context compared; w(32) is within 0.5 % of SOURCE_WEIGHT_MAX
SOURCE_WEIGHT_MAX = 0.95  # a source's weight as its match length grows without bound
WEIGHT_LENGTH_SCALE = 6.0  # match length (tokens) at which a source has 63 % of that weight
MEMORY_WEIGHT_CAP = 0.98  # all sources together: the model always keeps 2 %
MAX_SEGMENTS = 8  # a query searches every segment, so their number stays small
MERGE_FACTOR = 4

TokenIds = Sequence[int] | npt.NDArray[np.integer]  # a list from a tokenizer, or an array


@dataclass(frozen=True)
class Match:
    """A source's prediction: the tokens that followed the longest matched context."""

    n: int  # tokens of context matched; 0: no match
    next_ids: IntArray  # distinct next tokens, ascending
    counts: IntArray  # occurrences of each
    source: str = ""  # "document" or "workspace", for logs


def match_weight(n: int) -> float:
    """One source's mixing weight for a match of ``n`` tokens."""
    return SOURCE_WEIGHT_MAX * (1.0 - math.exp(-n / WEIGHT_LENGTH_SCALE)) if n > 0 else 0.0


def source_weights(matches: Sequence[Match]) -> list[float]:
    """Each source's weight in ``mix``: ``match_weight`` of its match, all of them scaled
    down together when their sum exceeds ``MEMORY_WEIGHT_CAP``."""
    weights = [match_weight(m.n) if len(m.counts) else 0.0 for m in matches]
    total = sum(weights)
    if total > MEMORY_WEIGHT_CAP:
        weights = [w * MEMORY_WEIGHT_CAP / total for w in weights]
    return weights


def memory_choice(matches: Sequence[Match], min_share: float) -> int | None:
    """The token the sources alone give at least ``min_share`` of the mixed distribution
    (so with ``min_share >= 0.5`` it is the greedy choice whatever the model predicts),
    or None."""
    mass: dict[int, float] = {}
    for match, weight in zip(matches, source_weights(matches), strict=True):
        if weight > 0:
            for token, p in zip(
                match.next_ids.tolist(), (match.counts / match.counts.sum()).tolist(), strict=True
            ):
                mass[token] = mass.get(token, 0.0) + weight * p
    if not mass:
        return None
    token, best = max(mass.items(), key=lambda item: item[1])
    return token if best >= min_share else None


def mix(probs: npt.NDArray[np.floating], matches: Sequence[Match]) -> tuple[np.ndarray, float]:
    """The model's next-token probabilities mixed with the sources'; and the sources' share.

    ``mixed = (1 - sum w) * probs + sum w * p_source``, each w from ``match_weight``,
    scaled down together when they exceed ``MEMORY_WEIGHT_CAP``. A new array; sums to 1
    when ``probs`` does.
    """
    weights = source_weights(matches)
    share = sum(weights)
    mixed = probs * (1.0 - share)
    for match, weight in zip(matches, weights, strict=True):
        if weight > 0:
            mixed[match.next_ids] += weight * (match.counts / match.counts.sum())
    return mixed, share


def target_share(matches: Sequence[Match], token: int) -> tuple[float, float]:
    """``mix``'s memory part for one token: (sum w, sum w * p_source(token)), so that the
    mixed probability of ``token`` is ``(1 - sum w) * p_model(token) + the second``."""
    weights = source_weights(matches)
    mass = 0.0
    for match, weight in zip(matches, weights, strict=True):
        if weight > 0:
            at = np.searchsorted(match.next_ids, token)  # next_ids ascend
            if at < len(match.next_ids) and match.next_ids[at] == token:
                mass += weight * float(match.counts[at]) / float(match.counts.sum())
    return sum(weights), mass


def _reversed_tail(context: TokenIds, max_len: int) -> list[int]:
    """The context's last ``max_len`` tokens, most recent first."""
    tail = [int(t) for t in context[-max_len:]] if max_len > 0 else []
    tail.reverse()
    for i, token in enumerate(tail):
        if token < 0:  # no token id is; one would match the separator between files
            return tail[:i]
    return tail


def _as_match(found: Found, source: str) -> Match:
    return Match(found[0], found[1], found[2], source)


class DocumentSource:
    """The open document as a source, for one request: numpy scans of its token ids.

    Occurrences lie inside ``before`` (tokens before the cursor) or inside ``after``
    (tokens after it), never across the cursor; the one at the very end of ``before`` has
    no next token and never counts. The positions of each last token are found by one
    scan and kept for the request (generation revisits the same tokens).
    """

    def __init__(self, before: TokenIds, after: TokenIds = ()) -> None:
        # SEP, before, SEP, after, SEP: a match stops at a separator, so reading
        # backwards from a candidate never leaves the array.
        seq = np.full(len(before) + len(after) + 3, SEP, dtype=np.int64)
        seq[1 : 1 + len(before)] = before
        seq[2 + len(before) : 2 + len(before) + len(after)] = after
        self._seq = seq
        self._items = seq.data
        self._ends: dict[int, npt.NDArray[np.intp]] = {}  # token -> where it has a successor

    def longest_match(self, context: TokenIds, max_len: int = MAX_MATCH_LEN) -> Match:
        return _as_match(self._search(_reversed_tail(context, max_len)), "document")

    def _search(self, rev_context: list[int]) -> Found:
        if not rev_context:
            return NOT_FOUND
        seq = self._seq
        ends = self._ends.get(rev_context[0])
        if ends is None:
            ends = np.flatnonzero(seq[:-1] == rev_context[0])
            ends = self._ends[rev_context[0]] = ends[seq[ends + 1] != SEP]
        if not len(ends):
            return NOT_FOUND
        n = 1  # every end in ``ends`` matches n context tokens
        while n < len(rev_context) and len(ends) > SMALL_RANGE:
            longer = ends[seq[ends - n] == rev_context[n]]
            if not len(longer):
                return n, *count(seq[ends + 1])
            ends, n = longer, n + 1
        # Few candidates: extend each as far as it goes (plain Python, as in Segment).
        items, best, tally = self._items, 0, {}
        for end in ends.tolist():
            d = n
            while d < len(rev_context) and items[end - d] == rev_context[d]:
                d += 1
            following = items[end + 1]
            if d > best:
                best, tally = d, {following: 1}
            elif d == best:
                tally[following] = tally.get(following, 0) + 1
        ids = sorted(tally)
        return best, np.array(ids, dtype=np.int64), np.array([tally[t] for t in ids], np.int64)


@dataclass(frozen=True)
class IndexStats:
    files: int
    tokens: int  # in live files
    bytes: int  # held by the segments, tombstoned files included
    segments: int
    state: Literal["building", "ready"]  # building: a build or merge is under way


@dataclass(frozen=True)
class _Snapshot:
    """One consistent state of the index; replaced whole, never mutated."""

    segments: tuple[Segment, ...]
    alive: tuple[npt.NDArray[np.bool_], ...]  # per segment, one flag per file
    where: dict[str, tuple[int, int]]  # file key -> (segment, file within it)

    @staticmethod
    def of(segments: Sequence[Segment], alive: Sequence[npt.NDArray[np.bool_]]) -> _Snapshot:
        where = {
            seg.keys[j]: (i, int(j))
            for i, (seg, flags) in enumerate(zip(segments, alive, strict=True))
            for j in np.flatnonzero(flags)
        }
        return _Snapshot(tuple(segments), tuple(alive), where)

    def live_tokens(self, i: int) -> int:
        return int(self.segments[i].lengths[self.alive[i]].sum())


_EMPTY_SNAPSHOT = _Snapshot((), (), {})


class WorkspaceIndex:
    """Token ids of the workspace's files, answering longest-suffix-match queries.

    Thread-safe: any thread may update while another queries. ``encode`` (text -> ids)
    is only needed for ``set_text``. With ``background_merge=False`` merges run in the
    updating thread (deterministic, for tests).
    """

    def __init__(
        self,
        encode: Callable[[str], list[int]] | None = None,
        *,
        depth: int = MAX_MATCH_LEN,
        max_segments: int = MAX_SEGMENTS,
        background_merge: bool = True,
    ) -> None:
        self.depth = depth
        self._encode = encode
        self._max_segments = max_segments
        self._background = background_merge
        self._snapshot = _EMPTY_SNAPSHOT
        self._lock = threading.Lock()  # guards swapping snapshots, and the fields below
        self._merge_lock = threading.Lock()  # one merge at a time
        self._merge_thread: threading.Thread | None = None
        self._builds = 0

    # Queries (any thread, no lock).

    def longest_match(
        self, context: TokenIds, max_len: int = MAX_MATCH_LEN, exclude: str | None = None
    ) -> Match:
        """Longest n <= max_len with ``context[-n:]`` followed by a token in some file but
        ``exclude``; the counts of the tokens that followed all those occurrences."""
        rev_context = _reversed_tail(context, min(max_len, self.depth))
        return _as_match(self._search(rev_context, exclude), "workspace")

    def _search(self, rev_context: list[int], exclude: str | None) -> Found:
        snap = self._snapshot  # read once: the whole query sees one state
        if not rev_context or not snap.segments:
            return NOT_FOUND
        skip = snap.where.get(exclude) if exclude is not None else None
        best: list[Found] = []
        for i, (segment, alive) in enumerate(zip(snap.segments, snap.alive, strict=True)):
            usable = alive
            if skip is not None and skip[0] == i:
                usable = alive.copy()
                usable[skip[1]] = False
            found = segment.search(rev_context, usable)
            if found[0] and (not best or found[0] > best[0][0]):
                best = [found]
            elif found[0] and found[0] == best[0][0]:
                best.append(found)
        if len(best) <= 1:
            return best[0] if best else NOT_FOUND
        ids, inverse = np.unique(np.concatenate([f[1] for f in best]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([f[2] for f in best]))
        return best[0][0], ids, counts.astype(np.int64)

    def __contains__(self, key: str) -> bool:
        return key in self._snapshot.where

    def stats(self) -> IndexStats:
        snap = self._snapshot
        masks = sum(a.nbytes for a in snap.alive)
        return IndexStats(
            files=len(snap.where),
            tokens=sum(snap.live_tokens(i) for i in range(len(snap.segments))),
            bytes=sum(s.nbytes for s in snap.segments) + masks,
            segments=len(snap.segments),
            state="building" if self._builds else "ready",
        )

    # Updates (any thread; a watcher's).

    def set_text(self, key: str, text: str) -> None:
        """Tokenize ``text`` (in the calling thread) and ``update``."""
        if self._encode is None:
            raise ValueError("set_text needs the index to be given an encode function")
        self.update(key, self._encode(text))

    def update(self, key: str, ids: TokenIds) -> None:
        """Add or replace one file's token ids."""
        self.update_many({key: ids})

    def update_many(self, files: Mapping[str, TokenIds]) -> None:
        """Add or replace several files with one new segment (e.g. a project's first scan)."""
        snap = self._snapshot
        changed = [
            (key, np.asarray(ids, dtype=np.int32))
            for key, ids in files.items()
            if not self._holds(snap, key, ids)
        ]
        if not changed:
            return
        with self._building():
            segment = Segment(changed, self.depth)
        with self._lock:
            snap = self._snapshot
            alive = self._without(snap, segment.keys)
            alive.append(np.ones(len(segment.keys), dtype=bool))
            self._snapshot = _Snapshot.of((*snap.segments, segment), alive)
        self._after_change()

    def remove(self, key: str) -> None:
        """Forget a file (deleted, or no longer indexed); unknown keys are ignored."""
        with self._lock:
            snap = self._snapshot
            if key not in snap.where:
                return
            self._snapshot = _Snapshot.of(snap.segments, self._without(snap, [key]))
        self._after_change()

    def compact(self) -> None:
        """Merge every segment into one now, in this thread (waits for a running merge)."""
        self._merge(everything=True)

    def wait_for_merges(self) -> None:
        """Block until background merging is done (tests, benchmarks)."""
        while (thread := self._merge_thread) is not None:
            thread.join()

    @staticmethod
    def _holds(snap: _Snapshot, key: str, ids: TokenIds) -> bool:
        """Is ``ids`` what the index already holds for ``key``? (Watchers repeat events.)"""
        place = snap.where.get(key)
        if place is None:
            return False
        held = snap.segments[place[0]].ids_of(place[1])
        return len(held) == len(ids) and bool(np.array_equal(held, np.asarray(ids)))

    @staticmethod
    def _without(snap: _Snapshot, keys: Iterable[str]) -> list[npt.NDArray[np.bool_]]:
        """The alive flags with ``keys`` tombstoned (copies only the flags that change)."""
        alive = list(snap.alive)
        copied: set[int] = set()
        for key in keys:
            place = snap.where.get(key)
            if place is not None:
                i, j = place
                if i not in copied:
                    alive[i], copied = alive[i].copy(), copied | {i}
                alive[i][j] = False
        return alive

    @contextmanager
    def _building(self) -> Iterator[None]:
        with self._lock:
            self._builds += 1
        try:
            yield
        finally:
            with self._lock:
                self._builds -= 1

    # Merging.

    def _merge_start(self, snap: _Snapshot) -> int | None:
        """Index of the oldest segment the next merge takes in (it takes all newer), if any."""
        live = [snap.live_tokens(i) for i in range(len(snap.segments))]
        for i, (segment, flags) in enumerate(zip(snap.segments, snap.alive, strict=True)):
            if not flags.any() or segment.tokens - live[i] > live[i]:
                return i  # all or mostly tombstones
        if len(live) <= self._max_segments:
            return None
        start, total = len(live) - 2, live[-1] + live[-2]
        while start > 0 and live[start - 1] <= MERGE_FACTOR * total:
            start -= 1
            total += live[start]
        return start

    def _after_change(self) -> None:
        if self._merge_start(self._snapshot) is None:
            return
        if not self._background:
            while self._merge():
                pass
            return
        with self._lock:
            if self._merge_thread is None:  # else the running one re-checks before it ends
                self._merge_thread = threading.Thread(
                    target=self._merge_until_settled, name="workspace-index-merge", daemon=True
                )
                self._merge_thread.start()

    def _merge_until_settled(self) -> None:
        while True:
            try:
                if self._merge():
                    continue
            except Exception:
                log.exception("workspace index merge failed; the index keeps its segments")
                with self._lock:
                    self._merge_thread = None
                return
            with self._lock:
                # Under the lock, so an update either sees this thread gone or its change
                # is seen here.
                if self._merge_start(self._snapshot) is None:
                    self._merge_thread = None
                    return

    def _merge(self, everything: bool = False) -> bool:
        """Merge the segments the plan names into one; False when there was nothing to do."""
        with self._merge_lock:
            snap = self._snapshot
            start = 0 if everything else self._merge_start(snap)
            tidy = len(snap.segments) == 1 and bool(snap.alive[0].all())
            if start is None or not snap.segments or (everything and tidy):
                return False
            victims = snap.segments[start:]
            files = [
                (seg.keys[j], seg.ids_of(int(j)))
                for seg, flags in zip(victims, snap.alive[start:], strict=True)
                for j in np.flatnonzero(flags)
            ]
            began = time.perf_counter()
            with self._building():
                merged = [Segment(files, self.depth)] if files else []
            with self._lock:
                # Only merges remove segments (and this is the only one running), so the
                # victims are still at start..end; updates since only appended segments.
                # A merged file stays alive unless a newer version or a removal came since.
                now = self._snapshot
                end = start + len(victims)
                flags = [
                    np.array(
                        [start <= now.where.get(k, (-1, 0))[0] < end for k in m.keys], dtype=bool
                    )
                    for m in merged
                ]
                self._snapshot = _Snapshot.of(
                    (*now.segments[:start], *merged, *now.segments[end:]),
                    [*now.alive[:start], *flags, *now.alive[end:]],
                )
            log.debug(
                "merged %d segments (%d tokens) in %.2f s",
                len(victims),
                len(files) and merged[0].tokens,
                time.perf_counter() - began,
            )
            return True


class ProjectMemory:
    """What the token loop calls once per generated token: the matches of every source.

    ``lookup`` uses the workspace index without the open file (``exclude_key``) and,
    when given, the request's ``DocumentSource`` for the open file itself.
    """

    def __init__(self, index: WorkspaceIndex | None = None, max_len: int = MAX_MATCH_LEN) -> None:
        self.index = index if index is not None else WorkspaceIndex()
        self.max_len = max_len

    def lookup(
        self,
        context_ids: TokenIds,
        exclude_key: str | None = None,
        document: DocumentSource | None = None,
        anchor: int | None = None,
    ) -> list[Match]:
        """Matches with n > 0, document first; empty when neither source has one.

        With ``anchor`` (a position in ``context_ids``), a match must reach back before
        it: one that lies wholly after it is dropped (see ``reaches``).
        """
        max_len = min(self.max_len, self.index.depth)
        rev_context = _reversed_tail(context_ids, max_len)
        matches = []
        if document is not None:
            found = document._search(rev_context)
            if found[0]:
                matches.append(_as_match(found, "document"))
        found = self.index._search(rev_context, exclude_key)
        if found[0]:
            matches.append(_as_match(found, "workspace"))
        if anchor is None:
            return matches
        tail = len(context_ids) - anchor
        return [m for m in matches if reaches(m.n, tail, max_len)]


def reaches(n: int, tail: int, max_len: int = MAX_MATCH_LEN) -> bool:
    """Whether a match of ``n`` tokens reaches back past the context's last ``tail``.

    The token loop anchors the suggestion's first line at the prompt: a match that lies
    wholly inside what the suggestion itself wrote is evidence of nothing but that
    text, and, once the memory chose those tokens, it grows by itself token after
    token (on Redmine, ``def render_role_inheritanc`` went on with the licence header's
    ``., 51 Franklin Street, ...`` after a one-token match on the healed ``c``). A match
    of ``max_len`` tokens may reach further than was compared, so it counts.
    """
    return n > tail or n >= max_len


@dataclass(frozen=True)
class MemoryRequest:
    """What one completion asks of the project memory (built by the pipeline, used by
    the token loop, which knows the tokenizer): the memory, the open document's text
    around the cursor, and the document's key in the workspace index (left out there,
    since the document is its own source)."""

    memory: ProjectMemory
    before: str
    after: str
    exclude_key: str | None = None

    def document(self, encode: Callable[[str], list[int]]) -> DocumentSource:
        return DocumentSource(encode(self.before), encode(self.after))
