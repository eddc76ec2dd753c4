"""What an editor does with LSP positions, written independently of the server's code:
the reference the server's document text is compared with."""

from __future__ import annotations

import random
from typing import Any

# Characters str.splitlines treats as line breaks and LSP does not.
ODD_BREAKS = "\u2028\u2029\f\v\x85\x1c\x1d\x1e"


def reference_lines(text: str) -> list[str]:
    """LSP lines with their breaks ("\\n", "\\r\\n", "\\r" only)."""
    lines, current, i = [], "", 0
    while i < len(text):
        if text.startswith("\r\n", i):
            lines.append(current + "\r\n")
            current, i = "", i + 2
            continue
        current += text[i]
        if text[i] in "\r\n":
            lines.append(current)
            current = ""
        i += 1
    return [*lines, current]


def units(text: str, encoding: str) -> int:
    if encoding == "utf-32":
        return len(text)
    if encoding == "utf-16":
        return len(text.encode("utf-16-le")) // 2
    return len(text.encode("utf-8"))


def reference_offset(text: str, line: int, character: int, encoding: str) -> int:
    lines = reference_lines(text)
    if line >= len(lines):
        return len(text)
    before = sum(len(x) for x in lines[:line])
    content = lines[line].rstrip("\r\n")
    for index in range(len(content) + 1):
        if units(content[:index], encoding) >= character or index == len(content):
            return before + index
    raise AssertionError("unreachable")


def reference_apply(text: str, change: dict[str, Any], encoding: str) -> str:
    if "range" not in change:
        return str(change["text"])
    rng = change["range"]
    start = reference_offset(text, rng["start"]["line"], rng["start"]["character"], encoding)
    end = reference_offset(text, rng["end"]["line"], rng["end"]["character"], encoding)
    return text[:start] + change["text"] + text[end:]


def random_position(text: str, rng: random.Random, encoding: str) -> dict[str, int]:
    """A position an editor could send: on a character boundary, now and then past the
    end of its line or (one line) past the end of the document, which clients do send."""
    lines = reference_lines(text)
    line = rng.randrange(len(lines) + (1 if rng.random() < 0.05 else 0))
    if line == len(lines):
        return {"line": line, "character": 0}
    content = lines[line].rstrip("\r\n")
    if rng.random() < 0.1:
        return {"line": line, "character": units(content, encoding) + rng.randrange(1, 5)}
    index = rng.randrange(len(content) + 1)
    return {"line": line, "character": units(content[:index], encoding)}


ALPHABET = "ab =\n\n\r\r\n\té€😀\U0001f600𝄞ß" + ODD_BREAKS


def random_text(rng: random.Random, size: int) -> str:
    pieces = [rng.choice(ALPHABET) for _ in range(size)]
    return "".join(pieces)


def random_change(text: str, rng: random.Random, encoding: str) -> dict[str, Any]:
    """An incremental change (now and then a whole-document one)."""
    if rng.random() < 0.03:
        return {"text": random_text(rng, rng.randrange(40))}
    a, b = random_position(text, rng, encoding), random_position(text, rng, encoding)
    start, end = sorted((a, b), key=lambda p: (p["line"], p["character"]))
    return {"range": {"start": start, "end": end}, "text": random_text(rng, rng.randrange(6))}
