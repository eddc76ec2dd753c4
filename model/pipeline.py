"""One completion request through every stage, the same for the server, `complete`,
`doctor` and `eval`:

    prompt (model/prompt) -> backend.stream (project memory mixed into each token's
    choice, model/project_memory) -> FIM markers cut -> stop rules (model/stop_rules)
    -> Prism streaming check (model/syntax_check) -> confidence gate -> result

The confidence of a suggestion is the probability of its least likely token (in the
distribution it was chosen from, memory mixed in). A line is released, and a suggestion
shown, only while that reaches ``min_confidence``: what falls short ends the suggestion.

``run`` is that function. It owns no state: the model, Prism and the suggestion cache
belong to ``model/completer.py``, which calls ``run`` on a cache miss. Partial text is
handed out through ``on_partial`` as soon as Prism has validated it; the deltas passed
to ``on_partial`` followed by ``result.final_delta`` concatenate to ``result.text``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from rubytailor.model.backends.base import (
    Backend,
    CancelToken,
    GenerationParams,
    GenerationStats,
    Prefills,
)
from rubytailor.model.fim import get_format
from rubytailor.model.outcomes import Source, StopReason, Verdict
from rubytailor.model.project_memory import MemoryRequest, ProjectMemory
from rubytailor.model.prompt import PromptBudget, build_prompt
from rubytailor.model.stop_rules import StopConfig, StopRules, is_single_line_position
from rubytailor.model.syntax_check import StreamingCheck
from rubytailor.prism import Prism

logger = logging.getLogger(__name__)

# The smallest prompt budget worth sending, whatever the settings and context length say.
MIN_PROMPT_TOKENS = 16
# Most tokens for a single-line suggestion (about 110 characters of Ruby). On the bundled
# 256-token model the 32 tokens this frees for the prompt raised line exact match with
# project memory from 26.0 to 27.3 % and 22.0 to 24.7 % on two held-out Rails apps.
SINGLE_LINE_MAX_TOKENS = 32


@dataclass(frozen=True, kw_only=True)
class CompletionRequest:
    doc_key: str  # the document's URI (or path, from the CLI)
    version: int | None
    text: str  # the full document, as it was when the request started
    offset: int  # cursor, as an index into ``text``
    max_lines: int = 8
    max_tokens: int = 64
    max_prompt_tokens: int = 1024
    # None: single-line when the rest of the cursor's line has text (the editor's case);
    # True asks for one line anywhere (eval's line cases).
    single_line: bool | None = None
    token_healing: bool = True
    project_memory: bool = True  # used when the caller has a ProjectMemory
    memory_key: str | None = None  # the document's key in the workspace index (its path)
    min_confidence: float = 0.0


@dataclass(frozen=True, kw_only=True)
class CompletionResult:
    text: str  # the suggestion to insert at the cursor ("" for none)
    # The tail of ``text`` that was not handed to ``on_partial``; sent with done=true.
    final_delta: str
    verdict: Verdict
    source: Source
    # What the stop rules left before the Prism check (eval's "raw" suggestion).
    unchecked_text: str = ""
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    ttft_ms: float | None = None  # to the first released partial, else to the result
    total_ms: float = 0.0
    cancelled: bool = False
    stop_reason: StopReason = ""
    # The least likely token's probability (None: nothing generated), and the mean share
    # of each token's distribution that came from project memory.
    confidence: float | None = None
    memory_share: float = 0.0
    model_id: str = "none"
    # Speculative decoding (model/backends/token_loop.py): tokens drafted from the
    # project memory, and how many of them the model's greedy choice kept.
    drafted_tokens: int = 0
    accepted_drafts: int = 0


@dataclass(frozen=True)
class Prepared:
    """What a request asks of the backend: its prompt, the generation parameters, and
    the prefix/suffix split that the stop rules and the syntax check judge against."""

    prefix: str
    suffix: str
    prompt: str
    params: GenerationParams
    single_line: bool


def prepare(
    backend: Backend, request: CompletionRequest, memory: ProjectMemory | None = None
) -> Prepared:
    """The prompt and generation parameters for ``request`` (shared by ``run`` and
    ``prewarm``, so a pre-warmed prompt is exactly the one the request will send)."""
    prefix, suffix = request.text[: request.offset], request.text[request.offset :]
    fmt = get_format(backend.fim_format)
    single_line = request.single_line or is_single_line_position(prefix, suffix)
    # One line needs few tokens; what it does not need goes to the prompt.
    max_tokens = (
        min(request.max_tokens, SINGLE_LINE_MAX_TOKENS) if single_line else request.max_tokens
    )
    # The prompt and the generation share the model's context window.
    budget_tokens = min(request.max_prompt_tokens, backend.context_length - max_tokens)
    prompt = build_prompt(
        prefix,
        suffix,
        fmt,
        PromptBudget(max_prompt_tokens=max(budget_tokens, MIN_PROMPT_TOKENS)),
        backend.count_tokens,
        order="psm" if backend.fim_order == "psm" else "spm",
    )
    params = GenerationParams(
        max_new_tokens=max_tokens,
        token_healing=request.token_healing,
        memory=MemoryRequest(memory, prefix, suffix, request.memory_key)
        if memory is not None and request.project_memory
        else None,
    )
    return Prepared(prefix, suffix, prompt.text, params, single_line)


def prewarm(
    backend: Backend,
    request: CompletionRequest,
    cancel: CancelToken,
    memory: ProjectMemory | None = None,
) -> int:
    """Evaluate the prompt ``request`` will send into the backend's KV cache, so the
    suggestion there starts warm; stops within one small batch of ``cancel``. Returns
    the prompt tokens evaluated (0 for a backend that cannot pre-fill)."""
    if not isinstance(backend, Prefills):
        return 0
    prepared = prepare(backend, request, memory)
    return backend.prefill(prepared.prompt, prepared.params, cancel)


def run(
    backend: Backend,
    prism: Prism | None,
    request: CompletionRequest,
    on_partial: Callable[[str], None],
    cancel: CancelToken,
    memory: ProjectMemory | None = None,
) -> CompletionResult:
    """The suggestion at ``request.offset``; without Prism it is unchecked."""
    started = time.perf_counter()
    prepared = prepare(backend, request, memory)
    prefix, suffix, params = prepared.prefix, prepared.suffix, prepared.params
    fmt = get_format(backend.fim_format)
    rules = StopRules(
        prefix, suffix, StopConfig(max_lines=request.max_lines, single_line=prepared.single_line)
    )
    check = StreamingCheck(prism, prefix, suffix) if prism is not None else None
    stats = GenerationStats()
    markers = _StopStrings(fmt.stop_strings)
    released = ""
    ttft_ms: float | None = None
    stop_reason: StopReason | None = None
    gated = False
    # The confidence so far, and what it was when each line of the stream ended: a line
    # is released once the next one begins, and is judged by its own tokens.
    line_confidence: list[float] = []

    def confidence_now() -> float:
        return min(stats.token_probs) if stats.token_probs else 1.0

    def accept(piece: str) -> bool:
        """Feed one piece through the stop rules and Prism; True means stop."""
        nonlocal released, ttft_ms, gated
        stop = rules.push(piece) if piece else False
        head = piece.split("\n")
        if len(head) > 1:
            # A piece that ends one line and starts the next counts for both.
            line_confidence.extend([confidence_now()] * (len(head) - 1))
        now = check.release(rules.text) if check else _whole_lines(rules.text)
        # A line's end (and blank lines after it) goes out with the next line: whether
        # the suggestion ends there, or with a blank line, is known only later.
        now = now.rstrip(" \t\r\n")
        if len(now) > len(released):
            last_line = now.count("\n")
            judged = (
                line_confidence[last_line] if last_line < len(line_confidence) else confidence_now()
            )
            if judged < request.min_confidence:
                gated = True
                return True
        if len(now) > len(released):
            if now.startswith(released):
                delta, released = now[len(released) :], now
                if ttft_ms is None:
                    ttft_ms = _ms_since(started)
                on_partial(delta)
            else:
                # Stop rules may retract lines (repetition); what was sent stays sent.
                logger.info("released text shrank; keeping what was sent")
        # Confidence only falls, so no line from here on can pass the gate: unless a
        # finished line still waits to be released, nothing more will be shown, and the
        # rest of the line need not be generated (the result is the same).
        if (
            not stop
            and confidence_now() < request.min_confidence
            and rules.text.startswith(released)
            and "\n" not in rules.text[len(released) :].lstrip(" \t\r\n")
        ):
            gated = True
            return True
        return stop

    pieces = backend.stream(prepared.prompt, params, cancel, stats)
    try:
        for raw_piece in pieces:
            if cancel.cancelled:
                break
            piece, hit_marker = markers.feed(raw_piece)
            if accept(piece) or hit_marker:
                stop_reason = "low_confidence" if gated else rules.reason or "stop_string"
                break
        else:
            # The stream ended: text held back as a possible marker was ordinary text.
            if accept(markers.flush()):
                stop_reason = "low_confidence" if gated else rules.reason or ""
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()

    base = CompletionResult(
        text=released,
        final_delta="",
        verdict=Verdict.CANCELLED,
        source=Source.MODEL,
        unchecked_text=rules.final_text,
        prompt_tokens=stats.prompt_tokens,
        reused_tokens=stats.reused_tokens,
        generated_tokens=stats.generated_tokens,
        ttft_ms=ttft_ms,
        cancelled=True,
        stop_reason="cancelled",
        confidence=min(stats.token_probs) if stats.token_probs else None,
        memory_share=_mean(stats.memory_shares),
        model_id=str(getattr(backend, "model_id", backend.name)),
        drafted_tokens=int(stats.extra.get("drafted", 0)),
        accepted_drafts=int(stats.extra.get("accepted", 0)),
    )
    if cancel.cancelled:
        # What was already sent stays the result text, so partials still add up.
        return replace(base, total_ms=_ms_since(started))
    if gated or confidence_now() < request.min_confidence:
        # What the gate let through was released already; nothing more is shown.
        final_text, verdict, stop_reason = released, Verdict.LOW_CONFIDENCE, "low_confidence"
    elif check is not None:
        checked = check.finish(rules.final_text)
        final_text, verdict = checked.text, checked.verdict
    else:
        final_text, verdict = rules.final_text, Verdict.UNCHECKED
    if suffix[:1] in ("", "\n", "\r"):
        # Prism keeps whole lines, newline included; before the line's own end (or the
        # file's) that newline would only leave an empty line behind.
        final_text = final_text.rstrip("\r\n")
    if not final_text.startswith(released):
        # A stop rule cut lines already shown (runaway repetition): partials cannot be
        # taken back, so the streaming contract wins and the shown text stays.
        logger.warning("final text does not extend the released text; keeping the released")
        final_text = released
    total_ms = _ms_since(started)
    return replace(
        base,
        text=final_text,
        final_delta=final_text[len(released) :],
        verdict=verdict,
        cancelled=False,
        stop_reason=stop_reason or stats.stopped_by,
        ttft_ms=ttft_ms if ttft_ms is not None else total_ms,
        total_ms=total_ms,
    )


class _StopStrings:
    """Cuts the stream at a FIM marker the model wrote out as plain text.

    Text that could be the start of a marker is held back until the next piece shows
    whether it is one, so no part of a marker ever reaches the stop rules.
    """

    def __init__(self, stop_strings: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text that is safe to accept now, and whether a marker was found."""
        text = self._pending + piece
        cuts = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if cuts:
            self._pending = ""
            return text[: min(cuts)], True
        hold = max((_overlap(text, s) for s in self._stops), default=0)
        self._pending = text[len(text) - hold :]
        return text[: len(text) - hold], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


def _overlap(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def _whole_lines(text: str) -> str:
    """Without Prism, release only completed lines, as the checked path does."""
    return text[: text.rfind("\n") + 1]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
