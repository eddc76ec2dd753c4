"""The model card is written from the recorded facts: metadata, corpus summary, eval reports."""

from __future__ import annotations

import json
from pathlib import Path

from rubytailor.training.model_card import write_model_card


def report(em: float, ms: float) -> dict[str, object]:
    line = {
        "cases": 10,
        "exact_match": em,
        "edit_similarity": 0.5,
        "served_exact_match": em,
        "served_edit_similarity": 0.5,
        "empty_rate": 0.1,
        "prism_valid_rate": 0.9,
    }
    latency = {"median_ms": ms, "p90_ms": ms * 2, "median_ms_per_generated_token": 1.0}
    return {
        "results": {"line": {"model": line}},
        "bits_per_byte": {"model": 1.25},
        "latency_warm_single_line": latency,
        "latency_warm_single_line_by_backend": {"transformers": latency, "ctransformers": latency},
    }


def test_each_report_gets_its_own_section(tmp_path: Path) -> None:
    meta = {"fim_format": "starcoder", "fim_order": "spm", "context_length": 256, "trained": {}}
    (tmp_path / "rubytailor.json").write_text(json.dumps(meta))
    summary = {"kept_files": 3, "kept_bytes": 1000, "sources": {"a": 2, "b": 1}, "splits": {}}
    card = write_model_card(
        tmp_path,
        corpus_summary=summary,
        reports=[("Rails app", report(0.25, 10.0)), ("test split", report(0.125, 20.0))],
        commands="cmds",
        compute="compute",
        notes="notes",
    ).read_text()
    assert "## Evaluation: Rails app" in card and "## Evaluation: test split" in card
    assert "| line | model | 10 | 25.0 % |" in card and "| line | model | 10 | 12.5 % |" in card
    assert "(ctransformers backend, this machine): median 20.0 ms" in card
    assert "from 2 Debian 12 packages" in card
