"""The workspace as the model's memory, kept current while the server runs.

``WorkspaceMemory`` connects the project-files watcher (personalization/project_files.py)
to the workspace index (model/project_memory.py): every Ruby file the watcher delivers
is tokenized with the model's own tokenizer on the watcher's thread and put in the
index, so no completion waits for indexing. The first scan goes into the index in one
batch (one build instead of a segment per file); changes after it go file by file.
An open document's unsaved text replaces its file (``overlay``).

Index keys are absolute file paths; ``key_for(uri)`` gives an open document's key, so
the pipeline can leave the document out of the workspace source (it is its own).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pygls import uris
from tokenizers import Tokenizer

from rubytailor import native_memory
from rubytailor.model.project_memory import ProjectMemory, WorkspaceIndex
from rubytailor.personalization.project_files import FileEvent, FileLimits, ProjectFiles

logger = logging.getLogger(__name__)


def tokenizer_encoder(model_dir: Path) -> Callable[[str], list[int]] | None:
    """The model directory's tokenizer as ``text -> ids`` (no special tokens), or None."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # a damaged tokenizer.json: the model load reports it too
        logger.warning("project memory is off: cannot read %s: %s", path, exc)
        return None
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def memory_of(model_dir: Path, files: Sequence[tuple[str, str]]) -> ProjectMemory:
    """A fixed index of ``files`` (key, text), tokenized as the server does (eval, the
    personalization gate); raises ModelError when the model has no usable tokenizer."""
    from rubytailor.errors import ModelError

    encode = tokenizer_encoder(model_dir)
    if encode is None:
        raise ModelError(f"{model_dir} has no usable tokenizer.json for project memory")
    index = WorkspaceIndex(encode)
    index.update_many({name: encode(text) for name, text in files})
    stats = index.stats()
    logger.info("project memory: %d files, %d tokens", stats.files, stats.tokens)
    return ProjectMemory(index)


class WorkspaceMemory:
    """Watcher + index for the workspace folders. Methods may be called from any thread."""

    def __init__(
        self,
        roots: Sequence[Path],
        encode: Callable[[str], list[int]],
        *,
        exclude: Sequence[str] = (),
        limits: FileLimits | None = None,
        on_file: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self._encode = encode
        # Also told of every file (the personalization scheduler counts changed code).
        self._on_file = on_file
        self.index = WorkspaceIndex(encode)
        self.memory = ProjectMemory(self.index)
        self._lock = threading.Lock()
        self._batch: dict[str, npt.NDArray[np.int32]] | None = {}  # None after the first scan
        self._files = ProjectFiles(
            roots, self._on_event, exclude=exclude, limits=limits or FileLimits()
        )
        self._first_scan = threading.Thread(
            target=self._load_first_scan, name="rubytailor-index", daemon=True
        )

    def start(self) -> None:
        self._files.start()
        self._first_scan.start()

    def stop(self) -> None:
        self._files.stop()

    def add_root(self, root: Path) -> None:
        self._files.add_root(root)

    def remove_root(self, root: Path) -> None:
        self._files.remove_root(root)

    def overlay(self, uri: str, text: str | None) -> None:
        """An open document's text (None: closed, the file on disk counts again)."""
        path = _path_of(uri)
        if path is not None:
            self._files.overlay(path, text)

    def key_for(self, uri: str) -> str | None:
        path = _path_of(uri)
        return str(path) if path is not None else None

    def status(self) -> dict[str, Any]:
        files = self._files.status()
        stats = self.index.stats()
        # No lock: the first batch holds it while it builds, and status must answer now.
        state = "scanning" if files.scanning or self._batch is not None else stats.state
        return {
            "state": state,
            "files": stats.files,
            "tokens": stats.tokens,
            "index_bytes": stats.bytes,
            "messages": list(files.messages),
        }

    def cap_messages(self) -> tuple[str, ...]:
        return self._files.status().messages

    def wait_ready(self, timeout: float | None = None) -> bool:
        """For tests and batch callers: wait until the first scan is in the index."""
        self._first_scan.join(timeout)
        return not self._first_scan.is_alive()

    def _on_event(self, event: FileEvent) -> None:  # on the watcher's thread
        key = str(event.path)
        if self._on_file is not None:
            self._on_file(key, event.text)
        # int32 at once: a list of Python ints costs ~36 bytes a token, the array 4.
        ids = None if event.text is None else np.asarray(self._encode(event.text), np.int32)
        with self._lock:
            if self._batch is not None:
                if ids is None:
                    self._batch.pop(key, None)
                else:
                    self._batch[key] = ids
                return
        if ids is None:
            self.index.remove(key)
        else:
            self.index.update(key, ids)

    def _load_first_scan(self) -> None:
        self._files.wait_ready()
        with self._lock:
            batch, self._batch = self._batch or {}, None
            # Under the lock, so an event right after the scan cannot overtake the batch.
            self.index.update_many(batch)
        files = len(batch)
        del batch
        # The scan's texts and the suffix sort's buffers are gone: return their memory.
        native_memory.release_freed()
        logger.info("project memory: %d files indexed", files)


def _path_of(uri: str) -> Path | None:
    """The file of a file:// URI, absolute as the watcher names it (symlinks kept)."""
    path = uris.to_fs_path(uri)
    return Path(os.path.abspath(path)) if path else None
