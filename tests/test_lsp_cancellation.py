"""Cancellation reaches the generating loop within one token, by both routes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_support import STREAM, fake_settings, open_doc, plain, session, stream, write_script
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from rubytailor.protocol import STATUS_METHOD

URI = "file:///work/app/slow.rb"
DOC = "def report\n  \nend\n"
# Many short lines so partials flow early; 20 ms per 2-character token: ~4 s in all,
# so a request that had to wait for it to finish would be obvious.
SLOW = "".join(f"  row{i} = {i}\n" for i in range(30))
TOKEN_DELAY_MS = 20


def stream_params(stream_id: str) -> dict[str, Any]:
    return {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 2}, "id": stream_id}


async def first_partial(client: Any, stream_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(p["id"] == stream_id for p in client.partials):
        assert time.monotonic() < deadline, "no partial arrived"
        await asyncio.sleep(0.005)


async def counters(client: Any) -> dict[str, int]:
    status = plain(await client.protocol.send_request_async(STATUS_METHOD, {}))
    return status["backend_counters"]


async def test_cancel_request_stops_generation_within_one_token(tmp_path: Path) -> None:
    script = write_script(tmp_path, [SLOW, "  fast = 1\n"], delay_ms=TOKEN_DELAY_MS, piece_chars=2)
    async with session(fake_settings(script, maxLines=50)) as client:
        open_doc(client, URI, DOC)
        future = client.protocol.send_request(STREAM, stream_params("slow"), msg_id="req-slow")
        await first_partial(client, "slow")
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="req-slow"))
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wrap_future(future)
        # The next request is served promptly: the model thread is free again.
        started = time.perf_counter()
        result, _ = await stream(client, URI, 1, 2, stream_id="next")
        elapsed = time.perf_counter() - started
        assert await counters(client) == {"pieces_after_cancel": 0}
    assert result["text"] == "  fast = 1"
    assert elapsed < 1.0, f"the request after a cancel took {elapsed:.2f} s"
    slow = [p for p in client.partials if p["id"] == "slow"]
    # The cancelled stream still ends with exactly one done=true notification.
    assert [p["done"] for p in slow].count(True) == 1 and slow[-1]["done"] is True


async def test_a_newer_request_on_the_same_document_supersedes_the_older(tmp_path: Path) -> None:
    script = write_script(tmp_path, [SLOW, "  fast = 1\n"], delay_ms=TOKEN_DELAY_MS, piece_chars=2)
    async with session(fake_settings(script, maxLines=50)) as client:
        open_doc(client, URI, DOC)
        older = asyncio.ensure_future(stream(client, URI, 1, 2, stream_id="older"))
        await first_partial(client, "older")
        started = time.perf_counter()
        newer, _ = await stream(client, URI, 1, 2, stream_id="newer")
        elapsed = time.perf_counter() - started
        old_result, old_partials = await older
        assert await counters(client) == {"pieces_after_cancel": 0}
    # The older one answers normally, marked cancelled, with what it had streamed.
    assert old_result["cancelled"] is True and old_result["verdict"] == "cancelled"
    assert old_result["text"] == "".join(p["text"] for p in old_partials)
    assert SLOW.startswith(old_result["text"]) and old_result["text"] != SLOW.rstrip("\n")
    assert old_partials[-1]["done"] is True
    assert newer["text"] == "  fast = 1" and newer["cancelled"] is False
    assert elapsed < 1.0, f"the newer request took {elapsed:.2f} s"


async def test_completion_and_inline_requests_do_not_cancel_each_other(tmp_path: Path) -> None:
    script = write_script(tmp_path, ["  total = 1\n"], delay_ms=5)
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, DOC)
        position = types.Position(line=1, character=2)
        inline_answer, completion_answer = await asyncio.gather(
            client.text_document_inline_completion_async(
                types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=URI),
                    position=position,
                    context=types.InlineCompletionContext(
                        trigger_kind=types.InlineCompletionTriggerKind.Automatic
                    ),
                )
            ),
            client.text_document_completion_async(
                types.CompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=URI), position=position
                )
            ),
        )
    assert inline_answer is not None and inline_answer.items[0].insert_text == "  total = 1"
    assert isinstance(completion_answer, types.CompletionList)
    assert completion_answer.items[0].filter_text == "  total = 1"
