"""Train/validation/test split by source package, never by file, so test code is unseen.

A package's split is a pure function of its name (SHA-256), so adding or removing other
packages never moves it.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "validation", "test"]


def split_for(source: str, validation: float = 0.05, test: float = 0.10) -> Split:
    """The split a whole source package (or directory) belongs to."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < test:
        return "test"
    if point < test + validation:
        return "validation"
    return "train"
