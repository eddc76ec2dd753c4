"""model.syntax_check.StreamingCheck: partial releases that add up to the final answer."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rubytailor.model.syntax_check import StreamingCheck, Verdict, check_suggestion
from rubytailor.paths import prism_wasm_path
from rubytailor.prism import Prism


@pytest.fixture(scope="module")
def prism() -> Prism:
    if not prism_wasm_path().is_file():
        pytest.skip(f"prism.wasm not fetched at {prism_wasm_path()}: run `make setup`")
    return Prism.load()


@dataclass(frozen=True)
class Scripted:
    name: str
    prefix: str
    suggestion: str
    suffix: str
    verdict: Verdict
    # What the editor has been shown by the time the last line completes.
    released: str


METHOD = "def process(items)\n  "
END = "\nend\n"

CASES = [
    Scripted(
        "fine",
        METHOD,
        "total = 0\n  items.each { |i| total += i }\n  total\n",
        END,
        Verdict.OK,
        "total = 0\n  items.each { |i| total += i }\n  total\n",
    ),
    Scripted(
        "needs trimming (stray end)",
        METHOD,
        "result = items.map(&:to_s)\n  result.join\nend\nputs process([1])\n",
        END,
        Verdict.TRIMMED,
        "result = items.map(&:to_s)\n  result.join\n",
    ),
    Scripted(
        "breaks on the first line",
        METHOD,
        "items.each |i| do\n    puts i\n  end\n",
        END,
        Verdict.DROPPED,
        "",
    ),
    Scripted(
        "a later end fixes an unclosed do",
        METHOD,
        "items.each do |item|\n    puts item\n  end\n  items.size\n",
        END,
        Verdict.OK,
        "items.each do |item|\n    puts item\n  end\n  items.size\n",
    ),
    Scripted(
        "last line incomplete and broken",
        METHOD,
        "count = items.size\n  count +",
        END,
        Verdict.TRIMMED,
        "count = items.size\n",
    ),
    Scripted(
        "last line incomplete and fine",
        METHOD,
        "count = items.size\n  count * 2",
        END,
        Verdict.OK,
        "count = items.size\n",
    ),
]


def stream(check: StreamingCheck, text: str, chunk: int) -> tuple[list[str], list[str]]:
    """Feed ``text`` in pieces like a model would; returns (deltas sent, releases seen)."""
    deltas: list[str] = []
    releases: list[str] = []
    released = ""
    for end in range(chunk, len(text) + chunk, chunk):
        now = check.release(text[:end])
        releases.append(now)
        assert now.startswith(released), "released text must only grow"
        if len(now) > len(released):
            deltas.append(now[len(released) :])
            released = now
    return deltas, releases


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_partials_add_up_to_the_final_text(prism: Prism, case: Scripted, chunk: int) -> None:
    check = StreamingCheck(prism, case.prefix, case.suffix)
    deltas, releases = stream(check, case.suggestion, chunk)
    final = check.finish(case.suggestion)

    assert releases[-1] == case.released
    assert "".join(deltas) == case.released
    # The server sends the deltas, then the rest: together exactly the final text.
    assert final.text.startswith(case.released)
    assert "".join(deltas) + final.text[len(case.released) :] == final.text
    assert final.verdict == case.verdict
    # The streamed answer is the one-shot answer.
    once = check_suggestion(prism, case.prefix, case.suggestion, case.suffix)
    assert (final.text, final.verdict) == (once.text, once.verdict)
    assert prism.errors(case.prefix + final.text + case.suffix) == []


def test_nothing_is_released_until_the_block_is_closed(prism: Prism) -> None:
    check = StreamingCheck(prism, METHOD, END)
    assert check.release("items.each do |item|\n") == ""
    assert check.release("items.each do |item|\n    puts item\n") == ""
    assert check.release("items.each do |item|\n    puts item\n  end\n  ite") == (
        "items.each do |item|\n    puts item\n  end\n"
    )


def test_incomplete_lines_are_never_released(prism: Prism) -> None:
    check = StreamingCheck(prism, METHOD, END)
    assert check.release("x = 1") == ""
    assert check.release("x = 1\n  y = x") == "x = 1\n"


def test_each_line_prefix_is_parsed_once(prism: Prism) -> None:
    text = "a = 1\n  b = 2\n  a + b\n"
    check = StreamingCheck(prism, METHOD, END)
    for end in range(1, len(text) + 1):
        check.release(text[:end])
    final = check.finish(text)
    # One parse of the document without the suggestion, one per completed line; the
    # final text ends with a newline, so finish() has nothing new to parse.
    assert final.parses == 1 + text.count("\n")
    assert final.verdict == Verdict.OK


def test_finish_on_empty_text_is_empty(prism: Prism) -> None:
    check = StreamingCheck(prism, METHOD, END)
    assert check.release("") == ""
    result = check.finish("")
    assert (result.text, result.verdict) == ("", Verdict.EMPTY)
