"""Baselines that give the model's numbers a meaning, evaluated on the same cases.

``copy_line``: complete the cursor line by copying the rest of another line of the same
file that starts the same way (same text after indentation): the nearest such line
above the cursor, else the nearest below. No match, or nothing typed after the
indentation yet: an empty suggestion.
"""

from __future__ import annotations

from rubytailor.training.eval_cases import Case


def copy_line(case: Case) -> str:
    typed = case.prefix[case.prefix.rfind("\n") + 1 :].lstrip(" \t")
    if not typed:
        return ""
    above = case.prefix.split("\n")[:-1]
    below = case.suffix.split("\n")[1:]
    for line in [*reversed(above), *below]:
        body = line.lstrip(" \t").rstrip("\r")
        if body.startswith(typed) and len(body) > len(typed):
            return body[len(typed) :]
    return ""
