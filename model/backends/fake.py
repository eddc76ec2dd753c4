"""A scripted backend: plays back fixed completions, for tests and for demos without a model.

It behaves like a real backend where callers can notice: text arrives in pieces (one
piece counts as one token), optionally slowly, cancellation lands before the next
piece, ``max_new_tokens`` is honoured and ``GenerationStats`` is filled in, including
a prompt-reuse count computed like a KV cache would (common prompt prefix).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

from rubytailor.errors import ModelError
from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4


class FakeBackend:
    """Yields ``completions`` in order, one per ``stream`` call; the last one repeats."""

    name = "fake"

    def __init__(
        self,
        completions: list[str],
        token_delay_s: float = 0.0,
        piece_chars: int = 3,
        fim_format: str = "starcoder",
        fim_order: str = "spm",
        context_length: int = 2048,
        piece_probs: dict[str, float] | None = None,
    ) -> None:
        if not completions:
            raise ValueError("FakeBackend needs at least one completion (it may be empty text)")
        if piece_chars < 1:
            raise ValueError("piece_chars must be at least 1")
        self.completions = list(completions)
        self.token_delay_s = token_delay_s
        self.piece_chars = piece_chars
        self.fim_format = fim_format
        self.fim_order = fim_order
        self.context_length = context_length
        # The probability reported for a piece (GenerationStats.token_probs), by its text;
        # 1.0 for any other piece. Lets tests drive the confidence gate.
        self.piece_probs = dict(piece_probs or {})
        self.model_id = f"fake:{len(self.completions)}"
        # Every prompt received, in order; tests read these.
        self.prompts: list[str] = []
        # Pieces yielded while cancel was already set, over all calls: 0 means every
        # cancellation took effect before the next token.
        self.pieces_after_cancel = 0
        self._calls = 0
        self._previous_prompt: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> FakeBackend:
        """Load a script: ``{"completions": [...], "token_delay_ms": N, "piece_chars": N}``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelError(
                f"fake backend script {path} does not exist; point the model path at a JSON "
                'file like {"completions": ["puts 1\\n"]}'
            ) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"fake backend script {path} is not readable JSON: {exc}") from exc
        completions = data.get("completions") if isinstance(data, dict) else None
        if (
            not isinstance(completions, list)
            or not completions
            or not all(isinstance(c, str) for c in completions)
        ):
            raise ModelError(
                f"fake backend script {path} needs a non-empty list of strings under "
                '"completions", e.g. {"completions": ["puts 1\\n"]}'
            )
        try:
            delay_ms = float(data.get("token_delay_ms", 0))
            piece_chars = int(data.get("piece_chars", 3))
        except (TypeError, ValueError) as exc:
            raise ModelError(
                f"fake backend script {path}: token_delay_ms and piece_chars must be numbers"
            ) from exc
        if delay_ms < 0 or piece_chars < 1:
            raise ModelError(
                f"fake backend script {path}: token_delay_ms must be >= 0 and piece_chars >= 1"
            )
        return cls(completions, token_delay_s=delay_ms / 1000.0, piece_chars=piece_chars)

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: CancelToken,
        stats: GenerationStats,
    ) -> Iterator[str]:
        start = time.perf_counter()
        self.prompts.append(prompt)
        text = self.completions[min(self._calls, len(self.completions) - 1)]
        self._calls += 1
        stats.prompt_tokens = self.count_tokens(prompt)
        stats.reused_tokens = self._reused_tokens(prompt)
        self._previous_prompt = prompt
        pieces = [text[i : i + self.piece_chars] for i in range(0, len(text), self.piece_chars)]
        stats.stopped_by = "caller"  # unless the loop below ends some other way
        try:
            for index, piece in enumerate(pieces):
                if index >= params.max_new_tokens:
                    stats.stopped_by = "max_tokens"
                    return
                if self.token_delay_s > 0:
                    time.sleep(self.token_delay_s)
                if cancel.cancelled:
                    stats.stopped_by = "cancelled"
                    return
                stats.generated_tokens += 1
                stats.token_probs.append(self.piece_probs.get(piece, 1.0))
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - start
                if cancel.cancelled:  # set from another thread since the check above
                    self.pieces_after_cancel += 1
                yield piece
            stats.stopped_by = "eos"
        finally:
            stats.total_s = time.perf_counter() - start

    def _reused_tokens(self, prompt: str) -> int:
        """Whole tokens of the common prefix with the previous prompt, as a KV cache keeps."""
        if self._previous_prompt is None:
            return 0
        # Character-wise on purpose: prompts are text, not paths.
        common = len(os.path.commonprefix([self._previous_prompt, prompt]))  # noqa: RUF071
        # Like a real cache, at least the last prompt token is evaluated again.
        return min(common // CHARS_PER_TOKEN, max(self.count_tokens(prompt) - 1, 0))
