"""Write a GPTBigCode (StarCoder-architecture) Hugging Face model as a GGML file.

The ctransformers backend runs this file with ggml's ``starcoder`` model, which is
several times faster than transformers on a laptop CPU for small models. The layout is
the one that loader reads (ggml's examples/starcoder): a header (magic, n_vocab,
n_positions, n_embd, n_head, n_layer, ftype), the vocabulary as byte strings, then
each tensor as (n_dims, name length, type, dims innermost first, name, data).

Two differences from the Hugging Face weights are handled here:
- transformers lays out multi-head ``c_attn`` rows per head as [q k v][q k v]...,
  while ggml slices one [Q | K | V] block of ``n_embd`` rows each: rows are regrouped.
- multi-query models (one key/value head) are expanded to one key/value per head,
  because this ggml loader only knows multi-head attention.
Position embeddings, layer norms and biases stay float32 (the loader expects that);
the matrices are float16 (``ftype`` 1) or float32 (``ftype`` 0).

Numpy and safetensors only: no torch, so the server can convert at load time.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from safetensors import safe_open

from rubytailor.errors import ModelError

GGML_MAGIC = 0x67676D6C  # "ggml"
# Part of the cached file's name: a change to the conversion must not reuse old files.
CONVERTER_VERSION = 1
FTYPES = {"f32": 0, "f16": 1}
SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu")


def export_ggml(model_dir: Path, out: Path, ftype: str = "f16") -> Path:
    """Convert ``model_dir`` to a GGML file at ``out`` (written atomically).

    Raises ModelError for a model it cannot convert, OSError when ``out`` cannot be written.
    """
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {', '.join(FTYPES)}, not {ftype!r}")
    config = _checked_config(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)  # fail on an unwritable place before the work
    try:
        tensors = _load_tensors(model_dir)
        vocab = vocabulary_bytes(model_dir / "tokenizer.json", int(config["vocab_size"]))
        arrays = list(_ggml_tensors(config, tensors))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot convert {model_dir} to GGML ({exc!r})") from exc
    specs = tensor_specs(config)
    if [(n, a.shape) for n, a in arrays] != specs:
        raise ModelError(f"the tensors of {model_dir} do not have the shapes its config states")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_header(f, config, FTYPES[ftype])
            f.write(struct.pack("<i", len(vocab)))
            for token in vocab:
                f.write(struct.pack("<I", len(token)))
                f.write(token)
            for name, array in arrays:
                _write_tensor(f, name, array, half=ftype == "f16" and _is_matrix(name))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def file_is_complete(path: Path, config: dict[str, Any], ftype: str = "f16") -> bool:
    """Whether a GGML file written by ``export_ggml`` has every byte its header implies.

    ggml's loader reads until end of file without checking, so a truncated file would
    load with missing weights; this reads the header and vocabulary and checks the size.
    """
    try:
        with path.open("rb") as f:
            head = f.read(28)
            if len(head) < 28 or struct.unpack("<I", head[:4])[0] != GGML_MAGIC:
                return False
            (n_vocab,) = struct.unpack("<i", f.read(4))
            for _ in range(n_vocab):
                (length,) = struct.unpack("<I", f.read(4))
                f.seek(length, os.SEEK_CUR)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, struct.error):
        return False
    for name, shape in tensor_specs(config):
        half = ftype == "f16" and _is_matrix(name)
        count = int(np.prod(shape))
        offset += 12 + 4 * len(shape) + len(name.encode()) + count * (2 if half else 4)
    return offset == size


def supports(model_dir: Path) -> str | None:
    """None when ``model_dir`` can be exported, else why not (one sentence)."""
    try:
        _checked_config(model_dir)
    except ModelError as exc:
        return str(exc)
    return None


def _checked_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {model_dir}/config.json ({exc})") from exc
    if config.get("model_type") != "gpt_bigcode":
        raise ModelError(
            f"the ggml export handles GPTBigCode (StarCoder) models; {model_dir} is "
            f"{config.get('model_type')!r}: use the transformers backend for it"
        )
    try:
        n_embd, n_head = int(config["n_embd"]), int(config["n_head"])
        for key in ("vocab_size", "n_positions", "n_layer"):
            int(config[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{model_dir}/config.json lacks a usable {exc}") from exc
    if n_embd % n_head:
        raise ModelError("n_embd must be a multiple of n_head")
    if config.get("n_inner") not in (None, 4 * n_embd):
        raise ModelError("the ggml starcoder model needs n_inner = 4 * n_embd")
    if config.get("activation_function") not in SUPPORTED_ACTIVATIONS:
        raise ModelError(f"activation {config.get('activation_function')!r} is not ggml's GELU")
    # ggml's starcoder graph hard-codes these; a model built otherwise would run, wrongly.
    if abs(float(config.get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-9:
        raise ModelError("the ggml starcoder model needs layer_norm_epsilon = 1e-5")
    if not config.get("scale_attn_weights", True):
        raise ModelError("the ggml starcoder model scales attention weights")
    if not (model_dir / "model.safetensors").is_file():
        raise ModelError(f"{model_dir} has no model.safetensors to convert")
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelError(f"{model_dir} has no tokenizer.json")
    return dict(config)


def _load_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}  # noqa: SIM118 (not iterable)


def _write_header(f: BinaryIO, config: dict[str, Any], ftype: int) -> None:
    fields = ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer")
    f.write(struct.pack("<I", GGML_MAGIC))
    f.write(struct.pack("<6i", *(int(config[k]) for k in fields), ftype))


def _ggml_tensors(
    config: dict[str, Any], t: dict[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray]]:
    """(ggml name, float32 array in PyTorch (out, in) layout) for every tensor."""
    n_head, n_embd = int(config["n_head"]), int(config["n_embd"])
    multi_query = bool(config.get("multi_query", False))
    p = "transformer."
    yield "model/wte", t[p + "wte.weight"]
    yield "model/wpe", t[p + "wpe.weight"]
    for i in range(int(config["n_layer"])):
        h, g = f"{p}h.{i}.", f"model/h{i}/"
        yield g + "ln_1/g", t[h + "ln_1.weight"]
        yield g + "ln_1/b", t[h + "ln_1.bias"]
        yield g + "attn/c_attn/w", _qkv(t[h + "attn.c_attn.weight"], n_head, n_embd, multi_query)
        yield g + "attn/c_attn/b", _qkv(t[h + "attn.c_attn.bias"], n_head, n_embd, multi_query)
        yield g + "attn/c_proj/w", t[h + "attn.c_proj.weight"]
        yield g + "attn/c_proj/b", t[h + "attn.c_proj.bias"]
        yield g + "ln_2/g", t[h + "ln_2.weight"]
        yield g + "ln_2/b", t[h + "ln_2.bias"]
        yield g + "mlp/c_fc/w", t[h + "mlp.c_fc.weight"]
        yield g + "mlp/c_fc/b", t[h + "mlp.c_fc.bias"]
        yield g + "mlp/c_proj/w", t[h + "mlp.c_proj.weight"]
        yield g + "mlp/c_proj/b", t[h + "mlp.c_proj.bias"]
    yield "model/ln_f/g", t[p + "ln_f.weight"]
    yield "model/ln_f/b", t[p + "ln_f.bias"]
    # Untied heads only: the loader copies wte into lm_head when the file has none.
    if not bool(config.get("tie_word_embeddings", True)):
        yield "model/lm_head", t["lm_head.weight"]


def tensor_specs(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(ggml name, PyTorch-layout shape) of every tensor ``export_ggml`` writes, in order."""
    e, v, n_pos = int(config["n_embd"]), int(config["vocab_size"]), int(config["n_positions"])
    specs: list[tuple[str, tuple[int, ...]]] = [("model/wte", (v, e)), ("model/wpe", (n_pos, e))]
    for i in range(int(config["n_layer"])):
        g = f"model/h{i}/"
        specs += [
            (g + "ln_1/g", (e,)),
            (g + "ln_1/b", (e,)),
            (g + "attn/c_attn/w", (3 * e, e)),
            (g + "attn/c_attn/b", (3 * e,)),
            (g + "attn/c_proj/w", (e, e)),
            (g + "attn/c_proj/b", (e,)),
            (g + "ln_2/g", (e,)),
            (g + "ln_2/b", (e,)),
            (g + "mlp/c_fc/w", (4 * e, e)),
            (g + "mlp/c_fc/b", (4 * e,)),
            (g + "mlp/c_proj/w", (e, 4 * e)),
            (g + "mlp/c_proj/b", (e,)),
        ]
    specs += [("model/ln_f/g", (e,)), ("model/ln_f/b", (e,))]
    if not bool(config.get("tie_word_embeddings", True)):
        specs.append(("model/lm_head", (v, e)))
    return specs


def _qkv(w: np.ndarray, n_head: int, n_embd: int, multi_query: bool) -> np.ndarray:
    """Rows (or bias entries) of c_attn regrouped as [Q | K | V], each n_embd long."""
    head_dim = n_embd // n_head
    rest = w.shape[1:]
    if multi_query:
        q, k, v = w[:n_embd], w[n_embd : n_embd + head_dim], w[n_embd + head_dim :]
        k = np.concatenate([k] * n_head, axis=0)
        v = np.concatenate([v] * n_head, axis=0)
        return np.concatenate([q, k, v], axis=0)
    # (head, [q k v], head_dim, ...) -> ([q k v], head, head_dim, ...)
    grouped = w.reshape(n_head, 3, head_dim, *rest).swapaxes(0, 1)
    return np.ascontiguousarray(grouped.reshape(3 * n_embd, *rest))


def _is_matrix(name: str) -> bool:
    # The loader keeps wpe in float32 whatever the file type.
    return name.endswith("/w") or name in ("model/wte", "model/lm_head")


def _write_tensor(f: BinaryIO, name: str, array: np.ndarray, *, half: bool) -> None:
    data = np.ascontiguousarray(array, dtype=np.float16 if half else np.float32)
    encoded = name.encode("utf-8")
    f.write(struct.pack("<3i", data.ndim, len(encoded), 1 if half else 0))
    f.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))  # innermost first
    f.write(encoded)
    f.write(data.tobytes())


def vocabulary_bytes(tokenizer_json: Path, vocab_size: int) -> list[bytes]:
    """Each token id's bytes, for a byte-level BPE tokenizer.json (GPT-2 byte alphabet)."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    decode_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    tokens: list[bytes] = [b""] * vocab_size
    for text, idx in data["model"]["vocab"].items():
        if idx < vocab_size:
            tokens[idx] = bytes(decode_byte[ch] for ch in text if ch in decode_byte)
    for added in data.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"].encode("utf-8")
    return tokens


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
