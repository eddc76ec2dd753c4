"""The text side of the converting backends (ctransformers, llamacpp): what they read
from a model directory's tokenizer files, and encode/decode with `tokenizers`, never
importing transformers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from rubytailor.errors import ModelError
from rubytailor.model.backends.model_dir import fim_settings
from rubytailor.model.backends.token_loop import TokenLoopBackend, id_set, leading_ids
from rubytailor.model.fim import FimFormat


@dataclass(frozen=True)
class TokenizerFiles:
    tokenizer: Tokenizer
    fim: FimFormat
    fim_order: str
    context_length: int  # the FIM settings' length, never above the model's positions
    stop_ids: set[int]
    special_ids: set[int]
    lead_ids: list[int]  # what the tokenizer puts before a text (TokenLoopBackend)


class TokenizersBackend(TokenLoopBackend):
    """A token loop whose tokenizer is the directory's tokenizer.json; subclasses supply
    the engine (forward pass, cache cropping)."""

    def __init__(self, *, files: TokenizerFiles, model_id: str, vocab_size: int) -> None:
        super().__init__(
            fim=files.fim,
            fim_order=files.fim_order,
            context_length=files.context_length,
            model_id=model_id,
            vocab_size=vocab_size,
            stop_ids=files.stop_ids,
            special_ids=files.special_ids,
            lead_ids=files.lead_ids,
        )
        self.tokenizer = files.tokenizer

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))


def read_tokenizer_files(model_dir: Path, config: dict[str, Any]) -> TokenizerFiles:
    """The tokenizer and FIM settings of ``model_dir``; ModelError says what to fix."""
    try:
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as exc:
        raise ModelError(
            f"cannot load {model_dir}/tokenizer.json ({exc}); re-copy the tokenizer "
            "files that came with the model"
        ) from exc
    special = _special_tokens(model_dir)
    fim, order, context_length = fim_settings(model_dir, set(special), config)
    return TokenizerFiles(
        tokenizer=tokenizer,
        fim=fim,
        fim_order=order,
        context_length=min(context_length, int(config.get("n_positions", context_length))),
        stop_ids=_stop_ids(tokenizer, fim, config, special),
        special_ids=set(special.values()),
        lead_ids=leading_ids(
            tokenizer.encode("def", add_special_tokens=False).ids,
            tokenizer.encode("def", add_special_tokens=True).ids,
        ),
    )


def _special_tokens(model_dir: Path) -> dict[str, int]:
    """Special tokens of tokenizer.json (content -> id)."""
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}


def _stop_ids(
    tokenizer: Tokenizer, fim: FimFormat, config: dict[str, Any], special: dict[str, int]
) -> set[int]:
    """EOS, every marker of the FIM format, and any other special token, as token ids."""
    ids = set(special.values())
    for text in fim.stop_strings:
        token = tokenizer.token_to_id(text)
        if token is not None:
            ids.add(token)
    return ids | id_set(config.get("eos_token_id"))
