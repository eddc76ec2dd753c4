"""The completion pipeline below the protocol, with the scripted backend and real Prism."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rubytailor.errors import ModelError, PrismError
from rubytailor.model.backends.base import CancelToken
from rubytailor.model.backends.fake import FakeBackend
from rubytailor.model.completer import (
    Completer,
    CompletionRequest,
    CompletionResult,
    ModelSpec,
    complete_once,
)
from rubytailor.model.syntax_check import check_suggestion
from rubytailor.paths import prism_wasm_path
from rubytailor.prism import Prism

SPEC = ModelSpec(backend="fake", path=Path("unused.json"))

needs_prism = pytest.mark.skipif(
    not prism_wasm_path().exists(), reason="prism.wasm not fetched: run `make setup`"
)


@pytest.fixture(scope="module")
def prism() -> Prism:
    if not prism_wasm_path().exists():
        pytest.skip("prism.wasm not fetched: run `make setup`")
    return Prism.load()


def make_completer(backend: FakeBackend, prism: Prism | None) -> Completer:
    def load_prism() -> Prism:
        if prism is None:
            raise PrismError("prism.wasm not found; run `make setup`")
        return prism

    return Completer(SPEC, backend_loader=lambda *a, **k: backend, prism_loader=load_prism)


def request(text: str, cursor: str = "█", **limits: float) -> CompletionRequest:
    """A request at the position of ``cursor`` in ``text`` (the marker is removed)."""
    offset = text.index(cursor)
    return CompletionRequest(
        doc_key="file:///app.rb",
        version=1,
        text=text.replace(cursor, ""),
        offset=offset,
        **limits,
    )


def run(completer: Completer, req: CompletionRequest) -> tuple[CompletionResult, list[str]]:
    deltas: list[str] = []
    result = completer.complete(req, deltas.append, CancelToken())
    return result, deltas


METHOD_BODY = "class Cart\n  def total(items)\n    █\n  end\nend\n"


@needs_prism
def test_a_multi_line_suggestion_streams_whole_checked_lines(prism: Prism) -> None:
    backend = FakeBackend(["sum = items.sum\n    sum * 2\n"], piece_chars=2)
    result, deltas = run(make_completer(backend, prism), request(METHOD_BODY))
    assert result.text == "sum = items.sum\n    sum * 2"
    assert (result.verdict, result.source, result.cancelled) == ("ok", "model", False)
    # Only completed lines go out early; the rest comes with the result.
    assert deltas == ["sum = items.sum"]
    assert "".join(deltas) + result.final_delta == result.text
    assert result.prompt_tokens > 0 and result.generated_tokens > 0
    assert result.ttft_ms is not None and result.ttft_ms <= result.total_ms
    assert result.model_id == backend.model_id


SCRIPTS = [
    pytest.param("x = 1\n    y = 2\n", id="fine"),
    pytest.param("x = 1\n    y = (\n", id="breaks-on-the-last-line"),
    pytest.param("x = [1,\n", id="breaks-on-the-first-line"),
    pytest.param("items.each do |i|\n      puts i\n    end\n    x = 1\n", id="end-closes-do-later"),
    pytest.param("x = 1\n  end\n  def other\n", id="stray-end"),
    # The stop rules retract the repeats after some were already streamed.
    pytest.param("x = 1\n    x = 1\n    x = 1\n    y = 2\n", id="runaway-repeats"),
]


@needs_prism
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("piece_chars", [1, 4, 100])
def test_partials_concatenate_to_the_final_text(
    prism: Prism, script: str, piece_chars: int
) -> None:
    req = request(METHOD_BODY, max_lines=8)
    backend = FakeBackend([script], piece_chars=piece_chars)
    result, deltas = run(make_completer(backend, prism), req)
    assert "".join(deltas) + result.final_delta == result.text
    prefix, suffix = req.text[: req.offset], req.text[req.offset :]
    # The final text never adds syntax errors to the document.
    assert check_suggestion(prism, prefix, result.text, suffix).text == result.text
    # And every partial was checked: the document with only the released text is fine too.
    released = "".join(deltas)
    assert check_suggestion(prism, prefix, released, suffix).text == released


@needs_prism
def test_a_suggestion_that_breaks_the_file_is_trimmed_to_its_good_lines(prism: Prism) -> None:
    backend = FakeBackend(["x = 1\n    y = (\n"])
    result, _ = run(make_completer(backend, prism), request(METHOD_BODY))
    # Prism keeps whole lines; the last one's newline would only leave an empty line.
    assert (result.text, result.verdict) == ("x = 1", "trimmed")


@needs_prism
def test_a_single_line_suggestion_that_breaks_the_line_is_dropped(prism: Prism) -> None:
    text = "def total(items)\n  items.map { |i| █ }\nend\n"
    backend = FakeBackend(["i * 2)) }\n"])
    result, deltas = run(make_completer(backend, prism), request(text))
    assert (result.text, result.verdict, deltas) == ("", "dropped", [])


@needs_prism
def test_mid_line_cursor_gets_only_the_rest_of_the_line(prism: Prism) -> None:
    text = "def total(items)\n  items.map { |i| █ }\nend\n"
    backend = FakeBackend(["i * 2\n  extra = 1\n"])
    result, _ = run(make_completer(backend, prism), request(text))
    assert result.text == "i * 2"
    assert result.stop_reason == "newline"


@needs_prism
def test_cancel_after_the_first_partial_stops_within_one_token(prism: Prism) -> None:
    lines = "".join(f"x{i} = {i}\n    " for i in range(30))
    backend = FakeBackend([lines], piece_chars=2, token_delay_s=0.002)
    completer = make_completer(backend, prism)
    cancel = CancelToken()
    deltas: list[str] = []

    def on_partial(delta: str) -> None:
        deltas.append(delta)
        cancel.cancel()

    result = completer.complete(request(METHOD_BODY), on_partial, cancel)
    assert result.cancelled and result.verdict == "cancelled"
    assert backend.pieces_after_cancel == 0
    assert deltas == ["x0 = 0"]
    assert result.text == "".join(deltas) and result.final_delta == ""


def test_cancel_from_another_thread_lands_within_one_token() -> None:
    script = "".join(f"x{i} = {i}\n" for i in range(200))
    backend = FakeBackend([script], piece_chars=1, token_delay_s=0.005)
    completer = make_completer(backend, None)
    cancel = CancelToken()
    timer = threading.Timer(0.05, cancel.cancel)
    timer.start()
    result = completer.complete(request("█", max_lines=50), lambda _d: None, cancel)
    timer.join()
    assert result.cancelled
    assert backend.pieces_after_cancel <= 1
    assert result.generated_tokens < 100


def test_a_cancelled_request_is_not_remembered() -> None:
    backend = FakeBackend(["first\n", "second\n"])
    completer = make_completer(backend, None)
    cancel = CancelToken()
    cancel.cancel()
    assert completer.complete(request("x = █"), lambda _d: None, cancel).cancelled
    result, _ = run(completer, request("x = █"))
    assert result.source == "model"


def test_repeat_and_typed_through_requests_are_answered_from_the_cache() -> None:
    backend = FakeBackend(["items.sum\n", "SHOULD NOT BE ASKED\n"])
    completer = make_completer(backend, None)
    doc = "def total(items)\n  █\nend\n"
    first, _ = run(completer, request(doc))
    assert first.text == "items.sum" and first.source == "model"
    again, _ = run(completer, request(doc))
    assert (again.text, again.source, again.verdict) == ("items.sum", "exact", "cached")
    typed, deltas = run(completer, request(doc.replace("█", "ite█")))
    assert (typed.text, typed.source) == ("ms.sum", "typed_through")
    assert deltas == [] and typed.final_delta == typed.text
    assert len(backend.prompts) == 1


def test_without_prism_suggestions_are_unchecked_but_still_whole_lines_stream() -> None:
    backend = FakeBackend(["a = (\nb = 2\n"])
    completer = make_completer(backend, None)
    result, deltas = run(completer, request("█"))
    assert result.verdict == "unchecked"
    assert result.text == "a = (\nb = 2"
    assert deltas == ["a = ("]
    assert completer.prism_error is not None and "make setup" in str(completer.prism_error)


def test_a_missing_model_gives_no_suggestion_and_a_message() -> None:
    def fail(*_args: object, **_kwargs: object) -> FakeBackend:
        raise ModelError("model directory /nope does not exist; set rubytailor.modelPath")

    completer = Completer(SPEC, backend_loader=fail, prism_loader=Prism.load)
    result, deltas = run(completer, request("x = █"))
    assert (result.text, result.source, result.stop_reason, deltas) == ("", "none", "no_model", [])
    assert "rubytailor.modelPath" in str(completer.model_error)


def test_the_prompt_fits_the_budget_and_ends_with_the_prefix_in_spm() -> None:
    backend = FakeBackend(["x\n"], context_length=4096)
    completer = make_completer(backend, None)
    body = "".join(f"line_{i} = {i}\n" for i in range(2000))
    run(completer, request(body + "tail = █\n" + body, max_prompt_tokens=300, max_tokens=16))
    prompt = backend.prompts[-1]
    assert backend.count_tokens(prompt) <= 300
    assert prompt.endswith("line_1999 = 1999\ntail = ")
    assert prompt.startswith("<fim_prefix><fim_suffix>\nline_0 = 0\n")


def test_the_prompt_budget_is_capped_by_the_context_length() -> None:
    backend = FakeBackend(["x\n"], context_length=200)
    completer = make_completer(backend, None)
    body = "".join(f"line_{i} = {i}\n" for i in range(500))
    run(completer, request(body + "█", max_prompt_tokens=1024, max_tokens=64))
    assert backend.count_tokens(backend.prompts[-1]) <= 200 - 64


def test_max_tokens_ends_generation() -> None:
    backend = FakeBackend(["abcdefghijklmnop\n"], piece_chars=2)
    result, _ = run(make_completer(backend, None), request("x = █", max_tokens=3))
    assert result.text == "abcdef"
    assert result.stop_reason == "max_tokens"


def test_a_fim_marker_written_as_text_ends_the_suggestion() -> None:
    backend = FakeBackend(["x = 1\ny = 2<|endoftext|>junk\n"], piece_chars=3)
    result, _ = run(make_completer(backend, None), request("█"))
    assert result.text == "x = 1\ny = 2"
    assert result.stop_reason == "stop_string"


def test_a_near_marker_that_is_ordinary_text_is_kept() -> None:
    backend = FakeBackend(["if a <fim\n"], piece_chars=1)
    result, _ = run(make_completer(backend, None), request("█"))
    assert result.text == "if a <fim"


def test_reconfigure_forgets_the_old_models_suggestions() -> None:
    backends = iter([FakeBackend(["old\n"]), FakeBackend(["new\n"])])
    completer = Completer(
        SPEC, backend_loader=lambda *a, **k: next(backends), prism_loader=Prism.load
    )
    assert run(completer, request("x = █"))[0].text == "old"
    assert completer.reconfigure(ModelSpec(backend="fake", path=Path("other.json")))
    again, _ = run(completer, request("x = █"))
    assert (again.text, again.source) == ("new", "model")
    assert not completer.reconfigure(ModelSpec(backend="fake", path=Path("other.json")))


def test_complete_once_raises_a_model_error_for_a_missing_script(tmp_path: Path) -> None:
    spec = ModelSpec(backend="fake", path=tmp_path / "missing.json")
    with pytest.raises(ModelError, match="does not exist"):
        complete_once("x = ", 4, spec)


def test_a_failed_load_is_retried_when_asked_or_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []
    backend = FakeBackend(["x\n"])

    def flaky(*_args: object, **_kwargs: object) -> FakeBackend:
        attempts.append(1)
        if len(attempts) == 1:
            raise ModelError("not there yet")
        return backend

    completer = Completer(SPEC, backend_loader=flaky, prism_loader=Prism.load)
    completer.load()
    completer.load()
    assert len(attempts) == 1 and completer.model_error is not None
    completer.load(retry=True)
    assert len(attempts) == 2 and completer.model_error is None
    assert completer.backend is backend
    # And without asking, once the retry interval has passed.
    attempts.clear()
    again = Completer(SPEC, backend_loader=flaky, prism_loader=Prism.load)
    again.load()
    monkeypatch.setattr("rubytailor.model.completer.RETRY_LOAD_AFTER_S", 0.0)
    again.load()
    assert again.backend is backend


def test_the_suggestion_cache_is_consulted_once_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = FakeBackend(["items.sum\n"])
    completer = make_completer(backend, None)
    lookups: list[str] = []
    real_lookup = completer._cache.lookup

    def counting(doc_key: str, prefix: str, suffix: str) -> object:
        lookups.append(prefix)
        return real_lookup(doc_key, prefix, suffix)

    monkeypatch.setattr(completer._cache, "lookup", counting)
    first, _ = run(completer, request("total = █\n"))
    assert len(lookups) == 1 and first.source == "model"
    # The server looks up on its loop, then runs generate on the model thread: generate
    # itself never looks again.
    assert completer.cached(request("total = █\n")) is not None
    again = completer.generate(request("total = █\n"), lambda _d: None, CancelToken())
    assert len(lookups) == 2 and again.source == "model"


def _gated(min_confidence: float, text: str = "x = 1\n    y = 2\n") -> CompletionResult:
    # Pieces of 6 characters: "x = 1\n", "    y ", "= 2\n"; the second line is unlikely.
    backend = FakeBackend([text], piece_chars=6, piece_probs={"    y ": 0.1})
    completer = make_completer(backend, None)
    result, deltas = run(completer, request(METHOD_BODY, min_confidence=min_confidence))
    assert "".join(deltas) + result.final_delta == result.text
    return result


def test_the_confidence_gate_ends_a_suggestion_at_its_first_unlikely_line() -> None:
    result = _gated(0.3)
    assert (result.text, result.verdict, result.stop_reason) == (
        "x = 1",
        "low_confidence",
        "low_confidence",
    )
    assert result.confidence == 0.1
    everything = _gated(0.0)
    assert (everything.text, everything.verdict) == ("x = 1\n    y = 2", "unchecked")


def test_the_gate_holds_back_an_unlikely_single_line() -> None:
    backend = FakeBackend(["items.sum\n"], piece_probs={"ite": 0.05})
    result, deltas = run(make_completer(backend, None), request("total = █\n", min_confidence=0.3))
    assert (result.text, result.verdict, deltas) == ("", "low_confidence", [])
