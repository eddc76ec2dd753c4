"""Suggestion events: what became of each suggestion, appended to a local JSONL file.

Every suggestion the server returns gets an id (``s1``, ``s2``, ... unique within the
process) and is remembered, the last ``MAX_REMEMBERED``, with what its events need:
when it was made, the model, where it came from, its latency and length. Clients
report that it was shown, accepted, partly accepted or dismissed
(lsp/handlers/events.py); each report becomes one line of
``<data dir>/events/events.jsonl``, which `rubytailor stats` (rubytailor/stats.py) reads::

    {"time": "2026-12-01T20:26:10.123+00:00", "event": "accepted", "suggestion_id": "s42",
     "project": "shop-1f2e3d4c5b6a", "model_id": "rubytailor-default@0d14ec8b8e",
     "source": "model", "latency_ms": 48.2, "chars": 31, "accepted_chars": 31}

Nothing leaves the machine, and no code is written unless ``eventsIncludeText`` is
true (then ``text`` holds the suggestion). A write is one ``O_APPEND`` write of a whole
line, so servers of several editors can share the file; a failing write is logged once
and never reaches the completion path.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rubytailor.config import Settings
from rubytailor.model.outcomes import Source
from rubytailor.paths import data_dir, ensure_private_dir
from rubytailor.personalization.state import project_slug

logger = logging.getLogger(__name__)

Event = Literal["shown", "accepted", "partial", "dismissed"]
EVENTS: tuple[Event, ...] = ("shown", "accepted", "partial", "dismissed")

MAX_REMEMBERED = 2000
# Rotated to events.jsonl.1 (replacing the older one) past this size.
MAX_FILE_BYTES = 16 * 1024 * 1024
# How long an event for a suggestion still streaming waits for its end (and latency).
PENDING_WAIT_S = 30.0
NO_PROJECT = "none"


def events_path() -> Path:
    return data_dir() / "events" / "events.jsonl"


def project_key(roots: Sequence[Path]) -> str:
    """The first workspace folder as ``<name>-<12 hex of its path's SHA-256>``, the name
    of its personalization state directory; ``none`` without a workspace."""
    if not roots:
        return NO_PROJECT
    resolved = Path(roots[0]).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{project_slug(resolved)}-{digest[:12]}"


# -- what the server remembers per suggestion ------------------------------------------


@dataclass
class Remembered:
    made: float  # time.time()
    text: str = ""
    model_id: str | None = None
    source: str | None = None  # "model", or "cache" (typed through, or an exact repeat)
    latency_ms: float | None = None
    # False while the suggestion is still streaming: its latency is not known yet, and
    # its events wait in ``_deferred``, in the order they came, until it is.
    complete: bool = True
    _deferred: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def chars(self) -> int:
        return len(self.text)

    def defer(self, write: Callable[[], None], timeout: float) -> None:
        """Run ``write`` once the suggestion is complete, or after ``timeout`` seconds."""
        self._deferred.append(write)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self.flush)

    def flush(self) -> None:
        """Run the deferred writes now; they never raise (a response is being built)."""
        deferred, self._deferred = self._deferred, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for write in deferred:
            try:
                write()
            except Exception:
                logger.exception("writing a suggestion event failed")


def source_kind(source: str) -> str:
    """Events tell the model's suggestions from the suggestion cache's answers."""
    if source == Source.MODEL:
        return "model"
    if source in (Source.TYPED_THROUGH, Source.EXACT):
        return "cache"
    return str(source)


class Suggestions:
    """Ids and the last ``limit`` suggestions. Call on the event loop only: a stream's
    end wakes the events waiting for it there."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Remembered] = OrderedDict()
        self._counter = itertools.count(1)

    def new_id(self) -> str:
        return f"s{next(self._counter)}"

    def get(self, suggestion_id: str) -> Remembered | None:
        return self._items.get(suggestion_id)

    def open(self, suggestion_id: str) -> None:
        """A suggestion that has started streaming; its events wait for ``remember``
        (or ``settle``)."""
        if suggestion_id not in self._items:
            self._put(suggestion_id, Remembered(made=time.time(), complete=False))

    def remember(
        self,
        suggestion_id: str,
        text: str,
        *,
        model_id: str | None = None,
        source: str | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """What the suggestion turned out to be; wakes the events waiting for it."""
        item = self._items.get(suggestion_id)
        if item is None:
            item = Remembered(made=time.time())
            self._put(suggestion_id, item)
        item.text = text
        item.model_id = model_id if model_id is not None else item.model_id
        item.source = source if source is not None else item.source
        item.latency_ms = latency_ms if latency_ms is not None else item.latency_ms
        item.complete = True
        item.flush()

    def settle(self, suggestion_id: str, text: str) -> None:
        """A stream ended without a result (cancelled by the client, or failed): what
        it sent is all there is to know."""
        item = self._items.get(suggestion_id)
        if item is not None and not item.complete:
            self.remember(suggestion_id, text)

    def _put(self, suggestion_id: str, item: Remembered) -> None:
        self._items[suggestion_id] = item
        while len(self._items) > self._limit:
            self._items.popitem(last=False)


# One per process: ids are unique within it, and the response builders
# (lsp/response.py, lsp/streaming.py) need no server to hand them out.
SUGGESTIONS = Suggestions()


# -- the file ---------------------------------------------------------------------------


class EventFile:
    """Appends JSON lines to ``path`` (0600, its directory 0700), rotating it to
    ``<path>.1`` once it is over ``max_bytes``."""

    def __init__(self, path: Callable[[], Path] = events_path, max_bytes: int = MAX_FILE_BYTES):
        self._path = path
        self.max_bytes = max_bytes
        self._dir_ready: Path | None = None
        self._failed = False

    @property
    def path(self) -> Path:
        return self._path()

    def append(self, record: Mapping[str, Any]) -> bool:
        """Whether the line was written; a failure is logged once, then only at debug."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "surrogatepass"
        )
        path = self.path
        try:
            if self._dir_ready != path.parent:
                ensure_private_dir(path.parent)
                self._dir_ready = path.parent
            fd = self._open(path)
            try:
                if os.fstat(fd).st_size >= self.max_bytes:
                    fd = self._rotate(path, fd)
                written = os.write(fd, line)
            finally:
                os.close(fd)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            self._dir_ready = None  # the directory may have gone; create it next time
            if not self._failed:
                self._failed = True
                logger.warning("cannot write suggestion events to %s: %s", path, exc)
            else:
                logger.debug("cannot write suggestion events to %s: %s", path, exc)
            return False
        return True

    @staticmethod
    def _open(path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)  # made by hand, or by an older version
        return fd

    def _rotate(self, path: Path, fd: int) -> int:
        """Move the full file aside (once, however many servers notice it) and reopen."""
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        mine = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        # Another server may have rotated it while this one waited for the lock.
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            os.replace(path, path.with_name(path.name + ".1"))
        os.close(fd)
        return self._open(path)


# -- the recorder -----------------------------------------------------------------------


class EventRecorder:
    """Turns a client's report into a line of the events file, per the settings."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        project: Callable[[], str],
        suggestions: Suggestions = SUGGESTIONS,
        file: EventFile | None = None,
    ) -> None:
        self._settings = settings
        self._project = project
        self._suggestions = suggestions
        self.file = file or EventFile()

    def record(self, event: Event, suggestion_id: str, accepted_length: int | None = None) -> None:
        """Write the event now, or, for a suggestion still streaming, once it has ended
        (events of one suggestion keep their order); call on the event loop."""
        if not self._settings().events:
            return
        reported = now_iso()
        known = self._suggestions.get(suggestion_id)

        def write() -> None:
            settings = self._settings()
            if not settings.events:
                return
            record = event_record(
                event,
                suggestion_id,
                known,
                project=self._project(),
                accepted_length=accepted_length,
                include_text=settings.events_include_text,
            )
            self.file.append({**record, "time": reported})

        if known is not None and not known.complete:
            # Shown (or accepted) while still streaming: the line gets its latency.
            known.defer(write, PENDING_WAIT_S)
        else:
            write()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def event_record(
    event: Event,
    suggestion_id: str,
    known: Remembered | None,
    *,
    project: str,
    accepted_length: int | None = None,
    include_text: bool = False,
) -> dict[str, Any]:
    """One line of the events file; an unknown id gets nulls for what is not known."""
    chars = known.chars if known is not None else None
    if event == "accepted":
        accepted: int | None = chars
    elif event == "partial":
        accepted = accepted_length if chars is None else min(accepted_length or 0, chars)
    else:
        accepted = 0
    latency = known.latency_ms if known is not None else None
    record: dict[str, Any] = {
        "time": now_iso(),
        "event": event,
        "suggestion_id": suggestion_id,
        "project": project,
        "model_id": known.model_id if known is not None else None,
        "source": known.source if known is not None else None,
        "latency_ms": None if latency is None else round(latency, 1),
        "chars": chars,
        "accepted_chars": accepted,
    }
    if include_text and known is not None:
        record["text"] = known.text
    return record
