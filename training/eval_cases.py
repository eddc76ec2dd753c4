"""Evaluation cases cut from held-out Ruby files, deterministically from a seed.

Line cases: a code line is cut at a random point after its indentation; the rest of
the line is the answer; prefix is everything before the cut and suffix everything from
the line's end (its newline) on.

Multi-line cases: spans of whole statements. The Prism bridge exposes only the error
list, not the tree, so candidates come from indentation and Prism confirms them: a span
starts at a code line (at its first non-blank character) and takes the following lines
indented deeper, plus the closing ``end``/``}``/``]``/``)`` line at the start line's
indentation if there is one; spans of 2 to 8 lines qualify. With a parser given
(``is_complete``, e.g. ``Prism.is_valid``), a span is kept only when it parses on its
own: it then begins and ends on node boundaries (a whole statement, not half of one).
The answer is that text without its final newline.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

MIN_REST_CHARS = 1
MIN_LINE_CHARS = 4
MAX_SPAN_LINES = 8
_CLOSER = re.compile(r"^(end\b|[}\])])")


@dataclass(frozen=True, kw_only=True)
class Case:
    kind: str  # "line" or "multiline"
    source: str  # where the file came from, e.g. "ruby-redis:usr/lib/.../client.rb"
    line: int  # 0-based line of the cursor
    prefix: str
    suffix: str
    answer: str


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _is_code(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= MIN_LINE_CHARS and not stripped.startswith("#")


def is_candidate(line: str) -> bool:
    """A line worth a line case: code, with room for an answer after its indentation."""
    return _is_code(line) and len(line) - _indent(line) > MIN_REST_CHARS


def line_cases(files: list[tuple[str, str]], count: int, seed: int) -> list[Case]:
    """``count`` line-completion cases from ``files`` (name, text), sampled with ``seed``."""
    candidates = [
        (f, i)
        for f, (_, text) in enumerate(files)
        for i, line in enumerate(text.split("\n"))
        if is_candidate(line)
    ]
    return cut_line_cases(files, candidates, count, seed)


def cut_line_cases(
    files: list[tuple[str, str]], candidates: list[tuple[int, int]], count: int, seed: int
) -> list[Case]:
    """``count`` of the candidate (file index, line index) pairs, sampled with ``seed``,
    each cut at a random point after its indentation."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for f, i in rng.sample(candidates, min(count, len(candidates))):
        name, text = files[f]
        lines = text.split("\n")
        line = lines[i]
        cut = rng.randrange(_indent(line), len(line.rstrip()) - MIN_REST_CHARS + 1)
        start = sum(len(x) + 1 for x in lines[:i])
        prefix = text[: start + cut]
        answer = line[cut:]
        suffix = text[start + len(line) :]
        cases.append(
            Case(kind="line", source=name, line=i, prefix=prefix, suffix=suffix, answer=answer)
        )
    return cases


def statement_span(lines: list[str], i: int) -> int | None:
    """The index one past the last line of the statement starting at line ``i``, or None."""
    base = _indent(lines[i])
    end = i + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > i + 1 and not lines[end - 1].strip():  # no trailing blank lines
        end -= 1
    if end < len(lines) and _indent(lines[end]) == base and _CLOSER.match(lines[end].strip()):
        end += 1
    return end if 2 <= end - i <= MAX_SPAN_LINES else None


def multiline_cases(
    files: list[tuple[str, str]],
    count: int,
    seed: int,
    is_complete: Callable[[str], bool] | None = None,
) -> list[Case]:
    """``count`` multi-line cases: whole statements (see the module docstring)."""
    rng = random.Random(seed + 1)
    candidates: list[tuple[int, int, int]] = []
    for f, (_, text) in enumerate(files):
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if _is_code(line):
                end = statement_span(lines, i)
                if end is not None:
                    candidates.append((f, i, end))
    rng.shuffle(candidates)  # a deterministic order to draw from until ``count`` are kept
    cases: list[Case] = []
    for f, i, end in candidates:
        if len(cases) >= count:
            break
        name, text = files[f]
        lines = text.split("\n")
        start = sum(len(x) + 1 for x in lines[:i]) + _indent(lines[i])
        stop = sum(len(x) + 1 for x in lines[:end]) - 1
        if is_complete is not None and not is_complete(text[start:stop]):
            continue
        cases.append(
            Case(
                kind="multiline",
                source=name,
                line=i,
                prefix=text[:start],
                suffix=text[stop:],
                answer=text[start:stop],
            )
        )
    return cases
