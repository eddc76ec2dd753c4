"""Raw JSON-RPC over the real server's pipes, for bytes no LSP client library would send.

``RawServer`` starts ``inspect_server.py`` (the real server plus one test-only request
that returns a document's text as the server holds it) and reads every message the
server writes, so a test can wait for the answer to one id and see everything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

INSPECT_SERVER = [sys.executable, str(Path(__file__).parent / "inspect_server.py"), "serve"]
TEXT_METHOD = "test/documentText"


def frame(message: Any) -> bytes:
    body = json.dumps(message).encode()
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def connect_tcp(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a server starting on 127.0.0.1:port, tried for up to 10 s."""
    for _ in range(100):
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"the server never listened on 127.0.0.1:{port}")


async def read_frame(reader: asyncio.StreamReader, timeout: float) -> Any:
    """The next message on a stream, decoded."""
    headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = int(headers.split(b"Content-Length:")[1].split(b"\r\n")[0])
    return json.loads(await reader.readexactly(length))


class RawServer:
    def __init__(
        self, *args: str, command: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.command = [*(command or INSPECT_SERVER), *args]
        self.env = {**os.environ, "RUBYTAILOR_MODEL": "/nonexistent/no-model", **(env or {})}
        self.messages: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._next_id = 1000
        self._stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawServer:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        # Drained all along: a full stderr pipe would block the server mid-test.
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        return self

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr += chunk

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for task in (self._reader, self._stderr_task):
            if task is not None:
                task.cancel()

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        while True:
            try:
                headers = await stdout.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            length = next(
                int(line.split(b":")[1])
                for line in headers.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            self.messages.append(json.loads(await stdout.readexactly(length)))
            self._arrived.set()

    def send_bytes(self, data: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(data)

    def send(self, message: Any) -> None:
        self.send_bytes(frame(message))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def wait_for(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            seen = 0
            while True:
                for message in self.messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.messages)
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    async def answer(self, msg_id: Any, timeout: float = 30) -> dict[str, Any]:
        """The response to ``msg_id`` (an error response with id null for None)."""
        return await self.wait_for(
            lambda m: "method" not in m and m.get("id", "absent") == msg_id, timeout
        )

    async def request(self, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        msg_id = self.new_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method, **extra}
        if params is not None:
            message["params"] = params
        self.send(message)
        return await self.answer(msg_id)

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def initialize(self, capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = await self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": None,
                "capabilities": capabilities or {},
                "initializationOptions": {"backend": "fake", "modelPath": "/nonexistent/x"},
            },
        )
        self.notify("initialized", {})
        return answer

    async def text(self, uri: str) -> str | None:
        """The document's text as the server holds it (None: not open or stale)."""
        answer = await self.request(TEXT_METHOD, {"uri": uri})
        result: str | None = answer["result"]
        return result

    async def stderr(self) -> str:
        """Everything the server logged; call after it has exited (or been killed)."""
        assert self.process is not None and self._stderr_task is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.wait_for(self._stderr_task, 30)
        return self._stderr.decode(errors="replace")

    async def exit(self, *, shutdown: bool = True, timeout: float = 30) -> int:
        if shutdown:
            assert "result" in await self.request("shutdown")
        self.send({"jsonrpc": "2.0", "method": "exit"})
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)
