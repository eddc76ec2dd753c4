"""The three completion requests through the real server over stdio (scripted backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsp_support import (
    UTF8_CLIENT,
    UTF16_CLIENT,
    apply_edit,
    edit,
    fake_settings,
    inline,
    open_doc,
    session,
    stream,
    write_script,
)
from lsprotocol import types
from pytest_lsp import client_capabilities

from rubytailor.paths import prism_wasm_path

needs_prism = pytest.mark.skipif(
    not prism_wasm_path().exists(), reason="prism.wasm not fetched: run `make setup`"
)

URI = "file:///work/app/cart.rb"
DOC = "class Cart\n  def total(items)\n    \n  end\nend\n"
CURSOR = (2, 4)


async def test_inline_completion_inserts_the_suggestion_at_the_cursor(tmp_path: Path) -> None:
    script = write_script(tmp_path, ["sum = items.sum\n    sum * 2\n"])
    async with session(fake_settings(script)) as client:
        result = client.init_result.capabilities
        assert result.inline_completion_provider is not None
        assert result.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        open_doc(client, URI, DOC)
        answer = await inline(client, URI, *CURSOR)
    assert len(answer.items) == 1
    item = answer.items[0]
    assert item.insert_text == "sum = items.sum\n    sum * 2"
    assert item.range is not None and item.range.start == item.range.end
    assert apply_edit(DOC, item.range, item.insert_text, "utf-16") == (
        "class Cart\n  def total(items)\n    sum = items.sum\n    sum * 2\n  end\nend\n"
    )


async def test_an_empty_suggestion_is_an_empty_list(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, [""]))) as client:
        open_doc(client, URI, DOC)
        answer = await inline(client, URI, *CURSOR)
    assert len(answer.items) == 0


async def test_completion_offers_the_first_line_as_one_marked_item(tmp_path: Path) -> None:
    doc = "def total(items)\n  ite\nend\n"
    script = write_script(tmp_path, ["ms.sum { |i| i.price }\n  extra\n"])
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, doc)
        answer = await client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=URI),
                position=types.Position(line=1, character=5),
            )
        )
    assert isinstance(answer, types.CompletionList)
    assert answer.is_incomplete is True
    (item,) = answer.items
    assert item.label_details is not None and "AI" in item.label_details.description
    assert item.sort_text is not None and item.sort_text < "a"
    # The typed word stays a match, so clients do not filter the item away.
    assert item.filter_text is not None and item.filter_text.startswith("ite")
    assert isinstance(item.text_edit, types.TextEdit)
    applied = apply_edit(doc, item.text_edit.range, item.text_edit.new_text, "utf-16")
    assert applied == "def total(items)\n  items.sum { |i| i.price }\nend\n"


async def test_completion_label_is_marked_when_the_client_lacks_label_details(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, ["items.sum\n"])
    async with session(fake_settings(script), capabilities=UTF8_CLIENT) as client:
        open_doc(client, URI, "def total(items)\n  \nend\n")
        answer = await client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=URI),
                position=types.Position(line=1, character=2),
            )
        )
    assert isinstance(answer, types.CompletionList)
    assert answer.items[0].label == "⟨rubytailor⟩ items.sum"


async def test_stream_partials_arrive_in_order_and_add_up_to_the_result(tmp_path: Path) -> None:
    script = write_script(tmp_path, ["a = 1\n    b = 2\n    c = a + b\n"], piece_chars=2)
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, DOC)
        result, partials = await stream(client, URI, *CURSOR, stream_id="s-1")
    assert result["id"] == "s-1"
    assert result["text"] == "a = 1\n    b = 2\n    c = a + b"
    assert [p["seq"] for p in partials] == list(range(len(partials)))
    assert [p["done"] for p in partials] == [False] * (len(partials) - 1) + [True]
    assert len(partials) >= 3  # whole lines were released before the end
    assert "".join(p["text"] for p in partials) == result["text"]
    assert result["source"] == "model" and result["cancelled"] is False
    assert result["version"] == 1
    assert result["prompt_tokens"] > 0 and result["model_id"].startswith("fake")


async def test_stream_id_defaults_to_the_json_rpc_id(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x\n"]))) as client:
        open_doc(client, URI, DOC)
        result, partials = await stream(client, URI, *CURSOR)
    assert result["id"] is not None
    assert partials and partials[-1]["done"] is True


@needs_prism
async def test_a_suggestion_that_breaks_the_file_is_trimmed(tmp_path: Path) -> None:
    script = write_script(tmp_path, ["x = 1\n    y = (\n"])
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, DOC)
        result, partials = await stream(client, URI, *CURSOR)
        inline_answer = await inline(client, URI, *CURSOR)
    assert (result["text"], result["verdict"]) == ("x = 1", "trimmed")
    assert "".join(p["text"] for p in partials) == "x = 1"
    # The inline request at the same place is answered from the cache: same checked text.
    assert inline_answer.items[0].insert_text == "x = 1"


async def test_edits_are_applied_incrementally_and_typing_through_uses_the_cache(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, ["items.sum\n", "NOT ASKED AGAIN\n"])
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, "def total(items)\n  \nend\n")
        first, _ = await stream(client, URI, 1, 2)
        edit(client, URI, 2, (1, 2), (1, 2), "ite")
        typed, partials = await stream(client, URI, 1, 5)
    assert first["text"] == "items.sum"
    assert (typed["text"], typed["source"], typed["version"]) == ("ms.sum", "typed_through", 2)
    assert "".join(p["text"] for p in partials) == "ms.sum"


WIDE_LINES = ['  label = "😀 é 日本" + ', "  # 🎉🎉 x\n  ", "  naïve = ", "  𝒳 = 1; "]


@pytest.mark.parametrize(
    ("capabilities", "encoding"), [(UTF16_CLIENT, "utf-16"), (UTF8_CLIENT, "utf-8")]
)
async def test_positions_in_both_encodings_with_wide_characters_before_the_cursor(
    tmp_path: Path, capabilities: types.ClientCapabilities, encoding: str
) -> None:
    script = write_script(tmp_path, ["name.upcase\n"])
    async with session(fake_settings(script), capabilities=capabilities) as client:
        assert client.init_result.capabilities.position_encoding == encoding
        for n, before in enumerate(WIDE_LINES):
            uri = f"file:///work/app/wide{n}.rb"
            doc = "def show\n" + before + "\nend\n"
            line = doc.count("\n", 0, len("def show\n" + before))
            head = before.rsplit("\n", 1)[-1]
            units = (
                len(head.encode("utf-16-le")) // 2 if encoding == "utf-16" else len(head.encode())
            )
            open_doc(client, uri, doc)
            answer = await inline(client, uri, line, units)
            result, _ = await stream(client, uri, line, units)
            item = answer.items[0]
            assert item.range is not None
            assert (item.range.start.line, item.range.start.character) == (line, units)
            expected = "def show\n" + before + "name.upcase\nend\n"
            assert apply_edit(doc, item.range, str(item.insert_text), encoding) == expected
            assert result["position"] == {"line": line, "character": units}


@pytest.mark.parametrize("client_name", ["visual-studio-code", "neovim@v0.11.0"])
async def test_real_client_capabilities_get_valid_answers(tmp_path: Path, client_name: str) -> None:
    # pytest-lsp checks every answer against the capabilities these clients declared.
    capabilities = client_capabilities(client_name)
    script = write_script(tmp_path, ["sum = items.sum\n"])
    async with session(fake_settings(script), capabilities=capabilities) as client:
        encoding = client.init_result.capabilities.position_encoding
        head = '  s = "😀"; '
        open_doc(client, URI, f"def total(items)\n{head}\nend\n")
        codec = "utf-8" if encoding == "utf-8" else "utf-16-le"
        character = len(head.encode(codec)) // (1 if encoding == "utf-8" else 2)
        answer = await inline(client, URI, 1, character)
        listed = await client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=URI),
                position=types.Position(line=1, character=character),
            )
        )
    # Neovim prefers UTF-8 and the server takes it; VS Code declares nothing: UTF-16.
    assert encoding == ("utf-8" if client_name.startswith("neovim") else "utf-16")
    assert answer.items[0].insert_text == "sum = items.sum"
    assert isinstance(listed, types.CompletionList) and len(listed.items) == 1


async def test_one_log_line_per_request_with_the_figures(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    script = write_script(tmp_path, ["sum = items.sum\n"])
    async with session(fake_settings(script), server_args=["--log-file", str(log)]) as client:
        open_doc(client, URI, DOC)
        await stream(client, URI, *CURSOR)
        await inline(client, URI, *CURSOR)
    lines = [line for line in log.read_text().splitlines() if "rubytailor.requests" in line]
    assert len(lines) == 2
    model_line, cached_line = lines
    for field in (
        f"uri={URI}",
        "version=1",
        "prompt_tokens=",
        "reused_tokens=",
        "ttft_ms=",
        "total_ms=",
        "verdict=ok",
        "source=model",
        "adapter=none",
        "model=fake:1",
    ):
        assert field in model_line
    assert "rubytailor/inlineStream" in model_line
    assert "textDocument/inlineCompletion" in cached_line and "source=exact" in cached_line
