"""The workspace's Ruby files, kept current: the source for project memory and the trainer.

Filters live in `file_filters` (shared with the trainer through `iter_project_files`);
this module adds watching (watchdog), caps, editor overlays and event delivery.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from rubytailor.personalization.file_filters import (
    SKIP_DIRS,
    FileTooLarge,
    IgnoreRules,
    content_drop_reason,
    is_ruby_file,
    read_source,
    walk,
)

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0  # fallback only: each poll re-lists the whole tree

_Stat = tuple[int, int, int]  # mtime_ns, size, inode: "unchanged on disk" for rescans


class _Known(NamedTuple):
    size: int  # UTF-8 bytes delivered, for the total cap
    stat: _Stat | None  # None while an overlay stands in for the disk file
    digest: int  # hash of the text delivered, so unchanged rewrites send no event


@dataclass(frozen=True)
class FileLimits:
    max_file_bytes: int = 1_000_000
    max_total_bytes: int = 32_000_000
    max_files: int = 20_000


@dataclass(frozen=True)
class FileEvent:
    """A file's current text, or None when it is gone (deleted, ignored, left out, removed)."""

    path: Path
    text: str | None


@dataclass(frozen=True)
class ProjectFilesStatus:
    files: int
    bytes: int
    scanning: bool
    messages: tuple[str, ...]  # one per cap that left files out, for the user

    @property
    def ready(self) -> bool:
        return not self.scanning


def _mb(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 100_000 else f"{n:,} bytes"


def _files(n: int) -> str:
    return f"{n:,} file" if n == 1 else f"{n:,} files"


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[Path, bool], None]) -> None:
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A directory's "modified" only says its listing changed; its entries get own events.
        if event.event_type in ("opened", "closed_no_write") or (
            event.is_directory and event.event_type == "modified"
        ):
            return
        for raw in (event.src_path, event.dest_path):
            path = Path(os.fsdecode(raw)) if raw else None
            if path is None or ".git" in path.parts:
                continue
            if event.is_directory or is_ruby_file(path.name) or path.name == ".gitignore":
                self._notify(path, event.is_directory)


class ProjectFiles:
    """Watches workspace roots and tells `on_event` each included file's text as it changes.

    `start()` scans in the background (one FileEvent per included file) and watches; later
    creates, edits, deletes and moves arrive as events, coalesced per path for `debounce_s`.
    A changed .gitignore rescans its directory at once (newly ignored files become deletes,
    newly unignored ones creates); .git/info/exclude is re-read on `rescan()`.
    A file past a cap is left out and `status().messages` says so; a later `rescan()` can
    admit it once there is room.

    Thread-safety: every state change and every `on_event` call happens on one worker thread,
    in order. Public methods only queue work or read state under a lock, so they may be
    called from any thread (e.g. the LSP event loop) and return at once. `on_event` should
    be quick and must not call `stop()`.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        on_event: Callable[[FileEvent], None],
        *,
        exclude: Sequence[str] = (),
        limits: FileLimits = FileLimits(),  # frozen, so sharing the default is safe
        debounce_s: float = 0.2,
    ) -> None:
        self._on_event = on_event
        self._exclude = tuple(exclude)
        self._limits = limits
        self._debounce_s = debounce_s
        self._rules = {_norm(r): IgnoreRules(_norm(r), self._exclude) for r in roots}  # worker
        self._lock = threading.Lock()  # guards the fields below the worker changes
        self._known: dict[Path, _Known] = {}  # what on_event was last given, per path
        self._total = 0
        self._left_out: dict[Path, str] = {}  # path -> the cap that kept it out
        self._scans = 0
        self._overlays: dict[Path, str] = {}  # worker only
        self._pending: dict[Path, tuple[float, bool]] = {}  # worker only: deadline, is_dir
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._observer: BaseObserver | None = None
        self._poller: BaseObserver | None = None
        # Per root: the observer, and its watches. With inotify, one non-recursive watch
        # per included directory, so node_modules/, .venv/, tmp/ and other ignored trees
        # cost no watches and send no events; when polling, one recursive watch.
        self._watches: dict[Path, tuple[BaseObserver, dict[Path, ObservedWatch]]] = {}
        self._worker: threading.Thread | None = None
        self._stopped = threading.Event()

    # Public API: all of it may be called from any thread.

    def start(self) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._worker = threading.Thread(target=self._run, name="project-files", daemon=True)
        self._worker.start()
        for root in list(self._rules):
            self._queue_scan(root, add=True)

    def stop(self) -> None:
        self._stopped.set()  # a scan in progress gives up at its next file
        for observer in (self._observer, self._poller):
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
        if self._worker is not None:
            self._tasks.put(None)
            self._worker.join(timeout=5)

    def add_root(self, root: Path) -> None:
        self._queue_scan(_norm(root), add=True)

    def remove_root(self, root: Path) -> None:
        self._tasks.put(lambda: self._remove_root(_norm(root)))

    def rescan(self) -> None:
        """Re-read every root: catches what watching missed and admits files left out."""
        for root in list(self._rules):
            self._queue_scan(root, add=False)

    def overlay(self, path: Path, text: str | None) -> None:
        """An open document's unsaved text replaces the file on disk; None (close) drops it."""
        path = _norm(path)
        self._tasks.put(lambda: self._set_overlay(path, text))

    def included(self, path: Path) -> bool:
        """The path filter (roots, names, secrets, .gitignore, exclude); content is not read."""
        path = _norm(path)
        root = self._root_for(path)
        rules = self._rules.get(root) if root else None  # a root may go meanwhile
        return rules is not None and not rules.excluded(path)

    def status(self) -> ProjectFilesStatus:
        with self._lock:
            kinds = list(self._left_out.values())
            lim = self._limits
            wording = {
                "files": f"{lim.max_files:,}-file cap reached",
                "total": f"{_mb(lim.max_total_bytes)} total cap reached",
                "size": f"files over the {_mb(lim.max_file_bytes)} per-file limit",
            }
            messages = tuple(
                f"project memory: {text}; {_files(kinds.count(kind))} left out"
                for kind, text in wording.items()
                if kind in kinds
            )
            return ProjectFilesStatus(len(self._known), self._total, self._scans > 0, messages)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until no scan is queued or running (for tests and batch callers)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status().scanning:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # Worker thread.

    def _run(self) -> None:
        # _pending is in deadline order (first events come first), so only its head is due.
        while not self._stopped.is_set():
            timeout = None
            if self._pending:
                soonest = next(iter(self._pending.values()))[0]
                timeout = max(0.0, soonest - time.monotonic())
            try:
                task = self._tasks.get(timeout=timeout)
            except queue.Empty:
                task = _noop
            if task is None:
                return
            _guarded(task)
            now = time.monotonic()
            while self._pending and not self._stopped.is_set():
                path, (deadline, is_dir) = next(iter(self._pending.items()))
                if deadline > now:
                    break
                del self._pending[path]
                _guarded(functools.partial(self._changed, path, is_dir))

    def _notify(self, path: Path, is_dir: bool) -> None:  # on watchdog's thread
        deadline = time.monotonic() + self._debounce_s

        def note() -> None:  # the first event's deadline stands, so a busy file still flushes
            first = self._pending.get(path)
            self._pending[path] = (first[0], first[1] or is_dir) if first else (deadline, is_dir)

        self._tasks.put(note)

    def _changed(self, path: Path, is_dir: bool) -> None:
        root = self._root_for(path)
        # Nothing under a skipped directory is ever delivered: ignore the churn there quickly.
        if root is None or not SKIP_DIRS.isdisjoint(path.relative_to(root).parts):
            return
        if path.name == ".gitignore":
            self._rules[root].invalidate(path.parent)
            self._sync(root, path.parent)
        elif is_dir:
            if root in self._watches:
                # A directory created or moved in gets watches; one gone, or now ignored,
                # loses them.
                self._unwatch_tree(root, path)
                if (
                    path.is_dir()
                    and not path.is_symlink()
                    and not self._rules[root].excluded(path, is_dir=True)
                ):
                    _guarded(functools.partial(self._watch_tree, root, path))
            self._sync(root, path)
        else:
            self._refresh(root, path)

    def _queue_scan(self, root: Path, *, add: bool) -> None:
        with self._lock:
            self._scans += 1

        def scan() -> None:
            try:
                if add or root in self._rules:  # fresh rules: edited ignore files count now
                    self._rules[root] = IgnoreRules(root, self._exclude)
                if add and root not in self._watches:
                    _guarded(functools.partial(self._watch, root))  # first: no change missed
                if root in self._rules:
                    self._sync(root, root)
            finally:
                with self._lock:
                    self._scans -= 1

        self._tasks.put(scan)

    def _watch(self, root: Path) -> None:
        """Watch root with inotify (or the platform's API), else by polling, else not at all."""
        assert self._observer is not None, "start() first"
        self._watches[root] = (self._observer, {})
        try:
            self._watch_tree(root, root)
            return
        except OSError as exc:  # no inotify, or its watch/instance limits reached
            log.warning("project files: cannot watch %s (%s); polling instead", root, exc)
            self._unwatch_tree(root, root)
        try:
            if self._poller is None:
                self._poller = PollingObserver(timeout=POLL_INTERVAL_S)
                self._poller.daemon = True
                self._poller.start()
            watch = self._poller.schedule(_Handler(self._notify), str(root), recursive=True)
            self._watches[root] = (self._poller, {root: watch})
        except Exception:  # the scan still runs; changes then show on rescan() only
            self._watches.pop(root, None)
            log.exception("project files: cannot watch %s at all", root)

    def _watch_tree(self, root: Path, top: Path) -> None:
        """Add a non-recursive inotify watch for top and each included directory below."""
        observer, watches = self._watches[root]
        if observer is self._poller:
            return  # the recursive poll sees new directories by itself
        rules = self._rules[root]
        stack = [top]
        while stack:
            directory = stack.pop()
            if directory not in watches:
                watches[directory] = observer.schedule(
                    _Handler(self._notify), str(directory), recursive=False
                )
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False) and not rules.dir_excluded(
                            entry.path
                        ):
                            stack.append(Path(entry.path))
            except OSError as exc:
                log.debug("project files: cannot list %s: %s", directory, exc)

    def _unwatch_tree(self, root: Path, top: Path) -> None:
        observer, watches = self._watches.get(root, (None, {}))
        for directory in [d for d in watches if d == top or top in d.parents]:
            watch = watches.pop(directory)
            if observer is not None:
                with contextlib.suppress(Exception):  # the directory may be gone already
                    observer.unschedule(watch)

    def _remove_root(self, root: Path) -> None:
        if self._rules.pop(root, None) is None:
            return
        if root in self._watches:
            self._unwatch_tree(root, root)
            del self._watches[root]
        for path in self._under(root):
            if self._root_for(path) is None:  # else still under another (enclosing) root
                self._deliver(path, None)
        self._overlays = {p: t for p, t in self._overlays.items() if self._root_for(p)}

    def _set_overlay(self, path: Path, text: str | None) -> None:
        root = self._root_for(path)
        if root is None or self._rules[root].excluded(path):
            return  # an ignored file or a secret never gets in, not even from the editor
        if text is None:
            self._overlays.pop(path, None)
        else:
            self._overlays[path] = text
        self._refresh(root, path)

    def _sync(self, root: Path, top: Path) -> None:
        """Make every file at or under top match disk and overlays (unchanged files skipped).

        Files under a nested root are left to that root, whose .gitignore context is nearer.
        """
        rules = self._rules[root]
        seen = set()
        if top.is_dir() and not top.is_symlink() and not rules.excluded(top, is_dir=True):
            for path in walk(top, rules):
                if self._stopped.is_set():
                    return
                if self._root_for(path) == root:
                    seen.add(path)
                    self._refresh(root, path, walked=True)
        for path in self._under(top):
            if path not in seen and self._root_for(path) == root:
                self._refresh(root, path)

    def _refresh(self, root: Path, path: Path, *, walked: bool = False) -> None:
        """Re-read one file (or its overlay) and deliver it if that changed anything.

        walked: the walk found it, so its path passed the filters; unchanged on disk, skip it.
        """
        stat = None if path in self._overlays else _stat(path)
        known = self._known.get(path)
        if walked and stat is not None and known is not None and known.stat == stat:
            return
        text: str | None = None
        if walked or not self._rules[root].excluded(path):
            text = self._overlays.get(path)
            try:
                if text is None:
                    text = read_source(path, root, self._limits.max_file_bytes)
                elif len(text.encode()) > self._limits.max_file_bytes:
                    raise FileTooLarge(path)
            except FileTooLarge:
                self._deliver(path, None, left_out="size")
                return
        rules = self._rules[root]
        if text is not None and (reason := content_drop_reason(rules.rel(path), text)):
            log.debug("project files: %s left out (%s)", path, reason)
            text = None
        self._deliver(path, text, stat=stat)

    def _deliver(
        self, path: Path, text: str | None, *, left_out: str = "", stat: _Stat | None = None
    ) -> None:
        """Record path's new state under the caps; tell on_event if what it holds changed."""
        with self._lock:
            self._left_out.pop(path, None)
            old = self._known.pop(path, None)
            self._total -= old.size if old else 0
            if text is not None:
                size = len(text.encode())
                if len(self._known) >= self._limits.max_files:
                    left_out, text = "files", None
                elif self._total + size > self._limits.max_total_bytes:
                    left_out, text = "total", None
                else:
                    self._known[path] = _Known(size, stat, hash(text))
                    self._total += size
            if left_out:
                self._left_out[path] = left_out
        if text is None and old is not None:
            self._on_event(FileEvent(path, None))
        elif text is not None and (old is None or old.digest != hash(text)):
            self._on_event(FileEvent(path, text))

    # Helpers (read-only).

    def _root_for(self, path: Path) -> Path | None:
        """The innermost root containing path: its .gitignore context is the nearest."""
        roots = [r for r in list(self._rules) if _within(path, r)]
        return max(roots, key=lambda r: len(str(r)), default=None)

    def _under(self, top: Path) -> list[Path]:
        with self._lock:
            paths = [*self._known, *self._left_out]
        return [p for p in paths if _within(p, top)]


def _within(path: Path, top: Path) -> bool:
    """path.is_relative_to(top) for normalized paths, by strings: pathlib's is slow."""
    p, t = str(path), str(top)
    return p.startswith(t) and (len(p) == len(t) or p[len(t)] == os.sep or t.endswith(os.sep))


def _norm(path: Path | str) -> Path:
    return Path(os.path.abspath(path))  # not resolve(): watchdog reports paths as given


def _stat(path: Path) -> _Stat | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _noop() -> None:
    pass


def _guarded(task: Callable[[], None]) -> None:
    try:
        task()
    except Exception:  # one bad file or callback must not end watching
        log.exception("project files: task failed")
