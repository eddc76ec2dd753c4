"""How a completion ended, named once: its verdict, its source and why it stopped.

These values go into the per-request log line and the ``rubytailor/inlineStream``
result, so editors, tests and ``rubytailor eval`` read the same words. They are
``StrEnum`` members: they compare equal to, and serialize as, their plain strings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Verdict(StrEnum):
    """What the Prism check (or the path around it) made of a suggestion."""

    OK = "ok"  # adds no syntax error
    TRIMMED = "trimmed"  # cut back to its longest run of lines that adds none
    DROPPED = "dropped"  # every candidate added an error: nothing is shown
    EMPTY = "empty"  # the model suggested nothing
    CACHED = "cached"  # answered from the suggestion cache, checked when first made
    UNCHECKED = "unchecked"  # Prism is unavailable
    LOW_CONFIDENCE = "low_confidence"  # held back by the minConfidence gate
    CANCELLED = "cancelled"
    NONE = "none"  # no model loaded


class Source(StrEnum):
    MODEL = "model"
    TYPED_THROUGH = "typed_through"  # the user typed the head of the last suggestion
    EXACT = "exact"  # the same text around the cursor as an earlier request
    NONE = "none"


# Why the stop rules ended a suggestion (model/stop_rules.py).
RuleReason = Literal["newline", "max_lines", "block_end", "dedent", "repeats_suffix", "repetition"]
# Why the backend's stream ended (model/backends/base.py GenerationStats.stopped_by).
StreamEnd = Literal["eos", "max_tokens", "cancelled", "caller", ""]
# Any reason a result carries: a rule, the stream's end, a FIM marker written as text
# ("stop_string"), the confidence gate, or no model at all.
StopReason = RuleReason | StreamEnd | Literal["stop_string", "no_model", "low_confidence"]
