"""Write a GPTBigCode (StarCoder-architecture) Hugging Face model as a GGUF file for llama.cpp.

llama.cpp's own converter (convert_hf_to_gguf.py) cannot convert our models: it rejects
the tokenizer (its pre-tokenizer table is keyed by a hash of known tokenizers' output),
writes one key/value head (StarCoder's multi-query) whatever the config says, and copies
``c_attn`` as it is, while llama.cpp's ``starcoder`` graph slices one [Q | K | V] block.
So the file is written here with the ``gguf`` package, the way that converter writes a
"starcoder" GGUF (the same keys and tensor names), with the two differences handled:

- multi-head models (``multi_query`` false, ours): ``head_count_kv`` = ``n_head``, and the
  per-head interleaved ``c_attn`` rows regrouped into [Q | K | V] (``ggml_export._qkv``,
  the GGML export's regrouping);
- multi-query models: ``head_count_kv`` = 1, and ``c_attn`` kept, already [Q | K | V]
  with K and V one head wide.

The tokenizer is written as GPT-2 byte-level BPE ("gpt2", pre-tokenizer "gpt-2": our
tokenizer.json's ByteLevel split with GPT-2's regex), vocabulary, merges and special
tokens included. rubytailor encodes with tokenizer.json itself; the GGUF's copy makes the
file complete for llama.cpp's loader and its other tools. Matrices are float16; norms,
biases and the position embeddings stay float32, as in the GGML export.

The ``gguf`` package is imported only to write or read a file: this module's ``supports``
works without it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rubytailor.errors import ModelError
from rubytailor.model import ggml_export

ARCH = "starcoder"
# Part of the cached file's name: a change to the conversion must not reuse old files.
CONVERTER_VERSION = 1
FTYPES = ("f16",)
GGUF_FILE_TYPE_F16 = 1  # llama.cpp's LLAMA_FTYPE_MOSTLY_F16
# gguf's TokenType values.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def supports(model_dir: Path) -> str | None:
    """None when ``model_dir`` can be converted, else why not (one sentence).

    The same models as the GGML export: llama.cpp's starcoder graph, like ggml's, has a
    tanh GELU and scales attention by 1/sqrt(head size).
    """
    return ggml_export.supports(model_dir)


def export_gguf(model_dir: Path, out: Path, ftype: str = "f16") -> Path:
    """Convert ``model_dir`` to a GGUF file at ``out`` (written atomically).

    Raises ModelError for a model it cannot convert, OSError when ``out`` cannot be written.
    """
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {', '.join(FTYPES)}, not {ftype!r}")
    why_not = supports(model_dir)
    if why_not is not None:
        raise ModelError(why_not)
    gguf = _gguf()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)  # fail on an unwritable place before the work
    try:
        tensors = ggml_export._load_tensors(model_dir)
        arrays = list(_gguf_tensors(config, tensors))
        tokens, types, merges = _vocabulary(model_dir / "tokenizer.json", int(config["vocab_size"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot convert {model_dir} to GGUF ({exc!r})") from exc
    if [(n, a.shape) for n, a in arrays] != tensor_specs(config):
        raise ModelError(f"the tensors of {model_dir} do not have the shapes its config states")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        _add_parameters(writer, config, model_dir.name)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        for key, add in (
            ("bos_token_id", writer.add_bos_token_id),
            ("eos_token_id", writer.add_eos_token_id),
            ("pad_token_id", writer.add_pad_token_id),
        ):
            if isinstance(config.get(key), int):
                add(int(config[key]))
        writer.add_add_bos_token(False)  # tokenizer.json adds no special tokens
        for name, array in arrays:
            half = array.ndim == 2 and name != "position_embd.weight"
            writer.add_tensor(name, np.ascontiguousarray(array, np.float16 if half else np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def file_is_complete(path: Path, config: dict[str, Any], ftype: str = "f16") -> bool:
    """Whether a GGUF file written by ``export_gguf`` has every tensor, whole.

    Reads the header and tensor table (no weights): each tensor ``tensor_specs`` names
    must be there with its shape, and its data must lie inside the file.
    """
    try:
        reader = _gguf().GGUFReader(path)
        size = path.stat().st_size
        found = {
            t.name: (tuple(int(d) for d in reversed(t.shape)), t.data_offset + t.n_bytes)
            for t in reader.tensors
        }
    except Exception:  # the reader fails in many ways on a damaged file; all mean "no"
        return False
    specs = tensor_specs(config)
    if len(found) != len(specs):
        return False
    for name, shape in specs:
        if name not in found or found[name][0] != shape or found[name][1] > size:
            return False
    return True


def tensor_specs(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, PyTorch-layout shape) of every tensor ``export_gguf`` writes, in order."""
    e, v, n_pos = int(config["n_embd"]), int(config["vocab_size"]), int(config["n_positions"])
    n_ff = _n_ff(config)
    qkv = e + 2 * _kv_width(config)
    specs: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (v, e)),
        ("position_embd.weight", (n_pos, e)),
    ]
    for i in range(int(config["n_layer"])):
        b = f"blk.{i}."
        specs += [
            (b + "attn_norm.weight", (e,)),
            (b + "attn_norm.bias", (e,)),
            (b + "attn_qkv.weight", (qkv, e)),
            (b + "attn_qkv.bias", (qkv,)),
            (b + "attn_output.weight", (e, e)),
            (b + "attn_output.bias", (e,)),
            (b + "ffn_norm.weight", (e,)),
            (b + "ffn_norm.bias", (e,)),
            (b + "ffn_up.weight", (n_ff, e)),
            (b + "ffn_up.bias", (n_ff,)),
            (b + "ffn_down.weight", (e, n_ff)),
            (b + "ffn_down.bias", (e,)),
        ]
    specs += [("output_norm.weight", (e,)), ("output_norm.bias", (e,))]
    if not bool(config.get("tie_word_embeddings", True)):
        specs.append(("output.weight", (v, e)))  # tied: llama.cpp reuses token_embd
    return specs


def _gguf() -> Any:
    try:
        import gguf

        # Its writer logs each file it writes, and its endianness, at INFO: noise here.
        logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
    except ImportError as exc:
        raise ModelError(
            "converting a model for llama.cpp needs the gguf package: "
            "pip install 'rubytailor[llamacpp]'"
        ) from exc
    return gguf


def _n_ff(config: dict[str, Any]) -> int:
    return int(config.get("n_inner") or 4 * int(config["n_embd"]))


def _multi_query(config: dict[str, Any]) -> bool:
    return bool(config.get("multi_query", False))


def _kv_width(config: dict[str, Any]) -> int:
    """Rows of K (and of V) in c_attn: one head for multi-query, every head otherwise."""
    n_embd = int(config["n_embd"])
    return n_embd // int(config["n_head"]) if _multi_query(config) else n_embd


def _add_parameters(writer: Any, config: dict[str, Any], name: str) -> None:
    n_head = int(config["n_head"])
    writer.add_name(name)
    writer.add_context_length(int(config["n_positions"]))
    writer.add_embedding_length(int(config["n_embd"]))
    writer.add_feed_forward_length(_n_ff(config))
    writer.add_block_count(int(config["n_layer"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(1 if _multi_query(config) else n_head)
    writer.add_layer_norm_eps(float(config.get("layer_norm_epsilon", 1e-5)))
    writer.add_file_type(GGUF_FILE_TYPE_F16)
    writer.add_quantization_version(_gguf().GGML_QUANT_VERSION)


def _gguf_tensors(
    config: dict[str, Any], t: dict[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in PyTorch (out, in) layout) for every tensor."""
    n_head, n_embd = int(config["n_head"]), int(config["n_embd"])
    p = "transformer."
    yield "token_embd.weight", t[p + "wte.weight"]
    yield "position_embd.weight", t[p + "wpe.weight"]
    for i in range(int(config["n_layer"])):
        h, b = f"{p}h.{i}.", f"blk.{i}."
        w, bias = t[h + "attn.c_attn.weight"], t[h + "attn.c_attn.bias"]
        if not _multi_query(config):
            w = ggml_export._qkv(w, n_head, n_embd, multi_query=False)
            bias = ggml_export._qkv(bias, n_head, n_embd, multi_query=False)
        yield b + "attn_norm.weight", t[h + "ln_1.weight"]
        yield b + "attn_norm.bias", t[h + "ln_1.bias"]
        yield b + "attn_qkv.weight", w
        yield b + "attn_qkv.bias", bias
        yield b + "attn_output.weight", t[h + "attn.c_proj.weight"]
        yield b + "attn_output.bias", t[h + "attn.c_proj.bias"]
        yield b + "ffn_norm.weight", t[h + "ln_2.weight"]
        yield b + "ffn_norm.bias", t[h + "ln_2.bias"]
        yield b + "ffn_up.weight", t[h + "mlp.c_fc.weight"]
        yield b + "ffn_up.bias", t[h + "mlp.c_fc.bias"]
        yield b + "ffn_down.weight", t[h + "mlp.c_proj.weight"]
        yield b + "ffn_down.bias", t[h + "mlp.c_proj.bias"]
    yield "output_norm.weight", t[p + "ln_f.weight"]
    yield "output_norm.bias", t[p + "ln_f.bias"]
    if not bool(config.get("tie_word_embeddings", True)):
        yield "output.weight", t["lm_head.weight"]


def _vocabulary(tokenizer_json: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Token texts (GPT-2 byte-alphabet strings, as in tokenizer.json), token types and
    merges ("a b") of a byte-level BPE tokenizer.json, padded to the model's vocab size."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer.json holds a {model.get('type')!r} model, not BPE")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [TOKEN_UNUSED] * vocab_size
    for text, idx in model["vocab"].items():
        if idx < vocab_size:
            tokens[idx], types[idx] = text, TOKEN_NORMAL
    for added in data.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    # Merges are "a b" strings in older tokenizer.json files, [a, b] pairs in newer ones.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges
