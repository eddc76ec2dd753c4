"""The conversion cache: one converted file per model and format, verified before every load.

Two formats are cached alike: GGML files for ctransformers (``model.ggml_export``) and
GGUF files for llama.cpp (``model.gguf_export``), each a ``Conversion``.

ggml's loader trusts its file: a truncated one loads with missing weights, a damaged
one gives wrong suggestions or kills the process. So a conversion is trusted only when
its SHA-256 matches the digest written beside it when it was made (``<file>.sha256``);
anything else is converted again. Conversions of one model are serialised with a lock
file, so servers started together convert once and never read a half-written file; a
conversion killed midway leaves a ``.tmp`` file that the next one removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rubytailor import paths
from rubytailor.errors import ModelError
from rubytailor.model import ggml_export, gguf_export

log = logging.getLogger(__name__)

FTYPE = "f16"
# Temporary files of other models' conversions older than this are left-overs, not work.
STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Conversion:
    """A format the cache holds: where its files go and how one is made and checked."""

    label: str  # for messages: "GGML"
    directory: str  # under the cache directory
    suffix: str
    version: int  # the converter's: a change to the conversion must not reuse old files
    # (model_dir, out, ftype): writes ``out`` atomically; ModelError for a model it cannot convert.
    export: Callable[[Path, Path, str], object]
    # (file, config, ftype): every byte the file's header implies is there (cheap, before hashing).
    is_complete: Callable[[Path, dict[str, Any], str], bool]


GGML = Conversion(
    label="GGML",
    directory="ggml",
    suffix=".bin",
    version=ggml_export.CONVERTER_VERSION,
    # Looked up at call time, so a patched ggml_export.export_ggml is the one that runs.
    export=lambda model_dir, out, ftype: ggml_export.export_ggml(model_dir, out, ftype),
    is_complete=lambda path, config, ftype: ggml_export.file_is_complete(path, config, ftype),
)
GGUF = Conversion(
    label="GGUF",
    directory="gguf",
    suffix=".gguf",
    version=gguf_export.CONVERTER_VERSION,
    export=lambda model_dir, out, ftype: gguf_export.export_gguf(model_dir, out, ftype),
    is_complete=lambda path, config, ftype: gguf_export.file_is_complete(path, config, ftype),
)


def cache_path(ident: str, conversion: Conversion = GGML) -> Path:
    """Where the conversion of the model ``ident`` lives (the id changes with its weights)."""
    name = ident.replace("@", "-").replace(os.sep, "_")
    file_name = f"{name}-{FTYPE}-v{conversion.version}{conversion.suffix}"
    return paths.cache_dir() / conversion.directory / file_name


def digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def ggml_file(model_dir: Path, ident: str, config: dict[str, Any]) -> Path:
    """The model's verified GGML file, converting it first when it is missing or damaged."""
    return converted_file(model_dir, ident, config, GGML)


def gguf_file(model_dir: Path, ident: str, config: dict[str, Any]) -> Path:
    """The model's verified GGUF file (llama.cpp), converting it first when needed."""
    return converted_file(model_dir, ident, config, GGUF)


def converted_file(
    model_dir: Path, ident: str, config: dict[str, Any], conversion: Conversion
) -> Path:
    """The model's verified file in ``conversion``'s format, converted first when it is
    missing or damaged."""
    target = cache_path(ident, conversion)
    cannot_write = f"cannot write the {conversion.label} conversion to {target}"
    try:
        paths.ensure_private_dir(target.parent)
    except OSError as exc:
        raise ModelError(f"{cannot_write} ({exc})") from exc
    if target.exists() and not target.is_file():
        raise ModelError(f"{target} is not a file; remove it so the model can be converted there")
    if _verified(target, config, conversion):
        return target
    try:
        with _conversion_lock(target):
            # Another process may have converted it while this one waited for the lock.
            if not _verified(target, config, conversion):
                _convert(model_dir, target, conversion)
    except OSError as exc:
        raise ModelError(f"{cannot_write} ({exc})") from exc
    return target


def _convert(model_dir: Path, target: Path, conversion: Conversion) -> None:
    _remove_stale_tmp(target)
    if target.exists():
        log.warning("%s fails its checksum; converting the model again", target)
    started = time.perf_counter()
    conversion.export(model_dir, target, FTYPE)
    _write_digest(target, _sha256(target))
    log.info("converted %s to %s in %.2fs", model_dir, target, time.perf_counter() - started)


def _verified(target: Path, config: dict[str, Any], conversion: Conversion) -> bool:
    """Complete (every byte the header implies) and equal to the digest written with it."""
    if not target.is_file() or not conversion.is_complete(target, config, FTYPE):
        return False
    try:
        expected = digest_path(target).read_text(encoding="ascii").strip()
        return expected == _sha256(target)
    except (OSError, UnicodeDecodeError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_digest(target: Path, hexdigest: str) -> None:
    """Written after the file it describes, atomically: a reader sees the old or the new."""
    path = digest_path(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(hexdigest + "\n", encoding="ascii")
    os.replace(tmp, path)


@contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """Held while one process checks and converts ``target``; released if it is killed."""
    lock_path = target.with_name(f".{target.name}.lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_tmp(target: Path) -> None:
    """Remove killed conversions' files: this model's (its lock is held, so none is live)
    and any other older than a day."""
    now = time.time()
    for tmp in target.parent.glob(".*.tmp"):
        mine = tmp.name.startswith(f".{target.name}.")  # the file's and its digest's
        try:
            if mine or now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
                log.info("removed %s, left by a conversion that did not finish", tmp)
        except OSError:
            continue
