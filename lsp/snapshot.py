"""Immutable document snapshots and position conversion in the negotiated encoding.

A request takes a snapshot when it starts and never reads the live document again, so
an edit that arrives while the model is generating cannot shift the text under it.

Positions: LSP lines end at "\\n", "\\r\\n" or "\\r" (nothing else, unlike
``str.splitlines``); ``character`` counts code units of the negotiated encoding:
UTF-16 (VS Code, the default), UTF-8 (Neovim) or UTF-32 (code points).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import cached_property

from rubytailor.errors import DocumentError

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"


def code_units(text: str, encoding: str) -> int:
    """Length of ``text`` in the code units of ``encoding``."""
    if encoding == UTF32:
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    # UTF-16: characters outside the Basic Multilingual Plane take two units.
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    uri: str
    version: int | None
    text: str
    encoding: str = UTF16

    @cached_property
    def line_starts(self) -> tuple[int, ...]:
        """Index into ``text`` where each line starts; line n runs to line n+1's start."""
        return (0, *(m.end() for m in _LINE_BREAK.finditer(self.text)))

    def line_text(self, line: int) -> str:
        """The line's text without its line break."""
        starts = self.line_starts
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        return self.text[starts[line] : end].rstrip("\r\n")

    def offset_at(self, line: int, character: int) -> int:
        """Index into ``text`` of a client position.

        A ``character`` past the end of its line means the end of the line (as the LSP
        specification says); a ``line`` past the end of the document is a DocumentError,
        which handlers answer as InvalidParams, since no client means that.
        """
        starts = self.line_starts
        if line < 0 or character < 0:
            raise DocumentError(f"position {line}:{character} is negative")
        if line >= len(starts):
            raise DocumentError(
                f"position {line}:{character} is past the end of {self.uri} "
                f"(version {self.version} has {len(starts)} lines)"
            )
        text = self.line_text(line)
        if self.encoding == UTF32:
            return starts[line] + min(character, len(text))
        units = 0
        for index, ch in enumerate(text):
            width = code_units(ch, self.encoding)
            # A position inside a character (half a surrogate pair) snaps to its start.
            if units + width > character:
                return starts[line] + index
            units += width
        return starts[line] + len(text)

    def position_at(self, offset: int) -> tuple[int, int]:
        """(line, character) in client units of an index into ``text``."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.line_starts, offset) - 1
        start = self.line_starts[line]
        return line, code_units(self.text[start:offset], self.encoding)

    def word_before(self, offset: int) -> str:
        """The identifier-like text that ends at ``offset`` on its line (for filtering)."""
        line, _ = self.position_at(offset)
        head = self.text[self.line_starts[line] : offset]
        match = _WORD_TAIL.search(head)
        return match.group(0) if match else ""


# Ruby identifiers with their instance/class/global variable sigils.
_WORD_TAIL = re.compile(r"[@$]*\w*$")
