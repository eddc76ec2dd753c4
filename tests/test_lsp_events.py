"""Suggestion events over the real protocol: ids on every suggestion, the client's reports
(shown, partly accepted, accepted, dismissed) as lines of the events file (scripted backend)."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lsp_support import fake_settings, inline, open_doc, plain, session, stream, write_script
from lsprotocol import types
from pytest_lsp import LanguageClient

from rubytailor.lsp.events import EventFile, project_key
from rubytailor.protocol import (
    ACCEPT_COMMAND,
    ACCEPT_TITLE,
    DISMISS_METHOD,
    PARTIAL_ACCEPT_METHOD,
    SHOW_METHOD,
    STATS_COMMAND,
    STATUS_METHOD,
    STREAM_METHOD,
)

URI = "file:///work/app/cart.rb"
DOC = "class Cart\n  def total(items)\n    \n  end\nend\n"
CURSOR = (2, 4)
SUGGESTION = "sum = items.sum\n    sum * 2"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own data directory; the server inherits it."""
    directory = tmp_path / "data"
    monkeypatch.setenv("RUBYTAILOR_DATA_DIR", str(directory))
    return directory


def events_file(data_dir: Path) -> Path:
    return data_dir / "events" / "events.jsonl"


def read_events(data_dir: Path) -> list[dict[str, Any]]:
    path = events_file(data_dir)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def wait_for_events(data_dir: Path, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_events(data_dir)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    pytest.fail(f"expected {count} events, found {read_events(data_dir)!r}")


async def barrier(client: LanguageClient) -> None:
    """A request answered after every notification sent before it was handled."""
    await client.protocol.send_request_async(STATUS_METHOD, {})


async def accept(client: LanguageClient, *arguments: Any) -> Any:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=ACCEPT_COMMAND, arguments=list(arguments))
    )


def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    return root


async def test_every_suggestion_carries_an_id_and_items_an_accept_command(
    tmp_path: Path, data_dir: Path
) -> None:
    script = write_script(tmp_path, [SUGGESTION, SUGGESTION, "items.sum\n", ""], piece_chars=4)
    async with session(fake_settings(script, minConfidence=0)) as client:
        commands = client.init_result.capabilities.execute_command_provider.commands
        assert ACCEPT_COMMAND in commands
        # A document each, so that no answer comes from the suggestion cache.
        for n in range(4):
            open_doc(client, f"file:///work/app/c{n}.rb", DOC.replace("Cart", f"Cart{n}"))
        result, partials = await stream(client, "file:///work/app/c0.rb", *CURSOR)
        answer = await inline(client, "file:///work/app/c1.rb", *CURSOR)
        completion = await client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri="file:///work/app/c2.rb"),
                position=types.Position(line=2, character=4),
            )
        )
        empty, _ = await stream(client, "file:///work/app/c3.rb", *CURSOR)

    suggestion_id = result["suggestion_id"]
    assert isinstance(suggestion_id, str) and suggestion_id
    # The partials with text carry the result's id (a client may show them first).
    assert len(partials) >= 2
    assert {p.get("suggestion_id") for p in partials if p["text"]} == {suggestion_id}

    (item,) = answer.items
    assert item.command is not None
    assert (item.command.command, item.command.title) == (ACCEPT_COMMAND, ACCEPT_TITLE)
    (argument,) = plain(item.command.arguments)
    assert isinstance(completion, types.CompletionList)
    (completion_item,) = completion.items
    assert completion_item.command is not None
    assert completion_item.command.command == ACCEPT_COMMAND
    (completion_argument,) = plain(completion_item.command.arguments)
    ids = [suggestion_id, argument["suggestion_id"], completion_argument["suggestion_id"]]
    assert len(set(ids)) == 3, ids
    # Nothing suggested, nothing to report.
    assert empty["text"] == "" and "suggestion_id" not in empty


async def test_reports_become_lines_of_the_events_file(tmp_path: Path, data_dir: Path) -> None:
    root = workspace(tmp_path)
    script = write_script(tmp_path, [SUGGESTION, "items.first\n"])
    async with session(fake_settings(script, projectMemory=False), root=root) as client:
        open_doc(client, URI, DOC)
        first, _ = await stream(client, URI, *CURSOR)
        shown_id = first["suggestion_id"]
        client.protocol.notify(SHOW_METHOD, {"suggestion_id": shown_id})
        client.protocol.notify(
            PARTIAL_ACCEPT_METHOD, {"suggestion_id": shown_id, "acceptedLength": 3}
        )
        assert await accept(client, {"suggestion_id": shown_id}) is None
        # Copilot-style: the item as received, the id inside its command.
        open_doc(client, "file:///work/app/other.rb", "def other\n  \nend\n")
        answer = await inline(client, "file:///work/app/other.rb", 1, 2)
        item = json.loads(json.dumps(client.protocol._converter.unstructure(answer.items[0])))
        second_id = item["command"]["arguments"][0]["suggestion_id"]
        client.protocol.notify(SHOW_METHOD, {"item": item})
        client.protocol.notify(DISMISS_METHOD, {"item": item})
        lines = await wait_for_events(data_dir, 5)

    assert [(e["event"], e["suggestion_id"]) for e in lines] == [
        ("shown", shown_id),
        ("partial", shown_id),
        ("accepted", shown_id),
        ("shown", second_id),
        ("dismissed", second_id),
    ]
    project = project_key([root])
    assert project.startswith("shop-") and len(project) == len("shop-") + 12
    chars = len(SUGGESTION)
    assert [(e["chars"], e["accepted_chars"]) for e in lines] == [
        (chars, 0),
        (chars, 3),
        (chars, chars),
        (len("items.first"), 0),
        (len("items.first"), 0),
    ]
    for line in lines:
        assert set(line) == {
            "time",
            "event",
            "suggestion_id",
            "project",
            "model_id",
            "source",
            "latency_ms",
            "chars",
            "accepted_chars",
        }, line  # no code text by default
        assert line["project"] == project
        assert line["model_id"].startswith("fake") and line["source"] == "model"
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
        written = datetime.fromisoformat(line["time"])
        assert written.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - written) < timedelta(minutes=5)


async def test_a_suggestion_shown_while_streaming_is_written_with_its_final_figures(
    tmp_path: Path, data_dir: Path
) -> None:
    # One line at a time, 80 ms a piece: the first partial arrives long before the result.
    script = write_script(tmp_path, ["a = 1\n    b = 2\n    c = 3\n"], delay_ms=80, piece_chars=2)
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, DOC)
        request = asyncio.ensure_future(
            client.protocol.send_request_async(
                STREAM_METHOD,
                {"textDocument": {"uri": URI}, "position": {"line": 2, "character": 4}},
            )
        )
        partials: list[dict[str, Any]] = client.partials  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while not any(p.get("suggestion_id") for p in partials) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        first = next(p for p in partials if p.get("suggestion_id"))
        assert not first["done"]
        # Shown, partly accepted and accepted before the stream has ended.
        client.protocol.notify(SHOW_METHOD, {"suggestion_id": first["suggestion_id"]})
        client.protocol.notify(
            PARTIAL_ACCEPT_METHOD, {"suggestion_id": first["suggestion_id"], "acceptedLength": 5}
        )
        await accept(client, {"suggestion_id": first["suggestion_id"]})
        assert not read_events(data_dir)  # they wait for the end of the stream
        result = plain(await request)
        shown, partial, accepted = await wait_for_events(data_dir, 3)
    assert result["suggestion_id"] == first["suggestion_id"]
    for line in (shown, partial, accepted):
        assert line["chars"] == len(result["text"]) == len("a = 1\n    b = 2\n    c = 3")
        assert line["latency_ms"] == round(result["total_ms"], 1)
        assert line["model_id"] == result["model_id"]
    # In the order reported, each with the time it was reported.
    assert [e["event"] for e in (shown, partial, accepted)] == ["shown", "partial", "accepted"]
    assert shown["time"] <= partial["time"] <= accepted["time"]
    assert (partial["accepted_chars"], accepted["accepted_chars"]) == (5, len(result["text"]))


async def test_the_text_is_written_only_with_events_include_text(
    tmp_path: Path, data_dir: Path
) -> None:
    script = write_script(tmp_path, [SUGGESTION])
    async with session(fake_settings(script, eventsIncludeText=True)) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, *CURSOR)
        await accept(client, {"suggestion_id": result["suggestion_id"]})
        (line,) = await wait_for_events(data_dir, 1)
    assert line["text"] == SUGGESTION
    assert line["project"] == "none"  # no workspace folder


async def test_events_false_writes_nothing(tmp_path: Path, data_dir: Path) -> None:
    script = write_script(tmp_path, [SUGGESTION])
    async with session(fake_settings(script, events=False)) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, *CURSOR)
        assert result["suggestion_id"]  # ids are still given; nothing is kept of them
        client.protocol.notify(SHOW_METHOD, {"suggestion_id": result["suggestion_id"]})
        await accept(client, {"suggestion_id": result["suggestion_id"]})
        await barrier(client)
        await asyncio.sleep(0.3)
    assert not (data_dir / "events").exists()


MALFORMED: list[tuple[str, Any]] = [
    (SHOW_METHOD, {}),
    (SHOW_METHOD, {"suggestion_id": 42}),
    (SHOW_METHOD, {"suggestion_id": ""}),
    (SHOW_METHOD, {"suggestion_id": "s" * 1000}),
    (SHOW_METHOD, ["s1"]),
    (SHOW_METHOD, {"item": {"insertText": "x"}}),
    (SHOW_METHOD, {"item": {"command": {"arguments": "s1"}}}),
    (SHOW_METHOD, {"item": {"command": {"arguments": [7]}}}),
    (DISMISS_METHOD, {"suggestionId": "s1"}),
    (PARTIAL_ACCEPT_METHOD, {"suggestion_id": "s1"}),
    (PARTIAL_ACCEPT_METHOD, {"suggestion_id": "s1", "acceptedLength": -1}),
    (PARTIAL_ACCEPT_METHOD, {"suggestion_id": "s1", "acceptedLength": True}),
    (PARTIAL_ACCEPT_METHOD, {"suggestion_id": "s1", "acceptedLength": "3"}),
]


async def test_malformed_reports_are_ignored_and_the_server_keeps_answering(
    tmp_path: Path, data_dir: Path
) -> None:
    script = write_script(tmp_path, [SUGGESTION])
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, DOC)
        for method, params in MALFORMED:
            client.protocol.notify(method, params)
        # The command as a request: null, whatever its arguments.
        assert await accept(client) is None
        assert await accept(client, "s1") is None
        assert await accept(client, {"suggestion_id": None}) is None
        assert await accept(client, {"suggestion_id": "s1"}, {"suggestion_id": "s2"}) is None
        # An id the server never gave (or forgot) is written with what is known.
        client.protocol.notify(
            PARTIAL_ACCEPT_METHOD, {"suggestion_id": "unknown-7", "acceptedLength": 4}
        )
        result, _ = await stream(client, URI, *CURSOR)
        assert result["text"] == SUGGESTION
        await accept(client, {"suggestion_id": result["suggestion_id"]})
        unknown, accepted = await wait_for_events(data_dir, 2)
        await barrier(client)
        await asyncio.sleep(0.2)
    assert len(read_events(data_dir)) == 2
    assert unknown["event"] == "partial" and unknown["suggestion_id"] == "unknown-7"
    assert unknown["accepted_chars"] == 4
    assert unknown["chars"] is None and unknown["model_id"] is None
    assert unknown["latency_ms"] is None and unknown["project"] == "none"
    assert accepted["event"] == "accepted" and accepted["suggestion_id"] == result["suggestion_id"]


async def test_the_events_directory_and_file_are_private(tmp_path: Path, data_dir: Path) -> None:
    script = write_script(tmp_path, [SUGGESTION])
    async with session(fake_settings(script)) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, *CURSOR)
        client.protocol.notify(SHOW_METHOD, {"suggestion_id": result["suggestion_id"]})
        await wait_for_events(data_dir, 1)
    path = events_file(data_dir)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- the file, in-process -----------------------------------------------------------------


def test_the_file_rotates_once_it_is_full(tmp_path: Path) -> None:
    path = tmp_path / "events" / "events.jsonl"
    rotated = path.with_name("events.jsonl.1")
    file = EventFile(lambda: path, max_bytes=100)

    def numbers(p: Path) -> list[int]:
        return [json.loads(line)["n"] for line in p.read_text().splitlines()]

    for n in range(4):
        assert file.append({"n": n, "pad": "x" * 30})  # 47 bytes a line
    # Lines 0-2 filled it past 100 bytes; line 3 went into a new file.
    assert (numbers(rotated), numbers(path)) == ([0, 1, 2], [3])
    for n in range(4, 7):
        file.append({"n": n, "pad": "x" * 30})
    # Rotated again: the older rotation is gone, no line was split.
    assert (numbers(rotated), numbers(path)) == ([3, 4, 5], [6])
    assert stat.S_IMODE(rotated.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failing_write_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "events" / "events.jsonl"
    file = EventFile(lambda: path)
    with caplog.at_level("DEBUG", logger="rubytailor.lsp.events"):
        results = [file.append({"n": n}) for n in range(3)]
    assert results == [False, False, False]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot write suggestion events" in warnings[0].message


async def test_the_stats_command_tabulates_this_project(tmp_path: Path, data_dir: Path) -> None:
    root = workspace(tmp_path)
    script = write_script(tmp_path, [SUGGESTION])
    async with session(fake_settings(script, projectMemory=False), root=root) as client:
        empty = plain(
            await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command=STATS_COMMAND)
            )
        )
        open_doc(client, URI, DOC)
        first, _ = await stream(client, URI, *CURSOR)
        client.protocol.notify(SHOW_METHOD, {"suggestion_id": first["suggestion_id"]})
        await accept(client, {"suggestion_id": first["suggestion_id"]})
        await wait_for_events(data_dir, 2)
        answer = plain(
            await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command=STATS_COMMAND)
            )
        )
    assert "no suggestion events yet" in empty["text"]
    assert answer["total"]["shown"] == 1 and answer["total"]["accepted"] == 1
    assert answer["total"]["acceptance_rate"] == 1.0
    assert project_key([root]) in answer["text"] and "100.0%" in answer["text"]
