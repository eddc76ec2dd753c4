"""The prompt builder: prefix and suffix of a document -> one FIM prompt under a token budget.

A pure function, shared by the server and the trainer so that what the model is trained
on and what it is asked at serving time can never drift apart.

Order. SPM (suffix, then prefix) is the default for models trained with it: the
prompt then ends with the prefix, and typing only appends to the prefix, so a backend
can keep its KV cache and evaluate only the new tokens. PSM is the classic order and
the only one most published models understand.

  SPM: <prefix-marker><suffix-marker>{suffix}<middle-marker>{prefix}   -> middle
  PSM: <prefix-marker>{prefix}<suffix-marker>{suffix}<middle-marker>   -> middle

Windowing. The prefix keeps whole lines from the end. Its first line is snapped to a
multiple of ``PREFIX_WINDOW_STEP`` lines, so the window start stays put while the user
types and only jumps every few dozen lines: the prompt stays cache-friendly without
the builder having to remember anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rubytailor.model.fim import FimFormat, FimOrder

PREFIX_WINDOW_STEP = 16

TokenCounter = Callable[[str], int]


@dataclass(frozen=True, kw_only=True)
class PromptBudget:
    max_prompt_tokens: int = 1024
    # At most this share of the budget goes to the suffix; what it leaves goes to the prefix.
    suffix_share: float = 0.25


@dataclass(frozen=True, kw_only=True)
class Prompt:
    text: str
    prefix: str  # the part of the document's prefix that made it into the prompt
    suffix: str  # likewise for the suffix
    order: FimOrder
    estimated_tokens: int


def assemble(prefix: str, suffix: str, fmt: FimFormat, order: FimOrder) -> str:
    """The prompt text for a prefix and suffix that already fit the budget."""
    if order == "spm":
        return f"{fmt.prefix}{fmt.suffix}{suffix}{fmt.middle}{prefix}"
    return f"{fmt.prefix}{prefix}{fmt.suffix}{suffix}{fmt.middle}"


def training_text(prefix: str, middle: str, suffix: str, fmt: FimFormat, order: FimOrder) -> str:
    """One FIM training example: the serving prompt, then the answer, then end-of-text."""
    return assemble(prefix, suffix, fmt, order) + middle + fmt.eos[0]


def build_prompt(
    prefix: str,
    suffix: str,
    fmt: FimFormat,
    budget: PromptBudget,
    count_tokens: TokenCounter,
    order: FimOrder = "spm",
) -> Prompt:
    """Fit ``prefix`` and ``suffix`` into ``budget`` and assemble the FIM prompt."""
    markers = count_tokens(assemble("", "", fmt, order))
    available = max(budget.max_prompt_tokens - markers, 1)
    suffix_cap = int(available * budget.suffix_share)
    kept_suffix, suffix_tokens = _head_lines(suffix, suffix_cap, count_tokens)
    kept_prefix, prefix_tokens = _tail_lines(prefix, available - suffix_tokens, count_tokens)
    return Prompt(
        text=assemble(kept_prefix, kept_suffix, fmt, order),
        prefix=kept_prefix,
        suffix=kept_suffix,
        order=order,
        estimated_tokens=markers + prefix_tokens + suffix_tokens,
    )


def _head_lines(text: str, cap: int, count_tokens: TokenCounter) -> tuple[str, int]:
    """The longest run of whole lines from the start of ``text`` within ``cap`` tokens."""
    kept: list[str] = []
    used = 0
    for line in text.splitlines(keepends=True):
        cost = count_tokens(line)
        if used + cost > cap:
            break
        kept.append(line)
        used += cost
    return "".join(kept), used


def _tail_lines(text: str, cap: int, count_tokens: TokenCounter) -> tuple[str, int]:
    """Whole lines from the end of ``text`` within ``cap`` tokens, start snapped to a step.

    The last (cursor) line is always kept; if it alone is over the cap, its head is cut.
    """
    lines = text.splitlines(keepends=True)
    if not lines:
        return "", 0
    costs: list[int] = []
    used = 0
    start = len(lines)
    while start > 0:
        cost = count_tokens(lines[start - 1])
        if used + cost > cap and start < len(lines):
            break
        costs.append(cost)
        used += cost
        start -= 1
    if start == len(lines) - 1 and used > cap:
        last = lines[-1]
        # Rough cut for one enormous line: about 3 characters per token, then shrink until
        # it fits (text like CJK or emoji can cost a token per byte).
        tail = last[-max(cap * 3, 1) :]
        cost = count_tokens(tail)
        while cost > cap and len(tail) > 1:
            tail = tail[-min(len(tail) - 1, max(len(tail) * cap // cost, 1)) :]
            cost = count_tokens(tail)
        return tail, cost
    # Snap the window start forward to the next multiple of the step (never past the last line).
    snapped = min(-(-start // PREFIX_WINDOW_STEP) * PREFIX_WINDOW_STEP, len(lines) - 1)
    dropped = sum(costs[len(lines) - snapped :]) if snapped > start else 0
    return "".join(lines[snapped:]), used - dropped
