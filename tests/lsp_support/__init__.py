"""Helpers for end-to-end tests that drive the real server over stdio with pytest-lsp."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient
from pytest_lsp.client import make_test_lsp_client

from rubytailor.protocol import PARTIAL_METHOD, STREAM_METHOD

SERVER = [sys.executable, "-m", "rubytailor.cli", "serve", "--log-level", "info"]
STREAM = STREAM_METHOD
PARTIAL = PARTIAL_METHOD

UTF16_CLIENT = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
    workspace=types.WorkspaceClientCapabilities(configuration=True),
    text_document=types.TextDocumentClientCapabilities(
        completion=types.CompletionClientCapabilities(
            completion_item=types.ClientCompletionItemOptions(label_details_support=True)
        )
    ),
)
UTF8_CLIENT = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(
        position_encodings=[types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16]
    ),
    workspace=types.WorkspaceClientCapabilities(configuration=True),
)


def plain(value: Any) -> Any:
    """pygls gives custom payloads as namedtuples; back to JSON values for comparing."""
    if hasattr(value, "_asdict"):
        return {key: plain(item) for key, item in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def write_script(
    directory: Path, completions: list[str], *, delay_ms: float = 0, piece_chars: int = 3
) -> Path:
    """A FakeBackend script: each model call plays the next completion."""
    path = directory / "script.json"
    path.write_text(
        json.dumps(
            {"completions": completions, "token_delay_ms": delay_ms, "piece_chars": piece_chars}
        ),
        encoding="utf-8",
    )
    return path


def fake_settings(script: Path, **extra: Any) -> dict[str, Any]:
    return {"backend": "fake", "modelPath": str(script), **extra}


def make_client() -> LanguageClient:
    """The pytest-lsp test client, also recording our streaming notifications."""
    client = make_test_lsp_client()
    partials: list[dict[str, Any]] = []
    client.partials = partials  # type: ignore[attr-defined]

    @client.feature(PARTIAL)
    def on_partial(params: Any) -> None:
        partials.append(plain(params))

    # Every publishDiagnostics in order, with its version (pytest-lsp keeps only the last).
    published: list[types.PublishDiagnosticsParams] = []
    client.published = published  # type: ignore[attr-defined]
    features = client.protocol.fm.features
    keep_last = features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS]

    def on_diagnostics(params: types.PublishDiagnosticsParams) -> None:
        published.append(params)
        keep_last(params)

    features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = on_diagnostics
    return client


@asynccontextmanager
async def session(
    settings: dict[str, Any] | None,
    *,
    capabilities: types.ClientCapabilities = UTF16_CLIENT,
    workspace_settings: dict[str, Any] | None = None,
    root: Path | None = None,
    server_args: list[str] | None = None,
    before_initialize: Callable[[LanguageClient], None] | None = None,
) -> AsyncIterator[LanguageClient]:
    """A started and initialized server; shut down cleanly afterwards."""
    # Never fall back to a real bundled model by accident.
    env = {**os.environ, "RUBYTAILOR_MODEL": str((root or Path("/nonexistent")) / "no-model")}
    config = ClientServerConfig(
        server_command=[*SERVER, *(server_args or [])], client_factory=make_client, server_env=env
    )
    client = await config.start()
    assert isinstance(client, LanguageClient)
    if workspace_settings is not None:
        client.set_configuration(workspace_settings, section="rubytailor")
    if before_initialize is not None:
        before_initialize(client)
    try:
        client.init_result = await client.initialize_session(  # type: ignore[attr-defined]
            types.InitializeParams(
                capabilities=capabilities,
                initialization_options=settings,
                root_uri=root.as_uri() if root else None,
            )
        )
        yield client
    finally:
        try:
            await asyncio.wait_for(client.shutdown_session(), 10)
        finally:
            await client.stop()


def open_doc(
    client: LanguageClient, uri: str, text: str, version: int = 1, language: str = "ruby"
) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id=language, version=version, text=text
            )
        )
    )


def edit(
    client: LanguageClient,
    uri: str,
    version: int,
    start: tuple[int, int],
    end: tuple[int, int],
    text: str,
) -> None:
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(
                        start=types.Position(line=start[0], character=start[1]),
                        end=types.Position(line=end[0], character=end[1]),
                    ),
                    text=text,
                )
            ],
        )
    )


async def inline(
    client: LanguageClient, uri: str, line: int, character: int
) -> types.InlineCompletionList:
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
            ),
        )
    )
    assert isinstance(result, types.InlineCompletionList)
    return result


async def stream(
    client: LanguageClient, uri: str, line: int, character: int, stream_id: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send rubytailor/inlineStream; the result and this stream's partials in arrival order."""
    params: dict[str, Any] = {
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
    }
    if stream_id is not None:
        params["id"] = stream_id
    result = plain(await client.protocol.send_request_async(STREAM, params))
    partials = [p for p in client.partials if p["id"] == result["id"]]  # type: ignore[attr-defined]
    return result, partials


def offset_of(text: str, line: int, character: int, encoding: str) -> int:
    """Client-side position -> index, computed independently of the server's code."""
    lines = text.split("\n")
    head = lines[line]
    units = 0
    for index, ch in enumerate(head):
        if units >= character:
            return sum(len(x) + 1 for x in lines[:line]) + index
        units += (
            len(ch.encode("utf-16-le")) // 2 if encoding == "utf-16" else len(ch.encode("utf-8"))
        )
    return sum(len(x) + 1 for x in lines[:line]) + len(head)


def apply_edit(text: str, rng: types.Range, new_text: str, encoding: str) -> str:
    """What an editor does with a returned range and text."""
    start = offset_of(text, rng.start.line, rng.start.character, encoding)
    end = offset_of(text, rng.end.line, rng.end.character, encoding)
    return text[:start] + new_text + text[end:]
