"""`rubytailor bench soak` end to end on the scripted backend: overlapping requests and
client cancellations all get answers, and the report has its figures. (The benchmark's
targets are figures in the README, never asserted here: timing on a shared machine.)"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from lsp_support import write_script

from rubytailor import paths, soak

pytestmark = pytest.mark.slow


def test_a_short_soak_answers_every_request(tmp_path: Path) -> None:
    # Slow pieces (20 ms each), so keystrokes arrive while the last request still runs.
    script = write_script(tmp_path, ["items.map(&:total)\n"] * 3, delay_ms=20)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    args = argparse.Namespace(
        model=script,
        backend="fake",
        files=[paths.REPO_ROOT / "examples" / "inventory.rb"],
        max_keystrokes=12,
        threads=None,
        seed=3,
        workspace=workspace,
        no_project_memory=True,
        max_prompt_tokens=None,
        server_log=None,
        minutes=0.15,
    )
    result = asyncio.run(soak.soak(args))
    assert result.sent > 20 and result.lines >= 2
    assert result.unanswered == 0 and result.errors == []
    assert result.cancelled_by_client > 0
    assert 0 < result.cancelled < result.sent  # superseded or cancelled, the rest answered
    assert len(result.answered_ms) + result.cancelled == result.sent
    assert result.idle_ms and result.rss_after_idle
    text = soak.report(result)
    assert "p95 soak / idle" in text and "growth" in text
