"""The scripted backend: the behaviour other tests and the demo rely on."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rubytailor.errors import ConfigError, ModelError
from rubytailor.model.backends import load_backend
from rubytailor.model.backends.base import (
    Backend,
    CancelToken,
    GenerationParams,
    GenerationStats,
)
from rubytailor.model.backends.fake import FakeBackend


def run(
    backend: FakeBackend, prompt: str, max_new_tokens: int = 64
) -> tuple[list[str], GenerationStats]:
    stats = GenerationStats()
    params = GenerationParams(max_new_tokens=max_new_tokens)
    pieces = list(backend.stream(prompt, params, CancelToken(), stats))
    return pieces, stats


def test_is_a_backend() -> None:
    assert isinstance(FakeBackend(["x"]), Backend)


def test_completions_play_in_order_and_last_repeats() -> None:
    backend = FakeBackend(["first\n", "second\n", "last\n"])
    texts = ["".join(run(backend, f"prompt {i}")[0]) for i in range(5)]
    assert texts == ["first\n", "second\n", "last\n", "last\n", "last\n"]
    assert backend.prompts == [f"prompt {i}" for i in range(5)]


@pytest.mark.parametrize("piece_chars", [1, 3, 7, 100])
def test_pieces_have_piece_chars_and_join_to_the_completion(piece_chars: int) -> None:
    text = "def total\n  @items.sum\nend\n"
    pieces, stats = run(FakeBackend([text], piece_chars=piece_chars), "p")
    assert "".join(pieces) == text
    assert all(len(p) == piece_chars for p in pieces[:-1])
    assert stats.generated_tokens == len(pieces)
    assert stats.stopped_by == "eos"


def test_max_new_tokens_counts_pieces() -> None:
    pieces, stats = run(FakeBackend(["abcdefghij"], piece_chars=2), "p", max_new_tokens=3)
    assert pieces == ["ab", "cd", "ef"]
    assert stats.stopped_by == "max_tokens"


def test_cancel_set_before_the_call_yields_nothing() -> None:
    backend = FakeBackend(["abcdef"])
    cancel = CancelToken()
    cancel.cancel()
    stats = GenerationStats()
    assert list(backend.stream("p", GenerationParams(), cancel, stats)) == []
    assert stats.stopped_by == "cancelled"


def test_cancel_while_streaming_stops_before_the_next_piece() -> None:
    backend = FakeBackend(["x" * 30], piece_chars=1)
    cancel = CancelToken()
    stats = GenerationStats()
    got = []
    for piece in backend.stream("p", GenerationParams(), cancel, stats):
        got.append(piece)
        if len(got) == 4:
            cancel.cancel()
    assert len(got) == 4
    assert stats.stopped_by == "cancelled"
    assert backend.pieces_after_cancel == 0


def test_cancel_from_another_thread_lands_within_one_token() -> None:
    delay = 0.02
    backend = FakeBackend(["y" * 200], token_delay_s=delay, piece_chars=1)
    cancel = CancelToken()
    stats = GenerationStats()
    timer = threading.Timer(0.1, cancel.cancel)
    timer.start()
    started = time.perf_counter()
    pieces = list(backend.stream("p", GenerationParams(max_new_tokens=500), cancel, stats))
    elapsed = time.perf_counter() - started
    timer.join()
    assert stats.stopped_by == "cancelled"
    assert len(pieces) < 200
    # Stopped within about one token of the cancel (generous slack for a busy machine).
    assert elapsed < 0.1 + 5 * delay
    assert backend.pieces_after_cancel == 0


def test_stats_count_prompt_tokens_and_reuse_of_the_previous_prompt() -> None:
    backend = FakeBackend(["x"])
    base = "<fim_prefix><fim_suffix>end\n<fim_middle>def foo\n"
    _, first = run(backend, base)
    _, extended = run(backend, base + "  ret")
    _, unrelated = run(backend, "something else entirely")
    assert first.prompt_tokens == -(-len(base) // 4)
    assert first.reused_tokens == 0
    assert extended.reused_tokens == len(base) // 4
    assert 0 < extended.reused_tokens < extended.prompt_tokens
    assert unrelated.reused_tokens == 0


def test_reuse_never_covers_the_whole_prompt() -> None:
    backend = FakeBackend(["x"])
    run(backend, "abcdefgh")
    _, again = run(backend, "abcdefgh")
    assert again.reused_tokens == again.prompt_tokens - 1


def test_stopping_early_is_recorded_as_caller() -> None:
    backend = FakeBackend(["abcdefghi"], piece_chars=1)
    stats = GenerationStats()
    stream = backend.stream("p", GenerationParams(), CancelToken(), stats)
    next(stream)
    stream.close()
    assert stats.stopped_by == "caller"
    assert stats.first_token_s is not None


def test_from_file_reads_the_script(tmp_path: Path) -> None:
    script = tmp_path / "fake.json"
    script.write_text(
        json.dumps({"completions": ["a", "bcd"], "token_delay_ms": 5, "piece_chars": 2})
    )
    backend = load_backend("fake", script)
    assert isinstance(backend, FakeBackend)
    assert backend.token_delay_s == pytest.approx(0.005)
    assert run(backend, "p")[0] == ["a"]
    assert run(backend, "p")[0] == ["bc", "d"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("{not json", "not readable JSON"),
        (json.dumps({"completions": []}), "non-empty list of strings"),
        (json.dumps(["a"]), "non-empty list of strings"),
        (json.dumps({"completions": ["a"], "piece_chars": 0}), "piece_chars"),
        (json.dumps({"completions": ["a"], "token_delay_ms": "slow"}), "must be numbers"),
    ],
)
def test_from_file_errors_say_what_is_wrong(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    script = tmp_path / "fake.json"
    if content is not None:
        script.write_text(content)
    with pytest.raises(ModelError, match=expected):
        FakeBackend.from_file(script)


def test_unknown_backend_kind_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="transformers, fake"):
        load_backend("llama", tmp_path)
