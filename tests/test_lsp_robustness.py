"""Bad input never crashes the server: each case gets a clear answer and serving goes on."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from lsp_support import (
    SERVER,
    STREAM,
    fake_settings,
    inline,
    make_client,
    open_doc,
    session,
    stream,
    write_script,
)
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pytest_lsp import ClientServerConfig

URI = "file:///work/app/model.rb"
DOC = "class Model\n  \nend\n"
FAULTY_SERVER = [sys.executable, str(Path(__file__).parent / "lsp_support" / "faulty_server.py")]


async def test_an_unknown_document_gets_an_empty_answer(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x = 1\n"]))) as client:
        answer = await inline(client, "file:///never/opened.rb", 0, 0)
        result, partials = await stream(client, "file:///never/opened.rb", 0, 0)
        open_doc(client, URI, DOC)
        still_works = await inline(client, URI, 1, 2)
    assert len(answer.items) == 0
    assert (result["text"], result["source"]) == ("", "none")
    assert [p["done"] for p in partials] == [True]
    assert still_works.items[0].insert_text == "x = 1"


async def test_a_line_past_the_end_is_invalid_params_and_a_long_character_clamps(
    tmp_path: Path,
) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x = 1\n"]))) as client:
        open_doc(client, URI, DOC)
        with pytest.raises(JsonRpcInvalidParams, match="past the end"):
            await inline(client, URI, 40, 0)
        clamped = await inline(client, URI, 1, 99)
    item = clamped.items[0]
    assert item.range is not None
    assert (item.range.start.line, item.range.start.character) == (1, 2)


async def test_malformed_stream_params_are_invalid_params(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x\n"]))) as client:
        with pytest.raises(JsonRpcInvalidParams, match="textDocument"):
            await client.protocol.send_request_async(STREAM, {"position": {"line": 0}})


@pytest.mark.parametrize(
    "text",
    ["class A\x00\x01\x02\n  \nend\n", "class A\n  x = '\ud800'\n  \nend\n"],
    ids=["nul", "surrogate"],
)
async def test_binary_content_gets_no_suggestion(tmp_path: Path, text: str) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x = 1\n"]))) as client:
        open_doc(client, URI, text)
        answer = await inline(client, URI, 2, 2)
        open_doc(client, URI + ".ok", DOC)
        fine = await inline(client, URI + ".ok", 1, 2)
    assert len(answer.items) == 0
    assert fine.items[0].insert_text == "x = 1"


async def test_a_huge_document_gets_one_message_and_the_server_stays_responsive(
    tmp_path: Path,
) -> None:
    huge = "# filler line for a very large generated file\n" * 110_000  # ~5 MB
    huge_uri = "file:///work/app/huge.rb"
    async with session(fake_settings(write_script(tmp_path, ["x = 1\n"]))) as client:
        open_doc(client, huge_uri, huge + "\n")
        first = await inline(client, huge_uri, 110_000, 0)
        second = await inline(client, huge_uri, 110_000, 0)
        open_doc(client, URI, DOC)
        started = time.perf_counter()
        small = await inline(client, URI, 1, 2)
        elapsed = time.perf_counter() - started
    assert len(first.items) == 0 and len(second.items) == 0
    warnings = [m.message for m in client.messages if "maxFileBytes" in m.message]
    assert len(warnings) == 1 and "huge.rb" in warnings[0]
    assert small.items[0].insert_text == "x = 1"
    assert elapsed < 2.0
    # No syntax diagnostics for it either.
    assert not client.diagnostics.get(huge_uri)


def rpc(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


async def read_rpc(reader: asyncio.StreamReader) -> dict:
    headers = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in headers.split(b"\r\n")
        if line.startswith(b"Content-Length")
    )
    return json.loads(await reader.readexactly(length))


async def test_requests_before_initialize_are_answered_server_not_initialized() -> None:
    # pytest-lsp's client refuses to send this, so speak raw JSON-RPC over the pipes.
    server = await asyncio.create_subprocess_exec(
        *SERVER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        position = {"line": 0, "character": 0}
        server.stdin.write(
            rpc(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": STREAM,
                    "params": {"textDocument": {"uri": URI}, "position": position},
                }
            )
        )
        answer = await asyncio.wait_for(read_rpc(server.stdout), 10)
        assert answer["id"] == 1 and answer["error"]["code"] == -32002
        assert "initialize" in answer["error"]["message"]
        # The server is still there and initializes normally afterwards.
        server.stdin.write(
            rpc(
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "initialize",
                    "params": {"processId": None, "rootUri": None, "capabilities": {}},
                }
            )
        )
        answer = await asyncio.wait_for(read_rpc(server.stdout), 10)
        assert answer["id"] == 2 and "inlineCompletionProvider" in answer["result"]["capabilities"]
        server.stdin.write(rpc({"jsonrpc": "2.0", "id": 3, "method": "shutdown"}))
        assert (await asyncio.wait_for(read_rpc(server.stdout), 10))["id"] == 3
        server.stdin.write(rpc({"jsonrpc": "2.0", "method": "exit"}))
        assert await asyncio.wait_for(server.wait(), 10) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_an_exception_inside_a_handler_is_an_error_answer_not_a_crash(
    tmp_path: Path,
) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps({"completions": ["RAISE\n", "  after = 1\n"], "piece_chars": 100}),
        encoding="utf-8",
    )
    config = ClientServerConfig(
        server_command=[*FAULTY_SERVER, "serve"], client_factory=make_client
    )
    client = await config.start()
    try:
        await client.initialize_session(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                initialization_options=fake_settings(script),
            )
        )
        open_doc(client, URI, DOC)
        with pytest.raises(JsonRpcException) as error:
            await stream(client, URI, 1, 2, stream_id="boom")
        assert error.value.code == -32603
        assert "scripted failure" in error.value.message
        done = [p for p in client.partials if p["id"] == "boom"]  # type: ignore[attr-defined]
        assert [p["done"] for p in done] == [True]
        # Serving goes on: the next request is answered normally.
        open_doc(client, URI + ".2", DOC)
        after = await inline(client, URI + ".2", 1, 2)
        assert after.items[0].insert_text == "  after = 1"
        await client.shutdown_session()
    finally:
        await client.stop()
