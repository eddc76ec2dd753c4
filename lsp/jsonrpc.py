"""JSON-RPC over a byte stream: framing that resynchronises, and message checks.

This replaces pygls' reader loop (``pygls.io_.run_async``), which raised OverflowError
on a huge Content-Length (and the process exited), stayed deaf after a malformed
header, read a header line of any length into memory, and dropped any message it
could not turn into a typed object without answering it. Here:

- ``FrameReader`` splits the stream into bodies. A line that is not a header (garbage,
  no colon, NUL bytes), a header block without a usable Content-Length, or a
  Content-Length over ``MAX_CONTENT_LENGTH`` is skipped up to the next line that starts
  a header; what was skipped is logged once when serving resumes.
- ``dispatch`` answers what JSON-RPC 2.0 says a server answers: ParseError (-32700) for
  a body that is not JSON, InvalidRequest (-32600) for a message that is not a valid
  request (method not a string, id not an integer or string, batches, which LSP does
  not use, anything after shutdown), InvalidParams (-32602) naming the bad field for
  params the method's type rejects. Only then does pygls see the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import cattrs
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage

if TYPE_CHECKING:
    from pygls.protocol import JsonRPCProtocol
    from pygls.server import JsonRPCServer

logger = logging.getLogger(__name__)

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602

# No editor sends a document anywhere near this; a bigger length is a broken header.
MAX_CONTENT_LENGTH = 64 * 1024 * 1024
# Header lines are short ("Content-Length: 1234"); a longer "line" is garbage.
MAX_HEADER_LINE = 8 * 1024
_CHUNK = 64 * 1024

_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTENT_LENGTH = b"content-length:"


@dataclass
class _Skipped:
    """Bytes dropped while looking for the next header, logged once serving resumes."""

    count: int = 0
    first: bytes = b""
    reason: str = ""

    def add(self, data: bytes, reason: str) -> None:
        if not data:
            return
        if not self.count:
            self.first, self.reason = data[:80], reason
        self.count += len(data)

    def flush(self) -> None:
        if self.count:
            logger.warning(
                "skipped %d bytes that were not a valid message (%s), starting %r",
                self.count,
                self.reason,
                self.first,
            )
        self.count, self.first, self.reason = 0, b"", ""


class FrameReader:
    """Splits a byte stream into message bodies: ``feed`` bytes, take bodies with
    ``next_body`` until it says None."""

    def __init__(self, max_length: int = MAX_CONTENT_LENGTH) -> None:
        self.max_length = max_length
        self._buffer = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._block = b""  # the header block's bytes so far, for the skip log
        self._bad_block = ""  # why the header block being read cannot be used
        self._length: int | None = None  # set while a body is being read
        self.skipped = _Skipped()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def push_front(self, data: bytes) -> None:
        """Put bytes back to be read first (a body that held the start of the next one)."""
        self._buffer[:0] = data

    def next_body(self) -> bytes | None:
        """The next whole body, or None until more bytes are fed."""
        while True:
            if self._length is not None:
                if len(self._buffer) < self._length:
                    return None
                body = bytes(self._buffer[: self._length])
                del self._buffer[: self._length]
                self._length = None
                self.skipped.flush()
                return body
            end = self._buffer.find(b"\n")
            if end < 0:
                self._drop_long_line()
                return None
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            self._header_line(line)

    def bodies(self, data: bytes) -> list[bytes]:
        """Feed ``data`` and take every body now complete (for tests and simple callers)."""
        self.feed(data)
        found = []
        while (body := self.next_body()) is not None:
            found.append(body)
        return found

    def finish(self) -> None:
        """End of stream: log what never became a message."""
        self.skipped.add(self._block + bytes(self._buffer), "incomplete message at end of input")
        self._buffer.clear()
        self._reset_block()
        self.skipped.flush()

    def _drop_long_line(self) -> None:
        if len(self._buffer) <= MAX_HEADER_LINE:
            return
        # Keep a possible header start at the end; everything before it is garbage.
        start = self._buffer.lower().rfind(_CONTENT_LENGTH)
        keep = start if start > 0 else len(self._buffer) - len(_CONTENT_LENGTH)
        self.skipped.add(self._block + bytes(self._buffer[:keep]), "over-long header line")
        del self._buffer[:keep]
        self._reset_block()

    def _reset_block(self) -> None:
        self._headers = {}
        self._block = b""
        self._bad_block = ""

    def _header_line(self, line: bytes) -> None:
        content = line.rstrip(b"\r\n")
        if not content:
            self._end_of_headers(line)
            return
        start = content.lower().find(_CONTENT_LENGTH, 1)
        if start > 0:
            # Garbage glued to the next header (the rest of a body that was longer than
            # its Content-Length said): resynchronise on the header.
            self.skipped.add(self._block + line[:start], "bytes before a header")
            self._reset_block()
            self._header_line(line[start:])
            return
        name, colon, value = content.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            self.skipped.add(self._block + line, "not a header line")
            self._reset_block()
            return
        key = name.lower()
        if key in self._headers and self._headers[key] != value.strip():
            self._bad_block = f"two different {name.decode()} headers"
        self._headers[key] = value.strip()
        # A block of headers is only a message once an empty line ends it.
        self._block += line

    def _end_of_headers(self, line: bytes) -> None:
        if not self._headers:
            return  # a blank line between messages: harmless
        headers, bad, block = self._headers, self._bad_block, self._block + line
        self._reset_block()
        raw = headers.get(b"content-length")
        if bad:
            reason = bad
        elif raw is None:
            reason = "a header block without Content-Length"
        elif not raw.isdigit() or len(raw) > 12:
            reason = f"Content-Length {raw[:40]!r} is not a length"
        elif int(raw) > self.max_length:
            reason = f"Content-Length {int(raw)} is over the limit of {self.max_length} bytes"
        else:
            self._length = int(raw)
            return
        # The body that follows (if any) is skipped as garbage up to the next header.
        self.skipped.add(block, reason)


def find_next_header(body: bytes) -> int:
    """Where a header starts inside a body that failed to parse (Content-Length too
    big: the body ran into the next message), or -1."""
    return body.lower().find(_CONTENT_LENGTH, 1)


# -- message checks --------------------------------------------------------------------


@dataclass(frozen=True)
class Reject:
    """A message answered with an error without reaching a handler."""

    id: int | str | None
    code: int
    message: str
    # Only requests (and unidentifiable messages) get an answer; notifications a log line.
    answer: bool = True


def _valid_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_envelope(data: Any, *, shut_down: bool = False) -> Reject | None:
    """What is wrong with a decoded message as JSON-RPC 2.0 (and LSP), or None."""
    if isinstance(data, list):
        return Reject(None, INVALID_REQUEST, "batch messages (JSON arrays) are not supported")
    if not isinstance(data, Mapping):
        return Reject(None, INVALID_REQUEST, f"a message must be a JSON object, not {_kind(data)}")
    has_id = "id" in data
    msg_id = data.get("id")
    reply_id = msg_id if _valid_id(msg_id) else None
    if data.get("jsonrpc") != "2.0":
        return Reject(reply_id, INVALID_REQUEST, 'the message needs "jsonrpc": "2.0"')
    if "method" not in data:
        if has_id and ("result" in data or "error" in data):
            return None  # a response to one of our requests
        return Reject(
            reply_id,
            INVALID_REQUEST,
            "a message needs a method (request, notification) or a result or error (response)",
        )
    method = data["method"]
    if not isinstance(method, str):
        return Reject(reply_id, INVALID_REQUEST, f"method must be a string, not {_kind(method)}")
    if has_id and not _valid_id(msg_id):
        return Reject(
            None, INVALID_REQUEST, f"id must be an integer or a string, not {_kind(msg_id)}"
        )
    params = data.get("params")
    if params is not None and not isinstance(params, Mapping | list):
        return Reject(
            reply_id,
            INVALID_PARAMS,
            f"{method}: params must be an object or an array, not {_kind(params)}",
            answer=has_id,
        )
    if shut_down and method != "exit":
        return Reject(
            reply_id,
            INVALID_REQUEST,
            f"{method} after shutdown: the server only accepts exit now",
            answer=has_id,
        )
    return None


def _camel(path: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path)


def _value_at(data: Any, path: str) -> Any:
    """The raw JSON value at a cattrs error path such as ``$.params.position``."""
    value = data
    for name, index in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        try:
            value = value[_camel(name)] if name else value[int(index)]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return value


def describe_structure_error(exc: Exception, data: Any) -> str:
    """cattrs' complaint as "what at where", in the client's (camelCase) field names."""
    try:
        problems = cattrs.transform_error(exc)
    except Exception:
        return str(exc)
    described = []
    for problem in problems:
        what, _, where = problem.rpartition(" @ ")
        if not what:
            described.append(problem)
            continue
        shown = _camel(where).removeprefix("$.")
        if what == "invalid value":
            # cattrs says no more when a validator (e.g. uinteger) refused the value.
            what = f"invalid value {json.dumps(_value_at(data, where))[:80]}"
        described.append(f"{shown}: {what}")
    return "; ".join(described)


def structure(protocol: JsonRPCProtocol, data: Mapping[str, Any]) -> Any:
    """The typed message pygls dispatches; raises what the converter raises."""
    method = data.get("method")
    payload = dict(data)
    if payload.get("params", ...) is None:
        del payload["params"]  # null and absent mean the same: no params
    if isinstance(method, str):
        typed = protocol.get_message_type(method)
        if typed is None:
            # Our own methods: handlers check their params (an absent member is None).
            if "id" in data:
                return JsonRPCRequestMessage(data["id"], method, "2.0", payload.get("params"))
            return JsonRPCNotification(method, "2.0", payload.get("params"))
        return protocol._converter.structure(payload, typed)
    return protocol.structure_message(payload)


def strict_scalars(converter: cattrs.Converter) -> None:
    """Make the converter refuse what cattrs would coerce: "1" or 1.5 as an integer,
    5 as a string, "x" as a boolean. A position of "1" is a client bug to report, not
    a guess to make."""

    def exact(kind: type, *also: type) -> Callable[[Any, Any], Any]:
        accepted = (kind, *also)

        def hook(value: Any, _type: Any) -> Any:
            if isinstance(value, accepted) and (kind is bool or not isinstance(value, bool)):
                return value
            raise TypeError(f"expected {kind.__name__}, got {_kind(value)} {value!r:.40}")

        return hook

    converter.register_structure_hook(int, exact(int))
    converter.register_structure_hook(str, exact(str))
    converter.register_structure_hook(bool, exact(bool))
    converter.register_structure_hook(float, exact(float, int))


def send_error(protocol: JsonRPCProtocol, msg_id: int | str | None, code: int, text: str) -> None:
    """An error response written as plain JSON, so that a null id stays ``"id": null``."""
    protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": text}})


# Called with (method, raw message, problem) for a notification that cannot be used.
InvalidNotificationHook = Callable[[str, Mapping[str, Any], str], None]


def dispatch(protocol: JsonRPCProtocol, body: bytes) -> bytes:
    """Check one body and hand it to pygls. Returns bytes that belong to the next
    message (a body that ran into the next header), to be read again."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        start = find_next_header(body)
        if start > 0:
            logger.warning("message body is not valid JSON and ran into the next header")
            send_error(protocol, None, PARSE_ERROR, f"the message is not valid JSON: {exc}")
            return body[start:]
        logger.warning("unparsable message (%s): %r", exc, body[:200])
        send_error(protocol, None, PARSE_ERROR, f"the message is not valid JSON: {exc}")
        return b""
    if isinstance(data, list):
        _reject_batch(protocol, data)
        return b""
    reject = check_envelope(data, shut_down=bool(getattr(protocol, "_shutdown", False)))
    if reject is not None:
        _send_reject(protocol, reject, data)
        return b""
    try:
        message = structure(protocol, data)
    except Exception as exc:
        problem = f"{data['method']}: {describe_structure_error(exc, data)}"
        if "method" not in data:
            logger.warning("unusable response from the client: %s", problem)
        elif "id" in data:
            logger.warning("invalid params: %s", problem)
            send_error(protocol, data["id"], INVALID_PARAMS, problem)
        else:
            logger.warning("ignoring notification with invalid params: %s", problem)
            hook: InvalidNotificationHook | None = getattr(
                protocol, "on_invalid_notification", None
            )
            if hook is not None:
                hook(data["method"], data, problem)
        return b""
    try:
        protocol.handle_message(message)
    except Exception:
        # pygls answers a handler's failure itself; this is a failure around it.
        logger.exception("failed to handle %s", data.get("method", "a response"))
        if "method" in data and "id" in data:
            send_error(protocol, data["id"], -32603, f"internal error handling {data['method']}")
    return b""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _send_reject(protocol: JsonRPCProtocol, reject: Reject, data: Any) -> None:
    logger.warning("rejected message (%s): %s", reject.code, reject.message)
    if reject.answer:
        send_error(protocol, reject.id, reject.code, reject.message)


def _reject_batch(protocol: JsonRPCProtocol, batch: list[Any]) -> None:
    """LSP has no batches; every request in one still gets its (error) answer, sent as
    single messages since LSP clients read no arrays."""
    text = "batch messages (JSON arrays) are not supported"
    logger.warning("rejected a batch of %d messages", len(batch))
    if not batch:
        send_error(protocol, None, INVALID_REQUEST, text)
        return
    unidentified = False
    for message in batch:
        if isinstance(message, Mapping) and "method" in message and _valid_id(message.get("id")):
            send_error(protocol, message["id"], INVALID_REQUEST, text)
        elif not (isinstance(message, Mapping) and "id" not in message):
            unidentified = True  # not a notification either: one answer for all of these
    if unidentified:
        send_error(protocol, None, INVALID_REQUEST, text)


# -- serving -----------------------------------------------------------------------------


class _StdinChunks:
    """Reads stdin on a daemon thread, one chunk at a time on request.

    Daemon, so that exiting never waits for a read that blocks on an idle client.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._requests: queue.SimpleQueue[asyncio.Future[bytes]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="rubytailor-stdin", daemon=True).start()

    def _run(self) -> None:
        read = getattr(self._stream, "read1", None) or self._stream.read
        while True:
            future = self._requests.get()
            try:
                data: bytes | BaseException = read(_CHUNK)
            except Exception as exc:
                data = exc
            future.get_loop().call_soon_threadsafe(_resolve, future, data)

    def read(self) -> Awaitable[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._requests.put(future)
        return future


def _resolve(future: asyncio.Future[bytes], data: bytes | BaseException) -> None:
    if future.done():
        return
    if isinstance(data, BaseException):
        future.set_exception(data)
    else:
        future.set_result(data)


async def read_loop(
    read: Callable[[], Awaitable[bytes]],
    protocol: JsonRPCProtocol,
    stop: threading.Event,
) -> None:
    """Frame and dispatch messages until end of input or ``stop``."""
    frames = FrameReader()
    while not stop.is_set():
        data = await read()
        if not data:
            frames.finish()
            logger.info("end of input from the client")
            return
        frames.feed(data)
        while not stop.is_set() and (body := frames.next_body()) is not None:
            if rest := dispatch(protocol, body):
                frames.push_front(rest)


def serve_stdio(server: JsonRPCServer) -> int:
    """pygls' ``start_io`` with our reader; the exit code of ``exit`` (1 without shutdown)."""
    from pygls.io_ import StdoutWriter

    stop = threading.Event()
    server._stop_event = stop
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    chunks = _StdinChunks(sys.stdin.buffer)
    code = 0
    try:
        asyncio.run(read_loop(chunks.read, server.protocol, stop))
    except BrokenPipeError:
        logger.error("the connection to the client is lost; shutting down")
    except SystemExit as exc:  # pygls' exit handler: 0 after shutdown, 1 without
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    finally:
        server.shutdown()
    return code


def serve_tcp(server: JsonRPCServer, host: str, port: int) -> int:
    """pygls' ``start_tcp`` with our reader: one client connection, then exit."""
    stop = threading.Event()
    server._stop_event = stop
    code = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(writer)
        try:
            await read_loop(lambda: reader.read(_CHUNK), server.protocol, stop)
        finally:
            server.shutdown()

    async def main() -> None:
        tcp = await asyncio.start_server(connection, host, port)
        server._server = tcp
        logger.info("listening on %s", ", ".join(str(s.getsockname()) for s in tcp.sockets))
        async with tcp:
            with contextlib.suppress(asyncio.CancelledError):  # shutdown closes it
                await tcp.serve_forever()

    try:
        asyncio.run(main())
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    return code
