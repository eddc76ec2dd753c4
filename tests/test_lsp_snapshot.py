"""Position conversion of document snapshots, checked against Python's own codecs."""

from __future__ import annotations

import pytest

from rubytailor.errors import DocumentError
from rubytailor.lsp.snapshot import UTF8, UTF16, UTF32, Snapshot, code_units

TEXT = '# é 日本\nname = "😀x"\r\nputs name\rend'
ENCODINGS = [UTF8, UTF16, UTF32]


def reference_units(text: str, encoding: str) -> int:
    """Code units by encoding for real: the reference for ``code_units``."""
    if encoding == UTF8:
        return len(text.encode("utf-8"))
    if encoding == UTF16:
        return len(text.encode("utf-16-le")) // 2
    return len(text.encode("utf-32-le")) // 4


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("text", ["", "abc", "é", "日本語", "😀", "a😀é日"])
def test_code_units_match_the_codecs(text: str, encoding: str) -> None:
    assert code_units(text, encoding) == reference_units(text, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_offset_round_trips_through_a_client_position(encoding: str) -> None:
    snap = Snapshot(uri="file:///t.rb", version=1, text=TEXT, encoding=encoding)
    for offset in range(len(TEXT) + 1):
        if TEXT[offset - 1 : offset + 1] == "\r\n":
            continue  # between \r and \n is not a position any client can name
        line, character = snap.position_at(offset)
        assert snap.offset_at(line, character) == offset
        # The character count is what the client would count in its own encoding.
        line_start = TEXT.rfind("\n", 0, offset)
        line_start = max(line_start, TEXT.rfind("\r", 0, offset)) + 1
        assert character == reference_units(TEXT[line_start:offset], encoding)


def test_lines_break_only_at_lsp_line_endings() -> None:
    # Form feed and U+2028 are line breaks to str.splitlines, not to LSP.
    snap = Snapshot(uri="u", version=1, text="a\x0cb\u2028c\nd", encoding=UTF16)
    assert snap.line_starts == (0, 6)
    assert snap.position_at(5) == (0, 5)
    assert snap.line_text(0) == "a\x0cb\u2028c"


def test_emoji_position_differs_by_encoding() -> None:
    text = 'x = "😀"; y'
    cursor = text.index(";")
    expected = {UTF8: cursor + 3, UTF16: cursor + 1, UTF32: cursor}
    for encoding, character in expected.items():
        snap = Snapshot(uri="u", version=1, text=text, encoding=encoding)
        assert snap.position_at(cursor) == (0, character)
        assert snap.offset_at(0, character) == cursor


def test_character_past_the_line_end_clamps_to_the_end_of_that_line() -> None:
    snap = Snapshot(uri="u", version=1, text="ab\ncd\n", encoding=UTF16)
    assert snap.offset_at(0, 99) == 2
    assert snap.offset_at(2, 5) == 6  # the empty last line


def test_line_past_the_end_is_a_document_error() -> None:
    snap = Snapshot(uri="file:///t.rb", version=7, text="ab\ncd", encoding=UTF16)
    with pytest.raises(DocumentError, match=r"past the end of file:///t\.rb"):
        snap.offset_at(2, 0)


def test_inside_a_surrogate_pair_snaps_to_the_character_start() -> None:
    snap = Snapshot(uri="u", version=1, text="😀a", encoding=UTF16)
    assert snap.offset_at(0, 1) == 0
    assert snap.offset_at(0, 2) == 1


@pytest.mark.parametrize(
    ("line", "word"),
    [("  total = ite", "ite"), ("  @coun", "@coun"), ("  x = ", ""), ("  é日x", "é日x")],
)
def test_word_before_the_cursor(line: str, word: str) -> None:
    snap = Snapshot(uri="u", version=1, text="def a\n" + line, encoding=UTF16)
    assert snap.word_before(len(snap.text)) == word
