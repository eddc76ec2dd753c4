"""The Prism bridge: Ruby's own parser, compiled to WebAssembly, run through wasmtime.

``prism.wasm`` comes from the npm package ``@ruby/prism`` (fetched by
``scripts/fetch_prism.sh`` during ``make setup``) and is pinned by SHA-256, because the
serialized format read here changes between Prism releases. We call
``pm_serialize_parse`` and read only the front of its output: the header and the
error and warning lists, which come before the syntax tree (format:
``docs/serialization.md`` in ruby/prism, and ``src/deserialize.js`` in the package).

Compiling the module takes 0.3-0.7 s on the development machine, so the compiled
``wasmtime.Module`` is cached per process; each ``Prism`` owns its own store and
instance (about 20 ms to create). One parse of a 76 KB file takes about 6 ms.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from rubytailor.errors import PrismError
from rubytailor.paths import prism_wasm_path

logger = logging.getLogger(__name__)

PRISM_VERSION = (1, 9, 0)
# sha256 of package/src/prism.wasm in @ruby/prism@1.9.0; scripts/fetch_prism.sh pins the same.
PRISM_WASM_SHA256 = "4e522c461d5086e43e86e0d3a8914f3c3bcb604d621a53a15e6c9d90c6ffd128"

# Linear memory never shrinks. After a parse leaves more than this behind (a huge file),
# the instance is recreated so one big document does not pin its memory for the
# server's lifetime.
MAX_RETAINED_MEMORY = 64 * 1024 * 1024
# A hard cap: past it malloc fails inside Prism, which traps and becomes a PrismError.
MEMORY_LIMIT = 2 * 1024 * 1024 * 1024

# The wasm side is always given strict-enough UTF-8: lone surrogates (which some
# editors can produce) pass through as bytes instead of failing the encode, and Prism
# reports them as invalid characters. Offsets are computed with the same encoding.
_ENCODING_ERRORS = "surrogatepass"

# How much of the serialized output to copy out of wasm memory at first; the
# diagnostics sit in the header, so a big file's syntax tree is never copied.
_FIRST_READ = 64 * 1024

_REQUIRED_EXPORTS = (
    "_initialize",
    "memory",
    "calloc",
    "free",
    "pm_buffer_sizeof",
    "pm_buffer_init",
    "pm_buffer_value",
    "pm_buffer_length",
    "pm_buffer_free",
    "pm_serialize_parse",
)

_ENGINE = wasmtime.Engine()
_MODULES: dict[str, wasmtime.Module] = {}
_MODULES_LOCK = threading.Lock()


@dataclass(frozen=True)
class SyntaxDiagnostic:
    """One Prism error or warning; ``start`` and ``length`` are UTF-8 byte offsets."""

    message: str
    start: int
    length: int
    level: str  # "error" or "warning"

    def start_position(self, text: str) -> tuple[int, int]:
        """(line, column) of the start in ``text``, 0-based, column in characters."""
        return byte_offset_to_position(text, self.start)

    def end_position(self, text: str) -> tuple[int, int]:
        """(line, column) just past the end in ``text``, 0-based, column in characters."""
        return byte_offset_to_position(text, self.start + self.length)


def byte_offset_to_position(text: str, offset: int) -> tuple[int, int]:
    """(line, column) of a UTF-8 byte offset into ``text``; column counts characters.

    Lines end at "\\n" only, as in Ruby. An offset inside a multibyte character maps to
    that character; one past the end clamps to the end of the text.
    """
    head = text.encode("utf-8", _ENCODING_ERRORS)[: max(offset, 0)]
    before = head.decode("utf-8", "ignore")
    line = before.count("\n")
    return line, len(before) - (before.rfind("\n") + 1)


class Prism:
    """Parses Ruby source and reports its syntax errors. Thread-safe (one lock)."""

    def __init__(self, module: wasmtime.Module) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._store: wasmtime.Store
        self._exports: dict[str, Any]
        self._memory: wasmtime.Memory
        self._instantiate()

    @classmethod
    def load(cls, wasm_path: Path | None = None) -> Prism:
        """Load prism.wasm (default: ``paths.prism_wasm_path()``) after checking its hash."""
        path = wasm_path or prism_wasm_path()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PrismError(
                f"prism.wasm not found at {path}; run `make setup` to fetch it "
                "(it runs scripts/fetch_prism.sh)"
            ) from None
        except OSError as exc:
            raise PrismError(f"cannot read prism.wasm at {path}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != PRISM_WASM_SHA256:
            raise PrismError(
                f"{path} is not the pinned prism.wasm of @ruby/prism "
                f"{'.'.join(map(str, PRISM_VERSION))} (sha256 {digest}, expected "
                f"{PRISM_WASM_SHA256}); delete it and run `make setup` to fetch the right one"
            )
        return cls(_compiled_module(digest, data))

    @property
    def memory_bytes(self) -> int:
        """Current size of the wasm linear memory (for monitoring and tests)."""
        with self._lock:
            return self._memory.data_len(self._store)

    def diagnostics(self, source: str) -> list[SyntaxDiagnostic]:
        """All errors, then all warnings, in Prism's order."""
        encoded = source.encode("utf-8", _ENCODING_ERRORS)
        with self._lock:
            try:
                return self._serialize(encoded)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                # A trap can leave the heap corrupt: start over with a fresh instance.
                self._instantiate()
                cause = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else "trap"
                raise PrismError(
                    f"Prism failed on a {len(encoded)}-byte document ({cause}); "
                    "it was not syntax-checked"
                ) from exc
            except PrismError:
                # Output that cannot be read means the instance is damaged too (seen: deep
                # error recovery overflowing prism.wasm's stack left a NULL output buffer,
                # and the next documents trapped), so it is not used again.
                self._instantiate()
                raise
            finally:
                if self._memory.data_len(self._store) > MAX_RETAINED_MEMORY:
                    logger.debug("recreating the Prism instance to release its memory")
                    self._instantiate()

    def errors(self, source: str) -> list[SyntaxDiagnostic]:
        """Syntax errors of ``source`` (empty for valid Ruby). Raises PrismError on a trap."""
        return [d for d in self.diagnostics(source) if d.level == "error"]

    def is_valid(self, source: str) -> bool:
        return not self.errors(source)

    def _instantiate(self) -> None:
        store = wasmtime.Store(_ENGINE)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_limits(memory_size=MEMORY_LIMIT)
        linker = wasmtime.Linker(_ENGINE)
        linker.define_wasi()
        try:
            instance = linker.instantiate(store, self._module)
            exports: dict[str, Any] = dict(instance.exports(store))
            missing = [name for name in _REQUIRED_EXPORTS if name not in exports]
            if missing:
                raise PrismError(f"prism.wasm lacks the exports {missing}; run `make setup`")
            # A WASI reactor: _initialize runs the C constructors before any export.
            exports["_initialize"](store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise PrismError(f"prism.wasm could not be started: {exc}") from exc
        memory = exports["memory"]
        if not isinstance(memory, wasmtime.Memory):
            raise PrismError("prism.wasm exports no usable memory; run `make setup`")
        self._store, self._exports, self._memory = store, exports, memory

    def _call(self, name: str, *args: int) -> int:
        result: int = self._exports[name](self._store, *args)
        return result

    def _serialize(self, source: bytes) -> list[SyntaxDiagnostic]:
        """Run pm_serialize_parse and read the diagnostics; frees everything it allocates."""
        source_ptr = buffer_ptr = 0
        initialized = trapped = False
        try:
            # calloc(1, 0) may return NULL; one byte keeps the pointer valid for empty input.
            source_ptr = self._calloc(max(len(source), 1))
            if source:
                self._memory.write(self._store, source, source_ptr)
            buffer_ptr = self._calloc(self._call("pm_buffer_sizeof"))
            self._call("pm_buffer_init", buffer_ptr)
            initialized = True
            self._call("pm_serialize_parse", buffer_ptr, source_ptr, len(source), 0)
            value = self._call("pm_buffer_value", buffer_ptr)
            length = self._call("pm_buffer_length", buffer_ptr)
            size = min(length, _FIRST_READ)
            while True:
                chunk = bytes(self._memory.read(self._store, value, value + size))
                try:
                    return _read_diagnostics(chunk)
                except _Truncated:
                    if size >= length:
                        raise PrismError(
                            "Prism's output ended early; it was not syntax-checked"
                        ) from None
                    size = min(size * 4, length)
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            trapped = True  # the instance is discarded; freeing into a corrupt heap could trap
            raise
        finally:
            if not trapped:
                if initialized:
                    self._call("pm_buffer_free", buffer_ptr)
                for pointer in (buffer_ptr, source_ptr):
                    if pointer:
                        self._call("free", pointer)

    def _calloc(self, size: int) -> int:
        pointer = self._call("calloc", 1, size)
        if not pointer:
            raise PrismError(f"Prism ran out of memory allocating {size} bytes")
        return pointer


def validity_check(unavailable: str) -> Callable[[str], bool] | None:
    """A loaded Prism's ``is_valid``, or None when prism.wasm cannot be loaded.

    For tools that can go on without Prism; ``unavailable`` says what is lost, logged
    with the reason.
    """
    try:
        return Prism.load().is_valid
    except PrismError as exc:
        logger.warning("%s: %s", unavailable, exc)
        return None


def _compiled_module(digest: str, data: bytes) -> wasmtime.Module:
    with _MODULES_LOCK:
        module = _MODULES.get(digest)
        if module is None:
            try:
                module = wasmtime.Module(_ENGINE, data)
            except wasmtime.WasmtimeError as exc:
                raise PrismError(f"prism.wasm could not be compiled: {exc}") from exc
            _MODULES[digest] = module
        return module


class _Truncated(Exception):
    """The copied part of the output ended before the diagnostics did."""


class _Reader:
    """Reads the serialization's primitive types: bytes, LEB128 varints, locations."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Truncated
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise _Truncated
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def skip_varints(self, count: int) -> None:
        # Each varint ends at its one byte below 0x80; skipping needs no decoding.
        data, pos = self.data, self.pos
        for _ in range(count):
            while True:
                if pos >= len(data):
                    raise _Truncated
                pos += 1
                if data[pos - 1] < 0x80:
                    break
        self.pos = pos

    def string(self) -> str:
        return self.take(self.varint()).decode("utf-8", "replace")


def _read_diagnostics(data: bytes) -> list[SyntaxDiagnostic]:
    """The error and warning lists from the front of a pm_serialize_parse result."""
    reader = _Reader(data)
    if reader.take(5) != b"PRISM":
        raise PrismError("prism.wasm returned output in an unknown format")
    version = tuple(reader.take(3))
    if version != PRISM_VERSION:
        raise PrismError(
            f"prism.wasm is Prism {'.'.join(map(str, version))}, expected "
            f"{'.'.join(map(str, PRISM_VERSION))}; run `make setup`"
        )
    reader.byte()  # 0: location fields are included
    reader.take(reader.varint())  # encoding name
    reader.varint()  # start line (zigzag)
    reader.skip_varints(reader.varint())  # newline offsets
    reader.skip_varints(3 * reader.varint())  # comments: type, start, length
    reader.skip_varints(4 * reader.varint())  # magic comments: key and value locations
    if reader.byte():  # __END__ location
        reader.skip_varints(2)
    diagnostics: list[SyntaxDiagnostic] = []
    for level in ("error", "warning"):
        for _ in range(reader.varint()):
            reader.varint()  # type id: an index into a table that changes between versions
            message = reader.string()
            start, length = reader.varint(), reader.varint()
            reader.byte()  # Prism's sub-level: syntax/argument/load, or default/verbose
            diagnostics.append(SyntaxDiagnostic(message, start, length, level))
    return diagnostics
