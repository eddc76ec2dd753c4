"""Fill-in-the-middle formats: the special tokens each model family uses, kept as data.

The formats live in ``fim_formats.json`` beside this file so a new family is a data
change. A model directory names its format in ``rubytailor.json``; for a model without
one, ``detect_format`` recognises the family from the tokenizer's special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

FIM_FORMATS_FILE = Path(__file__).with_name("fim_formats.json")

FimOrder = Literal["spm", "psm"]


@dataclass(frozen=True, kw_only=True)
class FimFormat:
    name: str
    prefix: str
    suffix: str
    middle: str
    eos: tuple[str, ...]
    file_separator: str = ""
    pad: str = ""

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Every marker of this format, for tokenizers and for stopping generation."""
        marks = (self.prefix, self.suffix, self.middle, *self.eos, self.file_separator, self.pad)
        return tuple(m.strip() for m in marks if m.strip())

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends a suggestion when the model writes it."""
        marks = (*self.eos, self.file_separator, self.prefix, self.suffix, self.middle, self.pad)
        return tuple(m.strip() for m in marks if m.strip())


@cache
def all_formats() -> dict[str, FimFormat]:
    data = json.loads(FIM_FORMATS_FILE.read_text(encoding="utf-8"))
    return {
        name: FimFormat(
            name=name,
            prefix=spec["prefix"],
            suffix=spec["suffix"],
            middle=spec["middle"],
            eos=tuple(spec["eos"]),
            file_separator=spec.get("file_separator", ""),
            pad=spec.get("pad", ""),
        )
        for name, spec in data["formats"].items()
    }


def get_format(name: str) -> FimFormat:
    formats = all_formats()
    if name not in formats:
        known = ", ".join(sorted(formats))
        raise KeyError(f"unknown FIM format {name!r}; known formats: {known}")
    return formats[name]


def detect_format(special_tokens: Iterable[str]) -> FimFormat | None:
    """The format whose prefix, suffix and middle markers are all in ``special_tokens``."""
    present = set(special_tokens)
    for fmt in all_formats().values():
        if {fmt.prefix.strip(), fmt.suffix.strip(), fmt.middle.strip()} <= present:
            return fmt
    return None
