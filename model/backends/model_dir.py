"""What a model directory must hold, and what the backends learn from it before loading.

Torch-free, so the ctransformers backend can use it without importing transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from rubytailor.errors import ModelError
from rubytailor.model.backends import ModelMetadata
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
_ID_SAMPLE_BYTES = 1 << 20


def check_model_dir(model_dir: Path) -> None:
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
            with safe_open(str(path), framework="numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"weights file {path} is corrupt or truncated ({exc}); re-copy or rebuild it"
            ) from exc


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict; ModelError when it is unreadable."""
    try:
        data = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the model config in {model_dir} ({exc}); the directory must "
            "hold a Hugging Face config.json for a causal language model"
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(f"{model_dir}/config.json is not a JSON object")
    return data


def fim_settings(
    model_dir: Path, special_tokens: set[str], config: dict[str, Any]
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
    fim_found = detect_format(special_tokens)
    if fim_found is None:
        raise ModelError(
            f"the model in {model_dir} has no fill-in-the-middle tokens, so it cannot complete "
            "code between a prefix and a suffix; choose a FIM-trained code model"
        )
    if config_context is None:
        log.warning(
            "%s does not state its context length; assuming %d", model_dir, DEFAULT_CONTEXT_LENGTH
        )
    # Published FIM models are trained in PSM order.
    return fim_found, "psm", config_context or DEFAULT_CONTEXT_LENGTH


def _config_context_length(config: dict[str, Any]) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "seq_length", "n_ctx"):
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_id(model_dir: Path) -> str:
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
