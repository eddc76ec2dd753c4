"""The whole path with a real model: each in-process backend on the tiny test model."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsp_support import edit, inline, open_doc, plain, session, stream

from rubytailor.model.backends import auto_backend_kind
from rubytailor.protocol import STATUS_METHOD

pytestmark = pytest.mark.slow

URI = "file:///work/app/orders.rb"
DOC = "class Orders\n  def total(items)\n    \n  end\nend\n"


@pytest.mark.parametrize("backend", ["transformers", "ctransformers", "auto"])
async def test_a_real_model_streams_a_checked_suggestion_and_reuses_its_cache(
    tiny_model_dir: Path, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(tmp_path / "cache"))  # GGML conversions
    # The untrained test model is never confident: the gate is off to see its output.
    settings = {
        "backend": backend,
        "modelPath": str(tiny_model_dir),
        "maxTokens": 16,
        "minConfidence": 0,
    }
    async with session(settings) as client:
        open_doc(client, URI, DOC)
        first, partials = await stream(client, URI, 2, 4)
        # Type a character that is not the start of the suggestion, so the model is asked
        # again with a prompt that extends the previous one (SPM order: prefix last).
        typed = "q" if not first["text"].startswith("q") else "z"
        edit(client, URI, 2, (2, 4), (2, 4), typed)
        second, _ = await stream(client, URI, 2, 5)
        answer = await inline(client, URI, 2, 5)
        status = plain(await client.protocol.send_request_async(STATUS_METHOD, {}))
    assert first["source"] == "model" and first["model_id"] not in ("", "none")
    # "auto" runs this StarCoder-architecture model on the fastest engine installed.
    expected = auto_backend_kind(tiny_model_dir) if backend == "auto" else backend
    assert status["backend"] == expected
    if expected == "ctransformers":
        assert list((tmp_path / "cache" / "ggml").glob("*.bin"))
    assert first["prompt_tokens"] > 0
    assert first["verdict"] in ("ok", "trimmed", "dropped", "empty")
    assert "".join(p["text"] for p in partials) == first["text"]
    assert partials[-1]["done"] is True
    assert second["source"] == "model" and second["version"] == 2
    assert 0 < second["reused_tokens"] < second["prompt_tokens"]
    # The inline request at the same state is the same (cached) suggestion.
    texts = [item.insert_text for item in answer.items]
    assert texts == ([second["text"]] if second["text"] else [])
    assert not client.messages, [m.message for m in client.messages]


async def test_a_fallback_to_the_slower_backend_is_told_to_the_user(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rubytailor.model import ggml_cache
    from rubytailor.model.backends.model_dir import model_id

    cache = tmp_path / "cache"
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(cache))
    # Something else where the GGML conversion goes: "auto" cannot use ctransformers.
    for conversion in (ggml_cache.GGML, ggml_cache.GGUF):  # whichever engines are installed
        target = ggml_cache.cache_path(model_id(tiny_model_dir), conversion)
        (target / "left-here").mkdir(parents=True)
    settings = {"backend": "auto", "modelPath": str(tiny_model_dir), "minConfidence": 0}
    async with session(settings) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, 2, 4)
        status = plain(await client.protocol.send_request_async(STATUS_METHOD, {}))
    assert result["source"] == "model"
    assert status["backend"] == "transformers"
    assert "is not a file" in status["backend_note"]
    warnings = [m.message for m in client.messages]
    assert any("slower than it could be" in m and "is not a file" in m for m in warnings)
