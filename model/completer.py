"""One completion, below the protocol: document text + cursor -> a checked suggestion.

The stages run in a fixed order, each owned by its own module:

    suggestion cache -> prompt (model/prompt) -> backend.stream -> stop rules
    -> Prism streaming check -> result

``Completer`` is not thread-safe, like the backends it owns: every method is called from
one worker thread (the server's model thread, or the CLI's main thread). Partial text is
handed out through ``on_partial`` as soon as Prism has validated it; the invariant the
streaming protocol relies on is that the deltas passed to ``on_partial`` followed by
``result.final_delta`` concatenate to ``result.text``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rubytailor.errors import ModelError, PrismError, RubytailorError
from rubytailor.model.backends import load_backend
from rubytailor.model.backends.base import (
    Backend,
    CancelToken,
    GenerationParams,
    GenerationStats,
)
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import PromptBudget, build_prompt
from rubytailor.model.stop_rules import StopConfig, StopRules, is_single_line_position
from rubytailor.model.suggestion_cache import SuggestionCache
from rubytailor.model.syntax_check import StreamingCheck
from rubytailor.prism import Prism

logger = logging.getLogger(__name__)

# The smallest prompt budget worth sending, whatever the settings and context length say.
MIN_PROMPT_TOKENS = 16
# A model that failed to load is tried again after this long, so putting it in place
# (or fixing it) starts suggestions without restarting the editor.
RETRY_LOAD_AFTER_S = 30.0

BackendLoader = Callable[..., Backend]
PrismLoader = Callable[[], Prism]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which model to serve; a change means a reload."""

    backend: str
    path: Path
    threads: int | None = None


@dataclass(frozen=True, kw_only=True)
class CompletionRequest:
    doc_key: str  # the document's URI (or path, from the CLI)
    version: int | None
    text: str  # the full document, as it was when the request started
    offset: int  # cursor, as an index into ``text``
    max_lines: int = 8
    max_tokens: int = 64
    max_prompt_tokens: int = 1024


@dataclass(frozen=True, kw_only=True)
class CompletionResult:
    text: str  # the suggestion to insert at the cursor ("" for none)
    # The tail of ``text`` that was not handed to ``on_partial``; sent with done=true.
    final_delta: str
    # A syntax_check.Verdict value ("ok", "trimmed", "dropped", "empty"), or "cached",
    # "unchecked" (Prism unavailable), "cancelled", "none" (no model).
    verdict: str
    source: str  # "model", "typed_through", "exact" or "none"
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    ttft_ms: float | None = None  # to the first released partial, else to the result
    total_ms: float = 0.0
    cancelled: bool = False
    stop_reason: str = ""
    model_id: str = "none"


class Completer:
    """Owns the backend, the Prism instance and the suggestion cache."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        backend_loader: BackendLoader = load_backend,
        prism_loader: PrismLoader = Prism.load,
        cache_capacity: int = 256,
    ) -> None:
        self._spec = spec
        self._backend_loader = backend_loader
        self._prism_loader = prism_loader
        self._cache = SuggestionCache(cache_capacity)
        self._backend: Backend | None = None
        self._model_error: ModelError | None = None
        self._failed_at = 0.0
        self._prism: Prism | None = None
        self._prism_error: PrismError | None = None
        self._prism_tried = False

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def backend(self) -> Backend | None:
        """The loaded backend; only the model thread may call into it."""
        return self._backend

    @property
    def model_error(self) -> ModelError | None:
        """Why no model is loaded, in words for the user; None when loaded or not yet tried."""
        return self._model_error

    @property
    def prism_error(self) -> PrismError | None:
        """Why suggestions go out unchecked; None when Prism works or was not yet tried."""
        return self._prism_error

    @property
    def model_id(self) -> str:
        if self._backend is None:
            return "none"
        return str(getattr(self._backend, "model_id", self._backend.name))

    def reconfigure(self, spec: ModelSpec) -> bool:
        """Switch to another model; it loads on the next ``load`` or ``complete``."""
        if spec == self._spec:
            return False
        self._spec = spec
        self._backend = None
        self._model_error = None
        # Suggestions of the previous model must not be replayed for the new one.
        self._cache.clear()
        return True

    def load(self, *, retry: bool = False) -> None:
        """Load the model and Prism if not done yet; failures are recorded, not raised.

        A failed model load is retried when ``retry`` is set or after RETRY_LOAD_AFTER_S.
        """
        due = retry or time.monotonic() - self._failed_at > RETRY_LOAD_AFTER_S
        if self._backend is None and (self._model_error is None or due):
            started = time.perf_counter()
            try:
                self._backend = self._backend_loader(
                    self._spec.backend, self._spec.path, threads=self._spec.threads
                )
            except RubytailorError as exc:
                # ConfigError (unknown backend) reads the same to a user: no model.
                self._model_error = exc if isinstance(exc, ModelError) else ModelError(str(exc))
                self._failed_at = time.monotonic()
                logger.warning("model not loaded: %s", self._model_error)
            else:
                self._model_error = None
                logger.info(
                    "loaded %s backend, model %s, in %.0f ms",
                    self._spec.backend,
                    self.model_id,
                    (time.perf_counter() - started) * 1000,
                )
        if not self._prism_tried:
            self._prism_tried = True
            try:
                self._prism = self._prism_loader()
            except PrismError as exc:
                self._prism_error = exc
                logger.warning("suggestions are not syntax-checked: %s", exc)

    def cached(self, request: CompletionRequest) -> CompletionResult | None:
        """The answer from the suggestion cache, or None. Safe to call from any thread,
        so the server can answer typed-through requests without waiting for the model."""
        started = time.perf_counter()
        prefix, suffix = request.text[: request.offset], request.text[request.offset :]
        hit = self._cache.lookup(request.doc_key, prefix, suffix)
        if hit is None:
            return None
        elapsed = _ms_since(started)
        return CompletionResult(
            text=hit.text,
            final_delta=hit.text,
            verdict="cached",
            source=hit.kind,
            ttft_ms=elapsed,
            total_ms=elapsed,
            model_id=self.model_id,
        )

    def forget(self, doc_key: str) -> None:
        """The document closed: drop its cached suggestions. Safe from any thread."""
        self._cache.forget(doc_key)

    def complete(
        self,
        request: CompletionRequest,
        on_partial: Callable[[str], None],
        cancel: CancelToken,
    ) -> CompletionResult:
        """The suggestion at ``request.offset``; see the module docstring for the stages."""
        started = time.perf_counter()
        if cancel.cancelled:
            return _cancelled("", started, self.model_id)
        cached = self.cached(request)
        if cached is not None:
            return cached
        prefix, suffix = request.text[: request.offset], request.text[request.offset :]
        self.load()
        if self._backend is None:
            elapsed = _ms_since(started)
            return CompletionResult(
                text="",
                final_delta="",
                verdict="none",
                source="none",
                ttft_ms=elapsed,
                total_ms=elapsed,
                stop_reason="no_model",
            )
        result = self._generate(self._backend, request, prefix, suffix, on_partial, cancel)
        result = replace(result, total_ms=_ms_since(started), model_id=self.model_id)
        if result.ttft_ms is None:
            result = replace(result, ttft_ms=result.total_ms)
        if not result.cancelled:
            self._cache.remember(request.doc_key, prefix, suffix, result.text)
        return result

    def _generate(
        self,
        backend: Backend,
        request: CompletionRequest,
        prefix: str,
        suffix: str,
        on_partial: Callable[[str], None],
        cancel: CancelToken,
    ) -> CompletionResult:
        started = time.perf_counter()
        fmt = get_format(backend.fim_format)
        # The prompt and the generation share the model's context window.
        budget_tokens = min(request.max_prompt_tokens, backend.context_length - request.max_tokens)
        prompt = build_prompt(
            prefix,
            suffix,
            fmt,
            PromptBudget(max_prompt_tokens=max(budget_tokens, MIN_PROMPT_TOKENS)),
            backend.count_tokens,
            order="psm" if backend.fim_order == "psm" else "spm",
        )
        single_line = is_single_line_position(prefix, suffix)
        rules = StopRules(
            prefix, suffix, StopConfig(max_lines=request.max_lines, single_line=single_line)
        )
        check = StreamingCheck(self._prism, prefix, suffix) if self._prism is not None else None
        stats = GenerationStats()
        params = GenerationParams(max_new_tokens=request.max_tokens)
        markers = _StopStrings(fmt.stop_strings)
        released = ""
        ttft_ms: float | None = None
        stop_reason = ""

        def accept(piece: str) -> bool:
            """Feed one piece through the stop rules and Prism; True means stop."""
            nonlocal released, ttft_ms
            stop = rules.push(piece) if piece else False
            now = check.release(rules.text) if check else _whole_lines(rules.text)
            if len(now) > len(released):
                if now.startswith(released):
                    delta, released = now[len(released) :], now
                    if ttft_ms is None:
                        ttft_ms = _ms_since(started)
                    on_partial(delta)
                else:
                    # Stop rules may retract lines (repetition); what was sent stays sent.
                    logger.info("released text shrank; keeping what was sent")
            return stop

        pieces = backend.stream(prompt.text, params, cancel, stats)
        try:
            for raw_piece in pieces:
                if cancel.cancelled:
                    break
                piece, hit_marker = markers.feed(raw_piece)
                if accept(piece) or hit_marker:
                    stop_reason = rules.reason or "stop_string"
                    break
            else:
                # The stream ended: text held back as a possible marker was ordinary text.
                if accept(markers.flush()):
                    stop_reason = rules.reason or ""
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

        base = CompletionResult(
            text=released,
            final_delta="",
            verdict="cancelled",
            source="model",
            prompt_tokens=stats.prompt_tokens,
            reused_tokens=stats.reused_tokens,
            generated_tokens=stats.generated_tokens,
            ttft_ms=ttft_ms,
            cancelled=True,
            stop_reason="cancelled",
        )
        if cancel.cancelled:
            # What was already sent stays the result text, so partials still add up.
            return base
        if check is not None:
            checked = check.finish(rules.text)
            final_text, verdict = checked.text, str(checked.verdict)
        else:
            final_text, verdict = rules.text, "unchecked"
        if not final_text.startswith(released):
            # A stop rule cut lines already shown (runaway repetition): partials cannot be
            # taken back, so the streaming contract wins and the shown text stays.
            logger.warning("final text does not extend the released text; keeping the released")
            final_text = released
        return replace(
            base,
            text=final_text,
            final_delta=final_text[len(released) :],
            verdict=verdict,
            cancelled=False,
            stop_reason=stop_reason or stats.stopped_by,
        )


def complete_once(
    text: str,
    offset: int,
    spec: ModelSpec,
    *,
    doc_key: str = "<cli>",
    max_lines: int = 8,
    max_tokens: int = 64,
    max_prompt_tokens: int = 1024,
) -> tuple[CompletionResult, Completer]:
    """One completion without a server (``rubytailor complete``).

    Raises ModelError when the model cannot be loaded. The completer is returned so the
    caller can report ``prism_error`` (the suggestion is then unchecked).
    """
    completer = Completer(spec)
    completer.load()
    if completer.model_error is not None:
        raise completer.model_error
    request = CompletionRequest(
        doc_key=doc_key,
        version=None,
        text=text,
        offset=offset,
        max_lines=max_lines,
        max_tokens=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
    )
    result = completer.complete(request, lambda _delta: None, CancelToken())
    return result, completer


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


def _cancelled(text: str, started: float, model_id: str) -> CompletionResult:
    elapsed = _ms_since(started)
    return CompletionResult(
        text=text,
        final_delta="",
        verdict="cancelled",
        source="none",
        ttft_ms=elapsed,
        total_ms=elapsed,
        cancelled=True,
        stop_reason="cancelled",
        model_id=model_id,
    )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
