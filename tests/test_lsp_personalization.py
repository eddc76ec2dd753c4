"""Personalization through the real protocol: a promoted adapter is swapped into a running
server (its output changes, status names it), the rollback command swaps it out again,
and the commands answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_support import open_doc, plain, session, stream
from lsp_support.adapters import commit_random_adapter
from lsprotocol import types

from rubytailor.personalization.registry import AdapterRegistry
from rubytailor.personalization.state import ProjectState
from rubytailor.protocol import STATUS_METHOD

pytestmark = pytest.mark.slow

DOC = "class Invoice\n  def total\n    items.sum { |i| i.pr"
SETTINGS: dict[str, Any] = {
    "backend": "transformers",
    "maxTokens": 12,
    "minConfidence": 0,
    # The scheduler never starts a run by itself here: the test drives it.
    "personalizationMinChangedKb": 1_000_000,
}


async def _status(client: Any) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async(STATUS_METHOD, {}))


async def _model_id_becomes(client: Any, check: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = await _status(client)
        if check(status["model_id"]) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.5)


async def _command(client: Any, name: str) -> Any:
    return plain(
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command=name))
    )


@pytest.mark.parametrize("backend", ["transformers", "ctransformers"])
async def test_a_promoted_adapter_is_swapped_in_and_rolled_back(
    backend: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # transformers applies the peft adapter; ctransformers runs the merged copy in GGML.
    if backend == "ctransformers":
        pytest.importorskip("ctransformers")
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(tmp_path / "cache"))
    project = tmp_path / "shop"
    (project / "app").mkdir(parents=True)
    uri = (project / "app" / "invoice.rb").as_uri()
    version = commit_random_adapter(tiny_model_dir, project)
    settings = {**SETTINGS, "backend": backend, "modelPath": str(tiny_model_dir)}
    async with session(settings, root=project) as client:
        open_doc(client, uri, DOC)
        status = await _model_id_becomes(client, lambda mid: mid != "none")
        assert "+" not in status["model_id"] and status["backend"] == backend
        assert status["personalization"]["adapter"] is None
        base, _ = await stream(client, uri, 2, len(DOC.splitlines()[2]))

        AdapterRegistry(ProjectState.for_project(project)).promote(version.name)
        status = await _model_id_becomes(client, lambda mid: mid.endswith("/v0001"))
        assert status["model_id"].endswith("+shop/v0001"), status["model_id"]
        assert status["backend"] == backend
        assert status["personalization"]["adapter"] == "v0001"
        adapted, _ = await stream(client, uri, 2, len(DOC.splitlines()[2]))
        assert adapted["text"] != base["text"]
        assert (base["adapter_id"], adapted["adapter_id"]) == ("none", "shop/v0001")

        answer = await _command(client, "rubytailor.personalization.rollback")
        assert answer["message"] == "now serving the base model"
        status = await _model_id_becomes(client, lambda mid: "+" not in mid)
        assert "+" not in status["model_id"]
        again, _ = await stream(client, uri, 2, len(DOC.splitlines()[2]))
        assert again["text"] == base["text"]


async def test_the_commands(tiny_model_dir: Path, tmp_path: Path) -> None:
    project = tmp_path / "blog"
    project.mkdir()
    settings = {**SETTINGS, "modelPath": str(tiny_model_dir)}
    async with session(settings, root=project) as client:
        commands = client.init_result.capabilities.execute_command_provider.commands
        assert "rubytailor.personalize" in commands
        paused = await _command(client, "rubytailor.personalization.pause")
        assert paused["status"]["scheduler"]["paused"] is True
        resumed = await _command(client, "rubytailor.personalization.resume")
        assert resumed["status"]["scheduler"]["paused"] is False
        status = await _command(client, "rubytailor.personalization.status")
        assert status["status"]["project"] == str(project.resolve())
        with pytest.raises(Exception, match="not defined"):
            await _command(client, "rubytailor.nonsense")

    async with session({**settings, "personalization": False}, root=project) as client:
        answer = await _command(client, "rubytailor.personalize")
        assert answer["message"] == "personalization is off: personalization is false"


async def test_the_personalize_command_trains_in_the_background_with_progress(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A little general Ruby for the gate's base-Ruby check (the trainer inherits this).
    base = tmp_path / "base"
    base.mkdir()
    for f in range(6):
        (base / f"lib{f}.rb").write_text(
            "".join(f"def f{n}(x)\n  x + {n}\nend\n" for n in range(9))
        )
    monkeypatch.setenv("RUBYTAILOR_BASE_CORPUS", str(base))
    project = tmp_path / "books"
    (project / "app").mkdir(parents=True)
    for n in range(8):
        (project / "app" / f"book{n}.rb").write_text(
            f"class Book{n}\n  def title_{n}\n    @title_{n}.strip\n  end\nend\n", encoding="utf-8"
        )
    settings = {
        **SETTINGS,
        "modelPath": str(tiny_model_dir),
        "personalizationBudgetMinutes": 0.05,
    }
    capabilities = types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True)
    )
    async with session(settings, root=project, capabilities=capabilities) as client:
        answer = await _command(client, "rubytailor.personalize")
        assert answer["message"] == "training starts shortly"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = (await _status(client))["personalization"]
            finished = status["last_message"].startswith(("done:", "training stopped"))
            if finished and not status["scheduler"]["running"]:
                break
            await asyncio.sleep(1)
        assert status["last_message"].startswith("done:"), status
        reports = [r for rs in client.progress_reports.values() for r in rs]
        kinds = [r.kind for r in reports]
        assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
        messages = " ".join(r.message or "" for r in reports)
        assert "tokens/s" in messages and "gate" in messages
