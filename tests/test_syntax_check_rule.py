"""model.syntax_check.check_suggestion: a suggestion may not add syntax errors."""

from __future__ import annotations

import pytest

from rubytailor.model.syntax_check import Verdict, check_suggestion, line_prefixes
from rubytailor.paths import prism_wasm_path
from rubytailor.prism import Prism


@pytest.fixture(scope="module")
def prism() -> Prism:
    if not prism_wasm_path().is_file():
        pytest.skip(f"prism.wasm not fetched at {prism_wasm_path()}: run `make setup`")
    return Prism.load()


def test_completion_that_closes_an_open_block_is_ok(prism: Prism) -> None:
    prefix = "items.each do |item|\n  "
    suggestion = "puts item\nend\n"
    assert not prism.is_valid(prefix)  # the document is broken until the block is closed
    result = check_suggestion(prism, prefix, suggestion, "")
    assert (result.text, result.verdict) == (suggestion, Verdict.OK)
    assert prism.is_valid(prefix + result.text)


def test_stray_end_is_trimmed_before_that_line(prism: Prism) -> None:
    prefix = "def total(items)\n  "
    suffix = "\nend\n"
    suggestion = "sum = items.sum\n  sum * 2\nend\nputs total([1])\n"
    result = check_suggestion(prism, prefix, suggestion, suffix)
    assert result.verdict == Verdict.TRIMMED
    assert result.text == "sum = items.sum\n  sum * 2\n"
    assert prism.is_valid(prefix + result.text + suffix)


def test_single_line_that_breaks_the_line_is_dropped(prism: Prism) -> None:
    prefix = "def area(w, h)\n  w * "
    suffix = "\nend\n"
    result = check_suggestion(prism, prefix, "h +* 2", suffix)
    assert (result.text, result.verdict) == ("", Verdict.DROPPED)


def test_good_suggestion_in_a_document_already_broken_elsewhere(prism: Prism) -> None:
    prefix = "CONFIG = {a: 1,, b: 2}\n\ndef greet(name)\n  "
    suffix = "\nend\n"
    assert not prism.is_valid(prefix + suffix)
    good = check_suggestion(prism, prefix, 'puts "Hello, #{name}"', suffix)
    assert good.verdict == Verdict.OK
    # The existing errors do not hide new ones.
    bad = check_suggestion(prism, prefix, "puts(name", suffix)
    assert bad.verdict == Verdict.DROPPED


def test_repeating_an_existing_error_still_counts_as_adding_one(prism: Prism) -> None:
    # The document already has a stray `end`; a second one is a new error even though
    # its message is the same (errors are compared as multisets).
    prefix = "x = 1\nend\n"
    suggestion = "y = 2\nend\n"
    result = check_suggestion(prism, prefix, suggestion, "")
    assert (result.text, result.verdict) == ("y = 2\n", Verdict.TRIMMED)


def test_trimming_keeps_the_longest_valid_run_not_the_first(prism: Prism) -> None:
    # Lines 1-2 are invalid alone (open `do`), lines 1-3 are fine, line 4 is a stray `end`.
    prefix = "def run(jobs)\n  "
    suffix = "\nend\n"
    suggestion = "jobs.each do |job|\n    job.call\n  end\nend\n"
    result = check_suggestion(prism, prefix, suggestion, suffix)
    assert (result.text, result.verdict) == (
        "jobs.each do |job|\n    job.call\n  end\n",
        Verdict.TRIMMED,
    )


def test_last_line_without_newline_is_a_candidate(prism: Prism) -> None:
    prefix = "def f\n  "
    suffix = "\nend\n"
    result = check_suggestion(prism, prefix, "a = 1\n  a + 1", suffix)
    assert (result.text, result.verdict) == ("a = 1\n  a + 1", Verdict.OK)
    broken = check_suggestion(prism, prefix, "a = 1\n  a +", suffix)
    assert (broken.text, broken.verdict) == ("a = 1\n", Verdict.TRIMMED)


def test_empty_suggestion_needs_no_parse(prism: Prism) -> None:
    result = check_suggestion(prism, "x = ", "", "\n")
    assert (result.text, result.verdict, result.parses) == ("", Verdict.EMPTY, 0)


def test_ok_suggestion_costs_two_parses(prism: Prism) -> None:
    result = check_suggestion(prism, "x = ", "1\n", "")
    assert (result.verdict, result.parses) == (Verdict.OK, 2)


def test_a_document_prism_cannot_check_gets_no_suggestion(prism: Prism) -> None:
    # Nesting this deep traps inside Prism: unchecked text is never shown.
    result = check_suggestion(prism, "x = " + "[" * 200_000, "1", "")
    assert (result.text, result.verdict) == ("", Verdict.DROPPED)
    assert check_suggestion(prism, "x = ", "1\n", "").verdict == Verdict.OK


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("abc", []),
        ("a\n", ["a\n"]),
        ("a\nb", ["a\n"]),
        ("a\n\nb\n", ["a\n", "a\n\n", "a\n\nb\n"]),
        ("a\r\nb\r\n", ["a\r\n", "a\r\nb\r\n"]),
    ],
)
def test_line_prefixes(text: str, expected: list[str]) -> None:
    assert line_prefixes(text) == expected
