"""Inference backends, chosen by name; heavy ones are imported only when chosen.

Also home of ``rubytailor.json``, the small metadata file every model directory may
carry (FIM format, prompt order, context length, how it was trained): the backends
read it and the model builders (``training.tiny``, the trainer's export) write it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rubytailor.errors import ConfigError, ModelError
from rubytailor.model.backends.base import Backend

log = logging.getLogger(__name__)

METADATA_FILE = "rubytailor.json"
METADATA_VERSION = 1
BACKEND_KINDS = ("auto", "llamacpp", "ctransformers", "transformers", "fake")


@dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """The contents of ``rubytailor.json``: what a backend cannot learn from the HF files."""

    fim_format: str
    fim_order: str  # "spm" or "psm"
    context_length: int
    # Free-form record of how the model was made (steps, data, seed), kept for humans.
    trained: dict[str, Any] = field(default_factory=dict)

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / METADATA_FILE
        data = {
            "format_version": METADATA_VERSION,
            "fim_format": self.fim_format,
            "fim_order": self.fim_order,
            "context_length": self.context_length,
            "trained": self.trained,
        }
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, model_dir: Path) -> ModelMetadata | None:
        """The model's metadata, or None when it has no ``rubytailor.json``."""
        path = Path(model_dir) / METADATA_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format_version") != METADATA_VERSION:
                raise ValueError(f"format_version {data.get('format_version')!r} is not supported")
            order = data["fim_order"]
            if order not in ("spm", "psm"):
                raise ValueError(f"fim_order must be 'spm' or 'psm', not {order!r}")
            return cls(
                fim_format=str(data["fim_format"]),
                fim_order=order,
                context_length=int(data["context_length"]),
                trained=dict(data.get("trained", {})),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(
                f"{path} is not valid model metadata ({exc}); fix it, or delete it to let "
                "rubytailor detect the FIM format from the tokenizer"
            ) from exc


def load_backend(
    kind: str, model_path: Path, *, threads: int | None = None, adapter: Path | None = None
) -> Backend:
    """Load the backend ``kind``; for "fake", ``model_path`` is its JSON script.

    "auto" tries the fastest backend that can run the model (``auto_backend_kinds``):
    llamacpp (GGUF in llama.cpp), then ctransformers (GGML), for StarCoder-architecture
    models with the package installed, then transformers. A backend that fails to load
    hands over to the next, and the one that serves says why (``fallback_note``).

    ``adapter`` is a personalization adapter version (``personalization/registry.py``):
    transformers applies its LoRA weights (peft) to the base model and merges them;
    llamacpp and ctransformers run the version's merged copy of the model (converted
    once, cached by its weights). Either way the backend's id names the adapter.
    """
    if kind == "auto":
        *faster, last = auto_backend_kinds(Path(model_path))
        failures: list[str] = []
        for candidate in faster:
            try:
                backend = load_backend(candidate, model_path, threads=threads, adapter=adapter)
            except Exception as exc:  # any failure here: the next backend may still work
                failures.append(f"{candidate} cannot run {model_path} ({exc})")
                log.warning("%s; trying the next backend", failures[-1])
                continue
            if failures:
                _note_fallback(backend, failures, candidate)
            return backend
        fallback = load_backend(last, model_path, threads=threads, adapter=adapter)
        if failures:
            _note_fallback(fallback, failures, last)
        return fallback
    if kind in ("llamacpp", "ctransformers"):
        backend_class = _converting_backend(kind)
        if adapter is None:
            return backend_class.load(Path(model_path), threads=threads)
        backend = backend_class.load(Path(adapter) / MERGED_DIR, threads=threads)
        backend.model_id = adapted_model_id(Path(model_path), Path(adapter))
        return backend
    if kind == "transformers":
        from rubytailor.model.backends.transformers_backend import TransformersBackend

        return TransformersBackend.load(Path(model_path), threads=threads, adapter=adapter)
    if kind == "fake":
        from rubytailor.model.backends.fake import FakeBackend

        return FakeBackend.from_file(Path(model_path))
    raise ConfigError(f"unknown backend {kind!r}; choose one of: {', '.join(BACKEND_KINDS)}")


def _converting_backend(kind: str) -> Any:
    """The class of a backend that runs a converted copy of the model (GGUF or GGML)."""
    if kind == "llamacpp":
        from rubytailor.model.backends.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend
    from rubytailor.model.backends.ctransformers_backend import CTransformersBackend

    return CTransformersBackend


def _note_fallback(backend: Backend, failures: list[str], used: str) -> None:
    note = f"{'; '.join(failures)}; using {used}"
    log.warning("%s", note)
    backend.fallback_note = note  # type: ignore[attr-defined]  # the server tells the user, once


# Inside an adapter version directory: peft's adapter files, and the base model with the
# adapter merged in (a complete model directory, for backends that cannot apply LoRA).
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


def adapter_label(adapter: Path) -> str:
    """A short name, "<project>/<version>", for the adapter version directory
    .../projects/<project>-<hash>/adapters/<version>."""
    project = adapter.parent.parent.name.rsplit("-", 1)[0]
    return f"{project}/{adapter.name}"


def adapter_of(model_id: str) -> str:
    """The adapter named in a backend's id ("none" without one), for logs and responses."""
    return model_id.partition("+")[2] or "none"


def adapted_model_id(model_dir: Path, adapter: Path) -> str:
    from rubytailor.model.backends.model_dir import model_id

    return f"{model_id(model_dir)}+{adapter_label(adapter)}"


def auto_backend_kind(model_dir: Path) -> str:
    """What "auto" tries first for this model directory: "llamacpp", "ctransformers" or
    "transformers"."""
    return auto_backend_kinds(model_dir)[0]


def auto_backend_kinds(model_dir: Path) -> list[str]:
    """The backends "auto" tries, fastest first; always ends with "transformers".

    llamacpp and ctransformers need their packages and a model the converters take
    (GPTBigCode); llama.cpp measured faster than ctransformers on the default model
    (prefill about 3x, decode about 10 %: README "Engines").
    """
    import importlib.util

    from rubytailor.model import ggml_export

    if ggml_export.supports(Path(model_dir).expanduser()) is not None:
        return ["transformers"]
    installed = importlib.util.find_spec
    kinds = []
    if installed("llama_cpp") is not None and installed("gguf") is not None:
        kinds.append("llamacpp")
    if installed("ctransformers") is not None:
        kinds.append("ctransformers")
    return [*kinds, "transformers"]
