"""The model's lifecycle and the suggestion cache around the one completion pipeline.

``Completer`` loads the backend and Prism (retrying a failed model load), keeps the
suggestion cache, and on a miss hands the request to ``model/pipeline.py:run``, the
per-request function every caller shares. The server looks the cache up on its event
loop (``cached``) and runs ``generate`` on the model thread; ``complete`` does both
for callers with one thread (``rubytailor complete``, ``doctor``).

``Completer`` is not thread-safe, like the backends it owns: ``load``, ``generate``
and ``complete`` are called from one worker thread; ``cached`` and ``forget`` from any.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rubytailor.errors import ModelError, PrismError, RubytailorError
from rubytailor.model import pipeline
from rubytailor.model.backends import load_backend
from rubytailor.model.backends.base import Backend, CancelToken
from rubytailor.model.outcomes import Source, Verdict
from rubytailor.model.pipeline import CompletionRequest, CompletionResult
from rubytailor.model.project_memory import ProjectMemory
from rubytailor.model.suggestion_cache import SuggestionCache
from rubytailor.prism import Prism

logger = logging.getLogger(__name__)

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
    # A personalization adapter version directory (personalization/registry.py), or None.
    adapter: Path | None = None


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
        # The workspace index, set by the server (lsp/workspace_memory.py) or eval; the
        # index is thread-safe, so it may be swapped from another thread between requests.
        self.memory: ProjectMemory | None = None

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

    @property
    def backend_note(self) -> str | None:
        """Why the backend serving is not the one "auto" prefers, if so."""
        note = getattr(self._backend, "fallback_note", None)
        return note if isinstance(note, str) else None

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

    def swappable(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` differs from the loaded model only in its adapter."""
        return (
            self._backend is not None
            and spec != self._spec
            and replace(spec, adapter=None) == replace(self._spec, adapter=None)
        )

    def swap(self, spec: ModelSpec) -> bool:
        """Load ``spec`` beside the current model and switch only once it has loaded; on
        failure the current model keeps serving. Returns whether it switched."""
        started = time.perf_counter()
        try:
            backend = self._load_backend(spec)
        except RubytailorError as exc:
            logger.warning("adapter not swapped in, the current model keeps serving: %s", exc)
            return False
        self._spec, self._backend, self._model_error = spec, backend, None
        self._cache.clear()  # the previous model's suggestions are not this one's
        logger.info("swapped in %s in %.0f ms", self.model_id, _ms_since(started))
        return True

    def load(self, *, retry: bool = False) -> None:
        """Load the model and Prism if not done yet; failures are recorded, not raised.

        A failed model load is retried when ``retry`` is set or after RETRY_LOAD_AFTER_S.
        """
        due = retry or time.monotonic() - self._failed_at > RETRY_LOAD_AFTER_S
        if self._backend is None and (self._model_error is None or due):
            started = time.perf_counter()
            try:
                self._backend = self._load_backend(self._spec)
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

    def _load_backend(self, spec: ModelSpec) -> Backend:
        # The adapter only when there is one, so loaders that know nothing of adapters
        # (tests' scripted ones) keep working.
        extra = {} if spec.adapter is None else {"adapter": spec.adapter}
        return self._backend_loader(spec.backend, spec.path, threads=spec.threads, **extra)

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
            verdict=Verdict.CACHED,
            source=Source(hit.kind),
            unchecked_text=hit.text,
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
        """The cached answer, else a new one (for callers that have one thread)."""
        return self.cached(request) or self.generate(request, on_partial, cancel)

    def generate(
        self,
        request: CompletionRequest,
        on_partial: Callable[[str], None],
        cancel: CancelToken,
    ) -> CompletionResult:
        """A new suggestion from the model (the cache is the caller's to consult first);
        the result is remembered for typing through it."""
        started = time.perf_counter()
        if cancel.cancelled:
            return _cancelled(started, self.model_id)
        self.load()
        if self._backend is None:
            elapsed = _ms_since(started)
            return CompletionResult(
                text="",
                final_delta="",
                verdict=Verdict.NONE,
                source=Source.NONE,
                ttft_ms=elapsed,
                total_ms=elapsed,
                stop_reason="no_model",
            )
        result = pipeline.run(
            self._backend, self._prism, request, on_partial, cancel, memory=self.memory
        )
        # The request's time includes a model load it waited for.
        result = replace(result, total_ms=_ms_since(started))
        if not result.cancelled:
            prefix, suffix = request.text[: request.offset], request.text[request.offset :]
            self._cache.remember(request.doc_key, prefix, suffix, result.text)
        return result

    def prewarm(self, request: CompletionRequest, cancel: CancelToken) -> int:
        """Evaluate the prompt of a likely next request into the KV cache (pre-warming);
        stops within one small batch of ``cancel``. Returns the tokens evaluated. Never
        raises: a failure costs only the warm start, and is logged."""
        if cancel.cancelled or self._backend is None or self.cached(request) is not None:
            return 0
        try:
            return pipeline.prewarm(self._backend, request, cancel, memory=self.memory)
        except Exception:
            logger.exception("pre-warming failed; the next suggestion starts cold")
            return 0


def complete_once(
    text: str,
    offset: int,
    spec: ModelSpec,
    *,
    doc_key: str = "<cli>",
    max_lines: int = 8,
    max_tokens: int = 64,
    max_prompt_tokens: int = 1024,
    min_confidence: float = 0.0,
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
        min_confidence=min_confidence,
    )
    result = completer.complete(request, lambda _delta: None, CancelToken())
    return result, completer


def _cancelled(started: float, model_id: str) -> CompletionResult:
    elapsed = _ms_since(started)
    return CompletionResult(
        text="",
        final_delta="",
        verdict=Verdict.CANCELLED,
        source=Source.NONE,
        ttft_ms=elapsed,
        total_ms=elapsed,
        cancelled=True,
        stop_reason="cancelled",
        model_id=model_id,
    )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
