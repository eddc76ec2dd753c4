"""Typing scenarios cut from real Ruby files, shared by the demo and the latency benchmark.

A scenario takes one line of a file, deletes it from its indentation onwards, and puts
the cursor there: what the user would then type is the line's text. Replaying it sends
one keystroke at a time through a real LSP session and asks for a suggestion after
each, as an editor with ghost text does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class TypingScenario:
    path: Path
    text: str  # the document with the line's content removed
    line: int  # 0-based line of the cursor
    column: int  # the line's indentation, where typing starts
    typed: str  # what the user types: the removed content


def scenarios_from_file(path: Path, count: int, seed: int = 0) -> list[TypingScenario]:
    """``count`` scenarios from lines of ``path`` that carry code (not blank, not comments)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    candidates = [
        i
        for i, line in enumerate(lines)
        if len(line.strip()) >= 6 and not line.lstrip().startswith("#")
    ]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, min(count, len(candidates))))
    scenarios = []
    for i in chosen:
        line = lines[i]
        body = line.rstrip("\n")
        indent = len(body) - len(body.lstrip())
        kept = [*lines[:i], body[:indent] + "\n", *lines[i + 1 :]]
        scenarios.append(
            TypingScenario(
                path=path, text="".join(kept), line=i, column=indent, typed=body[indent:]
            )
        )
    return scenarios
