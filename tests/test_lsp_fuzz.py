"""Seeded, bounded fuzzing (issue 10): random edit sequences against a reference text
model, and mutated params for every method, over the real protocol. A failure prints
the seed; set RUBYTAILOR_FUZZ_SEED to replay one."""

from __future__ import annotations

import asyncio
import copy
import os
import random
from typing import Any

import pytest
from lsp_support.raw import RawServer
from lsp_support.text_model import random_change, random_text, reference_apply

from rubytailor.lsp.settings_sync import plain

SEED = int(os.environ.get("RUBYTAILOR_FUZZ_SEED", "20261201"))
ENCODINGS = ["utf-16", "utf-8", "utf-32"]


class _Change:
    """A change as the converter would hand it over (attribute access)."""

    def __init__(self, change: dict[str, Any]) -> None:
        self.text = change["text"]
        self.range = _Range(change["range"]) if "range" in change else None


class _Range:
    def __init__(self, rng: dict[str, Any]) -> None:
        self.start = _Pos(rng["start"])
        self.end = _Pos(rng["end"])


class _Pos:
    def __init__(self, pos: dict[str, int]) -> None:
        self.line, self.character = pos["line"], pos["character"]


def edits(text: str, rng: random.Random, encoding: str) -> tuple[list[dict[str, Any]], str]:
    """One didChange's changes (each meant for the text the previous one left) and the
    editor's text after them."""
    changes = []
    for _ in range(rng.randrange(1, 4)):
        changes.append(random_change(text, rng, encoding))
        text = reference_apply(text, changes[-1], encoding)
    return changes, text


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_apply_changes_matches_the_reference_model(encoding: str) -> None:
    from rubytailor.lsp.document_sync import apply_changes

    rng = random.Random(f"{SEED}-{encoding}")
    for round_ in range(60):
        text = random_text(rng, rng.randrange(60))
        for step in range(30):
            changes, expected = edits(text, rng, encoding)
            got, _ = apply_changes(text, [_Change(c) for c in changes], encoding)
            assert got == expected, (SEED, encoding, round_, step, text, changes)
            text = got


async def _edit_session(encoding: str, rng: random.Random) -> None:
    uri = "file:///work/app/fuzz.rb"
    async with RawServer() as server:
        await server.initialize({"general": {"positionEncodings": [encoding]}})
        text = random_text(rng, 80)
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "ruby", "version": 1, "text": text}},
        )
        for version in range(2, 122):
            changes, text = edits(text, rng, encoding)
            server.notify(
                "textDocument/didChange",
                {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": changes,
                },
            )
            if version % 20 == 0:
                assert await server.text(uri) == text, (SEED, encoding, version)
        assert await server.text(uri) == text
        assert await server.exit() == 0


async def test_random_edit_sequences_leave_the_server_text_equal_to_the_editors() -> None:
    await asyncio.gather(
        *(_edit_session(enc, random.Random(f"{SEED}-e2e-{enc}")) for enc in ENCODINGS)
    )


# -- params of every method -----------------------------------------------------------

URI = "file:///work/app/p.rb"
POSITION = {"line": 0, "character": 1}
DOC_POSITION = {"textDocument": {"uri": URI}, "position": POSITION}
TEMPLATES: dict[str, Any] = {
    "textDocument/inlineCompletion": {**DOC_POSITION, "context": {"triggerKind": 1}},
    "textDocument/completion": {**DOC_POSITION, "context": {"triggerKind": 1}},
    "rubytailor/inlineStream": {**DOC_POSITION, "id": "s"},
    "rubytailor/status": {},
    "workspace/executeCommand": {"command": "nope", "arguments": [1]},
    "textDocument/didOpen": {
        "textDocument": {"uri": URI, "languageId": "ruby", "version": 1, "text": "a = 1\n"}
    },
    "textDocument/didChange": {
        "textDocument": {"uri": URI, "version": 2},
        "contentChanges": [{"range": {"start": POSITION, "end": POSITION}, "text": "x"}],
    },
    "textDocument/didClose": {"textDocument": {"uri": URI}},
    "workspace/didChangeConfiguration": {"settings": {"rubytailor": {"maxTokens": 8}}},
    "workspace/didChangeWorkspaceFolders": {
        "event": {"added": [{"uri": "file:///nonexistent", "name": "n"}], "removed": []}
    },
    "$/cancelRequest": {"id": 1},
    "$/setTrace": {"value": "off"},
    "window/workDoneProgress/cancel": {"token": "t"},
    "textDocument/hover": DOC_POSITION,
}
NOTIFICATIONS = {m for m in TEMPLATES if "/did" in m or m.startswith("$/") or "cancel" in m}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [
        None,
        True,
        0,
        -1,
        2**31,
        2**63,
        -(2**53),
        1.5,
        "",
        "x",
        "\x00\ud800",
        "file:///a b",
        "😀" * 3,
    ]
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if depth < 3 and roll < 0.3:
        keys = ["uri", "line", "character", "textDocument", "position", "text", "version", "id"]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice(choices)


def mutate(value: Any, rng: random.Random) -> Any:
    """Replace, drop or add one thing somewhere in ``value``."""
    if not isinstance(value, dict | list) or not value or rng.random() < 0.15:
        return random_value(rng)
    value = copy.copy(value)
    key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
    roll = rng.random()
    if roll < 0.2 and isinstance(value, dict):
        del value[key]
    elif roll < 0.3 and isinstance(value, dict):
        value[rng.choice(["extra", "range", "id"])] = random_value(rng)
    else:
        value[key] = mutate(value[key], rng)
    return value


async def test_mutated_params_for_every_method_always_get_a_proper_answer() -> None:
    rng = random.Random(f"{SEED}-params")
    async with RawServer() as server:
        await server.initialize()
        ids = []
        for _ in range(400):
            method = rng.choice(list(TEMPLATES))
            params = mutate(TEMPLATES[method], rng)
            if method in NOTIFICATIONS:
                server.send({"jsonrpc": "2.0", "method": method, "params": params})
                continue
            msg_id = server.new_id()
            server.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
            ids.append((msg_id, method, params))
        for msg_id, method, params in ids:
            answer = await server.answer(msg_id, timeout=20)
            error = answer.get("error")
            context = (SEED, method, params, answer)
            assert error is None or "data" not in error, context
            # Bad params are the client's mistake, never an internal error.
            assert error is None or error["code"] != -32603, context
        status = await server.request("rubytailor/status")
        assert plain(status["result"])["position_encoding"] == "utf-16"
        assert await server.exit() == 0
