"""Ruby stop rules: decide, while text streams in, where a suggestion should end.

The model does not know where the user wants it to stop; these rules do, from the
shape of Ruby code around the cursor:

- single-line mode (cursor mid-line): only the rest of the current line;
- at most ``max_lines`` lines;
- dedent: a line indented less than the cursor's scope belongs to an enclosing block,
  so the suggestion ends before it ("dedent"), or, for a closer (``end``, ``}``...),
  the enclosing block ends ("block_end");
- the block that the cursor line (or the line just above a blank cursor line) opened:
  its closer at the opener's indentation is kept as the last line (so ``def foo`` +
  body + ``end`` works), unless the suffix already closes that block;
- a line identical to the suffix's first non-blank line ("repeats_suffix");
- runaway repetition ("repetition"): a line repeated three times, a block of two or
  more lines repeating the block just before it, or a short pattern repeated many times
  within a line (comments included); the repeats are cut. So that nothing already
  shown has to be taken back, a line that may begin a repeat is held out of ``text``
  until the next lines settle it; ``final_text`` includes it when the stream ends.

Text is judged one character at a time, so the result does not depend on how the
stream is split into pieces. Only what the suggestion adds is judged; the prefix is
read once for the cursor's scope. Ruby is recognised line by line with a small
scanner (strings and comments blanked out), not a parser: Prism checks the result.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from rubytailor.model.outcomes import RuleReason

# Lines of prefix/suffix looked at; enough for scope and indentation style.
CONTEXT_LINES = 200
# A pattern of period 1 repeated this many times in a row is runaway ("))))))))").
MIN_RUN_1 = 8
# Longer patterns: repeated over this many periods ("foo.foo.foo.foo" is 3.75)...
MIN_PERIODS = 3.5
# ...and covering at least this many characters.
MIN_RUN_CHARS = 8
MAX_PERIOD = 32  # "with: 'X', with: 'X', ..." runs over 19 characters
# Characters of the cursor line before the cursor that seed the repeat counters.
RUN_CONTEXT_CHARS = 128
# Identical consecutive non-blank lines that count as runaway.
MAX_SAME_LINES = 3

_STRING = re.compile(r""""(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?|`(?:\\.|[^`\\])*`?""")
_COMMENT = re.compile(r"#.*$")
_TOKEN = re.compile(
    r"(?<![\w.:$@])(def|class|module|if|unless|while|until|case|begin|for|do|end)(?![\w?!:])"
    r"|[{}()\[\]]"
)
_CLOSER_LINE = re.compile(r"^(?:end(?![\w?!:])|[}\])])")
_ENDLESS_DEF = re.compile(r"def\s+(?:self\.)?[A-Za-z_]\w*[?!]?(?:\([^)]*\)\s*|\s+)=(?![=~>])")
# Lines that start another body of the block they are in (`else`, `when x`, `rescue`...).
_MID_BLOCK = re.compile(r"^(?:else|elsif|when|in|rescue|ensure)(?![\w?!:])")
_HEREDOC = re.compile(r"<<([~-]?)([\"'`]?)([A-Za-z_]\w*)\2")
# Text before if/unless/while/until that makes them open a block, not modify a statement.
_STATEMENT_START = ("=", "(", "[", ",", ";", "||", "&&", "|", "{", "!")
_ALWAYS_OPEN = {"def", "class", "module", "case", "begin", "do"}
_LOOPS = {"while", "until", "for"}
# Runs of these are numbers, spacing or comment rulers ("# -----", "# =====", "####").
_RUNAWAY_EXEMPT = set("0123456789,._ \t-=#*~+")

Reason = RuleReason


@dataclass(frozen=True, kw_only=True)
class StopConfig:
    max_lines: int = 8
    # Force single-line suggestions; mid-line positions are single-line regardless.
    single_line: bool = False


def is_single_line_position(prefix: str, suffix: str) -> bool:
    """True when the rest of the cursor's line (in the suffix) has text: complete it only."""
    end = suffix.find("\n")
    rest = suffix if end < 0 else suffix[:end]
    return bool(rest.strip())


@dataclass(frozen=True)
class _Block:
    indent: int
    # True for the block the cursor is in: opened by the cursor line or the line above.
    enclosing: bool


@dataclass(frozen=True)
class _Verdict:
    action: Literal["accept", "accept_stop", "cut_stop"]
    reason: Reason | None = None
    # For line repetition: how many already accepted lines to drop as well.
    drop_lines: int = 0


_ACCEPT = _Verdict("accept")


class StopRules:
    """Feed generated text with ``push``; read the suggestion from ``text``."""

    def __init__(self, prefix: str, suffix: str, config: StopConfig) -> None:
        self._config = config
        self._single_line = config.single_line or is_single_line_position(prefix, suffix)
        before = _last_lines(prefix, CONTEXT_LINES)
        self._unit = _indent_unit(before)
        self._cursor_prefix = before[-1]
        self._cursor_has_text = bool(self._cursor_prefix.strip())
        self._blocks: list[_Block] = []
        self._scope = self._find_scope(before[:-1])
        after = _first_lines(suffix, CONTEXT_LINES)[1:]  # [0] is the cursor line's rest
        self._suffix_lines = after
        self._suffix_first = next((line.strip() for line in after if line.strip()), "")
        self._heredocs: list[tuple[str, bool]] = _open_heredocs(before[:-1])
        self._lines: list[str] = []  # accepted lines, the first one without the cursor prefix
        self._pending = ""
        self._runs = [0] * (MAX_PERIOD + 1)
        self._reason: Reason | None = None
        # Index of the first accepted line that may begin a repeat of the lines before it.
        self._held_from: int | None = None
        self._start_line()

    @property
    def text(self) -> str:
        """What may be shown now: the accepted lines (less any that may begin a repeat)
        plus the unfinished line if it would stay."""
        if self._reason is None and self._held_from is not None:
            shown = self._joined(self._lines[: self._held_from])
            # The shown lines are complete: more (held) lines follow them.
            return shown + "\n" if shown else ""
        return self.final_text

    @property
    def final_text(self) -> str:
        """The suggestion if the stream ended now: held lines are kept, since no repeat
        was completed."""
        lines = [*self._lines, self._pending]
        if self._reason is None:
            verdict = self._judge_pending()
            if verdict.action == "cut_stop":
                lines = lines[: len(lines) - 1 - verdict.drop_lines]
        return self._joined(lines)

    @staticmethod
    def _joined(lines: list[str]) -> str:
        lines = list(lines)
        # Trailing blank lines would only push the suffix down.
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            lines[-1] = lines[-1].rstrip("\r")  # a CRLF line's \r belongs to its newline
        return "\n".join(lines)

    @property
    def reason(self) -> RuleReason | None:
        """Why generation stopped, or would stop at the unfinished line; None if it would not."""
        if self._reason is not None:
            return self._reason
        return self._judge_pending().reason

    @property
    def stopped(self) -> bool:
        return self._reason is not None

    def push(self, piece: str) -> bool:
        """Add generated text; True when generation should stop (nothing more is taken)."""
        for ch in piece:
            if self._reason is not None:
                break
            if ch == "\n":
                self._end_line()
            else:
                self._add_char(ch)
        return self._reason is not None

    # -- per character ----------------------------------------------------------------

    def _add_char(self, ch: str) -> None:
        first_char = not self._pending.strip() and not ch.isspace()
        self._pending += ch
        if self._heredocs:
            return
        full = self._full_line(self._pending, len(self._lines))
        if first_char and not self._single_line and not self._is_cursor_line():
            # Indentation is known at the first visible character: a dedented line that
            # cannot be a closer is cut at once instead of after it is generated.
            indent = _indent_width(full, self._unit)
            if indent < self._scope and ch not in "e}])":
                self._stop(_Verdict("cut_stop", "dedent"))
                return
        cut = self._update_runs(full)
        if cut is not None:
            self._pending = self._pending[: max(cut - len(self._line_prefix()), 0)]
            self._reason = "repetition"

    def _update_runs(self, full: str) -> int | None:
        """Track repeats ending at the new character; return a cut position on runaway."""
        n = len(full) - 1
        for p in range(1, MAX_PERIOD + 1):
            if n >= p and full[n] == full[n - p]:
                self._runs[p] += 1
            else:
                self._runs[p] = 0
            span = self._runs[p] + p
            long_enough = (
                span >= MIN_RUN_1 if p == 1 else span >= MIN_PERIODS * p and span >= MIN_RUN_CHARS
            )
            if not long_enough:
                continue
            unit = full[n - p + 1 :]
            if set(unit) <= _RUNAWAY_EXEMPT:
                continue
            # Keep the first occurrence of the pattern, without a trailing separator
            # ("foo.foo.foo.foo" -> "foo"), and cut the repeats.
            start = n + 1 - span
            kept = full[start : start + p].rstrip(".,; ") or full[start : start + p]
            return start + len(kept)
        return None

    def _end_line(self) -> None:
        if self._single_line:
            self._reason = "newline"
            return
        verdict = self._judge(self._pending, index=len(self._lines))
        if verdict.action == "cut_stop":
            self._stop(verdict)
            return
        self._accept(self._pending, index=len(self._lines))
        if verdict.action == "accept_stop":
            self._reason = verdict.reason
        elif self._cut_repeated_block():
            self._reason = "repetition"
        elif len(self._lines) >= self._config.max_lines:
            self._reason = "max_lines"
        self._start_line()

    def _start_line(self) -> None:
        self._pending = ""
        self._runs = [0] * (MAX_PERIOD + 1)
        if not self._lines:
            # The first line continues the cursor's line: its repeats count too.
            head = len(self._cursor_prefix) - RUN_CONTEXT_CHARS
            for i in range(max(head, 0) + 1, len(self._cursor_prefix) + 1):
                self._update_runs(self._cursor_prefix[:i])

    def _stop(self, verdict: _Verdict) -> None:
        self._pending = ""
        if verdict.drop_lines:
            del self._lines[-verdict.drop_lines :]
        self._reason = verdict.reason

    # -- per line ---------------------------------------------------------------------

    def _judge_pending(self) -> _Verdict:
        """The verdict the unfinished line would get if it ended now."""
        if self._single_line or not self._pending.strip():
            return _ACCEPT
        return self._judge(self._pending, index=len(self._lines))

    def _judge(self, part: str, *, index: int) -> _Verdict:
        """What to do with a completed line (``part`` is what the suggestion wrote of it)."""
        if self._heredocs:
            return _ACCEPT  # heredoc bodies are text, not code
        full = self._full_line(part, index)
        stripped = full.strip()
        if not stripped:
            return _ACCEPT
        if index == 0 and self._cursor_has_text:
            # The cursor's own line: same indentation as the scope by definition.
            if part.strip() and stripped == self._suffix_first:
                return _Verdict("cut_stop", "repeats_suffix")
            return _ACCEPT
        indent = _indent_width(full, self._unit)
        if _CLOSER_LINE.match(stripped):
            block = self._block_at(indent)
            if block is not None and block.enclosing:
                if self._suffix_closes(block.indent):
                    return _Verdict("cut_stop", "block_end")
                return _Verdict("accept_stop", "block_end")
            if block is None and indent < self._scope:
                return _Verdict("cut_stop", "block_end")
            if block is not None:
                return _ACCEPT  # closes a block the suggestion opened
        if indent < self._scope:
            return _Verdict("cut_stop", "dedent")
        if stripped == self._suffix_first:
            return _Verdict("cut_stop", "repeats_suffix")
        drop = self._repeats_before(full.rstrip())
        if drop:
            return _Verdict("cut_stop", "repetition", drop_lines=drop)
        return _ACCEPT

    def _accept(self, part: str, *, index: int) -> None:
        full = self._full_line(part, index)
        self._lines.append(part)
        if self._heredocs:
            terminator, squiggly = self._heredocs[0]
            if (full.strip() if squiggly else full.rstrip()) == terminator:
                self._heredocs.pop(0)
            return
        if not full.strip():
            return
        indent = _indent_width(full, self._unit)
        closes, opens = _block_delta(full)
        if closes and _CLOSER_LINE.match(full.strip()):
            block = self._block_at(indent)
            if block is not None:
                del self._blocks[self._blocks.index(block) :]
        if opens:
            enclosing = index == 0 and self._cursor_has_text
            self._blocks.append(_Block(indent, enclosing))
        self._heredocs.extend(_heredoc_openers(full))

    def _cut_repeated_block(self) -> bool:
        """Drop a block of lines that repeats the block just before it, and update which
        lines are held as a possible repeat. True when a repeat was cut."""
        lines = [self._full_line(part, i).rstrip() for i, part in enumerate(self._lines)]
        n = len(lines)
        held: list[int] = []
        same = [i for i in range(n) if lines[i].strip()]
        if len(same) >= 2 and lines[same[-1]] == lines[same[-2]] and same[-1] == n - 1:
            held.append(same[-1])  # a line equal to the one before: a third one is runaway
        for period in range(2, n):
            run = 0
            while run < n - period and lines[n - 1 - run] == lines[n - 1 - run - period]:
                run += 1
            if run == 0:
                continue
            matched = lines[n - run :]
            if run >= period and sum(1 for line in matched[-period:] if line.strip()) >= 2:
                del self._lines[n - run :]
                self._held_from = None
                return True
            if any(line.strip() for line in matched):
                held.append(n - run)
        self._held_from = min(held) if held else None
        return False

    def _repeats_before(self, line: str) -> int:
        """Lines to drop if ``line`` is the third identical non-blank line in a row, else 0.

        The first occurrence is kept; the second (and anything after it) is dropped.
        """
        occurrences: list[int] = []
        for i in range(len(self._lines) - 1, -1, -1):
            prev = self._full_line(self._lines[i], i)
            if not prev.strip():
                continue
            if prev.rstrip() != line or len(occurrences) == MAX_SAME_LINES - 1:
                break
            occurrences.append(i)
        if len(occurrences) < MAX_SAME_LINES - 1:
            return 0
        return len(self._lines) - occurrences[-2]

    # -- scope ------------------------------------------------------------------------

    def _find_scope(self, above: list[str]) -> int:
        """Indentation of the cursor's scope; records the block a blank cursor line is in."""
        if self._cursor_has_text:
            return _indent_width(self._cursor_prefix, self._unit)
        column = _indent_width(self._cursor_prefix, self._unit)
        prev = next((line for line in reversed(above) if line.strip()), None)
        if prev is None:
            return column
        prev_indent = _indent_width(prev, self._unit)
        if _block_delta(prev)[1] > 0 or _MID_BLOCK.match(prev.strip()):
            self._blocks.append(_Block(prev_indent, True))
            return max(column, prev_indent + self._unit)
        # A blank line at column 0 inside indented code (editors strip blank lines'
        # indentation) continues the code above it.
        return column if column > 0 else prev_indent

    def _block_at(self, indent: int) -> _Block | None:
        for block in reversed(self._blocks):
            if block.indent == indent:
                return block
        return None

    def _suffix_closes(self, indent: int) -> bool:
        """True when the suffix already has the closer of a block opened at ``indent``."""
        for line in self._suffix_lines:
            stripped = line.strip()
            if not stripped:
                continue
            line_indent = _indent_width(line, self._unit)
            if line_indent > indent:
                continue  # the block's existing body
            return line_indent == indent and bool(_CLOSER_LINE.match(stripped))
        return False

    def _is_cursor_line(self) -> bool:
        return not self._lines and self._cursor_has_text

    def _line_prefix(self) -> str:
        return self._cursor_prefix if not self._lines else ""

    def _full_line(self, part: str, index: int) -> str:
        """Line ``index`` of the suggestion as it will read in the document."""
        return self._cursor_prefix + part if index == 0 else part


# -- Ruby, line by line -------------------------------------------------------------


def _code_only(line: str) -> str:
    """The line with string contents and comments removed (approximately)."""
    return _COMMENT.sub("", _STRING.sub('""', line))


def _block_delta(line: str) -> tuple[int, int]:
    """(blocks of earlier lines this line closes, blocks it leaves open)."""
    code = _code_only(line)
    open_here: list[str] = []
    closes = 0
    loop_pending = False
    for match in _TOKEN.finditer(code):
        token = match.group()
        if token in ("end", "}", "]", ")"):
            if open_here:
                open_here.pop()
            else:
                closes += 1
            continue
        if token in ("{", "(", "["):
            open_here.append(token)
            continue
        if token == "do" and loop_pending:
            loop_pending = False  # `while x do`: one block, one end
            continue
        if token == "def" and _ENDLESS_DEF.match(code, match.start()):
            continue
        if token in _ALWAYS_OPEN or _at_statement_start(code[: match.start()]):
            open_here.append(token)
            loop_pending = token in _LOOPS
    return closes, len(open_here)


def _at_statement_start(before: str) -> bool:
    before = before.rstrip()
    return not before or before.endswith(_STATEMENT_START)


def _heredoc_openers(line: str) -> list[tuple[str, bool]]:
    """(terminator, indented terminator allowed) for each heredoc the line starts."""
    code = _COMMENT.sub("", line)
    return [(m.group(3), m.group(1) in ("~", "-")) for m in _HEREDOC.finditer(code)]


def _open_heredocs(lines: list[str]) -> list[tuple[str, bool]]:
    """Heredocs still open at the end of ``lines`` (the cursor is inside their body)."""
    pending: list[tuple[str, bool]] = []
    for line in lines:
        if pending:
            terminator, squiggly = pending[0]
            if (line.strip() if squiggly else line.rstrip()) == terminator:
                pending.pop(0)
            continue
        pending.extend(_heredoc_openers(line))
    return pending


def _indent_width(line: str, unit: int) -> int:
    """Leading whitespace width; a tab is one indentation level."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width += unit
        else:
            break
    return width


def _indent_unit(lines: list[str]) -> int:
    """The file's indentation step in spaces: the most common increase, else 2."""
    steps: Counter[int] = Counter()
    prev: int | None = None
    for line in lines:
        if not line.strip() or line.startswith("\t"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if prev is not None and 0 < indent - prev <= 8:
            steps[indent - prev] += 1
        prev = indent
    return steps.most_common(1)[0][0] if steps else 2


def _last_lines(text: str, count: int) -> list[str]:
    """The last ``count`` lines of ``text`` (the last may be partial), without newlines."""
    start = len(text)
    for _ in range(count):
        start = text.rfind("\n", 0, start)
        if start < 0:
            break
    head = text[start + 1 :] if start >= 0 else text
    return [line.rstrip("\r") for line in head.split("\n")]


def _first_lines(text: str, count: int) -> list[str]:
    end = -1
    for _ in range(count):
        end = text.find("\n", end + 1)
        if end < 0:
            break
    head = text if end < 0 else text[:end]
    return [line.rstrip("\r") for line in head.split("\n")]
