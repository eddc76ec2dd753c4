"""Project memory through the real protocol: the workspace's code completes the line."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_support import open_doc, plain, session, stream

from rubytailor.protocol import STATUS_METHOD

pytestmark = pytest.mark.slow

# A line no model could guess: only the workspace knows how it ends.
PATTERN = "    Ledger.reconcile_quarterly_statements!(zebra_count: 4817, walrus: :purple)\n"
OTHER = "class Billing\n  def close_books\n" + PATTERN + "  end\nend\n"
TYPED = "    Ledger.reconcile_quarterly_statements!(zebra_cou"
DOC = "class Reports\n  def summary\n" + TYPED + "\n  end\nend\n"


def _workspace(root: Path) -> None:
    (root / "app").mkdir()
    (root / "app" / "billing.rb").write_text(OTHER, encoding="utf-8")
    (root / ".env").write_text("SECRET=" + PATTERN, encoding="utf-8")  # never indexed


async def _status_when_ready(client: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        status = plain(await client.protocol.send_request_async(STATUS_METHOD, {}))
        if status["project_memory"]["state"] == "ready" or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def test_a_workspace_file_completes_the_line_in_another(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    _workspace(root)
    uri = (root / "app" / "reports.rb").as_uri()
    # The gate is off: without memory the untrained model's text is shown, to compare.
    settings = {
        "backend": "transformers",
        "modelPath": str(tiny_model_dir),
        # Healing re-creates "zebra_cou" (several tokens of the tiny vocabulary) first.
        "maxTokens": 32,
        "minConfidence": 0,
    }
    async with session(settings, root=root) as client:
        status = await _status_when_ready(client)
        memory = status["project_memory"]
        assert (memory["state"], memory["files"]) == ("ready", 1), memory
        open_doc(client, uri, DOC)
        result, _ = await stream(client, uri, 2, len(TYPED))
        # The untrained test model knows nothing; the rest of the line comes from memory.
        assert result["text"] == "nt: 4817, walrus: :purple)"
        assert result["memory_share"] > 0.5 and result["confidence"] > 0

    # Without the memory the same request does not know the line.
    async with session({**settings, "projectMemory": False}, root=root) as client:
        open_doc(client, uri, DOC)
        result, _ = await stream(client, uri, 2, len(TYPED))
        assert result["text"] != "nt: 4817, walrus: :purple)"
        assert result["memory_share"] == 0
        status = plain(await client.protocol.send_request_async(STATUS_METHOD, {}))
        assert status["project_memory"] == {"state": "off", "reason": "projectMemory is false"}
