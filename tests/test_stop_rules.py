"""Ruby stop rules on realistic code, fed in pieces of every size."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from rubytailor.model.stop_rules import StopConfig, StopRules, is_single_line_position


@dataclass(frozen=True)
class Case:
    id: str
    prefix: str
    suffix: str
    generated: str
    text: str
    reason: str | None
    config: StopConfig = field(default_factory=StopConfig)
    # False when the stop is decided on an unfinished last line (push cannot know yet).
    finished: bool = True


CASES = [
    Case(
        "def line, body and end kept when the suffix lacks it",
        "class Inventory\n  def total",
        "\nend\n",
        "\n    @items.sum { |i| i[:quantity] }\n  end\n\n  def size\n    @items.size\n  end\n",
        "\n    @items.sum { |i| i[:quantity] }\n  end",
        "block_end",
    ),
    Case(
        "def line whose end the editor already inserted",
        "class Inventory\n  def total",
        "\n  end\nend\n",
        "\n    @items.sum { |i| i[:quantity] }\n  end\n\n  def size\n",
        "\n    @items.sum { |i| i[:quantity] }",
        "block_end",
    ),
    Case(
        "first line continues the cursor line (def foo(a)",
        "def add(a",
        "\n",
        ", b)\n  a + b\nend\nputs add(1, 2)\n",
        ", b)\n  a + b\nend",
        "block_end",
    ),
    Case(
        "blank line in a method body: the method's end in the suffix is not repeated",
        "def total\n  ",
        "\nend\n",
        "sum = 0\n  @items.each { |i| sum += i }\n  sum\nend\n\ndef size\n",
        "sum = 0\n  @items.each { |i| sum += i }\n  sum",
        "block_end",
    ),
    Case(
        "blank line right after def, no end anywhere below: end kept",
        "class Shop\n  def open?\n",
        "",
        "    @open\n  end\n\n  def close\n",
        "    @open\n  end",
        "block_end",
    ),
    Case(
        "blank line after def with an existing body below: end not duplicated",
        "def total\n  ",
        "\n  @items.sum\nend\n",
        "log(:total)\nend\n",
        "log(:total)",
        "block_end",
    ),
    Case(
        "dedent below the scope ends the suggestion",
        "class Order\n  def paid?\n    ",
        "\n  end\nend\n",
        "@status == :paid\n  def shipped?\n",
        "@status == :paid",
        "dedent",
    ),
    Case(
        "a block the suggestion opens and closes at the scope does not stop it",
        "class Report\n  def print\n    ",
        "\n  end\nend\n",
        "@rows.each do |row|\n      puts row\n    end\n    puts total\n  end\nend\n",
        "@rows.each do |row|\n      puts row\n    end\n    puts total",
        "block_end",
    ),
    Case(
        "RSpec: a new example inside describe, describe's end in the suffix",
        'RSpec.describe Inventory do\n  describe "#add" do\n    ',
        "\n  end\nend\n",
        'it "adds an item" do\n      inventory.add("apple")\n      expect(inventory.total).to eq(1)'
        "\n    end\n  end\nend\n",
        'it "adds an item" do\n      inventory.add("apple")\n      expect(inventory.total).to eq(1)'
        "\n    end",
        "block_end",
    ),
    Case(
        "RSpec: describe line typed, nothing below",
        'RSpec.describe Inventory do\n  describe "#total"',
        "\nend\n",
        ' do\n    it "sums" do\n      expect(subject.total).to eq(0)\n    end\n  end\n\n'
        '  describe "#size" do\n',
        ' do\n    it "sums" do\n      expect(subject.total).to eq(0)\n    end\n  end',
        "block_end",
    ),
    Case(
        "if/elsif/else/end from the if line",
        "def classify(score)\n  if score >= 90",
        "\nend\n",
        '\n    "excellent"\n  elsif score >= 50\n    "good"\n  else\n    "poor"\n  end\nend\n',
        '\n    "excellent"\n  elsif score >= 50\n    "good"\n  else\n    "poor"\n  end',
        "block_end",
    ),
    Case(
        "inside an if branch, elsif belongs to the enclosing block",
        "def classify(score)\n  if score >= 90\n    ",
        "\n  end\nend\n",
        '"excellent"\n  elsif score >= 50\n    "good"\n',
        '"excellent"',
        "dedent",
    ),
    Case(
        "blank line under else: the body is one level deeper, end kept if missing",
        "def classify(score)\n  if score >= 90\n    :high\n  else\n",
        "",
        "    :low\n  end\nend\n",
        "    :low\n  end",
        "block_end",
    ),
    Case(
        "blank line under when: the next when ends the suggestion",
        "case status\nwhen :paid\n  ",
        "\nend\n",
        "ship(order)\n  notify(order)\nwhen :pending\n",
        "ship(order)\n  notify(order)",
        "dedent",
    ),
    Case(
        "hash literal opened on the line above, closing brace already in the suffix",
        "CONFIG = {\n  name: 'rubytailor',\n  ",
        "\n}.freeze\n",
        "version: '0.1.0',\n  tags: %w[ruby lsp],\n}.freeze\nputs CONFIG\n",
        "version: '0.1.0',\n  tags: %w[ruby lsp],",
        "block_end",
    ),
    Case(
        "hash literal on the cursor line closed by the suggestion",
        "CONFIG = {",
        "\n",
        "\n  name: 'rubytailor',\n}.freeze\nputs CONFIG\n",
        "\n  name: 'rubytailor',\n}.freeze",
        "block_end",
    ),
    Case(
        "closer with a method chain: end.join",
        "def names\n  @items.map do |item|",
        "\nend\n",
        '\n    item[:name]\n  end.join(", ")\nend\n',
        '\n    item[:name]\n  end.join(", ")',
        "block_end",
    ),
    Case(
        "expect { ... }.to raise_error",
        'it "fails" do\n  expect {',
        "\nend\n",
        "\n    inventory.add(nil)\n  }.to raise_error(ArgumentError)\nend\n",
        "\n    inventory.add(nil)\n  }.to raise_error(ArgumentError)",
        "block_end",
    ),
    Case(
        "multi-line call arguments closed by )",
        "order = Order.new(",
        "\n",
        "\n  customer,\n  lines,\n)\norder.save\n",
        "\n  customer,\n  lines,\n)",
        "block_end",
    ),
    Case(
        "closer of an enclosing block the suggestion did not open",
        "[1, 2].each do |n|\n  puts n\n  ",
        "",
        "puts n * 2\nend\nputs :done\n",
        "puts n * 2",
        "block_end",
    ),
    Case(
        "line identical to the suffix's first line stops before it",
        "def total\n  sum = 0\n  ",
        "\n  @items.each { |i| sum += i }\n  sum\nend\n",
        "sum += 1\n  @items.each { |i| sum += i }\n  sum\n",
        "sum += 1",
        "repeats_suffix",
    ),
    Case(
        "max lines",
        "def steps\n  ",
        "\nend\n",
        "a = 1\n  b = 2\n  c = 3\n  d = 4\n",
        "a = 1\n  b = 2\n  c = 3",
        "max_lines",
        StopConfig(max_lines=3),
    ),
    Case(
        "mid-line cursor: the rest of the line only",
        "total = sum(",
        ")\n",
        "items, 0)\nputs total\n",
        "items, 0)",
        "newline",
    ),
    Case(
        "single_line config at the end of a line",
        "total = ",
        "\n",
        "@items.sum\nputs total\n",
        "@items.sum",
        "newline",
        StopConfig(single_line=True),
    ),
    Case(
        "the same line three times in a row",
        "def noisy\n  ",
        "\nend\n",
        "log(:a)\n  log(:a)\n  log(:a)\n  log(:a)\n",
        "log(:a)",
        "repetition",
    ),
    Case(
        "runaway closing parentheses",
        "value = compute(parse(read(",
        "\n",
        "path" + ")" * 30,
        "path)",
        "repetition",
    ),
    Case(
        "runaway method chain",
        "list = items",
        "\n",
        ".map.map.map.map.map.map.map",
        ".map",
        "repetition",
    ),
    Case(
        "numbers repeated in a literal are not runaway",
        "GRID = ",
        "\n",
        "[0, 0, 0, 0, 0, 0, 0, 0]\n",
        "[0, 0, 0, 0, 0, 0, 0, 0]",
        None,
    ),
    Case(
        "a comment ruler is not runaway",
        "class A\n  ",
        "\nend\n",
        "# ----------------------------------------\n  X = 1\n",
        "# ----------------------------------------\n  X = 1",
        None,
    ),
    Case(
        "heredoc body may be dedented; its terminator and the code after are judged normally",
        "def usage\n  text = <<~TEXT\n",
        "\nend\n",
        "Usage: rubytailor [options]\n  TEXT\n  text.strip\nend\n",
        "Usage: rubytailor [options]\n  TEXT\n  text.strip",
        "block_end",
    ),
    Case(
        "heredoc opened by the suggestion",
        "def usage\n  ",
        "\nend\n",
        "<<~TEXT\nUsage:\n  rubytailor\nTEXT\nend\n",
        "<<~TEXT\nUsage:\n  rubytailor\nTEXT",
        "block_end",
    ),
    Case(
        "tab-indented file: a tab is one level",
        "class A\n\tdef b\n\t\t",
        "\n\tend\nend\n",
        "x = 1\n\t\ty = 2\n\tend\n",
        "x = 1\n\t\ty = 2",
        "block_end",
    ),
    Case(
        "blank cursor line at column 0 inside a method continues its indentation",
        "def total\n  sum = 0\n",
        "\nend\n",
        "  sum += 1\n  sum\nend\n",
        "  sum += 1\n  sum",
        "block_end",
    ),
    Case(
        "modifier if on the line above does not open a block",
        "def first\n  return nil if items.empty?\n  ",
        "\nend\n",
        "items.first\nend\n",
        "items.first",
        "block_end",
    ),
    Case(
        "endless def above does not open a block",
        "class Calc\n  def double(x) = x * 2\n  ",
        "\nend\n",
        "def triple(x) = x * 3\nend\n",
        "def triple(x) = x * 3",
        "block_end",
    ),
    Case(
        "assignment from if opens a block",
        "status = if paid?",
        "\n",
        "\n  :paid\nelse\n  :pending\nend\nputs status\n",
        "\n  :paid\nelse\n  :pending\nend",
        "block_end",
    ),
    Case(
        "do inside a string does not open a block",
        'def greet\n  puts "do {"\n  ',
        "\nend\n",
        "puts 1\nend\n",
        "puts 1",
        "block_end",
    ),
    Case(
        "an unfinished last line that would be cut is left out",
        "def total\n  ",
        "\nend\n",
        "@items.sum\nend",
        "@items.sum",
        "block_end",
        finished=False,
    ),
    Case(
        "an unfinished closer that would be kept is shown",
        "def total\n  ",
        "",
        "@items.sum\nend",
        "@items.sum\nend",
        "block_end",
        finished=False,
    ),
    Case(
        "a dedented line is cut at its first character",
        "def total\n  ",
        "",
        "@items.sum\nputs",
        "@items.sum",
        "dedent",
    ),
    Case(
        "nothing but a newline: empty suggestion",
        "x = 1",
        "\n",
        "\n",
        "",
        None,
    ),
    Case(
        "CRLF document",
        "def total\r\n  ",
        "\r\nend\r\n",
        "@items.sum\r\nend\r\n",
        "@items.sum",
        "block_end",
    ),
]


def pieces_of(text: str, split: int | str) -> list[str]:
    if split == "random":
        rng = random.Random(len(text))
        out, i = [], 0
        while i < len(text):
            n = rng.randint(1, 9)
            out.append(text[i : i + n])
            i += n
        return out
    assert isinstance(split, int)
    return [text[i : i + split] for i in range(0, len(text), split)]


def feed(case: Case, split: int | str) -> StopRules:
    rules = StopRules(case.prefix, case.suffix, case.config)
    for piece in pieces_of(case.generated, split):
        if rules.push(piece):
            break
    return rules


@pytest.mark.parametrize("split", [1, 2, 3, 5, 8, 10_000, "random"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_stop_rules(case: Case, split: int | str) -> None:
    rules = feed(case, split)
    assert rules.text == case.text
    assert rules.reason == case.reason


@pytest.mark.parametrize("case", [c for c in CASES if c.reason], ids=lambda c: c.id)
def test_push_reports_the_stop_and_ignores_later_text(case: Case) -> None:
    rules = StopRules(case.prefix, case.suffix, case.config)
    stopped = rules.push(case.generated)
    # A stop on the unfinished last line is only known at its end, which never came.
    assert stopped == case.finished
    if stopped:
        before = rules.text
        assert rules.push("\n  more = 1\n") is True
        assert rules.text == before


def test_streaming_text_never_shows_what_is_later_cut() -> None:
    rules = StopRules("class Order\n  def paid?\n    ", "\n  end\nend\n", StopConfig())
    seen = []
    for ch in "@status == :paid\n  def shipped?\n":
        rules.push(ch)
        seen.append(rules.text)
    assert seen[-1] == "@status == :paid"
    # Every partial text an editor would have shown is a prefix of the final one.
    assert all(seen[-1].startswith(t) for t in seen)


@pytest.mark.parametrize(
    ("prefix", "suffix", "expected"),
    [
        ("total = sum(", ")\n", True),
        ("puts ", "name if verbose\n", True),
        ("x = 1", "\ny = 2\n", False),
        ("x = 1", "   \ny = 2\n", False),
        ("x = 1", "", False),
        ("  ", "\n", False),
    ],
)
def test_is_single_line_position(prefix: str, suffix: str, expected: bool) -> None:
    assert is_single_line_position(prefix, suffix) is expected


@pytest.mark.parametrize(
    "generated",
    [
        "<<~SQL\n  SELECT *\nFROM t\n",
        "<<-EOS\n\tx\n  EOS\n",
        "x = <<A + <<B\na\nA\nb\nB\ny\n",
        "=begin\nnot code\n=end\n",
        '"unterminated {\n  end\n',
        "%w[a b\n",
        "\t \t\n\n\n",
        "\u00e9\u00e8 = '\U0001f600'\n",
    ],
)
def test_odd_ruby_does_not_crash(generated: str) -> None:
    for prefix in ("", "def a\n  ", "x = <<~T\n", "\t"):
        rules = StopRules(prefix, "\nend\n", StopConfig())
        rules.push(generated)
        assert isinstance(rules.text, str)
        assert generated.startswith(rules.text.split("\n")[0])


def test_huge_documents_are_cheap() -> None:
    prefix = "class A\n" + "  def m\n    x = 1\n  end\n" * 100_000 + "  def z\n    "
    rules = StopRules(prefix, "\n  end\nend\n" * 1000, StopConfig())
    rules.push("y = 2\n    z = 3\n  end\n")
    assert rules.text == "y = 2\n    z = 3"


def _texts_while_streaming(prefix: str, suffix: str, stream: str) -> tuple[list[str], StopRules]:
    rules = StopRules(prefix, suffix, StopConfig(max_lines=20))
    seen = []
    for ch in stream:
        if rules.push(ch):
            break
        seen.append(rules.text)
    return seen, rules


BLOCK = "# Reads the file.\n  def read; end\n"


def _whole_lines(text: str) -> str:
    """What the pipeline can release of ``text``: its completed lines, less the last line
    end and any blank lines after it (model/pipeline.py sends those with the next line)."""
    return text[: text.rfind("\n") + 1].rstrip(" \t\r\n")


def test_a_repeated_block_is_cut_without_taking_back_what_was_shown() -> None:
    stream = BLOCK + ("\n  " + BLOCK) * 3
    seen, rules = _texts_while_streaming("module IO\n  ", "\nend\n", stream)
    assert rules.reason == "repetition"
    assert rules.final_text == "# Reads the file.\n  def read; end"
    # Every text shown along the way is a head of the final one: nothing is retracted.
    assert all(rules.final_text.startswith(_whole_lines(t)) for t in seen)


def test_lines_that_only_begin_to_repeat_are_kept_at_the_end() -> None:
    stream = "a = 1\n  b = 2\n  a = 1\n  c = 3\n"
    seen, rules = _texts_while_streaming("def f\n  ", "\nend\n", stream)
    assert rules.reason is None
    assert rules.final_text == "a = 1\n  b = 2\n  a = 1\n  c = 3"
    # The second "a = 1" is held back until "c = 3" is complete and shows it is no repeat.
    while_c_streams = seen[stream.index("c") : len(stream) - 1]
    assert while_c_streams and all("  a = 1\n" not in _whole_lines(t) for t in while_c_streams)


def test_a_runaway_pattern_inside_a_comment_is_cut() -> None:
    rules = StopRules("", "\n", StopConfig(max_lines=8))
    rules.push('# sku: "ku", sku: "ku", sku: "ku", sku: "ku", sku: "ku", sku: "ku"\n')
    assert (rules.reason, rules.final_text) == ("repetition", '# sku: "ku"')


def test_a_long_pattern_repeated_within_a_line_is_cut() -> None:
    """Seen on a Rails app: a 19-character pattern the model kept repeating."""
    rules = StopRules("  fill_in 'Note', w", "\n", StopConfig(max_lines=8, single_line=True))
    rules.push("ith: 'CreationMode', with: 'CreationMode', with: 'CreationMode', with: 'Crea")
    assert rules.reason == "repetition"
    # One period is kept (counted from where the run began, in the cursor's line).
    assert rules.final_text.count("CreationMod") == 1
