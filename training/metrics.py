"""Completion metrics: exact match and edit similarity, defined exactly.

- ``levenshtein(a, b)``: the minimum number of single-character insertions, deletions
  and substitutions turning ``a`` into ``b`` (unit costs; characters are Python str
  code points).
- ``edit_similarity(pred, ref) = 1 - levenshtein(pred, ref) / max(len(pred), len(ref))``,
  and 1.0 when both are empty. It lies in [0, 1]; 1 means identical.
- ``exact_match(pred, ref)``: the two are equal once trailing whitespace (spaces, tabs,
  newlines) is removed from both; nothing else is normalised.
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Unit-cost edit distance, O(len(a) * len(b)) time, O(min) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(
                min(
                    previous[j] + 1,  # delete ca
                    current[j - 1] + 1,  # insert cb
                    previous[j - 1] + (ca != cb),  # substitute (free if equal)
                )
            )
        previous = current
    return previous[-1]


def edit_similarity(pred: str, ref: str) -> float:
    longest = max(len(pred), len(ref))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(pred, ref) / longest


def exact_match(pred: str, ref: str) -> bool:
    return pred.rstrip() == ref.rstrip()
