"""A byte-level BPE tokenizer for Ruby, with StarCoder-named FIM and file-separator tokens.

Saved in Hugging Face format (tokenizer.json + tokenizer_config.json) so transformers,
peft and the GGML export read it unchanged. ``tokenizer_config.json`` carries
``rubytailor_tokenizer_version``: bump it whenever training or special tokens change, so
a model is never paired with a tokenizer it was not trained with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rubytailor.errors import ModelError

log = logging.getLogger(__name__)

TOKENIZER_VERSION = 1
# Ids 0..5 in this order, as StarCoder names them.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<file_sep>",
)
EOS = SPECIAL_TOKENS[0]
PAD = "<fim_pad>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Train byte-level BPE on ``texts``; every byte is in the base alphabet, so any
    input round-trips exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, context_length: int = 2048) -> None:
    """Write tokenizer.json and tokenizer_config.json (with the version) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=context_length,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["rubytailor_tokenizer_version"] = TOKENIZER_VERSION
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer; refuse one from a different tokenizer version."""
    config_path = directory / "tokenizer_config.json"
    if not (directory / "tokenizer.json").is_file() or not config_path.is_file():
        raise ModelError(
            f"no tokenizer in {directory}; train one with `rubytailor tokenizer` first."
        )
    version = json.loads(config_path.read_text(encoding="utf-8")).get(
        "rubytailor_tokenizer_version"
    )
    if version not in (None, TOKENIZER_VERSION):
        raise ModelError(
            f"tokenizer in {directory} has version {version}, this rubytailor reads version "
            f"{TOKENIZER_VERSION}; retrain it with `rubytailor tokenizer`."
        )
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text
