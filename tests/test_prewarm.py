"""Pre-warming: the prompt where the cursor rests is evaluated ahead of the request,
and any real request pre-empts it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_support import edit, open_doc, plain, session, stream

from rubytailor.model.backends.base import CancelToken
from rubytailor.model.backends.token_loop import MAX_HEALED_TOKENS
from rubytailor.model.completer import Completer, ModelSpec
from rubytailor.model.pipeline import CompletionRequest
from rubytailor.paths import REPO_ROOT
from rubytailor.protocol import PREWARM_METHOD, STATUS_METHOD

pytestmark = pytest.mark.slow

URI = "file:///work/app/orders.rb"
DOC = "class Orders\n  def total(items)\n    \n  end\nend\n"
# A longer document, so the prompt spans several pre-fill batches.
LONG = (REPO_ROOT / "examples" / "inventory.rb").read_text()


def request_at(text: str, offset: int) -> CompletionRequest:
    return CompletionRequest(doc_key="x.rb", version=1, text=text, offset=offset, max_tokens=16)


def completer(model_dir: Path) -> Completer:
    made = Completer(ModelSpec(backend="transformers", path=model_dir, threads=1))
    made.load()
    assert made.backend is not None
    return made


def test_a_prewarmed_prompt_is_reused_and_gives_the_same_suggestion(tiny_model_dir: Path) -> None:
    request = request_at(LONG, LONG.index("def ") + 4)
    cold = completer(tiny_model_dir).generate(request, lambda _d: None, CancelToken())

    warm = completer(tiny_model_dir)
    evaluated = warm.prewarm(request, CancelToken())
    result = warm.generate(request, lambda _d: None, CancelToken())
    # All of it but the last token (and those token healing takes off) is reused.
    assert result.prompt_tokens - 1 - MAX_HEALED_TOKENS <= evaluated < result.prompt_tokens
    assert result.reused_tokens == evaluated
    assert result.text == cold.text
    # The same prompt again: already in the cache, nothing more to evaluate.
    assert warm.prewarm(request_at(LONG, request.offset), CancelToken()) == 0


def test_a_real_request_preempts_a_running_prewarm(tiny_model_dir: Path) -> None:
    request = request_at(LONG, len(LONG) // 2)
    cold = completer(tiny_model_dir).generate(request, lambda _d: None, CancelToken())

    warm = completer(tiny_model_dir)
    backend: Any = warm.backend
    forward = backend._forward

    def slow_forward(ids: Any) -> Any:
        time.sleep(0.05)  # each pre-fill batch takes 50 ms: a prewarm of several hundred
        return forward(ids)

    backend._forward = slow_forward
    token = CancelToken()
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(warm.prewarm(request, token)))
    thread.start()
    time.sleep(0.12)
    cancelled_at = time.perf_counter()
    token.cancel()
    thread.join(5)
    stopped_after = time.perf_counter() - cancelled_at
    backend._forward = forward
    assert done and 0 < done[0] < cold.prompt_tokens - 1, done
    assert stopped_after < 0.1  # within one batch
    # What it left in the cache is consistent: the request reuses it and answers the same.
    result = warm.generate(request, lambda _d: None, CancelToken())
    assert result.reused_tokens == done[0]
    assert result.text == cold.text


async def prewarm_counts(client: Any) -> dict[str, int]:
    status = plain(await client.protocol.send_request_async(STATUS_METHOD, {}))
    return dict(status["prewarm"])


async def test_the_server_prewarms_where_the_cursor_rests(tiny_model_dir: Path) -> None:
    settings = {"backend": "transformers", "modelPath": str(tiny_model_dir), "minConfidence": 0}
    async with session(settings) as client:
        open_doc(client, URI, DOC)
        await stream(client, URI, 2, 4)  # the model is loaded; the cache holds line 2
        position = {"textDocument": {"uri": URI}, "position": {"line": 4, "character": 3}}
        client.protocol.notify(PREWARM_METHOD, position)
        for _ in range(100):
            counts = await prewarm_counts(client)
            if counts["done"]:
                break
            await asyncio.sleep(0.05)
        result, _ = await stream(client, URI, 4, 3)
        # Malformed params are ignored, and a notification for a closed document too.
        client.protocol.notify(PREWARM_METHOD, {"textDocument": {"uri": URI}, "position": "x"})
        client.protocol.notify(PREWARM_METHOD, {**position, "textDocument": {"uri": "file:///x"}})
        await asyncio.sleep(0.5)
        after = await prewarm_counts(client)
        # Prewarm, then type at once: the edit drops the pending prewarm.
        client.protocol.notify(PREWARM_METHOD, position)
        edit(client, URI, 2, (2, 4), (2, 4), "x")
        await stream(client, URI, 2, 5)
        last = await prewarm_counts(client)
    assert counts["done"] == 1 and counts["tokens"] > 0, counts
    assert result["reused_tokens"] >= result["prompt_tokens"] - 1 - MAX_HEALED_TOKENS
    assert after["done"] == 1 and after["scheduled"] == 2, after
    assert last["preempted"] >= 1 and last["done"] == 1, last


async def test_prewarm_false_turns_it_off(tiny_model_dir: Path) -> None:
    settings = {"backend": "transformers", "modelPath": str(tiny_model_dir), "prewarm": False}
    async with session(settings) as client:
        open_doc(client, URI, DOC)
        client.protocol.notify(
            PREWARM_METHOD, {"textDocument": {"uri": URI}, "position": {"line": 2, "character": 4}}
        )
        await asyncio.sleep(0.6)
        counts = await prewarm_counts(client)
    assert counts["done"] == 0 and counts["tokens"] == 0, counts


async def test_a_document_too_large_for_suggestions_is_not_prewarmed(tiny_model_dir: Path) -> None:
    settings = {"backend": "transformers", "modelPath": str(tiny_model_dir), "maxFileBytes": 16}
    async with session(settings) as client:
        open_doc(client, URI, DOC)
        await stream(client, URI, 2, 4)  # the model is loaded (and the document refused)
        client.protocol.notify(
            PREWARM_METHOD, {"textDocument": {"uri": URI}, "position": {"line": 2, "character": 4}}
        )
        await asyncio.sleep(0.6)
        counts = await prewarm_counts(client)
    assert counts["scheduled"] == 1 and counts["done"] == 0 and counts["tokens"] == 0, counts
