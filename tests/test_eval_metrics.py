"""Evaluation metrics, case sampling and the copy-line baseline, on hand-made cases."""

from __future__ import annotations

import pytest

from rubytailor.training.baselines import copy_line
from rubytailor.training.eval_cases import Case, line_cases, multiline_cases, statement_span
from rubytailor.training.metrics import edit_similarity, exact_match, levenshtein

RUBY = """class Cart
  def initialize
    @items = []
  end

  def add(item)
    @items << item
    self
  end

  def total
    @items.sum(&:price)
  end
end
"""


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "abc", 3),
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("@items.sum", "@items.sum", 0),
        ("puts x", "puts(x)", 2),  # ' '->'(', +')'
        ("é", "e", 1),  # code points, not bytes
    ],
)
def test_levenshtein_on_hand_computed_cases(a: str, b: str, distance: int) -> None:
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


@pytest.mark.parametrize(
    ("pred", "ref", "similarity"),
    [
        ("", "", 1.0),
        ("abc", "abc", 1.0),
        ("", "abc", 0.0),
        ("kitten", "sitting", 1 - 3 / 7),
        ("self", "self.total", 1 - 6 / 10),
    ],
)
def test_edit_similarity_is_one_minus_distance_over_longer_length(
    pred: str, ref: str, similarity: float
) -> None:
    assert edit_similarity(pred, ref) == pytest.approx(similarity)


def test_exact_match_ignores_only_trailing_whitespace() -> None:
    assert exact_match("@items.sum(&:price)  ", "@items.sum(&:price)")
    assert exact_match("end\n", "end")
    assert not exact_match(" end", "end")
    assert not exact_match("@items.sum", "@items.sum(&:price)")


def test_line_cases_cut_after_indentation_and_rebuild_the_file() -> None:
    files = [("cart.rb", RUBY)]
    cases = line_cases(files, 6, seed=3)
    assert len(cases) == 6
    for case in cases:
        assert case.prefix + case.answer + case.suffix == RUBY
        assert case.answer and "\n" not in case.answer
        cursor_line = case.prefix[case.prefix.rfind("\n") + 1 :]
        full_line = RUBY.split("\n")[case.line]
        indent = len(full_line) - len(full_line.lstrip())
        assert len(cursor_line) >= indent  # never inside the indentation
    assert line_cases(files, 6, seed=3) == cases  # deterministic
    assert line_cases(files, 6, seed=4) != cases


def test_multiline_spans_are_whole_indented_statements() -> None:
    lines = RUBY.split("\n")
    assert statement_span(lines, 5) == 9  # def add ... end (4 lines)
    assert statement_span(lines, 6) is None  # a one-line statement
    cases = multiline_cases([("cart.rb", RUBY)], 3, seed=0)
    answers = {c.answer for c in cases}
    assert "def add(item)\n    @items << item\n    self\n  end" in answers
    for case in cases:
        assert case.prefix + case.answer + case.suffix == RUBY
        assert case.prefix.endswith("\n  ")  # the cursor sits at the statement's indentation


def test_multiline_spans_must_parse_alone_when_a_parser_is_given() -> None:
    # RUBY has three candidate spans (the three methods). A span the parser rejects (here:
    # the one containing "initialize", standing in for half a statement) is skipped and
    # the next one drawn instead, so asking for two still gives two.
    def parses(text: str) -> bool:
        return "initialize" not in text

    everything = multiline_cases([("cart.rb", RUBY)], 3, seed=0)
    assert sum("initialize" in c.answer for c in everything) == 1
    checked = multiline_cases([("cart.rb", RUBY)], 2, seed=0, is_complete=parses)
    assert len(checked) == 2
    assert not any("initialize" in c.answer for c in checked)


def test_copy_line_baseline_copies_the_rest_of_a_line_that_starts_the_same() -> None:
    text = "x.fetch(:a, 1)\ny = 2\nx.fe"
    case = Case(kind="line", source="t", line=2, prefix=text, suffix="\nz = 3\n", answer="tch(:b)")
    assert copy_line(case) == "tch(:a, 1)"
    nothing = Case(kind="line", source="t", line=0, prefix="  ", suffix="\n", answer="x")
    assert copy_line(nothing) == ""
    below = Case(kind="line", source="t", line=0, prefix="  de", suffix="\n  def run\n", answer="")
    assert copy_line(below) == "f run"
