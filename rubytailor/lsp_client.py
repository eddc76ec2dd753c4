"""A small LSP client that drives `rubytailor serve` over stdio, the way an editor does.

Used by `rubytailor demo` and `rubytailor bench latency`: it starts the real server as a
subprocess, speaks the real protocol (pygls' client), and times what an editor would see.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pygls.lsp.client import LanguageClient

from rubytailor.protocol import PARTIAL_METHOD, PREWARM_METHOD, STATUS_METHOD, STREAM_METHOD


def field_of(obj: Any, name: str, default: Any = None) -> Any:
    """Read a field from a custom message, which pygls gives as a namedtuple or a dict."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass(kw_only=True)
class StreamOutcome:
    """What one `rubytailor/inlineStream` request looked like from the editor's side."""

    text: str
    partials: list[str]
    # Milliseconds from sending the request to the first partial with text, and to the answer.
    first_partial_ms: float | None
    total_ms: float
    result: dict[str, Any] = field(default_factory=dict)


class RubytailorClient:
    """One editor session against a server process."""

    def __init__(self, command: list[str], settings: dict[str, Any] | None = None) -> None:
        self.command = command
        self.settings = settings or {}
        self.client = LanguageClient("rubytailor-client", "0.1.0")
        self.messages: list[str] = []
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue[tuple[float, str, bool]]] = {}
        self._versions: dict[str, int] = {}

        @self.client.feature(PARTIAL_METHOD)
        def _on_partial(params: Any) -> None:
            queue = self._streams.get(field_of(params, "id"))
            if queue is not None:
                text = field_of(params, "text", "")
                queue.put_nowait((time.perf_counter(), text, bool(field_of(params, "done"))))

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def _on_message(params: types.ShowMessageParams) -> None:
            self.messages.append(params.message)

        @self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def _on_diagnostics(params: types.PublishDiagnosticsParams) -> None:
            pass

        @self.client.feature(types.WORKSPACE_CONFIGURATION)
        def _on_configuration(params: types.ConfigurationParams) -> list[Any]:
            return [self.settings for _ in params.items]

    @property
    def server_pid(self) -> int | None:
        server = getattr(self.client, "_server", None)
        return getattr(server, "pid", None)

    async def start(self, root: Path) -> None:
        await self.client.start_io(*self.command)
        await self.client.initialize_async(
            types.InitializeParams(
                process_id=None,
                root_uri=root.resolve().as_uri(),
                capabilities=types.ClientCapabilities(
                    general=types.GeneralClientCapabilities(
                        position_encodings=[types.PositionEncodingKind.Utf16]
                    ),
                    workspace=types.WorkspaceClientCapabilities(configuration=True),
                ),
                initialization_options=self.settings,
            )
        )
        self.client.initialized(types.InitializedParams())

    async def status(self) -> dict[str, Any]:
        return _to_dict(await self.client.protocol.send_request_async(STATUS_METHOD, {}))

    async def wait_until_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Poll `rubytailor/status` until the model is loaded (or failed to load)."""
        deadline = time.perf_counter() + timeout_s
        while True:
            status = await self.status()
            ready = status.get("model_id") not in (None, "none") or status.get("model_error")
            if ready or time.perf_counter() > deadline:
                return status
            await asyncio.sleep(0.1)

    async def wait_for_memory(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """The project memory's status once its first scan is indexed (or it is off)."""
        deadline = time.perf_counter() + timeout_s
        while True:
            memory = dict((await self.status()).get("project_memory") or {})
            if memory.get("state") in ("ready", "off") or time.perf_counter() > deadline:
                return memory
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), timeout=10)
            self.client.exit(None)
        finally:
            try:
                # pygls' stop also waits for its reader tasks; seen to hang once the server
                # had exited, so it gets a deadline, and the server a kill if still there.
                await asyncio.wait_for(self.client.stop(), timeout=10)
            except TimeoutError:
                server = getattr(self.client, "_server", None)
                if server is not None and server.returncode is None:
                    server.kill()

    def open(self, path: Path, text: str) -> str:
        uri = path.resolve().as_uri()
        self._versions[uri] = 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id="ruby", version=1, text=text
                )
            )
        )
        return uri

    def insert(self, uri: str, line: int, character: int, text: str) -> None:
        """An incremental edit: insert ``text`` at (line, character), as typing does."""
        self._versions[uri] += 1
        position = types.Position(line=line, character=character)
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(
                    uri=uri, version=self._versions[uri]
                ),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(start=position, end=position), text=text
                    )
                ],
            )
        )

    def prewarm(self, uri: str, line: int, character: int) -> None:
        """`rubytailor/prewarm`: the cursor rests at (line, character), as editors report."""
        self.client.protocol.notify(
            PREWARM_METHOD,
            {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}},
        )

    def close(self, uri: str) -> None:
        self._versions.pop(uri, None)
        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )

    async def stream(
        self, uri: str, line: int, character: int, *, cancel_after_s: float | None = None
    ) -> StreamOutcome:
        """Send `rubytailor/inlineStream` and collect its partials until done.

        With ``cancel_after_s`` the client sends `$/cancelRequest` that long after the
        request, as an editor does when the user presses Escape or moves away; a request
        the server then refuses comes back as a result with ``cancelled``.
        """
        stream_id = next(self._ids)
        queue: asyncio.Queue[tuple[float, str, bool]] = asyncio.Queue()
        self._streams[stream_id] = queue
        params = {
            "textDocument": {"uri": uri},
            "position": {"line": line, "character": character},
            "id": stream_id,
        }
        started = time.perf_counter()
        msg_id = f"stream-{stream_id}"
        canceller = None
        if cancel_after_s is not None:
            cancel = types.CancelParams(id=msg_id)
            canceller = asyncio.get_running_loop().call_later(
                cancel_after_s, self.client.protocol.notify, types.CANCEL_REQUEST, cancel
            )
        try:
            try:
                result = await self.client.protocol.send_request_async(
                    STREAM_METHOD, params, msg_id=msg_id
                )
            except JsonRpcRequestCancelled:
                result = {"cancelled": True}
            finished = time.perf_counter()
            # The final notification is sent before the response; drain what arrived.
            partials: list[str] = []
            first: float | None = None
            while not queue.empty():
                at, text, _done = queue.get_nowait()
                if text and first is None:
                    first = at
                partials.append(text)
        finally:
            self._streams.pop(stream_id, None)
            if canceller is not None:
                canceller.cancel()
        result_dict = _to_dict(result)
        return StreamOutcome(
            text=result_dict.get("text", ""),
            partials=partials,
            first_partial_ms=None if first is None else (first - started) * 1000,
            total_ms=(finished - started) * 1000,
            result=result_dict,
        )


def _to_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "_asdict"):
        return {k: _to_dict(v) if hasattr(v, "_asdict") else v for k, v in obj._asdict().items()}
    return {"value": obj}


def server_command(extra: list[str] | None = None) -> list[str]:
    """The command that starts this installation's server."""
    return [sys.executable, "-m", "rubytailor.cli", "serve", *(extra or [])]


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a process from /proc (Linux); None where unavailable."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
