"""Where one project's personalization lives, and the crash-safe file primitives it uses.

Every project gets a private directory under the data dir (never inside the project: the
user's repository stays untouched), named by its folder and a hash of its resolved path so
two checkouts called ``app`` do not collide. The trainer, the gate and the server share
it; a trainer may be SIGKILLed at any moment (the user closes the laptop, the OOM killer),
so every visible change is an atomic rename of a fully written, fsynced file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rubytailor.errors import RubytailorError
from rubytailor.paths import data_dir, ensure_private_dir

log = logging.getLogger(__name__)

_SLUG_MAX = 40
_UNSAFE_SLUG_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_CHUNK = 1 << 20


class BusyError(RubytailorError):
    """Another training run for the same project holds its lock."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def project_slug(root: Path) -> str:
    """The readable half of a project's directory name: its folder, filesystem-safe."""
    slug = _UNSAFE_SLUG_CHARS.sub("_", root.name)[:_SLUG_MAX].strip(".")
    # "." or ".." (or nothing, for "/") would be a path component with a meaning.
    return slug or "project"


@dataclass(frozen=True)
class ProjectState:
    """One project's private state directory: adapters, trainer work, logs, metrics."""

    root: Path
    dir: Path

    @classmethod
    def for_project(cls, root: Path) -> ProjectState:
        """The state of the project at ``root``, creating its directories (0700) if needed."""
        resolved = Path(root).expanduser().resolve()
        digest = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()
        state = cls(
            root=resolved,
            dir=data_dir() / "projects" / f"{project_slug(resolved)}-{digest[:12]}",
        )
        for path in (state.dir, state.adapters_dir, state.work_dir, state.logs_dir):
            ensure_private_dir(path)
        project_json = state.dir / "project.json"
        if not project_json.exists():
            # Lets a person (or a cleanup command) map the hashed name back to the project.
            write_json_atomic(project_json, {"root": str(resolved), "created": now_iso()})
        return state

    @property
    def adapters_dir(self) -> Path:
        return self.dir / "adapters"

    @property
    def work_dir(self) -> Path:
        """Trainer checkpoints, so a killed run can resume."""
        return self.dir / "work"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def corpus_manifest_path(self) -> Path:
        return self.dir / "corpus-manifest.json"

    @property
    def lock_path(self) -> Path:
        return self.dir / "train.lock"

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl, durably; adds "time" if absent."""
        if "time" not in record:
            record = {**record, "time": now_iso()}
        line = json.dumps(record, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
        fd = os.open(self.metrics_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # The trainer and the server may both append; the lock keeps lines whole.
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A killed writer left half a line: end it, or this record would be glued
                # to it and lost along with it.
                line = b"\n" + line
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every whole record in metrics.jsonl, oldest first; corrupt lines are skipped."""
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            return []
        records: list[dict[str, Any]] = []
        skipped = 0
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                skipped += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
        if skipped:
            log.debug("%s: skipped %d unreadable line(s)", self.metrics_path, skipped)
        return records


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON: readers see the old file or the new, whole one.

    A killed writer leaves at most a ``.<name>.tmp-<hex>`` file next to it, never a
    truncated ``path``.
    """
    payload = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's contents, read in chunks (adapters can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _lock_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


# Lock files this process holds through train_lock: a second flock on the same file from
# this process would fail like another process's, and prune() needs to tell them apart.
_held_locks: set[str] = set()
_held_guard = threading.Lock()


def holds_train_lock(state: ProjectState) -> bool:
    """Whether this process holds the project's training lock (through `train_lock`)."""
    with _held_guard:
        return str(state.lock_path) in _held_locks


@contextlib.contextmanager
def train_lock(state: ProjectState) -> Iterator[None]:
    """Hold the project's training lock for the block, or raise BusyError at once.

    flock, not a pid file: the kernel releases it when the holder dies, however it dies,
    so a SIGKILLed trainer never blocks the next one.
    """
    fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise BusyError(
                f"another training run for {state.root} is in progress{_lock_holder(fd)}; "
                "wait for it to finish or stop it"
            ) from None
        try:
            # Only for the message above: the lock itself is the flock.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            with _held_guard:
                _held_locks.add(str(state.lock_path))
            try:
                yield
            finally:
                with _held_guard:
                    _held_locks.discard(str(state.lock_path))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds the flock on ``path`` right now (this process counts as
    somebody: a second descriptor conflicts with one this process already holds)."""
    with held_if_free(path) as free:
        return free


@contextlib.contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """Take the flock on ``path`` for the block if nobody holds it; yields whether it did."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        log.warning("cannot open %s; assuming it is held", path)
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except OSError:
            got = False
        try:
            yield got
        finally:
            if got:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
