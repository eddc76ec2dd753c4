"""The generation loop shared by the in-process backends (transformers, ctransformers).

A backend built on this class supplies four things: encode, decode, a forward pass that
returns next-token logits for new tokens after the cached ones, and a way to crop its
KV cache. Everything else lives here, once: prompt budgets, KV-cache reuse, token
healing, greedy or nucleus choice, incremental decoding, cancellation and statistics.
Logits are numpy arrays, so this module never imports torch.

KV-cache reuse. Typing only appends to an SPM prompt, so consecutive prompts share a
long token prefix. The loop keeps the token ids of the previous call (its prompt plus
what it generated), crops the cache to the longest common prefix with the new prompt,
and evaluates only the rest. The cache holds the keys/values a full evaluation would
compute (bit for bit in transformers; in GGML, evaluated in different batches, equal
up to float rounding).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats
from rubytailor.model.fim import FimFormat
from rubytailor.model.project_memory import (
    DocumentSource,
    Match,
    MemoryRequest,
    memory_choice,
    mix,
)

log = logging.getLogger(__name__)

# Prompt tokens decoded ahead of the first generated one, so tokenizers that drop a
# word's leading space at the start of a decode (SentencePiece) still produce it.
DECODE_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"
# Token healing: at most this many trailing tokens (a word's or whitespace) are taken off,
# and this many (target, generated) masks are kept (each is one bool per token).
MAX_HEALED_TOKENS = 8
HEALING_MASKS_KEPT = 256
# Encoded document texts kept for the project memory's document source: the text above
# the cursor line and below the cursor change rarely while the user types.
ENCODINGS_KEPT = 8
# Speculative decoding from the project memory (``_draft``): at most this many drafted
# tokens per forward pass, each one the memory's choice with at least this share of the
# mixed distribution, which makes it the greedy choice whatever the model says.
MAX_DRAFT_TOKENS = 8
DRAFT_MIN_SHARE = 0.5


class TokenLoopBackend:
    """Base class: one loaded model and the token ids in its KV cache. Not thread-safe."""

    name = "token-loop"
    # Whether ``_forward_rows`` is implemented: then drafts from the project memory are
    # verified in one forward pass (speculative decoding).
    verifies_drafts = False
    # Pre-warming evaluates the prompt this many tokens at a time and checks for a real
    # request between batches, so one pre-empts it within one batch (~15 ms).
    prefill_batch = 16
    # Why "auto" chose this backend over the faster one, when it had to (shown to users).
    fallback_note: str | None = None

    def __init__(
        self,
        *,
        fim: FimFormat,
        fim_order: str,
        context_length: int,
        model_id: str,
        vocab_size: int,
        stop_ids: set[int],
        special_ids: set[int],
        lead_ids: list[int],
    ) -> None:
        self.fim_format = fim.name
        self.fim_order = fim_order
        self.context_length = context_length
        self.model_id = model_id
        self._vocab_size = vocab_size
        self._stop_ids = frozenset(stop_ids)
        self._special_ids = frozenset(special_ids) | self._stop_ids
        self._lead_ids = list(lead_ids)
        self._texts: list[str] | None = None
        self._healing_masks: dict[tuple[str, str], np.ndarray] = {}
        self._clean_texts: bool | None = None
        self._index: tuple[dict[str, list[int]], list[str], list[int]] | None = None
        self._cached_ids: list[int] = []  # token ids whose keys/values are in the cache
        self._encodings: OrderedDict[str, list[int]] = OrderedDict()

    # What a concrete backend implements.

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        raise NotImplementedError

    def _decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens written out, no clean-up of spaces."""
        raise NotImplementedError

    def _forward(self, new_ids: Sequence[int]) -> np.ndarray:
        """Evaluate ``new_ids`` after the cached tokens; next-token logits, float32 (vocab,)."""
        raise NotImplementedError

    def _forward_rows(self, new_ids: Sequence[int], rows: int) -> np.ndarray:
        """Like ``_forward``, but the next-token logits after each of the last ``rows`` of
        ``new_ids``: float32 (rows, vocab). Only where ``verifies_drafts``."""
        raise NotImplementedError

    def _crop_cache(self, keep: int) -> bool:
        """Keep the first ``keep`` cached positions; False when the cache cannot be cropped."""
        raise NotImplementedError

    def _drop_cache(self) -> None:
        """Forget every cached key/value."""
        raise NotImplementedError

    # The shared part.

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def reset_cache(self) -> None:
        """Forget the KV cache, e.g. after the model's weights (an adapter) changed."""
        self._drop_cache()
        self._cached_ids = []

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: CancelToken,
        stats: GenerationStats,
    ) -> Iterator[str]:
        started = time.perf_counter()
        ids = self._encode_prompt(prompt, params)
        stats.prompt_tokens = len(ids)
        ids, target = self._heal(ids) if params.token_healing else (ids, "")
        healed = target  # what the suggestion must not repeat: it is in the document
        generated = ""  # text generated so far, while it must still re-create the target
        max_new = min(params.max_new_tokens, self.context_length - len(ids))
        stats.reused_tokens = self._reuse_cache(ids)
        pending = ids[stats.reused_tokens :]
        rng = np.random.default_rng(params.seed) if params.temperature > 0 else None
        memory = params.memory
        document = self._document_source(memory, target) if memory else None
        decoder = IncrementalDecoder(self._decode, ids[-DECODE_CONTEXT_TOKENS:])
        stats.stopped_by = "caller"  # unless the loop ends some other way
        drafting = params.temperature <= 0 and memory is not None and self.verifies_drafts
        # Memory matches must reach into the prompt while the first line is written
        # (``project_memory.reaches``); None once the suggestion has a newline.
        anchor: int | None = len(ids)
        try:
            while True:
                if cancel.cancelled:
                    stats.stopped_by = "cancelled"
                    return
                if stats.generated_tokens >= max_new:
                    stats.stopped_by = "max_tokens"
                    break
                step_started = time.perf_counter()
                # Speculation (see ``_draft``): only once healing is done, greedy, memory on.
                draft, lookups = (
                    self._draft(
                        pending, memory, document, max_new - stats.generated_tokens - 1, anchor
                    )
                    if drafting and memory is not None and len(generated) >= len(target)
                    else ([], [])
                )
                if draft:
                    rows = self._forward_rows(pending + draft, len(draft) + 1)
                    stats.extra["drafted"] = stats.extra.get("drafted", 0) + len(draft)
                else:
                    rows = self._forward(pending)[None]
                self._cached_ids.extend(pending)
                self._cached_ids.extend(draft)
                base = len(self._cached_ids) - len(draft)  # context length of the first row
                pending = []
                for j, logits in enumerate(rows):
                    probs = softmax(logits)
                    share = 0.0
                    if memory is not None:
                        # The project memory predicts from the same context: prompt + output.
                        if j < len(lookups):
                            matches = lookups[j]  # made while drafting, same context
                        else:
                            # Row j's context: the cache up to it (all of it without a draft).
                            context = self._cached_ids[: base + j] if draft else self._cached_ids
                            matches = memory.memory.lookup(
                                context, memory.exclude_key, document, anchor
                            )
                        if matches:
                            probs, share = mix(probs, matches)
                    if len(generated) < len(target):
                        # Until the text taken off the prompt is re-created, only tokens
                        # consistent with it may be chosen.
                        allowed = self._healing_mask(target, generated)
                        if allowed.any() and probs[allowed].sum() > 0:
                            probs = np.where(allowed, probs, 0.0)
                            probs /= probs.sum()
                        else:
                            # No token fits: let the model go on freely. What it writes is
                            # still cut where it repeats the rest of the healed text.
                            target = ""
                    with np.errstate(divide="ignore"):
                        token = choose(np.log(probs), params, rng)
                    stats.token_probs.append(float(probs[token]))
                    stats.memory_shares.append(share)
                    if len(generated) < len(target):
                        generated += self._token_texts()[token]
                    elif "\n" in self._token_texts()[token]:
                        anchor = None
                    if "prefill_s" not in stats.extra:
                        # The prompt's forward pass: what cache reuse saves.
                        stats.extra["prefill_s"] = time.perf_counter() - step_started
                    agreed = j < len(draft) and token == draft[j]
                    if not agreed:
                        # The rest of the draft was not chosen: out of the cache with it.
                        pending = self._discard_after(base + j)
                    if token in self._stop_ids:
                        stats.stopped_by = "eos"
                        break
                    stats.generated_tokens += 1
                    if agreed:
                        stats.extra["accepted"] = stats.extra.get("accepted", 0) + 1
                    else:
                        pending.append(token)
                    piece = decoder.push(token)
                    if healed and piece:
                        # Drop the re-created text: it is already in the document.
                        cut = common_prefix_length(piece, healed)
                        piece, healed = piece[cut:], healed[cut:]
                    if piece:
                        if stats.first_token_s is None:
                            stats.first_token_s = time.perf_counter() - started
                        yield piece
                    if not agreed:
                        break
                    if cancel.cancelled or stats.generated_tokens >= max_new:
                        # Stop inside an agreed draft: the next row's token is not taken.
                        pending = self._discard_after(base + j + 1)
                        break
                if stats.stopped_by == "eos":
                    break
            tail = decoder.flush()
            if tail:
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - started
                yield tail
        except GeneratorExit:
            raise  # the caller stopped iterating at a yield: the cache is consistent
        except BaseException:
            # A failed forward pass may leave the cache half-updated; never reuse it.
            self.reset_cache()
            raise
        finally:
            stats.total_s = time.perf_counter() - started

    def prefill(self, prompt: str, params: GenerationParams, cancel: CancelToken) -> int:
        """Evaluate the prompt ``stream`` would evaluate, all but its last token (``stream``
        needs that one's logits), ``prefill_batch`` tokens at a time; see ``Prefills``."""
        ids = self._encode_prompt(prompt, params)
        ids, target = self._heal(ids) if params.token_healing else (ids, "")
        pending = ids[self._reuse_cache(ids) : len(ids) - 1]
        memory = params.memory
        if memory is not None:
            self._document_source(memory, target)  # keeps the encodings
        done = 0
        try:
            for start in range(0, len(pending), self.prefill_batch):
                if cancel.cancelled:
                    break
                chunk = pending[start : start + self.prefill_batch]
                self._forward(chunk)
                self._cached_ids.extend(chunk)
                done += len(chunk)
        except BaseException:
            self.reset_cache()  # as in stream: a failed pass may leave the cache half-updated
            raise
        return done

    def _draft(
        self,
        pending: list[int],
        memory: MemoryRequest,
        document: DocumentSource | None,
        limit: int,
        anchor: int | None,
    ) -> tuple[list[int], list[list[Match]]]:
        """Tokens the project memory alone decides, to verify in one forward pass.

        From the context (cache + ``pending``), while a source's top next token carries
        at least DRAFT_MIN_SHARE of the mixed distribution (``mix`` gives the model at
        most the rest, so greedy choice takes that token whatever the model predicts),
        draft it and look up again. Returns the draft and the lookups made at each
        drafted position, plus the one after the last when there was one, so the
        verification does not repeat them.
        """
        context = self._cached_ids + pending
        draft: list[int] = []
        lookups: list[list[Match]] = []
        while len(draft) < min(limit, MAX_DRAFT_TOKENS):
            matches = memory.memory.lookup(context, memory.exclude_key, document, anchor)
            lookups.append(matches)
            token = memory_choice(matches, DRAFT_MIN_SHARE)
            if token is None or token in self._stop_ids:
                break
            draft.append(token)
            context.append(token)
            if "\n" in self._token_texts()[token]:
                anchor = None  # as the verification will see it
        return draft, lookups

    def _discard_after(self, keep: int) -> list[int]:
        """Drop cached positions from ``keep`` on (a rejected draft's). Returns the ids
        that must be evaluated again: none, unless the cache could not be cropped."""
        if keep >= len(self._cached_ids):
            return []
        if self._crop_cache(keep):
            del self._cached_ids[keep:]
            return []
        log.info("%s cannot crop its cache; speculative decoding is off", self.name)
        self.verifies_drafts = False
        again = self._cached_ids[:keep]
        self.reset_cache()
        return again

    def _document_source(self, memory: MemoryRequest, healed: str) -> DocumentSource:
        """The open document's token ids around the cursor, for the project memory.

        The text healing took off (``healed``) is left out: left in, the open file would
        predict the very token boundary healing avoids. The text above the cursor line
        is encoded apart from the cursor line, so while the user types on one line only
        that line is encoded again.
        """
        before = memory.before
        if healed and before.endswith(healed):
            before = before[: len(before) - len(healed)]
        cut = before.rfind("\n") + 1
        return DocumentSource(
            self._encode_kept(before[:cut]) + self._encode(before[cut:]),
            self._encode_kept(memory.after),
        )

    def _encode_kept(self, text: str) -> list[int]:
        ids = self._encodings.get(text)
        if ids is None:
            ids = self._encodings[text] = self._encode(text)
            if len(self._encodings) > ENCODINGS_KEPT:
                self._encodings.popitem(last=False)
        else:
            self._encodings.move_to_end(text)
        return ids

    def _heal(self, ids: list[int]) -> tuple[list[int], str]:
        """Token healing: take the prompt's last token(s) off and let the model re-create them.

        A prompt cut at the cursor often ends at a token boundary training never showed:
        mid-word ("valu" as " val" + "u", where training saw " value") or in
        indentation ("\n    " where training merged the spaces with the code after
        them). The last token with every token of the word it ends (" val" + "u", not
        "u" alone: " val" + "ue" is no more familiar), or the whole run of trailing
        whitespace tokens, is taken off, at most ``MAX_HEALED_TOKENS``; generation must
        then re-create that text (``_healing_mask``), which the suggestion does not
        repeat. Returns the ids and the text taken off ("" when nothing was).
        """
        if not self._heals_cleanly():
            return ids, ""
        texts = self._token_texts()
        floor = len(self._lead_ids) + 1  # keep at least one real prompt token
        end = len(ids)
        while (
            end > floor
            and len(ids) - end < MAX_HEALED_TOKENS
            and ids[end - 1] not in self._special_ids
            and texts[ids[end - 1]].isspace()
        ):
            end -= 1
        if end == len(ids) and end > floor and ids[-1] not in self._special_ids:
            end -= 1  # not whitespace: the last token, and the rest of its word
            while (
                end > floor
                and len(ids) - end < MAX_HEALED_TOKENS
                and ids[end - 1] not in self._special_ids
                and _inside_word(texts[ids[end - 1]], texts[ids[end]])
            ):
                end -= 1
        target = "".join(texts[i] for i in ids[end:])
        if not target or REPLACEMENT_CHAR in target or not self._healing_mask(target, "").any():
            return ids, ""  # nothing to heal, or bytes of a character the text cannot name
        return ids[:end], target

    def _healing_mask(self, target: str, generated: str) -> np.ndarray:
        """Tokens that keep ``generated`` on the way to re-creating ``target`` (cached).

        With ``rest`` the part of the target still to come, those are the tokens that
        are a proper prefix of ``rest`` (found by looking up each prefix) and the tokens
        that start with ``rest`` (a range of the sorted token texts), the latter filtered
        by ``heals``; not a pass over the vocabulary, so cheap on every keystroke.
        """
        key = (target, generated)
        mask = self._healing_masks.get(key)
        if mask is None:
            mask = np.zeros(self._vocab_size, dtype=bool)
            rest = target[len(generated) :]
            by_text, texts, ids = self._text_index()
            for k in range(1, len(rest)):
                mask[by_text.get(rest[:k], [])] = True
            lo = bisect.bisect_left(texts, rest)
            hi = bisect.bisect_left(texts, rest + "\U0010ffff")
            blank = target.isspace()
            for text, token in zip(texts[lo:hi], ids[lo:hi], strict=True):
                mask[token] = heals(generated + text, target, blank)
            mask[list(self._special_ids)] = False
            if len(self._healing_masks) >= HEALING_MASKS_KEPT:
                self._healing_masks.clear()
            self._healing_masks[key] = mask
        return mask

    def _text_index(self) -> tuple[dict[str, list[int]], list[str], list[int]]:
        """Token texts for healing lookups: text -> ids, and texts sorted with their ids.

        Tokens that are part of a multi-byte character (decoding to U+FFFD alone) are left
        out: their text does not say which bytes they hold.
        """
        if self._index is None:
            pairs = sorted(
                (text, token)
                for token, text in enumerate(self._token_texts())
                if text and REPLACEMENT_CHAR not in text and token not in self._special_ids
            )
            by_text: dict[str, list[int]] = {}
            for text, token in pairs:
                by_text.setdefault(text, []).append(token)
            self._index = (by_text, [t for t, _ in pairs], [i for _, i in pairs])
        return self._index

    def _heals_cleanly(self) -> bool:
        """Healing compares token texts, so each token must decode to its own text alone.

        True of byte-level BPE apart from the pieces of multi-byte characters, which
        healing leaves alone; SentencePiece drops a leading space at a decode's start.
        """
        if self._clean_texts is None:
            probe = "class A\n  def b(c)\n    d = [c, 1]\n"
            ids = self._encode(probe)
            self._clean_texts = "".join(self._token_texts()[i] for i in ids) == probe
            if not self._clean_texts:
                log.info("token healing is off: this tokenizer's tokens do not decode alone")
        return self._clean_texts

    def _token_texts(self) -> list[str]:
        """Each token id's text, decoded once per loaded model."""
        if self._texts is None:
            self._texts = [self._decode([i]) for i in range(self._vocab_size)]
        return self._texts

    def _encode_prompt(self, prompt: str, params: GenerationParams) -> list[int]:
        """Prompt token ids, with the BOS the model expects, cut to leave room to generate."""
        ids = self._lead_ids + self._encode(prompt)
        budget = max(self.context_length - params.max_new_tokens, 1)
        if len(ids) <= budget:
            return ids
        log.warning(
            "prompt of %d tokens exceeds the model's %d-token context minus %d new tokens; "
            "keeping its last %d tokens",
            len(ids),
            self.context_length,
            params.max_new_tokens,
            budget,
        )
        return self._lead_ids + ids[len(ids) - budget + len(self._lead_ids) :]

    def _reuse_cache(self, ids: list[int]) -> int:
        """Crop the cache to the common prefix with ``ids``; return how many tokens it holds."""
        common = common_prefix_length(self._cached_ids, ids)
        # At least one prompt token must be evaluated to get logits for the next one.
        keep = min(common, len(ids) - 1)
        if keep <= 0:
            self.reset_cache()
            return 0
        if keep < len(self._cached_ids):
            if not self._crop_cache(keep):
                self.reset_cache()
                return 0
            del self._cached_ids[keep:]
        return keep


class IncrementalDecoder:
    """Token ids in, text out, never splitting a multi-byte UTF-8 character.

    Each step decodes a short window of recent tokens twice (without and with the new
    ones) and emits the difference, the way text-generation-inference does, so
    tokenizers whose decode depends on neighbours (leading spaces) stay correct. Text
    that ends in U+FFFD is an incomplete character and is held back until it completes.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context_ids: Sequence[int]) -> None:
        self._decode = decode
        self._ids: list[int] = list(context_ids)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token: int) -> str:
        self._ids.append(token)
        return self._emit(final=False)

    def flush(self) -> str:
        """At the end of generation: what was held back, less any incomplete character."""
        return self._emit(final=True).rstrip(REPLACEMENT_CHAR)

    def _emit(self, *, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text):
            return ""
        if new_text.endswith(REPLACEMENT_CHAR) and not final:
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities (float64, summing to 1) of a logits vector."""
    scaled = logits.astype(np.float64)
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    return probs


def choose(logits: np.ndarray, params: GenerationParams, rng: np.random.Generator | None) -> int:
    """Greedy at temperature 0, else nucleus sampling from the caller's seeded generator."""
    if params.temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        # Keep the smallest set of tokens whose probability reaches top_p.
        outside = np.cumsum(sorted_probs) - sorted_probs > params.top_p
        probs = np.zeros_like(probs)
        probs[order[~outside]] = sorted_probs[~outside]
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


def _inside_word(left: str, right: str) -> bool:
    """Do two adjacent tokens' texts meet inside a word ("el" + "s" of "els")?"""
    return bool(left[-1:]) and _is_word_char(left[-1]) and bool(right) and _is_word_char(right[0])


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def heals(text: str, target: str, blank: bool) -> bool:
    """May generation that has produced ``text`` still re-create ``target``?

    Shorter than the target: it must be a prefix of it. Otherwise it must start with it.
    After a whitespace target something must follow (not the bare boundary being
    avoided); after typed indentation that is code, not more blanks (a deeper indentation
    than the cursor's), while at the start of a line any indentation may follow.
    """
    if len(text) < len(target):
        return target.startswith(text)
    if not text.startswith(target):
        return False
    if not blank:
        return True
    if len(text) == len(target):
        return False
    return target.endswith("\n") or text[len(target)] not in " \t"


def leading_ids(plain: Sequence[int], full: Sequence[int]) -> list[int]:
    """Special tokens an encoder puts before any text (Llama-style BOS), else [].

    ``plain`` and ``full`` encode the same text without and with special tokens.
    """
    lead = list(full[: len(full) - len(plain)])
    return lead if list(full[len(lead) :]) == list(plain) else []


def id_set(value: object) -> set[int]:
    """A config's ``eos_token_id``-style value (an id, a list of ids, or None) as a set."""
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int)}
    return set()


def common_prefix_length(a: Sequence[object], b: Sequence[object]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
