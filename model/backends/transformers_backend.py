"""The transformers backend: any local Hugging Face causal LM with FIM tokens, on torch.

This is the only serving module that imports torch; ``load_backend`` imports it only
when this backend is chosen. Nothing here reaches a hub: the hub is switched to
offline mode before transformers is imported, and every load is ``local_files_only``.
The generation loop (cache reuse, token healing, decoding) is ``TokenLoopBackend``'s;
this module supplies the forward pass over a ``DynamicCache``.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before transformers / huggingface_hub read it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from rubytailor.errors import ModelError
from rubytailor.model.backends import ADAPTER_DIR, adapted_model_id
from rubytailor.model.backends.model_dir import check_model_dir, fim_settings, model_id
from rubytailor.model.backends.token_loop import TokenLoopBackend, id_set, leading_ids
from rubytailor.model.fim import FimFormat

log = logging.getLogger(__name__)


class TransformersBackend(TokenLoopBackend):
    """One loaded model and its KV cache. Not thread-safe: call from one worker thread."""

    name = "transformers"
    # Drafts from the project memory checked in one pass: 9 positions cost 1.5 single-token
    # passes; 1.66x (cold) and 1.80-1.91x (warm) faster suggestions on two Rails apps,
    # the same text (README "Speculative decoding").
    verifies_drafts = True
    prefill_batch = 32  # a pass costs ~7 ms whatever its size up to ~16 tokens

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        fim: FimFormat,
        fim_order: str,
        context_length: int,
        model_id: str,
    ) -> None:
        stop_ids = _stop_token_ids(tokenizer, fim, model.config)
        super().__init__(
            fim=fim,
            fim_order=fim_order,
            context_length=context_length,
            model_id=model_id,
            vocab_size=model.get_output_embeddings().weight.shape[0],
            stop_ids=stop_ids,
            special_ids=set(tokenizer.all_special_ids),
            lead_ids=_leading_special_ids(tokenizer),
        )
        self.model = model
        self.tokenizer = tokenizer
        self._device = next(model.parameters()).device
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache: Any = None  # DynamicCache of the previous call

    @classmethod
    def load(
        cls, model_dir: Path, *, threads: int | None = None, adapter: Path | None = None
    ) -> TransformersBackend:
        """Load a local model directory, with a personalization adapter version's LoRA
        weights merged in when ``adapter`` is given; raises ModelError saying what to fix."""
        model_dir = Path(model_dir).expanduser()
        check_model_dir(model_dir)
        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        # Progress bars would land in the editor's server log on every start.
        hf_logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        except Exception as exc:
            raise ModelError(
                f"cannot read the model config in {model_dir} ({exc}); the directory must "
                "hold a Hugging Face config.json for a causal language model"
            ) from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as exc:
            raise ModelError(
                f"cannot load the tokenizer in {model_dir} ({exc}); re-copy tokenizer.json "
                "(and tokenizer_config.json) from where the model came from"
            ) from exc
        # Whole documents are encoded for the project memory; the prompt budget, not this
        # limit, keeps prompts within the context (no "sequence length" warning).
        tokenizer.model_max_length = 1 << 30
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # float32 on CPU: half precision is slower there and changes greedy results.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, config=config, local_files_only=True, dtype=dtype
            )
        except Exception as exc:
            raise ModelError(
                f"cannot load the model weights in {model_dir} ({exc}); the files may be "
                "incomplete or corrupt: re-copy or rebuild the model directory"
            ) from exc
        if adapter is not None:
            model = _merge_adapter(model, Path(adapter) / ADAPTER_DIR)
        model.to(device)  # type: ignore[arg-type]  # transformers types `to` oddly
        model.eval()

        special = set(tokenizer.get_vocab()) & (
            set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
        )
        fim, order, context_length = fim_settings(model_dir, special, config.to_dict())
        backend = cls(
            model=model,
            tokenizer=tokenizer,
            fim=fim,
            fim_order=order,
            context_length=context_length,
            model_id=model_id(model_dir)
            if adapter is None
            else adapted_model_id(model_dir, Path(adapter)),
        )
        log.info(
            "loaded %s (%s, %s/%s, context %d, %.1fM params, %s) in %.2fs",
            backend.model_id,
            config.model_type,
            fim.name,
            order,
            context_length,
            model.num_parameters() / 1e6,
            device,
            time.perf_counter() - started,
        )
        return backend

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _decode(self, ids: Sequence[int]) -> str:
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def _drop_cache(self) -> None:
        self._cache = None

    def _crop_cache(self, keep: int) -> bool:
        if self._cache is None:
            return False
        try:
            # This transformers API takes minus the number of positions to remove.
            self._cache.crop(keep - len(self._cached_ids))
        except (ValueError, TypeError, NotImplementedError) as exc:
            # Some cache layouts (sliding windows, linear attention) cannot be cropped.
            log.debug("cache cannot be cropped (%s); evaluating the whole prompt", exc)
            return False
        return True

    def _forward(self, new_ids: Sequence[int]) -> np.ndarray:
        return self._forward_rows(new_ids, 1)[0]

    def _forward_rows(self, new_ids: Sequence[int], rows: int) -> np.ndarray:
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self._device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "cache": self._cache, "use_cache": True}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = rows  # only the positions the loop reads
        # Only around the model call: the caller's code must not run in inference mode.
        with torch.inference_mode():
            out = self.model(**kwargs)
        self._cache = out.cache
        return out.logits[0, -rows:].float().cpu().numpy()


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase, fim: FimFormat, config: Any) -> set[int]:
    """EOS, every marker of the FIM format, and any other special token, as token ids."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[s] for s in fim.stop_strings if s in vocab}
    ids.update(tokenizer.all_special_ids)
    return ids | id_set(config.eos_token_id) | id_set(tokenizer.eos_token_id)


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Special tokens the tokenizer puts before any text (Llama-style BOS), else []."""
    return leading_ids(
        tokenizer.encode("def", add_special_tokens=False),
        tokenizer.encode("def", add_special_tokens=True),
    )


def _merge_adapter(model: Any, adapter_dir: Path) -> Any:
    """The model with the LoRA adapter in ``adapter_dir`` merged into its weights (no
    per-token cost for the adapter)."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        return peft_model.merge_and_unload()
    except Exception as exc:
        raise ModelError(
            f"cannot apply the adapter in {adapter_dir} ({exc}); it may be incomplete or "
            "made for another model: roll it back with `rubytailor personalize PROJECT "
            "--rollback`"
        ) from exc
