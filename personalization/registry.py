"""Versioned LoRA adapters for one project, with an atomic `current` pointer.

The trainer fills a staging directory, commits it as the next version (``v0001``, ...)
and, once the gate approves, promotes it; the server asks for `current()` and loads it.
A trainer may be SIGKILLed at any moment, so nothing is ever visible half-done:

- a version appears by renaming a complete, fsynced staging directory (info.json, with a
  SHA-256 per file, is written before the rename);
- `current` and `history.json` are replaced whole (`write_json_atomic`);
- a version is deleted by first renaming it out of the ``vNNNN`` namespace;
- leftovers (staging dirs of dead trainers, temp files, trash) are swept by `prune()`.

Whatever `current` names is checked again (`verify`) before it is served; if it fails,
the registry falls back along the promotion history rather than serve a damaged adapter.

Layout under ``adapters_dir``::

    v0001/ info.json adapter/... merged/...
    current             {"name": "v0002", "promoted": ...} or {"name": "base", ...}
    history.json        [{"name", "promoted"}, {"name", "rolled_back_from", "promoted"}, ...]
    .staging-<hex>/     being filled
    .registry.lock      serializes writers (trainer, server) of the files above
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rubytailor.errors import RubytailorError
from rubytailor.personalization.state import (
    ProjectState,
    fsync_dir,
    held_if_free,
    holds_train_lock,
    now_iso,
    write_json_atomic,
)

log = logging.getLogger(__name__)

BASE = "base"  # the pointer value meaning "serve the base model, no adapter"
INFO_NAME = "info.json"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
STALE_STAGING_S = 3600.0
# Old entries only matter for fallback and pruning, which look at the recent ones.
HISTORY_MAX = 1000

_VERSION_RE = re.compile(r"^v(\d{4,})$")
_TRASH_RE = re.compile(rf"^{re.escape(TRASH_PREFIX)}(v\d{{4,}})-[0-9a-f]+$")
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")

# Staging dirs handed out by this process and not yet committed or discarded: prune()
# never takes them, even when this process holds no train lock.
_active_staging: set[Path] = set()
_active_lock = threading.Lock()

# (dev, inode, size, mtime_ns, ctime_ns) -> sha256: verify() runs whenever the server
# asks for current(), and a merged model is gigabytes. No path in the key: commit hashes
# the files in staging, and renaming the directory changes none of these.
_HashKey = tuple[int, int, int, int, int]
_hash_cache: dict[_HashKey, str] = {}
_HASH_CACHE_MAX = 4096


class RegistryError(RubytailorError):
    """An adapter version is missing or damaged, or the registry cannot be changed."""


@dataclass(frozen=True)
class AdapterVersion:
    """One committed adapter version: ``path`` holds info.json, adapter/ and merged/."""

    name: str
    path: Path
    info: dict[str, Any] = field(hash=False)

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.path / "merged"

    @property
    def created(self) -> str:
        return str(self.info.get("created", ""))


def version_number(name: str) -> int | None:
    """``v0012`` -> 12; None for anything that is not a version name."""
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def _sha256(path: Path, *, sync: bool = False) -> str:
    """SHA-256 of a regular file (never through a symlink), cached by its stat; with
    ``sync`` it is also fsynced (commit reads every byte anyway). OSError if unreadable."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        key: _HashKey = (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        cached = None if sync else _hash_cache.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        if sync:
            os.fsync(fd)
    hexdigest = digest.hexdigest()
    if len(_hash_cache) >= _HASH_CACHE_MAX:
        _hash_cache.clear()
    _hash_cache[key] = hexdigest
    return hexdigest


def _safe_relpath(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return not PurePosixPath(rel).is_absolute() and ".." not in parts and "." not in parts


def _newest_mtime(path: Path) -> float:
    """When anything in a staging tree last changed (a trainer writes into subdirs, which
    leaves the top directory's mtime alone)."""
    newest = 0.0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in (dirpath, *(os.path.join(dirpath, f) for f in filenames)):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(name).st_mtime)
    return newest


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class AdapterRegistry:
    """The adapter versions of one project (see the module docstring for the layout)."""

    def __init__(self, state: ProjectState, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.state = state
        self.keep = keep
        self._warned: set[str] = set()

    # -- paths --------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.state.adapters_dir

    @property
    def pointer_path(self) -> Path:
        return self.root / "current"

    @property
    def history_path(self) -> Path:
        return self.root / "history.json"

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh, empty private directory to fill with a new version, then `commit`.

        Removed if the block raises. Hold `train_lock` while filling it: prune() in
        another process treats a staging dir as abandoned once nobody holds that lock.
        """
        path = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        with _active_lock:
            _active_staging.add(path)
        try:
            yield path
        except BaseException:
            with _active_lock:
                _active_staging.discard(path)
            _rmtree(path)
            raise
        # A normal exit keeps it protected: commit() may be called after the block.

    def commit(self, staging: Path, info: dict[str, Any]) -> AdapterVersion:
        """Make a filled staging dir the next version, durably. It is not promoted."""
        staging = Path(staging)
        if (
            not staging.name.startswith(STAGING_PREFIX)
            or staging.parent.resolve() != self.root.resolve()
            or not staging.is_dir()
        ):
            raise RegistryError(f"{staging} is not a staging directory of {self.root}")
        files = self._hash_tree(staging)
        with self._registry_lock():
            name = self._next_name()
            target = self.root / name
            full = {**info, "name": name, "created": now_iso(), "files": files}
            write_json_atomic(staging / INFO_NAME, full)
            for dirpath, _dirnames, _filenames in os.walk(staging):
                fsync_dir(Path(dirpath))
            if os.path.lexists(target):
                # _next_name counts every vNNNN entry, so only a concurrent writer that
                # ignores the registry lock gets here; never rename over it.
                raise RegistryError(f"{target} appeared while committing")
            os.rename(staging, target)
            fsync_dir(self.root)
        with _active_lock:
            _active_staging.discard(staging)
        log.info("committed adapter %s (%d files)", name, len(files))
        return AdapterVersion(name=name, path=target, info=full)

    def promote(self, name: str) -> AdapterVersion:
        """Point `current` at a committed version that verifies; then prune."""
        with self._registry_lock():
            version = self._load(name)
            if version is None:
                raise RegistryError(f"no adapter version {name!r} in {self.root}")
            if not self.verify(version):
                raise RegistryError(
                    f"adapter version {name} in {self.root} is damaged (its files do not "
                    "match info.json); train a new one"
                )
            self._switch({"name": name, "promoted": now_iso()})
        log.info("promoted adapter %s", name)
        self.prune()
        return version

    def rollback(self) -> AdapterVersion | None:
        """Go back to the version promoted before the current one, or to the base model
        (None) when there is no valid earlier version."""
        with self._registry_lock():
            pointer = self._read_pointer()
            current = self.current()
            if current is None and pointer == BASE:
                return None
            skip = {current.name} if current is not None else set()
            previous = self._walk_history(skip)
            record: dict[str, Any] = {
                "name": previous.name if previous is not None else BASE,
                "rolled_back_from": current.name if current is not None else pointer,
                "promoted": now_iso(),
            }
            self._switch(record)
        log.info("rolled back adapter %s -> %s", record["rolled_back_from"], record["name"])
        return previous

    def discard(self, name: str) -> bool:
        """Delete one committed version that must not be served (say, the gate rejected
        it); never the current one. Crash-safe, unlike an rmtree of its directory."""
        if version_number(name) is None:
            raise RegistryError(f"{name!r} is not an adapter version name")
        with self._registry_lock():
            current = self.current()
            if name in (self._read_pointer(), current.name if current else None):
                raise RegistryError(f"adapter {name} is being served; roll back first")
            if not (self.root / name).is_dir():
                return False
            return self._delete_version(name)

    def prune(self) -> list[str]:
        """Delete old versions beyond the newest `keep` (never the current one, nor any of
        the last `keep` promoted) and what dead writers left behind; the names removed."""
        removed: list[str] = []
        with self._registry_lock():
            try:
                names = [e.name for e in os.scandir(self.root)]
            except OSError as exc:
                log.warning("cannot list %s: %s", self.root, exc)
                return removed
            numbered = sorted(
                (n for n in names if version_number(n) is not None and (self.root / n).is_dir()),
                key=lambda n: version_number(n) or 0,
            )
            protected = set(numbered[-self.keep :]) | set(self._recent_promoted(self.keep))
            pointer = self._read_pointer()
            if pointer is not None:
                protected.add(pointer)
            current = self.current()
            if current is not None:
                protected.add(current.name)
            for name in numbered:
                if name not in protected and self._delete_version(name):
                    removed.append(name)
            for name in names:
                path = self.root / name
                if _TRASH_RE.match(name):
                    # Renamed out of the namespace by a prune that was killed mid-delete.
                    _rmtree(path)
                elif _TMP_RE.match(name):
                    # write_json_atomic here only runs under the registry lock we hold.
                    with contextlib.suppress(OSError):
                        path.unlink()
            removed.extend(self._sweep_staging(names))
        if removed:
            log.info("pruned %s", ", ".join(removed))
        return removed

    # -- reading --------------------------------------------------------------------------

    def current(self) -> AdapterVersion | None:
        """The version to serve, or None for the base model. Never raises: a damaged
        pointer or version falls back along the promotion history."""
        try:
            pointer = self._read_pointer()
            if pointer == BASE:
                return None
            if pointer is not None:
                version = self._load(pointer)
                if version is not None and self.verify(version):
                    return version
                self._warn_once(
                    f"damaged:{pointer}",
                    "adapter %s in %s is missing or damaged; falling back",
                    pointer,
                    self.root,
                )
            elif self.pointer_path.exists() or self.pointer_path.is_symlink():
                self._warn_once("pointer", "%s is unreadable; falling back", self.pointer_path)
            fallback = self._walk_history({pointer} if pointer is not None else set())
            if fallback is not None:
                self._warn_once(
                    f"fallback:{pointer}:{fallback.name}",
                    "no valid current adapter in %s; serving %s, promoted earlier",
                    self.root,
                    fallback.name,
                )
            return fallback
        except Exception:
            log.warning("cannot read adapter registry %s", self.root, exc_info=True)
            return None

    def versions(self) -> list[AdapterVersion]:
        """Committed versions with a readable info.json, oldest first."""
        try:
            names = [e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        found = [self._load(n) for n in names]
        return sorted(
            (v for v in found if v is not None), key=lambda v: version_number(v.name) or 0
        )

    def history(self) -> list[dict[str, Any]]:
        """The promotion history, oldest first ([] if missing or unreadable)."""
        data = _read_json(self.history_path)
        if data is None:
            return []
        if not isinstance(data, list):
            self._warn_once("history", "%s is not a list; ignoring it", self.history_path)
            return []
        return [e for e in data if isinstance(e, dict) and isinstance(e.get("name"), str)]

    def verify(self, version: AdapterVersion) -> bool:
        """Whether info.json is readable and names this version, and every file it lists
        exists with the recorded SHA-256 (hashes are cached per stat in-process)."""
        info = _read_json(version.path / INFO_NAME)
        if not isinstance(info, dict) or info.get("name") != version.path.name:
            return False
        files = info.get("files")
        if not isinstance(files, dict):
            return False
        for rel, expected in files.items():
            if not _safe_relpath(rel) or not isinstance(expected, str):
                return False
            path = version.path / rel
            try:
                if _sha256(path) != expected:
                    return False
            except OSError:
                return False
        return True

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _registry_lock(self) -> Iterator[None]:
        """Serialize writers across processes (trainer promoting, server rolling back);
        readers need no lock, since every switch is a rename. Released if the holder dies."""
        fd = os.open(self.root / ".registry.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _hash_tree(self, staging: Path) -> dict[str, str]:
        files: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(staging):
            base = Path(dirpath)
            for name in sorted(dirnames):
                if (base / name).is_symlink():
                    raise RegistryError(f"{base / name}: symlinks cannot be committed")
            for name in sorted(filenames):
                path = base / name
                rel = path.relative_to(staging).as_posix()
                if rel == INFO_NAME:
                    continue
                if not stat.S_ISREG(path.lstat().st_mode):
                    # A symlink could point anywhere and change after verification.
                    raise RegistryError(f"{path}: only regular files can be committed")
                files[rel] = _sha256(path, sync=True)
        return files

    def _next_name(self) -> str:
        highest = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                trash = _TRASH_RE.match(entry.name)
                number = version_number(trash.group(1) if trash else entry.name)
                highest = max(highest, number or 0)
        # Pruned versions live on in the history; a reused name would confuse its readers.
        for record in self.history():
            highest = max(highest, version_number(record["name"]) or 0)
        pointer = self._read_pointer()
        if pointer is not None:
            highest = max(highest, version_number(pointer) or 0)
        return f"v{highest + 1:04d}"

    def _load(self, name: str) -> AdapterVersion | None:
        if version_number(name) is None:
            return None
        path = self.root / name
        info = _read_json(path / INFO_NAME)
        if not isinstance(info, dict):
            return None
        return AdapterVersion(name=name, path=path, info=info)

    def _read_pointer(self) -> str | None:
        data = _read_json(self.pointer_path)
        if isinstance(data, dict):
            name = data.get("name")
            if isinstance(name, str) and (name == BASE or version_number(name) is not None):
                return name
        return None

    def _switch(self, record: dict[str, Any]) -> None:
        """Move `current` (the switch readers see), then log it in the history. A kill in
        between leaves the new pointer with its history entry missing, which current()
        and rollback() handle; the reverse order would leave a promotion on record that
        never took effect."""
        write_json_atomic(
            self.pointer_path, {"name": record["name"], "promoted": record["promoted"]}
        )
        history = [*self.history(), record][-HISTORY_MAX:]
        write_json_atomic(self.history_path, history)

    def _walk_history(self, skip: set[str]) -> AdapterVersion | None:
        """The newest entry of the history that still verifies, skipping ``skip`` and any
        version rolled back from (unless promoted again later); None at a "base" entry."""
        rejected: set[str] = set()
        for entry in reversed(self.history()):
            name = entry["name"]
            if name == BASE:
                return None
            if name not in skip and name not in rejected:
                version = self._load(name)
                if version is not None and self.verify(version):
                    return version
            gone = entry.get("rolled_back_from")
            if isinstance(gone, str):
                rejected.add(gone)
        return None

    def _recent_promoted(self, count: int) -> list[str]:
        names: list[str] = []
        for entry in reversed(self.history()):
            name = entry["name"]
            if name != BASE and name not in names:
                names.append(name)
                if len(names) == count:
                    break
        return names

    def _delete_version(self, name: str) -> bool:
        """Rename out of the vNNNN namespace first, so a kill mid-delete leaves trash, not a
        half-deleted version that still looks like one."""
        trash = self.root / f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex}"
        try:
            os.rename(self.root / name, trash)
        except OSError as exc:
            log.warning("cannot remove adapter %s: %s", name, exc)
            return False
        fsync_dir(self.root)
        _rmtree(trash)
        return True

    def _sweep_staging(self, names: list[str]) -> list[str]:
        candidates = [n for n in names if n.startswith(STAGING_PREFIX)]
        if not candidates:
            return []
        removed: list[str] = []
        # Holding the train lock while sweeping keeps a trainer from starting (and staging)
        # between "nobody trains" and the delete.
        with held_if_free(self.state.lock_path) as free:
            # A trainer in this very process counts as nobody: its own staging dirs are
            # in _active_staging, so any other one was left by a run that died.
            nobody_trains = free or holds_train_lock(self.state)
            now = time.time()
            for name in candidates:
                path = self.root / name
                with _active_lock:
                    if path in _active_staging:
                        continue
                if not path.is_dir():
                    continue  # committed since we listed it
                age = now - _newest_mtime(path)
                if nobody_trains or age > STALE_STAGING_S:
                    _rmtree(path)
                    removed.append(name)
        return removed

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        # current() may be polled; one warning per problem is enough.
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None if the file is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
