"""`rubytailor bench engines`: what it measures each engine on, and its JSON line.

No timing figure is asserted anywhere: only that figures are there, of the right kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rubytailor import bench_engines
from rubytailor.bench_engines import Plan

VOCAB = 50


class ScriptedEngine:
    """A TokenLoopBackend-shaped engine whose next token is a function of the context, and
    which checks that the caller keeps ``_cached_ids`` in step with what it evaluated."""

    name = "scripted"

    def __init__(self, context_length: int = 256, shift: int = 0) -> None:
        self.context_length = context_length
        self.shift = shift
        self._cached_ids: list[int] = []
        self._seen: list[int] = []
        self.forwards: list[int] = []  # how many new ids each forward pass evaluated

    def reset_cache(self) -> None:
        self._cached_ids, self._seen = [], []

    def _forward(self, new_ids: Sequence[int]) -> np.ndarray:
        assert self._cached_ids == self._seen, "the caller lost track of the cache"
        assert len(self._seen) + len(new_ids) <= self.context_length
        self._seen = [*self._seen, *new_ids]
        self.forwards.append(len(new_ids))
        logits = np.zeros(VOCAB, dtype=np.float32)
        logits[next_token(self._seen, self.shift)] = 1.0
        return logits


def next_token(context: Sequence[int], shift: int = 0) -> int:
    return (sum(context) * 7 + len(context) + shift) % VOCAB


def plan(**overrides: object) -> Plan:
    values: dict = {
        "model": "unused",
        "threads": 1,
        "repeats": 2,
        "decode_tokens": 5,
        "agreement_tokens": 4,
        "stream": [i % VOCAB for i in range(1100)],
    }
    return Plan(**{**values, **overrides})


def test_measure_runs_the_same_prompts_and_greedy_tokens() -> None:
    engine = ScriptedEngine()
    figures = bench_engines.measure(engine, plan())
    assert set(figures["prefill_ms_per_token"]) == {"256", "1024"}
    assert isinstance(figures["prefill_ms_per_token"]["256"], float)
    assert figures["prefill_ms_per_token"]["1024"] is None  # beyond the 256-token context
    assert isinstance(figures["decode_ms_per_token"], float)
    # Greedy continuations of the agreement prompts, exactly as the engine scores them.
    prompts = bench_engines.prompts_for_agreement(plan())
    assert len(prompts) == bench_engines.AGREEMENT_PROMPTS and len(set(map(tuple, prompts))) > 1
    expected = []
    for prompt in prompts:
        context, out = list(prompt), []
        for _ in range(4):
            out.append(next_token(context))
            context.append(out[-1])
        expected.append(out)
    assert figures["outputs"] == expected
    # Prefill: warm-up + 2 repeats of 256 ids at once; decode and agreement one id a pass.
    assert engine.forwards.count(256) == 3


def test_an_engine_with_a_long_context_is_measured_at_1024() -> None:
    figures = bench_engines.measure(ScriptedEngine(context_length=2048), plan())
    assert isinstance(figures["prefill_ms_per_token"]["1024"], float)


def worker_result(outputs: list[list[int]], context: int = 256) -> dict:
    return {
        "context_length": context,
        "prefill_ms_per_token": {"256": 0.5, "1024": None},
        "decode_ms_per_token": 1.3,
        "rss_mib": 88.0,
        "outputs": outputs,
        "load_s": 0.1,
    }


def test_the_json_line_says_which_engines_agree_with_transformers() -> None:
    same, other = [[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 7]]
    results = {
        "llamacpp": worker_result(same),
        "ctransformers": worker_result(other),
        "transformers": worker_result(same),
        "broken": {"error": "exit 1: ModelError: no"},
    }
    data = bench_engines.summary(results, "llamacpp", 0.42)
    line = json.loads(json.dumps(data))  # what the command prints: plain JSON
    assert line["default"] == "llamacpp" and line["floor_decode_ms_per_token"] == 0.42
    engines = line["engines"]
    assert engines["llamacpp"]["agrees"] is True
    assert engines["ctransformers"]["agrees"] is False  # one token differs
    assert engines["transformers"]["agrees"] is True
    assert engines["broken"] == {"error": "exit 1: ModelError: no"}
    assert engines["llamacpp"] == {
        "prefill_ms_per_token": {"256": 0.5, "1024": None},
        "decode_ms_per_token": 1.3,
        "rss_mib": 88.0,
        "agrees": True,
    }
    lines = bench_engines.report_lines(data, results, plan())
    assert any("1024 n/a: context 256" in row for row in lines)
    assert any("broken" in row and "failed" in row for row in lines)
    # Without the reference engine nothing can be said about agreement.
    alone = bench_engines.summary({"llamacpp": worker_result(same)}, "llamacpp", 0.1)
    assert alone["engines"]["llamacpp"]["agrees"] is None


def test_the_prompts_are_real_ruby_from_the_repository(tiny_model_dir: Path) -> None:
    files = bench_engines.ruby_files()
    assert files and files[0].parent.name == "examples"
    assert not [p for p in files if "vendor" in p.parts or ".venv" in p.parts]
    stream = bench_engines.token_stream(tiny_model_dir, files, 1025)
    assert len(stream) >= 1025


@pytest.mark.slow
def test_the_command_prints_one_json_object_last(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from rubytailor.cli import main
    from rubytailor.model.backends import auto_backend_kind

    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(tmp_path / "cache"))
    # Every installed engine: each one's worker runs in its own process.
    engines = [e for e in bench_engines.ENGINES if e in bench_engines.installed_engines()]
    argv = ["bench", "engines", "--model", str(tiny_model_dir), "--engines", *engines]
    argv += ["--repeats", "1", "--decode-tokens", "3", "--agreement-tokens", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    line = json.loads(out[-1])
    assert line["default"] == auto_backend_kind(tiny_model_dir)
    assert isinstance(line["floor_decode_ms_per_token"], float)
    assert list(line["engines"]) == engines
    for figures in line["engines"].values():
        assert set(figures) == {"prefill_ms_per_token", "decode_ms_per_token", "rss_mib", "agrees"}
        assert isinstance(figures["prefill_ms_per_token"]["256"], float)
        assert (
            figures["prefill_ms_per_token"]["1024"] is None
        )  # the tiny model's context is shorter
        assert isinstance(figures["decode_ms_per_token"], float)
        assert isinstance(figures["rss_mib"], float)
        assert isinstance(figures["agrees"], bool)
    assert line["engines"]["transformers"]["agrees"] is True
    assert out[0] == "rubytailor bench engines"
