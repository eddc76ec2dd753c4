"""The ctransformers backend: GGML inference on the CPU, the fast path for StarCoder models.

The model directory is the same Hugging Face directory the transformers backend loads;
its weights are converted once to a GGML file (``model.ggml_export``) kept in the
cache, named by the model's id, so a retrained model gets a new file. Tokenization uses
the directory's tokenizer.json through ``tokenizers``: neither torch nor transformers
is imported, which is most of the start-up time and memory this backend saves.

KV reuse is positional in GGML: the keys/values of position i are overwritten when
position i is evaluated again, so cropping the cache is only a matter of ``n_past``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from ctypes import c_int
from pathlib import Path
from typing import Any

import numpy as np

# ctransformers imports huggingface_hub; it must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"

from rubytailor.errors import ModelError
from rubytailor.model import ggml_cache, ggml_export
from rubytailor.model.backends.model_dir import (
    check_model_dir,
    model_id,
    read_config,
)
from rubytailor.model.backends.tokenizer_files import (
    TokenizerFiles,
    TokenizersBackend,
    read_tokenizer_files,
)

log = logging.getLogger(__name__)

# Prompt tokens per ggml graph. Prefill time measured flat from 16 to 128 (about
# 0.7 ms per token on one core for the default model) and slower at 256.
EVAL_BATCH = 64


class CTransformersBackend(TokenizersBackend):
    """One GGML model in ctransformers. Not thread-safe: call from one worker thread."""

    name = "ctransformers"

    def __init__(self, *, llm: Any, files: TokenizerFiles, model_id: str, threads: int) -> None:
        super().__init__(files=files, model_id=model_id, vocab_size=int(llm.vocab_size))
        self.llm = llm
        self._threads = threads

    @classmethod
    def load(cls, model_dir: Path, *, threads: int | None = None) -> CTransformersBackend:
        """Load a local StarCoder-architecture model directory; ModelError says what to fix."""
        model_dir = Path(model_dir).expanduser()
        check_model_dir(model_dir)
        started = time.perf_counter()
        config = read_config(model_dir)
        why_not = ggml_export.supports(model_dir)
        if why_not is not None:
            raise ModelError(f"the ctransformers backend cannot run this model: {why_not}")
        files = read_tokenizer_files(model_dir, config)
        try:
            from ctransformers import LLM
        except ImportError as exc:
            raise ModelError(
                "the ctransformers backend needs the ctransformers package: "
                "pip install 'rubytailor[ggml]', or choose the transformers backend"
            ) from exc
        ident = model_id(model_dir)
        ggml_file = ggml_cache.ggml_file(model_dir, ident, config)
        try:
            llm = LLM(str(ggml_file), "starcoder")
        except OSError as exc:
            # CDLL failed: no native library for this platform. The file is not at fault.
            raise ModelError(f"ctransformers cannot run on this machine ({exc})") from exc
        except (RuntimeError, ValueError) as exc:
            raise ModelError(
                f"ctransformers could not load {ggml_file} ({exc}); its log is on stderr"
            ) from exc
        backend = cls(llm=llm, files=files, model_id=ident, threads=threads or 1)
        log.info(
            "loaded %s with ctransformers (%s/%s, context %d, %s) in %.2fs",
            ident,
            files.fim.name,
            files.fim_order,
            files.context_length,
            ggml_file.name,
            time.perf_counter() - started,
        )
        return backend

    def _drop_cache(self) -> None:
        pass  # positions are overwritten as they are evaluated again

    def _crop_cache(self, keep: int) -> bool:
        return True  # the next evaluation starts at n_past = keep

    def _forward(self, new_ids: Sequence[int]) -> np.ndarray:
        n_past = len(self._cached_ids)
        if n_past + len(new_ids) > self.context_length:
            raise ModelError(
                f"{n_past + len(new_ids)} tokens exceed the model's context of "
                f"{self.context_length}"
            )
        tokens = (c_int * len(new_ids))(*new_ids)
        ok = self.llm.ctransformers_llm_batch_eval(
            tokens, len(new_ids), n_past, EVAL_BATCH, self._threads
        )
        if not ok:
            raise ModelError("ctransformers failed to evaluate the prompt")
        logits = np.ctypeslib.as_array(
            self.llm.ctransformers_llm_logits_data(), shape=(self._vocab_size,)
        )
        return logits.copy()  # the buffer is overwritten by the next evaluation
