"""The transformers backend: any local Hugging Face causal LM with FIM tokens, on torch.

This is the only serving module that imports torch; ``load_backend`` imports it only
when this backend is chosen. Nothing here reaches a hub: the hub is switched to
offline mode before transformers is imported, and every load is ``local_files_only``.

KV-cache reuse. Typing only appends to an SPM prompt, so consecutive prompts share a
long token prefix. The backend keeps the token ids and the ``DynamicCache`` of the
previous call (its prompt plus what it generated), crops the cache to the longest
common prefix with the new prompt, and evaluates only the rest. The cache never
changes results: it holds exactly the keys/values a full evaluation would compute.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Before transformers / huggingface_hub read it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from rubytailor.errors import ModelError
from rubytailor.model.backends import ModelMetadata
from rubytailor.model.backends.base import (
    CancelToken,
    GenerationParams,
    GenerationStats,
)
from rubytailor.model.fim import FimFormat, detect_format, get_format

log = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DEFAULT_CONTEXT_LENGTH = 2048
# Prompt tokens decoded ahead of the first generated one, so tokenizers that drop a
# word's leading space at the start of a decode (SentencePiece) still produce it.
DECODE_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class TransformersBackend:
    """One loaded model and its KV cache. Not thread-safe: call from one worker thread."""

    name = "transformers"

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
        self.model = model
        self.tokenizer = tokenizer
        self.fim_format = fim.name
        self.fim_order = fim_order
        self.context_length = context_length
        self.model_id = model_id
        self._device = next(model.parameters()).device
        self._stop_ids = _stop_token_ids(tokenizer, fim, model.config)
        self._special_ids = frozenset(tokenizer.all_special_ids) | frozenset(self._stop_ids)
        self._texts: list[str] | None = None
        self._healing_masks: dict[str, torch.Tensor] = {}
        # See _heal; off only to compare with plain generation.
        self.token_healing = True
        self._lead_ids = _leading_special_ids(tokenizer)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache: Any = None  # DynamicCache of the previous call
        self._cached_ids: list[int] = []  # token ids whose keys/values are in the cache

    @classmethod
    def load(cls, model_dir: Path, *, threads: int | None = None) -> TransformersBackend:
        """Load a local model directory; raises ModelError saying what to fix."""
        model_dir = Path(model_dir).expanduser()
        _check_model_dir(model_dir)
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
        model.to(device)  # type: ignore[arg-type]  # transformers types `to` oddly
        model.eval()

        fim, order, context_length = _fim_settings(model_dir, tokenizer, config)
        backend = cls(
            model=model,
            tokenizer=tokenizer,
            fim=fim,
            fim_order=order,
            context_length=context_length,
            model_id=_model_id(model_dir),
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

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def reset_cache(self) -> None:
        """Forget the KV cache, e.g. after the model's weights (an adapter) changed."""
        self._cache = None
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
        ids, healed, allowed = self._heal(ids)
        max_new = min(params.max_new_tokens, self.context_length - len(ids))
        stats.reused_tokens = self._reuse_cache(ids)
        pending = ids[stats.reused_tokens :]
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device=self._device).manual_seed(params.seed)
        decoder = IncrementalDecoder(self.tokenizer, ids[-DECODE_CONTEXT_TOKENS:])
        stats.stopped_by = "caller"  # unless the loop ends some other way
        try:
            while True:
                if cancel.cancelled:
                    stats.stopped_by = "cancelled"
                    return
                if stats.generated_tokens >= max_new:
                    stats.stopped_by = "max_tokens"
                    break
                step_started = time.perf_counter()
                # Not held across the yield: the caller's code must not run in this mode.
                with torch.inference_mode():
                    logits = self._forward(pending)
                    if allowed is not None:
                        # The first token must re-create the whitespace taken off the prompt.
                        logits = logits.masked_fill(~allowed, float("-inf"))
                        allowed = None
                    token = _choose(logits, params, generator)
                if "prefill_s" not in stats.extra:
                    # The prompt's forward pass: what cache reuse saves.
                    stats.extra["prefill_s"] = time.perf_counter() - step_started
                if token in self._stop_ids:
                    stats.stopped_by = "eos"
                    break
                stats.generated_tokens += 1
                pending = [token]
                piece = decoder.push(token)
                if healed and piece:
                    # Drop the healed whitespace: it is already in the document.
                    cut = _common_prefix_length(piece, healed)
                    piece, healed = piece[cut:], healed[cut:]
                if piece:
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - started
                    yield piece
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

    def _heal(self, ids: list[int]) -> tuple[list[int], str, torch.Tensor | None]:
        """Token healing for a prompt that ends in whitespace (the cursor on an indented line).

        In training, indentation is usually merged with the code after it ("\\n    def"),
        so a prompt ending in a bare whitespace token is a boundary the model rarely saw
        and it tends to answer end-of-text. The whitespace token is taken off the prompt
        and the first generated token must be that whitespace followed by code. Returns
        the ids, the text taken off, and a mask of allowed first tokens (None when
        nothing was healed).
        """
        if (
            not self.token_healing
            or len(ids) <= len(self._lead_ids) + 1
            or ids[-1] in self._special_ids
        ):
            return ids, "", None
        text = self._token_texts()[ids[-1]]
        if not text or not text.isspace():
            return ids, "", None
        allowed = self._healing_masks.get(text)
        if allowed is None:
            # A pass over the vocabulary: once per distinct whitespace, not per keystroke.
            allowed = torch.tensor(
                [_continues(t, text) for t in self._token_texts()], device=self._device
            )
            allowed[list(self._special_ids)] = False
            self._healing_masks[text] = allowed
        if not bool(allowed.any()):
            return ids, "", None
        return ids[:-1], text, allowed

    def _token_texts(self) -> list[str]:
        """Each token id's text, decoded once (an 8k vocabulary takes milliseconds)."""
        if self._texts is None:
            size = self.model.get_output_embeddings().weight.shape[0]
            self._texts = [self.tokenizer.decode([i]) for i in range(size)]
        return self._texts

    def _encode_prompt(self, prompt: str, params: GenerationParams) -> list[int]:
        """Prompt token ids, with the BOS the model expects, cut to leave room to generate."""
        ids = self._lead_ids + self.tokenizer.encode(prompt, add_special_tokens=False)
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
        common = _common_prefix_length(self._cached_ids, ids)
        # At least one prompt token must be evaluated to get logits for the next one.
        keep = min(common, len(ids) - 1)
        if keep <= 0 or self._cache is None:
            self.reset_cache()
            return 0
        drop = len(self._cached_ids) - keep
        if drop > 0:
            try:
                self._cache.crop(-drop)
            except (ValueError, TypeError, NotImplementedError) as exc:
                # Some cache layouts (sliding windows, linear attention) cannot be cropped.
                log.debug("cache cannot be cropped (%s); evaluating the whole prompt", exc)
                self.reset_cache()
                return 0
            del self._cached_ids[keep:]
        return keep

    def _forward(self, new_ids: Sequence[int]) -> torch.Tensor:
        """Evaluate ``new_ids`` after the cached tokens; return next-token logits (vocab,)."""
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self._device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "cache": self._cache, "use_cache": True}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = 1  # only the last position's logits are needed
        out = self.model(**kwargs)
        self._cache = out.cache
        self._cached_ids.extend(new_ids)
        return out.logits[0, -1].float()


class IncrementalDecoder:
    """Token ids in, text out, never splitting a multi-byte UTF-8 character.

    Each step decodes a short window of recent tokens twice (without and with the new
    ones) and emits the difference, the way text-generation-inference does, so
    tokenizers whose decode depends on neighbours (leading spaces) stay correct. Text
    that ends in U+FFFD is an incomplete character and is held back until it completes.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
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

    def _decode(self, ids: Sequence[int]) -> str:
        return str(
            self._tokenizer.decode(
                list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )


def _choose(logits: torch.Tensor, params: GenerationParams, generator: Any) -> int:
    """Greedy at temperature 0, else nucleus sampling with the caller's seed."""
    if params.temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of tokens whose probability reaches top_p.
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _continues(token_text: str, whitespace: str) -> bool:
    """A token that is ``whitespace`` and then code: not the bare whitespace again (the
    boundary being avoided) and not more blanks (a deeper indentation than the cursor's)."""
    rest = token_text[len(whitespace) :]
    return token_text.startswith(whitespace) and bool(rest) and rest[0] not in " \t"


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase, fim: FimFormat, config: Any) -> set[int]:
    """EOS, every marker of the FIM format, and any other special token, as token ids."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[s] for s in fim.stop_strings if s in vocab}
    ids.update(tokenizer.all_special_ids)
    for value in (config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Special tokens the tokenizer puts before any text (Llama-style BOS), else []."""
    plain = tokenizer.encode("def", add_special_tokens=False)
    full = tokenizer.encode("def", add_special_tokens=True)
    lead = full[: len(full) - len(plain)]
    return list(lead) if full[len(lead) :] == plain else []


def _check_model_dir(model_dir: Path) -> None:
    """Fail early, with what to do, on the common ways a model directory is broken."""
    if not model_dir.exists():
        raise ModelError(
            f"model directory {model_dir} does not exist; set the model path to a local "
            "Hugging Face model directory (config.json, weights, tokenizer.json)"
        )
    if not model_dir.is_dir():
        raise ModelError(f"model path {model_dir} is a file; it must be a model directory")
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"{model_dir} has no config.json, so it is not a Hugging Face model directory; "
            "point the model path at the directory that holds config.json"
        )
    safetensors_files = sorted(model_dir.glob("*.safetensors"))
    if not safetensors_files and not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(
            f"{model_dir} has no model weights (model.safetensors or pytorch_model.bin); "
            "the download or copy is incomplete: copy the weight files into it"
        )
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{model_dir} has no tokenizer (tokenizer.json); copy the tokenizer files "
            "that came with the model into it"
        )
    for path in safetensors_files:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"weights file {path} is corrupt or truncated ({exc}); re-copy or rebuild it"
            ) from exc


def _fim_settings(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, config: Any
) -> tuple[FimFormat, str, int]:
    """FIM format, prompt order and context length: from rubytailor.json, else detected."""
    metadata = ModelMetadata.read(model_dir)
    config_context = _config_context_length(config)
    if metadata is not None:
        try:
            fim = get_format(metadata.fim_format)
        except KeyError as exc:
            raise ModelError(
                f"{model_dir}/rubytailor.json names FIM format {metadata.fim_format!r}, "
                f"which rubytailor does not know ({exc})"
            ) from exc
        context = metadata.context_length
        if config_context is not None and context > config_context:
            log.warning(
                "rubytailor.json context_length %d exceeds the model's %d; using %d",
                context,
                config_context,
                config_context,
            )
            context = config_context
        return fim, metadata.fim_order, context
    tokens = set(tokenizer.get_vocab()) & (
        set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    )
    fim_found = detect_format(tokens)
    if fim_found is None:
        raise ModelError(
            f"the model in {model_dir} has no fill-in-the-middle tokens, so it cannot complete "
            "code between a prefix and a suffix; choose a FIM-trained code model"
        )
    if config_context is None:
        log.warning("%s does not state its context length; assuming %d", model_dir, 2048)
    # Published FIM models are trained in PSM order.
    return fim_found, "psm", config_context or DEFAULT_CONTEXT_LENGTH


def _config_context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_id(model_dir: Path) -> str:
    """Directory name plus a short hash of the config and the weight files.

    Each weight file contributes its name, size, and first and last MiB: retrained weights
    of the same shape get a new id, and a multi-GB model is not read whole at load time.
    """
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for path in sorted(model_dir.iterdir()):
        if path.suffix in (".safetensors", ".bin"):
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as f:
                digest.update(f.read(_ID_SAMPLE_BYTES))
                f.seek(max(size - _ID_SAMPLE_BYTES, 0))
                digest.update(f.read(_ID_SAMPLE_BYTES))
    return f"{model_dir.name}@{digest.hexdigest()[:10]}"


_ID_SAMPLE_BYTES = 1 << 20
