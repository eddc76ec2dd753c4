"""Training examples: files cut into context-sized chunks, FIM-transformed, tokenized, packed.

Every FIM example is made by ``model/prompt.py``'s ``training_text`` — the same function
that builds serving prompts — so training and serving can never drift apart.

A chunk becomes, with probability ``fim_rate``, a FIM example (SPM with probability
``spm_rate``, else PSM) and otherwise plain text (``<|endoftext|>`` after a file's last
chunk). Half of
the FIM middles are "rest of the line, maybe a few more lines" from a random point (what
an editor asks for), half are a random character span (StarCoder's recipe).

Tokenization follows serving: the prompt (what the server sends) and the completion
(middle + end-of-text) are tokenized separately and their ids concatenated. Tokenizing
the SPM string in one piece would merge the end of the prefix with the start of the
middle ("    " + "def" -> "   " + " def"), a token boundary the model never meets when
serving, where the prompt ends at the cursor. The first default model was trained that
way and learned to answer end-of-text after indentation.

The result is one flat uint16 token file (``<split>.bin``) plus ``<split>.json``
metadata; the trainer reads fixed windows from it through a numpy memmap (packing).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rubytailor.model.fim import FimFormat, FimOrder
from rubytailor.model.prompt import assemble, training_text

log = logging.getLogger(__name__)

BatchEncoder = Callable[[list[str]], list[list[int]]]
Encoded = tuple[list[int], list[int]]  # an example's prompt ids, completion ids
IdsHook = Callable[[list["Example"], list[Encoded]], None]


@dataclass(frozen=True, kw_only=True)
class FimConfig:
    fim_rate: float = 0.5
    spm_rate: float = 0.7  # serving uses SPM (cache-friendly), so it gets most examples
    line_middle_rate: float = 0.5
    chunk_chars: int = 800  # chunk_chars_for(256): about one 256-token training window
    seed: int = 0


def chunk_chars_for(seq_len: int) -> int:
    """Example size that fills a ``seq_len`` training window (code is ~3.2-3.5 bytes per
    token), so a longer context also trains on FIM prompts with a longer prefix/suffix."""
    return seq_len * 25 // 8


def chunk_lines(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into runs of whole lines of at most ``max_chars`` (a longer line alone)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if current and size + len(line) > max_chars:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return chunks


def fim_split(text: str, rng: random.Random, line_middle_rate: float) -> tuple[str, str, str]:
    """Pick (prefix, middle, suffix) of ``text``; their concatenation is ``text``."""
    if rng.random() < line_middle_rate:
        start = rng.randrange(len(text) + 1)
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        # Sometimes the middle runs over a few more whole lines, as multi-line suggestions do.
        for _ in range(rng.choice((0, 0, 0, 1, 2, 4))):
            nxt = text.find("\n", end + 1)
            end = len(text) if nxt < 0 else nxt
        return text[:start], text[start:end], text[end:]
    a, b = sorted((rng.randrange(len(text) + 1), rng.randrange(len(text) + 1)))
    return text[:a], text[a:b], text[b:]


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt + completion`` is its text, tokenized in two parts."""

    prompt: str  # the serving prompt ("" for plain text)
    completion: str  # what the model writes after it
    source: int = -1  # index of the text it was cut from
    # A FIM example's middle as offsets into that text (the cursor and where the suffix
    # starts): the document around the cursor, for personalization/memory_loss.py.
    middle: tuple[int, int] | None = None

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def make_examples(texts: Iterable[str], fmt: FimFormat, config: FimConfig) -> Iterator[Example]:
    """Training examples for ``texts``, deterministic for a given ``config.seed``."""
    rng = random.Random(config.seed)
    for i, text in enumerate(texts):
        chunks = chunk_lines(text, config.chunk_chars)
        at = 0  # the chunk's offset in the text
        for n, chunk in enumerate(chunks):
            if rng.random() < config.fim_rate:
                prefix, middle, suffix = fim_split(chunk, rng, config.line_middle_rate)
                order: FimOrder = "spm" if rng.random() < config.spm_rate else "psm"
                full = training_text(prefix, middle, suffix, fmt, order)
                prompt = assemble(prefix, suffix, fmt, order)
                cursor = at + len(prefix)
                yield Example(
                    prompt=prompt,
                    completion=full[len(prompt) :],
                    source=i,
                    middle=(cursor, cursor + len(middle)),
                )
            else:
                # Plain chunks of one file run on into each other: end-of-text only at its end.
                yield Example(
                    prompt="",
                    completion=chunk + (fmt.eos[0] if n == len(chunks) - 1 else ""),
                    source=i,
                )
            at += len(chunk)


def write_token_file(
    examples: Iterable[Example],
    encode_batch: BatchEncoder,
    out: Path,
    meta: dict[str, object],
    on_ids: IdsHook | None = None,
) -> int:
    """Tokenize ``examples`` into ``out`` (.bin, uint16); returns the number of tokens.
    ``on_ids`` sees each batch of examples with their ids, in file order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with out.open("wb") as fh:
        batch: list[Example] = []
        for example in examples:
            batch.append(example)
            if len(batch) >= 512:
                total += _flush(batch, encode_batch, fh, on_ids)
                batch = []
        if batch:
            total += _flush(batch, encode_batch, fh, on_ids)
    meta = {**meta, "tokens": total, "dtype": "uint16"}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d tokens to %s", total, out)
    return total


def encode_examples(examples: list[Example], encode_batch: BatchEncoder) -> list[Encoded]:
    """Each example's prompt ids and completion ids, encoded separately."""
    prompts = encode_batch([e.prompt for e in examples])
    completions = encode_batch([e.completion for e in examples])
    return list(zip(prompts, completions, strict=True))


def example_ids(examples: list[Example], encode_batch: BatchEncoder) -> list[list[int]]:
    """Token ids of each example: its prompt and its completion encoded separately."""
    return [p + c for p, c in encode_examples(examples, encode_batch)]


def _flush(
    batch: list[Example], encode_batch: BatchEncoder, fh: BinaryIO, on_ids: IdsHook | None
) -> int:
    encoded = encode_examples(batch, encode_batch)
    if on_ids is not None:
        on_ids(batch, encoded)
    flat = np.fromiter((i for p, c in encoded for i in (*p, *c)), dtype=np.uint16)
    fh.write(flat.tobytes())
    return int(flat.size)


def load_tokens(path: Path) -> np.ndarray:
    """The packed token stream of one split, memory-mapped read-only."""
    return np.memmap(path, dtype=np.uint16, mode="r")


# Beside train.bin: the project memory's (W, Q) for each of its tokens, float32 pairs
# (personalization/memory_loss.py), for the trainer's ``memory_loss``.
MEMORY_TARGETS = "train.memory.bin"


def load_memory_targets(path: Path) -> np.ndarray:
    """(tokens, 2) float32, memory-mapped read-only."""
    return np.memmap(path, dtype=np.float32, mode="r").reshape(-1, 2)


# Beside train.bin: each token's weight in the loss, float32, for the trainer's
# ``loss_weights`` (personalization/adapter_training.py, ``prompt_weight``).
LOSS_WEIGHTS = "train.weight.bin"


def load_loss_weights(path: Path) -> np.ndarray:
    """(tokens,) float32, memory-mapped read-only."""
    return np.memmap(path, dtype=np.float32, mode="r")


class PromptWeights:
    """An ``on_ids`` hook writing each token's loss weight: ``weight`` for a FIM
    prompt's tokens (the prefix and suffix the server sends), 1 for what the model
    writes (the middle, end-of-text, plain text)."""

    def __init__(self, weight: float, out: BinaryIO) -> None:
        self._weight = weight
        self._out = out

    def __call__(self, batch: list[Example], encoded: list[Encoded]) -> None:
        for prompt, completion in encoded:
            row = np.ones(len(prompt) + len(completion), dtype=np.float32)
            row[: len(prompt)] = self._weight
            self._out.write(row.tobytes())
        self._out.flush()  # before the batch's tokens, as MemoryTargets does


def config_dict(config: FimConfig) -> dict[str, object]:
    return asdict(config)
