"""rubytailor.prism: Prism (prism.wasm) run through wasmtime, read back as diagnostics."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from rubytailor.errors import PrismError
from rubytailor.paths import prism_wasm_path
from rubytailor.prism import MAX_RETAINED_MEMORY, Prism, SyntaxDiagnostic, byte_offset_to_position


@pytest.fixture(scope="module")
def prism() -> Prism:
    if not prism_wasm_path().is_file():
        pytest.skip(f"prism.wasm not fetched at {prism_wasm_path()}: run `make setup`")
    return Prism.load()


def covering(errors: list[SyntaxDiagnostic], start: int, end: int) -> list[SyntaxDiagnostic]:
    """The errors whose location overlaps bytes [start, end) (or sits exactly at start)."""
    return [e for e in errors if e.start < end and e.start + e.length >= start]


# --- valid and broken Ruby -------------------------------------------------------------

VALID = [
    "",
    "puts 'hello'\n",
    "class Greeter\n  def initialize(name)\n    @name = name\n  end\n\n"
    '  def greet = "Hello, #{@name}!"\nend\n',
    "[1, 2, 3].each_with_object({}) { |i, h| h[i] = i * 2 }\n",
    "case [1, [2, 3]]\nin [Integer => a, [b, *c]]\n  a + b\nend\n",
    "<<~SQL\n  SELECT 1\nSQL\n",
]


@pytest.mark.parametrize("source", VALID)
def test_valid_ruby_has_no_errors(prism: Prism, source: str) -> None:
    assert prism.errors(source) == []
    assert prism.is_valid(source)


def test_unclosed_parameter_list_points_at_the_end_and_at_def(prism: Prism) -> None:
    source = "def foo("
    errors = prism.errors(source)
    assert not prism.is_valid(source)
    # One error at end of input (the missing ")"), one on the `def` that lacks an `end`.
    assert any(e.start == len(source) and "`)`" in e.message for e in errors)
    assert any(e.start == 0 and e.length == 3 and "end" in e.message for e in errors)


def test_unclosed_do_block_points_at_do(prism: Prism) -> None:
    source = "items.each do |item|\n  puts item\n"
    do = source.index("do")
    errors = covering(prism.errors(source), do, do + 2)
    assert errors and all("end" in e.message for e in errors)


def test_stray_end_points_at_the_end_keyword(prism: Prism) -> None:
    source = "x = 1\nputs x\nend\n"
    errors = prism.errors(source)
    stray = source.rindex("end")
    assert errors
    assert all((e.start, e.length) == (stray, 3) for e in errors)
    assert errors[0].start_position(source) == (2, 0)


def test_warnings_are_reported_apart_from_errors(prism: Prism) -> None:
    source = "def f\n  unused = 1\n  2\nend\n"
    diagnostics = prism.diagnostics(source)
    assert prism.errors(source) == []
    warnings = [d for d in diagnostics if d.level == "warning"]
    assert any("unused" in w.message for w in warnings)
    assert warnings[0].start == source.index("unused")


# --- offsets in text that is not ASCII --------------------------------------------------


def test_offsets_are_utf8_bytes_and_positions_count_characters(prism: Prism) -> None:
    source = 'name = "日本語😀"\nputs name)\n'
    errors = prism.errors(source)
    paren_chars = source.index(")")
    paren_bytes = len(source[:paren_chars].encode())
    assert paren_bytes != paren_chars  # the test is only meaningful with multibyte text
    assert errors and all(e.start == paren_bytes for e in errors)
    assert errors[0].start_position(source) == (1, 9)
    assert errors[0].end_position(source) == (1, 10)


def test_error_after_emoji_on_the_same_line(prism: Prism) -> None:
    source = 'x = ["😀", "é",, 1]\n'
    errors = prism.errors(source)
    double_comma = source.index(",,")
    assert any(e.start_position(source) == (0, double_comma + 1) for e in errors)


def test_byte_offset_to_position_inside_a_multibyte_character() -> None:
    text = "a😀b\nc"
    # The emoji is bytes 1..4; offsets inside it map to the emoji itself.
    assert byte_offset_to_position(text, 1) == (0, 1)
    assert byte_offset_to_position(text, 3) == (0, 1)
    assert byte_offset_to_position(text, 5) == (0, 2)
    assert byte_offset_to_position(text, 7) == (1, 0)
    assert byte_offset_to_position(text, 100) == (1, 1)


def test_lone_surrogates_are_invalid_characters_not_a_crash(prism: Prism) -> None:
    source = "x = 1\n\ud800\n"
    errors = prism.errors(source)
    assert errors
    assert {e.start_position(source) for e in errors} == {(1, 0)}


def test_nul_byte_ends_the_script_like_ruby(prism: Prism) -> None:
    # Ruby stops reading at NUL; what follows is not parsed.
    assert prism.is_valid("x = 1\0 def (\n")
    assert not prism.is_valid("def (\0 x = 1\n")


# --- big inputs, memory and failures ----------------------------------------------------


def test_five_megabyte_file(prism: Prism) -> None:
    unit = "def method_%d(a, b = {}, *rest, **opts, &blk)\n  [a, b, rest].map { _1.to_s }\nend\n"
    body = "".join(unit % i for i in range(70_000))
    source = body + "oops = (\n"
    assert len(source.encode()) > 5_000_000
    errors = prism.errors(source)
    assert errors
    assert all(e.start >= len(body) for e in errors)
    assert errors[0].start_position(source)[0] == body.count("\n")
    # The instance gives a big file's memory back instead of keeping it for good.
    assert prism.memory_bytes <= MAX_RETAINED_MEMORY


def test_memory_stays_bounded_over_2000_parses(prism: Prism) -> None:
    sources = [
        f"def m{i}(x)\n  x.each do |y|\n    puts y * {i}\n  end\nend\n" * 20 for i in range(10)
    ] + ["def broken(\n" * 50]
    for source in sources:
        prism.errors(source)
    warm = prism.memory_bytes
    for i in range(2000):
        prism.errors(sources[i % len(sources)])
    # Leaking one source buffer per parse would add about 2 MB; one 64 KiB page of slack.
    assert prism.memory_bytes <= warm + 65536


def test_a_trap_raises_prism_error_and_the_next_call_works(prism: Prism) -> None:
    # Deep nesting exhausts the wasm call stack: a trap inside Prism.
    with pytest.raises(PrismError, match="not syntax-checked"):
        prism.errors("[" * 200_000)
    errors = prism.errors("def foo(")
    assert any("`)`" in e.message for e in errors)
    assert prism.is_valid("puts 1\n")


def test_unreadable_output_retires_the_instance(
    prism: Prism, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output Prism cannot have written whole (a real case: error recovery deep enough to
    overflow prism.wasm's stack left a NULL output buffer, and later documents trapped)
    means a damaged instance: the next document gets a fresh one."""
    import rubytailor.prism as bridge

    def unreadable(data: bytes) -> list[Any]:
        raise PrismError("prism.wasm returned output in an unknown format")

    before = prism._store
    with monkeypatch.context() as patch:
        patch.setattr(bridge, "_read_diagnostics", unreadable)
        with pytest.raises(PrismError, match="unknown format"):
            prism.errors("puts 1\n")
    assert prism._store is not before
    assert prism.is_valid("puts 1\n") and not prism.is_valid("def foo(")


def test_two_threads_get_their_own_results(prism: Prism) -> None:
    valid = "def ok(x)\n  x + 1\nend\n" * 50
    broken = "def bad(x)\n  x +\n" * 50
    failures: list[str] = []

    def work(source: str, expect_valid: bool) -> None:
        for _ in range(100):
            if prism.is_valid(source) != expect_valid:
                failures.append(source[:10])

    threads = [
        threading.Thread(target=work, args=args) for args in [(valid, True), (broken, False)]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- loading -----------------------------------------------------------------------------


def test_missing_wasm_tells_the_user_to_run_make_setup(tmp_path: Path) -> None:
    with pytest.raises(PrismError, match="make setup") as info:
        Prism.load(tmp_path / "prism.wasm")
    assert str(tmp_path / "prism.wasm") in str(info.value)


def test_default_path_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUBYTAILOR_PRISM_WASM", str(tmp_path / "elsewhere.wasm"))
    with pytest.raises(PrismError, match=r"elsewhere\.wasm"):
        Prism.load()


def test_wasm_with_the_wrong_hash_is_refused(tmp_path: Path, prism: Prism) -> None:
    tampered = tmp_path / "prism.wasm"
    data = bytearray(prism_wasm_path().read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(PrismError, match="make setup"):
        Prism.load(tampered)


def test_two_instances_are_independent(prism: Prism) -> None:
    other = Prism.load()
    assert other is not prism
    assert not other.is_valid("def foo(")
    assert prism.is_valid("def foo; end")


# --- agreement with the reference parser ------------------------------------------------

RUBY_C_SNIPPETS = [
    # Ruby 3.0/3.1 syntax
    "def square(x) = x * x\n",
    "x = 1\ny = 2\nh = {x:, y:}\n",
    "def fwd(&) = bar(&)\n",
    "v = 2\ncase 2\nin ^(1 + 1) then :two\nend\n",
    "42 => answer\n",
    "[1, 2].map { _1 * 2 }\n",
    "def m(...) = other(...)\n",
    "puts 'héllo 😀'\n",
    # broken
    "def foo(\n",
    "items.each do |i|\n  puts i\n",
    "x = 1\nend\n",
    "x = \n",
    "{a: 1,,}\n",
    "foo(1, 2\n",
    '"unterminated\n',
    "if x\n  1\nelse\n  2\n",
]


@pytest.mark.skipif(
    shutil.which("ruby") is None, reason="ruby is not installed (apt-get install ruby)"
)
@pytest.mark.parametrize("source", RUBY_C_SNIPPETS)
def test_validity_agrees_with_ruby_c(prism: Prism, source: str) -> None:
    ruby = subprocess.run(["ruby", "-c"], input=source.encode(), capture_output=True, timeout=30)
    assert prism.is_valid(source) == (ruby.returncode == 0), ruby.stderr.decode()
