"""The contract every inference backend meets.

A backend turns a prompt string into a stream of text pieces. It knows its tokenizer
(for prompt budgets) and its FIM format, and it may keep state between calls (a KV
cache) as long as the result never depends on it. No lsprotocol types down here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rubytailor.model.outcomes import StreamEnd

if TYPE_CHECKING:
    from rubytailor.model.project_memory import MemoryRequest


class CancelToken:
    """A flag the caller sets to stop generation; backends check it once per token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """What to generate: greedy by default, because completions should be repeatable."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # Re-create the prompt's last token(s) (see token_loop.py); off only to compare.
    token_healing: bool = True
    # The project as the model's memory, mixed into each next-token choice; None: off.
    memory: MemoryRequest | None = None


@dataclass(kw_only=True)
class GenerationStats:
    """Filled in by ``Backend.stream`` while it runs; read by the caller afterwards."""

    prompt_tokens: int = 0
    # Prompt tokens whose keys/values came from the previous call's cache.
    reused_tokens: int = 0
    generated_tokens: int = 0
    # Seconds from the call to the first yielded piece, and to the end.
    first_token_s: float | None = None
    total_s: float = 0.0
    stopped_by: StreamEnd = ""
    # Probability of each chosen token (end of sequence included) in the distribution it
    # was chosen from, and the share of that distribution that came from project memory.
    token_probs: list[float] = field(default_factory=list)
    memory_shares: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """One loaded model. Not thread-safe: the server calls it from one worker thread."""

    name: str
    # Name of the FIM format (a key of model/fim_formats.json), e.g. "starcoder".
    fim_format: str
    # Prompt order the model was trained with: "spm" (cache-friendly) or "psm".
    fim_order: str
    # Maximum tokens the model attends over (prompt + generation).
    context_length: int

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (no special tokens added)."""
        ...

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: CancelToken,
        stats: GenerationStats,
    ) -> Iterator[str]:
        """Yield decoded text pieces as they are generated.

        ``prompt`` is the full FIM prompt, special tokens written as text. The stream
        ends at an end-of-sequence token, after ``params.max_new_tokens``, or within
        one token of ``cancel`` being set. The caller may also stop iterating early.
        """
        ...


@runtime_checkable
class Prefills(Protocol):
    """A backend that can evaluate a prompt into its KV cache without generating
    (pre-warming: ``model/pipeline.py:prewarm``)."""

    def prefill(self, prompt: str, params: GenerationParams, cancel: CancelToken) -> int:
        """Evaluate what ``stream(prompt, params, ...)`` would evaluate before its first
        token, in small batches, stopping within one batch of ``cancel``; returns how
        many prompt tokens were evaluated (0 when the cache already held them)."""
        ...
