"""The llama.cpp backend: the model converted to GGUF, run by llama-cpp-python on the CPU.

The same Hugging Face directory the other backends load is converted once to a GGUF
file (``model.gguf_export``), kept and verified in the conversion cache like the GGML
file (``model.ggml_cache``). Tokenization uses the directory's tokenizer.json through
``tokenizers``, as in the ctransformers backend; llama.cpp only evaluates token ids.
The bindings' low-level C API is used, not their ``Llama`` class: the loop needs one
thing of it, the logits of the last evaluated position, and its own sampling and
token bookkeeping would duplicate ``TokenLoopBackend``'s.

KV reuse: llama.cpp keeps keys/values per sequence and position; cropping the cache to
the common prefix removes positions from ``keep`` on (``llama_memory_seq_rm``), and the
next evaluation appends at ``keep``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rubytailor.errors import ModelError
from rubytailor.model import ggml_cache, gguf_export
from rubytailor.model.backends.model_dir import check_model_dir, model_id, read_config
from rubytailor.model.backends.tokenizer_files import (
    TokenizerFiles,
    TokenizersBackend,
    read_tokenizer_files,
)

log = logging.getLogger(__name__)

# Prompt tokens per llama_decode call (and its micro-batch), as ctransformers' EVAL_BATCH:
# prefill measured 0.18 ms/token at 64 on one core for the default model.
EVAL_BATCH = 64
SEQ = 0  # the one sequence this backend uses

_backend_ready = False


class LlamaCppBackend(TokenizersBackend):
    """One GGUF model in a llama.cpp context. Not thread-safe: call from one worker thread."""

    name = "llamacpp"
    # Drafts from the project memory are verified in one pass, for a smaller gain than
    # with torch: llama.cpp's CPU kernels are fast only for a full 64-token batch
    # (0.25 ms/token; 8-32 tokens cost 0.9-1.2 ms/token, one token 2.5), so checking 9
    # positions costs about 4 single-token passes. Measured 1.07-1.15x on whole
    # suggestions on two Rails apps, the same text (README "Speculative decoding").
    verifies_drafts = True
    prefill_batch = EVAL_BATCH  # the fast batch size (above): 16-18 ms per batch

    def __init__(
        self,
        *,
        lib: Any,
        model: Any,
        context: Any,
        files: TokenizerFiles,
        model_id: str,
        vocab_size: int,
    ) -> None:
        super().__init__(files=files, model_id=model_id, vocab_size=vocab_size)
        self._lib = lib
        self._model = model
        self._context = context
        self._memory = lib.llama_get_memory(context)
        self._batch = lib.llama_batch_init(EVAL_BATCH, 0, 1)

    @classmethod
    def load(cls, model_dir: Path, *, threads: int | None = None) -> LlamaCppBackend:
        """Load a local StarCoder-architecture model directory; ModelError says what to fix."""
        model_dir = Path(model_dir).expanduser()
        check_model_dir(model_dir)
        started = time.perf_counter()
        config = read_config(model_dir)
        why_not = gguf_export.supports(model_dir)
        if why_not is not None:
            raise ModelError(f"the llamacpp backend cannot run this model: {why_not}")
        files = read_tokenizer_files(model_dir, config)
        context_length = files.context_length
        lib = _llama_cpp()
        ident = model_id(model_dir)
        gguf_file = ggml_cache.gguf_file(model_dir, ident, config)
        model_params = lib.llama_model_default_params()
        # Read into memory, not mapped: a cache file damaged in place (truncated) would
        # kill a server that maps it with SIGBUS. 14 MB for the default model.
        model_params.load_mode = lib.LLAMA_LOAD_MODE_NONE
        model = lib.llama_model_load_from_file(str(gguf_file).encode("utf-8"), model_params)
        if not model:
            raise ModelError(f"llama.cpp could not load {gguf_file}; its log is on stderr")
        params = lib.llama_context_default_params()
        params.n_ctx = context_length
        params.n_batch = params.n_ubatch = EVAL_BATCH
        params.n_threads = params.n_threads_batch = threads or 1
        params.no_perf = True
        context = lib.llama_init_from_model(model, params)
        if not context:
            lib.llama_model_free(model)
            raise ModelError(f"llama.cpp could not make a context for {gguf_file}")
        vocab_size = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))
        backend = cls(
            lib=lib,
            model=model,
            context=context,
            files=files,
            model_id=ident,
            vocab_size=vocab_size,
        )
        log.info(
            "loaded %s with llama.cpp (%s/%s, context %d, %s) in %.2fs",
            ident,
            files.fim.name,
            files.fim_order,
            context_length,
            gguf_file.name,
            time.perf_counter() - started,
        )
        return backend

    def close(self) -> None:
        """Free the native context and model (also done when the backend is collected)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        self._lib = None
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._context)
        lib.llama_model_free(self._model)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the bindings may be gone
            self.close()

    def _drop_cache(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)

    def _crop_cache(self, keep: int) -> bool:
        return bool(self._lib.llama_memory_seq_rm(self._memory, SEQ, keep, -1))

    def _forward(self, new_ids: Sequence[int]) -> np.ndarray:
        return self._forward_rows(new_ids, 1)[0]

    def _forward_rows(self, new_ids: Sequence[int], rows: int) -> np.ndarray:
        n_past = len(self._cached_ids)
        if n_past + len(new_ids) > self.context_length:
            raise ModelError(
                f"{n_past + len(new_ids)} tokens exceed the model's context of "
                f"{self.context_length}"
            )
        # Positions from n_past on must be empty: llama.cpp would attend to both copies.
        self._lib.llama_memory_seq_rm(self._memory, SEQ, n_past, -1)
        # Full batches, except that the rows whose logits are read must all be in the
        # last one (logits are kept for the latest llama_decode only).
        if not 0 < rows <= min(EVAL_BATCH, len(new_ids)):
            raise ValueError(f"cannot read {rows} rows of logits after {len(new_ids)} tokens")
        bounds = [*range(0, len(new_ids), EVAL_BATCH), len(new_ids)]
        if bounds[-1] - bounds[-2] < rows:
            bounds[-2] = len(new_ids) - rows
        for start, stop in itertools.pairwise(bounds):
            last = stop == len(new_ids)
            self._evaluate(new_ids[start:stop], n_past + start, rows if last else 0)
        out = np.empty((rows, self._vocab_size), dtype=np.float32)
        for i in range(rows):
            # Negative: counted from the last output, whatever the batch held before.
            logits = self._lib.llama_get_logits_ith(self._context, i - rows)
            if not logits:
                raise ModelError("llama.cpp returned no logits")
            out[i] = np.ctypeslib.as_array(logits, shape=(self._vocab_size,))
        return out

    def _evaluate(self, ids: Sequence[int], first_pos: int, with_logits: int) -> None:
        """Evaluate ``ids`` (at most EVAL_BATCH) at positions from ``first_pos``; keep the
        logits of the last ``with_logits`` of them."""
        lib, batch = self._lib, self._batch
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i] = token
            batch.pos[i] = first_pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = SEQ
            batch.logits[i] = i >= len(ids) - with_logits
        status = lib.llama_decode(self._context, batch)
        if status != 0:
            raise ModelError(f"llama.cpp failed to evaluate the prompt (llama_decode {status})")


def _llama_cpp() -> Any:
    """The llama_cpp bindings, the backend initialised once; ModelError when unavailable."""
    global _backend_ready
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelError(
            "the llamacpp backend needs llama-cpp-python: pip install 'rubytailor[llamacpp]' "
            "(it builds llama.cpp from source), or choose the ctransformers backend"
        ) from exc
    except (OSError, RuntimeError) as exc:
        # The native library failed to load: nothing the model can fix.
        raise ModelError(f"llama.cpp cannot run on this machine ({exc})") from exc
    if not _backend_ready:
        # The bindings print llama.cpp's log to stderr by their logger's level: its load
        # report is noise unless rubytailor itself logs at debug level.
        verbose = log.isEnabledFor(logging.DEBUG)
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp
