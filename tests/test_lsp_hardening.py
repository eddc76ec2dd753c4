"""Issue 10, hardening: hostile or broken input over the real protocol (the server as a
subprocess on stdio or TCP, raw bytes) never crashes it, never leaves a request
unanswered, and never leaves the server's copy of a document different from the
editor's without the server knowing."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lsp_support import SERVER
from lsp_support.raw import RawServer, connect_tcp, frame, free_port, read_frame
from lsp_support.text_model import ODD_BREAKS, reference_apply, units

URI = "file:///work/app/model.rb"
FAULTY = str(Path(__file__).parent / "lsp_support" / "faulty_server.py")


def ping(server: RawServer) -> int:
    """Send rubytailor/status (no params member at all); its id."""
    msg_id = server.new_id()
    server.send({"jsonrpc": "2.0", "id": msg_id, "method": "rubytailor/status"})
    return msg_id


def open_doc(server: RawServer, text: str, uri: str = URI, version: int = 1) -> None:
    server.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "ruby", "version": version, "text": text}},
    )


def change(server: RawServer, version: Any, *changes: dict[str, Any], uri: str = URI) -> None:
    server.notify(
        "textDocument/didChange",
        {"textDocument": {"uri": uri, "version": version}, "contentChanges": list(changes)},
    )


def edit(sl: int, sc: int, el: int, ec: int, text: str) -> dict[str, Any]:
    return {
        "range": {"start": {"line": sl, "character": sc}, "end": {"line": el, "character": ec}},
        "text": text,
    }


# -- 1. framing ---------------------------------------------------------------------------


STATUS = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "rubytailor/status"}).encode()

BROKEN_FRAMES = {
    "overflowing length": b"Content-Length: 999999999999999999999999999999\r\n\r\n{}",
    "over the 64 MB cap": b"Content-Length: 67108865\r\n\r\n{}",
    "garbage bytes": b"\x89PNG\r\n\x1a\n\x00\x00 garbage\r\n",
    "garbage glued to a header": b"xx\xff",
    "header without colon": b"Content-Length 12\r\n\r\n",
    "NUL in a header": b"Content-\x00Length: 2\r\n\r\n{}",
    "no Content-Length": b"Content-Type: application/json\r\n\r\n{}\r\n",
    "negative length": b"Content-Length: -5\r\n\r\n",
    "too-small length": b"Content-Length: 5\r\n\r\n" + STATUS,
    "too-big length": b"Content-Length: " + str(len(STATUS) + 40).encode() + b"\r\n\r\n" + STATUS,
    "over-long header line": b"X" * 100_000,
}


async def test_after_each_broken_frame_the_next_message_is_answered() -> None:
    async with RawServer() as server:
        await server.initialize()
        for name, broken in BROKEN_FRAMES.items():
            server.send_bytes(broken)
            answer = await server.answer(ping(server))
            assert "result" in answer, (name, answer)
        assert await server.exit() == 0
        log = await server.stderr()
    assert "Traceback" not in log
    assert log.count("skipped") >= len(BROKEN_FRAMES) - 2, log  # two are parse errors
    assert "over the limit of 67108864 bytes" in log


def test_frame_reader_resynchronises_on_the_next_header() -> None:
    from rubytailor.lsp.jsonrpc import FrameReader

    reader = FrameReader(max_length=100)
    body = b'{"a": 1}'
    good = b"Content-Length: 8\r\n\r\n" + body
    stream = b"junk\r\n" + good + b"Content-Length: 101\r\n\r\n" + b"x" * 101 + b"zz" + good
    # Fed a byte at a time, as a slow pipe would.
    bodies = [found for i in range(len(stream)) for found in reader.bodies(stream[i : i + 1])]
    assert bodies == [body, body]
    assert reader.skipped.count == 0  # logged and reset once the second message came


# -- 2 and 3. every request gets an answer, and the right one ----------------------------


def inline_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "textDocument": {"uri": URI},
        "position": {"line": 0, "character": 0},
        "context": {"triggerKind": 2},
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


BAD_PARAMS: dict[str, tuple[Any, str]] = {
    "null": (None, "params"),
    "array": ([], "params"),
    "zero": (0, "params"),
    "string": ("x", "params"),
    "empty object": ({}, "textDocument"),
    "no textDocument": ({"position": {"line": 0, "character": 0}}, "textDocument"),
    "negative line": (inline_params(position={"line": -1, "character": 0}), "-1"),
    "string line": (inline_params(position={"line": "1", "character": 0}), "position.line"),
}


async def test_malformed_inline_completion_params_are_invalid_params() -> None:
    async with RawServer() as server:
        await server.initialize()
        open_doc(server, "x = 1\n")
        for name, (params, named) in BAD_PARAMS.items():
            msg_id = server.new_id()
            message = {"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion"}
            server.send({**message, "params": params})
            answer = await server.answer(msg_id)
            assert answer.get("error", {}).get("code") == -32602, (name, answer)
            assert named in answer["error"]["message"], (name, answer)
            assert "data" not in answer["error"]
        # And serving goes on.
        assert "result" in await server.answer(ping(server))


INVALID_REQUESTS: dict[str, tuple[dict[str, Any], Any]] = {
    "method is a number": ({"id": 3, "method": 5}, 3),
    "method is null": ({"id": 3, "method": None}, 3),
    "method is an object": ({"id": 3, "method": {"a": 1}}, 3),
    "id is an object": ({"id": {"a": 1}, "method": "rubytailor/status"}, None),
    "id is an array": ({"id": [1], "method": "rubytailor/status"}, None),
    "id is a bool": ({"id": True, "method": "rubytailor/status"}, None),
    "wrong jsonrpc": ({"jsonrpc": "1.0", "id": 3, "method": "rubytailor/status"}, 3),
    "neither method nor result": ({"id": 3}, 3),
}


async def test_invalid_requests_are_invalid_request_without_a_traceback() -> None:
    async with RawServer() as server:
        await server.initialize()
        for name, (message, reply_id) in INVALID_REQUESTS.items():
            server.send({"jsonrpc": "2.0", **message})
            answer = await server.answer(reply_id)
            assert answer["error"]["code"] == -32600, (name, answer)
            assert "data" not in answer["error"]
            server.messages.remove(answer)
            assert "result" in await server.answer(ping(server)), name


async def test_parse_errors_and_batches_are_answered_per_json_rpc() -> None:
    async with RawServer() as server:
        await server.initialize()
        for body in (b"{not json", b"\xff\xfe", b'{"a": NaN}', b"[" * 100_000):
            server.send_bytes(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            answer = await server.answer(None)
            assert answer["error"]["code"] == -32700, answer
            server.messages.remove(answer)
        server.send([])
        assert (await server.answer(None))["error"]["code"] == -32600
        batch = [
            {"jsonrpc": "2.0", "id": 41, "method": "rubytailor/status"},
            {"jsonrpc": "2.0", "id": 42, "method": "rubytailor/status"},
        ]
        server.send(batch)
        for msg_id in (41, 42):
            assert (await server.answer(msg_id))["error"]["code"] == -32600
        assert "result" in await server.answer(ping(server))


async def test_a_request_without_params_is_answered() -> None:
    async with RawServer() as server:
        await server.initialize()
        answer = await server.answer(ping(server))
        assert answer["result"]["position_encoding"] == "utf-16"
        # An LSP method whose params are required says so instead of staying silent.
        msg_id = server.new_id()
        server.send({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/completion"})
        answer = await server.answer(msg_id)
        assert answer["error"]["code"] == -32602
        assert "params" in answer["error"]["message"]


async def test_requests_after_shutdown_are_invalid_request_and_exit_is_zero() -> None:
    async with RawServer() as server:
        await server.initialize()
        assert "result" in await server.request("shutdown")
        answer = await server.answer(ping(server))
        assert answer["error"]["code"] == -32600
        assert "shutdown" in answer["error"]["message"]
        assert await server.exit(shutdown=False) == 0


async def test_exit_without_shutdown_exits_with_code_1() -> None:
    async with RawServer() as server:
        await server.initialize()
        assert await server.exit(shutdown=False) == 1


async def test_an_internal_error_carries_no_traceback(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"completions": ["RAISE\n"], "piece_chars": 100}))
    async with RawServer(command=[sys.executable, FAULTY, "serve"]) as server:
        await server.request(
            "initialize",
            {
                "processId": None,
                "rootUri": None,
                "capabilities": {},
                "initializationOptions": {"backend": "fake", "modelPath": str(script)},
            },
        )
        server.notify("initialized", {})
        open_doc(server, "class A\n  \nend\n")
        answer = await server.request(
            "textDocument/inlineCompletion",
            inline_params(position={"line": 1, "character": 2}),
        )
        assert answer["error"]["code"] == -32603
        assert "scripted failure" in answer["error"]["message"]
        assert "data" not in answer["error"]
        assert "Traceback" not in json.dumps(answer)


# -- 4 and 5. document state -------------------------------------------------------------


async def test_edits_after_characters_python_counts_as_line_breaks_land_in_place() -> None:
    text = "".join(f"a{ch}b = 1\n" for ch in ODD_BREAKS) + "tail\r\nlast\rend"
    async with RawServer() as server:
        await server.initialize()
        open_doc(server, text)
        expected, version = text, 1
        # Line 3 is "a\fb = 1" for LSP; Python's splitlines would see two lines.
        for line in (0, 3, 7, 8, 9, 10):
            version += 1
            change_ = edit(line, 2, line, 3, "Z")
            change(server, version, change_)
            expected = reference_apply(expected, change_, "utf-16")
        assert await server.text(URI) == expected
        assert expected.startswith("a\u2028Z = 1\n")


async def test_a_malformed_did_change_is_rejected_whole() -> None:
    async with RawServer() as server:
        await server.initialize()
        open_doc(server, "one\ntwo\n")
        # The first change is fine, the second ends before it starts: none may apply.
        change(server, 2, edit(0, 0, 0, 0, "X"), edit(1, 2, 1, 0, "Y"))
        assert await server.text(URI) is None  # stale: the server knows it is out of sync
        answer = await server.request(
            "textDocument/inlineCompletion", inline_params(position={"line": 0, "character": 0})
        )
        assert answer["result"]["items"] == []
        # Bad types in a change.
        open_doc(server, "one\ntwo\n", version=3)
        assert await server.text(URI) == "one\ntwo\n"
        change(server, 4, {"range": {"start": {"line": 0}}, "text": 5})
        assert await server.text(URI) is None
        # A whole-document change brings it back.
        change(server, 5, {"text": "fresh\n"})
        assert await server.text(URI) == "fresh\n"
        change(server, 6, edit(0, 5, 0, 5, "!"))
        assert await server.text(URI) == "fresh!\n"
        log = await server.stderr()
    assert "rejected didChange" in log


async def test_did_change_versions_backwards_or_beyond_int32_are_not_silently_applied() -> None:
    async with RawServer() as server:
        await server.initialize()
        open_doc(server, "abc\n", version=5)
        change(server, 4, edit(0, 0, 0, 0, "X"))
        assert await server.text(URI) is None
        open_doc(server, "abc\n", version=1)
        change(server, 2**40, edit(0, 0, 0, 0, "X"))
        assert await server.text(URI) is None
        # A reopen the converter refuses must not leave the old text looking current.
        open_doc(server, "abc\n", version=3)
        assert await server.text(URI) == "abc\n"
        open_doc(server, "new text\n", version=2**40)
        assert await server.text(URI) is None
        messages = [m for m in server.messages if m.get("method") == "window/showMessage"]
        assert any("lost track of" in m["params"]["message"] for m in messages)
        log = await server.stderr()
    assert "went back from version 5 to 4" in log
    assert str(2**40) in log


@pytest.mark.parametrize("encoding", ["utf-32", "utf-8", "utf-16"])
async def test_the_negotiated_encoding_is_the_one_used(encoding: str) -> None:
    text = "😀é = 1\nx = '😀😀'\n"
    async with RawServer() as server:
        answer = await server.initialize({"general": {"positionEncodings": [encoding]}})
        assert answer["result"]["capabilities"]["positionEncoding"] == encoding
        open_doc(server, text)
        # Replace the "=" on line 0 and the second emoji on line 1, in client units.
        eq = units("😀é ", encoding)
        second = units("x = '😀", encoding)
        emoji = units("😀", encoding)
        change(server, 2, edit(0, eq, 0, eq + 1, ":"), edit(1, second, 1, second + emoji, "!"))
        assert await server.text(URI) == "😀é : 1\nx = '😀!'\n"
        status = await server.request("rubytailor/status", {})
        assert status["result"]["position_encoding"] == encoding


async def test_an_unknown_encoding_falls_back_to_utf_16() -> None:
    async with RawServer() as server:
        answer = await server.initialize({"general": {"positionEncodings": ["utf-7"]}})
        assert answer["result"]["capabilities"].get("positionEncoding", "utf-16") == "utf-16"
        open_doc(server, "😀a\n")
        change(server, 2, edit(0, 2, 0, 3, "b"))
        assert await server.text(URI) == "😀b\n"


# -- 6. permissions ---------------------------------------------------------------------


def _run_under_umask_0(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import os; os.umask(0)\n" + code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_and_cache_directories_are_private_under_umask_000(tmp_path: Path) -> None:
    env = {
        "RUBYTAILOR_CACHE_DIR": str(tmp_path / "xdg" / "cache" / "rubytailor"),
        "RUBYTAILOR_DATA_DIR": str(tmp_path / "xdg" / "data" / "rubytailor"),
    }
    done = _run_under_umask_0(
        "from rubytailor import paths\n"
        "for d in (paths.cache_dir(), paths.data_dir()):\n"
        "    paths.ensure_private_dir(d)\n"
        "paths.restrict_umask()\n"
        "(paths.cache_dir() / 'f.bin').write_bytes(b'x')\n"
        "(paths.cache_dir() / 'ggml').mkdir()\n",
        env,
    )
    assert done.returncode == 0, done.stderr
    cache = Path(env["RUBYTAILOR_CACHE_DIR"])
    data = Path(env["RUBYTAILOR_DATA_DIR"])
    assert mode(cache) == mode(data) == mode(cache.parent) == mode(cache / "ggml") == 0o700
    assert mode(cache / "f.bin") == 0o600


def test_every_command_runs_with_a_private_umask(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    done = _run_under_umask_0(
        "import os\n"
        "from rubytailor.cli import check_data_dir, main\n"
        "assert main(['serve', '--tcp', '0.0.0.0:1']) == 2\n"
        "print(oct(os.umask(0o077)))\n"
        "print(check_data_dir())\n",
        {"RUBYTAILOR_DATA_DIR": str(data)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "0o77"
    assert mode(data) == mode(data.parent) == 0o700


async def test_the_server_log_is_private_and_a_shared_cache_is_warned_about(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    log = tmp_path / "logs" / "new" / "server.log"
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        'umask 000; exec "$@"',
        "sh",
        *SERVER,
        "--log-file",
        str(log),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "RUBYTAILOR_CACHE_DIR": str(shared)},
    )
    assert process.stdin is not None
    process.stdin.write(frame({"jsonrpc": "2.0", "method": "exit"}))
    await asyncio.wait_for(process.wait(), 30)
    assert mode(log) == 0o600
    assert mode(log.parent) == 0o700
    assert "writable by other users" in log.read_text()


# -- 7. TCP ------------------------------------------------------------------------------


def test_a_non_loopback_tcp_address_needs_allow_remote() -> None:
    done = subprocess.run(
        [*SERVER, "--tcp", f"0.0.0.0:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr


async def test_allow_remote_serves_with_a_warning() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *SERVER, "--tcp", f"0.0.0.0:{port}", "--allow-remote", stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        first = await asyncio.wait_for(process.stderr.readline(), 30)
        assert b"warning" in first and b"other machines" in first
    finally:
        process.kill()
        await process.wait()


async def test_tcp_defaults_to_loopback_and_resynchronises_too() -> None:
    from rubytailor.lsp.serve import parse_tcp

    assert parse_tcp("2087") == ("127.0.0.1", 2087)
    assert parse_tcp(":2087") == ("127.0.0.1", 2087)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *SERVER, "--tcp", str(port), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        reader, writer = await connect_tcp(port)
        writer.write(b"Content-Length: 99999999999999999999999\r\n\r\nnoise\r\n")
        writer.write(
            frame(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {"processId": None, "rootUri": None, "capabilities": {}},
                }
            )
        )
        answer = await read_frame(reader, 30)
        assert answer["id"] == 1 and "capabilities" in answer["result"]
        writer.close()
    finally:
        process.kill()
        await process.wait()


@pytest.mark.parametrize("encoding", ["utf-32", "utf-8", "utf-16"])
async def test_suggestion_ranges_count_in_the_negotiated_encoding(
    tmp_path: Path, encoding: str
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"completions": ["_done\n"], "piece_chars": 100}))
    line = "x = '😀😀'; y"
    async with RawServer() as server:
        await server.request(
            "initialize",
            {
                "processId": None,
                "rootUri": None,
                "capabilities": {"general": {"positionEncodings": [encoding]}},
                "initializationOptions": {"backend": "fake", "modelPath": str(script)},
            },
        )
        server.notify("initialized", {})
        open_doc(server, f"{line}\n")
        end = units(line, encoding)
        answer = await server.request(
            "textDocument/inlineCompletion",
            inline_params(position={"line": 0, "character": end}),
        )
        item = answer["result"]["items"][0]
        assert item["range"]["start"] == {"line": 0, "character": end}, (encoding, item)
        result = await server.request(
            "rubytailor/inlineStream",
            {"textDocument": {"uri": URI}, "position": {"line": 0, "character": end}},
        )
        assert "error" not in result, result
