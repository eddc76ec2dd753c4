"""Prism syntax errors published as diagnostics, with ranges in the negotiated encoding."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_support import (
    UTF8_CLIENT,
    UTF16_CLIENT,
    edit,
    fake_settings,
    offset_of,
    open_doc,
    session,
    write_script,
)
from lsprotocol import types

from rubytailor.paths import prism_wasm_path

pytestmark = pytest.mark.skipif(
    not prism_wasm_path().exists(), reason="prism.wasm not fetched: run `make setup`"
)

URI = "file:///work/app/broken.rb"


async def diagnostics_for(
    client: Any, uri: str, version: int | None, timeout: float = 10.0
) -> list:
    """The diagnostics published for ``version`` of ``uri`` (waits for them)."""
    deadline = time.monotonic() + timeout
    while True:
        for params in reversed(client.published):
            if params.uri == uri and params.version == version:
                return list(params.diagnostics)
        assert time.monotonic() < deadline, f"no diagnostics for version {version}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("capabilities", "encoding"), [(UTF16_CLIENT, "utf-16"), (UTF8_CLIENT, "utf-8")]
)
async def test_a_syntax_error_after_wide_characters_is_placed_exactly(
    tmp_path: Path, capabilities: types.ClientCapabilities, encoding: str
) -> None:
    text = 'def ok\nend\nlabel = "😀 é 日本" + )\n'
    async with session(
        fake_settings(write_script(tmp_path, ["x\n"])), capabilities=capabilities
    ) as client:
        open_doc(client, URI, text)
        found = await diagnostics_for(client, URI, 1)
    assert found, "the stray ) must be reported"
    assert all(d.severity == types.DiagnosticSeverity.Error for d in found)
    assert all(d.source == "rubytailor (prism)" for d in found)
    # Each range, read back in the client's own counting, covers exactly the ")".
    paren = text.index(")")
    for diagnostic in found:
        start, end = diagnostic.range.start, diagnostic.range.end
        assert (start.line, end.line) == (2, 2)
        assert offset_of(text, start.line, start.character, encoding) == paren
        assert offset_of(text, end.line, end.character, encoding) == paren + 1


async def test_fixing_the_error_clears_diagnostics_and_closing_withdraws_them(
    tmp_path: Path,
) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x\n"]))) as client:
        open_doc(client, URI, "def broken(\n")
        assert await diagnostics_for(client, URI, 1)
        edit(client, URI, 2, (0, 11), (0, 11), ")\nend")
        assert await diagnostics_for(client, URI, 2) == []
        edit(client, URI, 3, (1, 0), (1, 3), "")
        assert await diagnostics_for(client, URI, 3)
        client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=URI))
        )
        assert await diagnostics_for(client, URI, None) == []


async def test_turning_diagnostics_off_clears_them_and_publishes_no_more(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x\n"]))) as client:
        open_doc(client, URI, "def broken(\n")
        assert await diagnostics_for(client, URI, 1)
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"rubytailor": {"diagnostics": False}})
        )
        assert await diagnostics_for(client, URI, None) == []
        other = "file:///work/app/other.rb"
        open_doc(client, other, "class Oops\n")
        await asyncio.sleep(0.6)  # longer than the debounce and a parse
        assert other not in client.diagnostics


async def test_only_the_last_of_quick_edits_is_checked(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x\n"]))) as client:
        open_doc(client, URI, "x = 1 #\n")
        for version, ch in enumerate(" note", start=2):
            column = 7 + version - 2
            edit(client, URI, version, (0, column), (0, column), ch)
        assert await diagnostics_for(client, URI, 6) == []
    assert [p.version for p in client.published] == [6]


async def test_documents_in_other_languages_get_no_ruby_diagnostics(tmp_path: Path) -> None:
    async with session(fake_settings(write_script(tmp_path, ["x\n"]))) as client:
        open_doc(client, "file:///work/config.yml", "def broken(\n", language="yaml")
        open_doc(client, URI, "def broken(\n")
        assert await diagnostics_for(client, URI, 1)
        await asyncio.sleep(0.3)
    assert [p.uri for p in client.published] == [URI]
