"""Settings through the protocol: initializationOptions, workspace/configuration, changes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from lsp_support import (
    fake_settings,
    inline,
    open_doc,
    plain,
    session,
    stream,
    write_script,
)
from lsprotocol import types

from rubytailor.protocol import STATUS_METHOD

URI = "file:///work/app/lines.rb"
DOC = "def lines\n  \nend\n"
TEN_LINES = "".join(f"  line{i} = {i}\n" for i in range(10))


def line_count(text: str) -> int:
    return len(text.rstrip("\n").split("\n"))


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def status(client: Any) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async(STATUS_METHOD, {}))


async def test_invalid_settings_are_shown_and_fall_back_to_defaults(tmp_path: Path) -> None:
    script = write_script(tmp_path, [TEN_LINES])
    settings = fake_settings(script, maxLines=0, maxTokens="lots", enable=True)
    async with session(settings) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, 1, 2)
        await wait_for(lambda: client.messages)
        effective = (await status(client))["settings"]
    (message,) = client.messages
    assert message.type == types.MessageType.Warning
    assert "rubytailor.maxLines: 0 is out of range (1-50)" in message.message
    assert 'rubytailor.maxTokens: expected a whole number, got a string ("lots")' in message.message
    # maxLines fell back to 8, the other settings still apply (the fake backend is used).
    assert line_count(result["text"]) == 8
    assert effective["max_lines"] == 8 and effective["backend"] == "fake"


async def test_settings_wrapped_in_a_rubytailor_section_are_understood(tmp_path: Path) -> None:
    script = write_script(tmp_path, [TEN_LINES])
    async with session({"rubytailor": fake_settings(script, maxLines=3)}) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, 1, 2)
    assert line_count(result["text"]) == 3


async def test_workspace_configuration_is_pulled_at_initialized_and_wins(tmp_path: Path) -> None:
    script = write_script(tmp_path, [TEN_LINES])
    async with session(
        fake_settings(script, maxLines=3), workspace_settings={"maxLines": 2}
    ) as client:
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, 1, 2)
    assert line_count(result["text"]) == 2


async def test_did_change_configuration_pushed_settings_take_effect(tmp_path: Path) -> None:
    script = write_script(tmp_path, [TEN_LINES])
    async with session(fake_settings(script, maxLines=5)) as client:
        open_doc(client, URI, DOC)
        before, _ = await stream(client, URI, 1, 2)
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"rubytailor": {"maxLines": 2}})
        )
        await asyncio.sleep(0.3)
        # A different document, so the suggestion cache cannot answer.
        open_doc(client, URI + ".2", DOC)
        after, _ = await stream(client, URI + ".2", 1, 2)
    assert line_count(before["text"]) == 5
    assert line_count(after["text"]) == 2


async def test_did_change_configuration_without_settings_pulls_them(tmp_path: Path) -> None:
    script = write_script(tmp_path, [TEN_LINES])
    async with session(fake_settings(script), workspace_settings={}) as client:
        client.set_configuration({"maxLines": 1}, section="rubytailor")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await asyncio.sleep(0.3)
        open_doc(client, URI, DOC)
        result, _ = await stream(client, URI, 1, 2)
    assert line_count(result["text"]) == 1


async def test_disabled_means_no_suggestions(tmp_path: Path) -> None:
    script = write_script(tmp_path, [TEN_LINES])
    async with session(fake_settings(script, enable=False)) as client:
        open_doc(client, URI, DOC)
        answer = await inline(client, URI, 1, 2)
    assert len(answer.items) == 0


async def test_a_missing_model_keeps_the_server_up_and_says_how_to_fix_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    async with session(fake_settings(missing)) as client:
        open_doc(client, URI, DOC)
        answer = await inline(client, URI, 1, 2)
        assert len(answer.items) == 0
        await wait_for(lambda: client.messages)
        errors = [m for m in client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1
        assert str(missing) in errors[0].message and "does not exist" in errors[0].message
        assert (await status(client))["model_error"] is not None
        # Asking again does not repeat the message.
        await inline(client, URI, 1, 3)
        # Fixing the path reloads the model and suggestions start.
        missing.write_text(json.dumps({"completions": ["  fixed = 1\n"]}), encoding="utf-8")
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(
                settings={"rubytailor": fake_settings(missing, maxLines=4)}
            )
        )
        await asyncio.sleep(0.3)
        open_doc(client, URI + ".2", DOC)
        fixed = await inline(client, URI + ".2", 1, 2)
        after = await status(client)
    assert len([m for m in client.messages if m.type == types.MessageType.Error]) == 1
    assert fixed.items[0].insert_text == "  fixed = 1"
    assert after["model_error"] is None and after["model_id"].startswith("fake")


async def test_changing_the_model_path_switches_the_model(tmp_path: Path) -> None:
    first = write_script(tmp_path, ["  from_first = 1\n"])
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    second = write_script(other_dir, ["  from_second = 2\n"])
    async with session(fake_settings(first)) as client:
        open_doc(client, URI, DOC)
        before = await inline(client, URI, 1, 2)
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"rubytailor": fake_settings(second)})
        )
        await asyncio.sleep(0.3)
        after = await inline(client, URI, 1, 2)
    assert before.items[0].insert_text == "  from_first = 1"
    # Same document state, yet not the cached answer: the new model was asked.
    assert after.items[0].insert_text == "  from_second = 2"


async def test_the_server_registers_for_configuration_changes_when_the_client_wants_it(
    tmp_path: Path,
) -> None:
    capabilities = types.ClientCapabilities(
        workspace=types.WorkspaceClientCapabilities(
            configuration=True,
            did_change_configuration=types.DidChangeConfigurationClientCapabilities(
                dynamic_registration=True
            ),
        )
    )
    registered: list[types.Registration] = []

    def answer_registrations(client: Any) -> None:
        @client.feature(types.CLIENT_REGISTER_CAPABILITY)
        def on_register(params: types.RegistrationParams) -> None:
            registered.extend(params.registrations)

    script = write_script(tmp_path, [TEN_LINES])
    async with session(
        fake_settings(script), capabilities=capabilities, before_initialize=answer_registrations
    ):
        await wait_for(lambda: registered)
    assert [r.method for r in registered] == [types.WORKSPACE_DID_CHANGE_CONFIGURATION]
