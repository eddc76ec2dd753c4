"""Turn a corpus split into the trainer's packed token file (FIM examples, tokenized)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from rubytailor.model.fim import get_format
from rubytailor.training.corpus import read_split
from rubytailor.training.fim_dataset import FimConfig, config_dict, make_examples, write_token_file
from rubytailor.training.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def prepare_split(
    corpus_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    split: str,
    config: FimConfig,
    fim_format: str = "starcoder",
) -> int:
    """Write ``out_dir/<split>.bin`` (+ .json); returns the number of tokens."""
    tokenizer = load_tokenizer(tokenizer_dir)
    fmt = get_format(fim_format)
    # Each split gets its own stream of random choices, so adding data to one split
    # never changes the examples of another.
    seed = config.seed + {"train": 0, "validation": 1, "test": 2}.get(split, 3)
    split_config = replace(config, seed=seed)
    texts = (row["text"] for row in read_split(corpus_dir, split))
    examples = make_examples(texts, fmt, split_config)

    def encode_batch(batch: list[str]) -> list[list[int]]:
        return [enc.ids for enc in tokenizer.backend_tokenizer.encode_batch(batch)]

    meta = {
        "corpus": str(corpus_dir),
        "tokenizer": str(tokenizer_dir),
        "split": split,
        "fim_format": fim_format,
        "fim": config_dict(split_config),
        # Prompt and completion tokenized separately, as served (see fim_dataset).
        "tokenization": "prompt+completion",
        "vocab_size": len(tokenizer),
    }
    return write_token_file(examples, encode_batch, out_dir / f"{split}.bin", meta)
