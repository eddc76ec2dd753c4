"""GGUF export and the llamacpp backend, checked against transformers on tiny models."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rubytailor.errors import ModelError
from rubytailor.model import ggml_cache, gguf_export
from rubytailor.model.backends import auto_backend_kind, load_backend
from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats
from rubytailor.model.backends.token_loop import TokenLoopBackend
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import assemble
from rubytailor.training.tiny import build_tiny_model

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.slow

FIM = get_format("starcoder")
PREFIXES = [
    "class Cart\n  def initialize(items = [])\n    @items = ",
    "def add(a, b)\n  ",
    "numbers = (1..10).select(&:even?).map { |n| ",
    "# frozen_string_literal: true\n\nmodule Billing\n  class Invoice\n    attr_reader ",
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained a little, so greedy choices are not near-ties between random logits."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_trained"), train_steps=60)


def run(backend: TokenLoopBackend, prefix: str, tokens: int = 24) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    prompt = assemble(prefix, "\nend\n", FIM, "spm")
    params = GenerationParams(max_new_tokens=tokens)
    return "".join(backend.stream(prompt, params, CancelToken(), stats)), stats


def last_logits_both(model_dir: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.encode(text)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].numpy()
    backend = load_backend("llamacpp", model_dir, threads=1)
    return ref, backend._forward(ids)


def close_enough(got: np.ndarray, ref: np.ndarray) -> bool:
    # float16 matrices in the GGUF file: small rounding, same ranking at the top.
    scale = max(1.0, float(np.abs(ref).max()))
    return bool(np.abs(got - ref).max() < 2e-2 * scale and got.argmax() == ref.argmax())


def gguf_fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def the_gguf_file(cache: Path) -> Path:
    (path,) = (cache / "gguf").glob("*.gguf")
    return path


def test_gguf_logits_match_transformers(trained_model: Path, private_cache: Path) -> None:
    ref, got = last_logits_both(trained_model, PREFIXES[0] * 3)
    assert got.shape == ref.shape
    assert close_enough(got, ref)
    fields = gguf_fields(the_gguf_file(private_cache))
    assert fields["general.architecture"] == "starcoder"
    # Ours is multi-head: one key/value head per attention head, not StarCoder's one.
    assert fields["starcoder.attention.head_count_kv"] == fields["starcoder.attention.head_count"]


def test_multi_query_models_keep_one_key_value_head(tmp_path: Path, private_cache: Path) -> None:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    model_dir = build_tiny_model(tmp_path / "mqa")
    config = GPTBigCodeConfig.from_pretrained(model_dir)
    config.multi_query = True
    torch.manual_seed(1)
    GPTBigCodeForCausalLM(config).save_pretrained(model_dir)
    ref, got = last_logits_both(model_dir, PREFIXES[1] * 4)
    assert close_enough(got, ref)
    assert gguf_fields(the_gguf_file(private_cache))["starcoder.attention.head_count_kv"] == 1


def test_greedy_suggestions_match_the_transformers_backend(trained_model: Path) -> None:
    fast = load_backend("llamacpp", trained_model, threads=1)
    reference = load_backend("transformers", trained_model, threads=1)
    for prefix in PREFIXES:
        assert run(fast, prefix)[0] == run(reference, prefix)[0], prefix


def test_the_gguf_tokenizer_encodes_as_tokenizer_json_does(trained_model: Path) -> None:
    from tokenizers import Tokenizer

    ident = load_backend("llamacpp", trained_model, threads=1).model_id  # converts
    path = ggml_cache.cache_path(ident, ggml_cache.GGUF)
    vocab_only = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    ours = Tokenizer.from_file(str(trained_model / "tokenizer.json"))
    for text in ("  def initialize(items = [])\n    @items = items", "puts 'café' if x >= 10_000"):
        expected = ours.encode(text, add_special_tokens=False).ids
        assert vocab_only.tokenize(text.encode(), add_bos=False, special=False) == expected
    fim = "<fim_suffix>end<fim_prefix>def a<fim_middle>"
    assert vocab_only.tokenize(fim.encode(), add_bos=False, special=True) == (
        ours.encode(fim, add_special_tokens=False).ids
    )


def test_the_cache_is_reused_and_never_changes_results(trained_model: Path) -> None:
    cached = load_backend("llamacpp", trained_model, threads=1)
    fresh = load_backend("llamacpp", trained_model, threads=1)
    typed = PREFIXES[3]
    for n in range(len(typed) - 8, len(typed) + 1):
        fresh.reset_cache()
        with_cache, stats = run(cached, typed[:n])
        assert with_cache == run(fresh, typed[:n])[0]
    assert stats.reused_tokens > stats.prompt_tokens // 2
    # Back to an earlier, shorter prompt: the cache is cropped, not appended to.
    back, stats = run(cached, PREFIXES[3][:-12])
    fresh.reset_cache()
    assert stats.reused_tokens > 0 and back == run(fresh, PREFIXES[3][:-12])[0]


def test_cancel_and_max_tokens(trained_model: Path) -> None:
    backend = load_backend("llamacpp", trained_model, threads=1)
    cancel = CancelToken()
    cancel.cancel()
    stats = GenerationStats()
    prompt = assemble(PREFIXES[0], "", FIM, "spm")
    assert list(backend.stream(prompt, GenerationParams(), cancel, stats)) == []
    assert stats.stopped_by == "cancelled" and stats.generated_tokens == 0
    # Cancelled after the first piece: generation stops there and the next call is exact.
    cancel = CancelToken()
    stats = GenerationStats()
    pieces = []
    for piece in backend.stream(prompt, GenerationParams(max_new_tokens=24), cancel, stats):
        pieces.append(piece)
        cancel.cancel()
    assert len(pieces) == 1 and stats.stopped_by == "cancelled"
    fresh = load_backend("llamacpp", trained_model, threads=1)
    assert run(backend, PREFIXES[2])[0] == run(fresh, PREFIXES[2])[0]
    _, stats = run(backend, PREFIXES[2], tokens=3)
    assert stats.generated_tokens <= 3
    assert stats.stopped_by in ("max_tokens", "eos")
    assert stats.generated_tokens == 3 or stats.stopped_by == "eos"


def _damaged(whole: bytes, damage: str) -> bytes:
    middle = len(whole) // 2
    if damage == "garbage":
        return b"not a gguf file"
    if damage == "truncated":
        return whole[:-100]
    rng = np.random.default_rng(0)  # same size, random weights: wrong suggestions, silently
    noise = rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    return whole[:middle] + noise + whole[middle + len(noise) :]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "random_bytes"])
def test_conversion_is_cached_and_a_damaged_one_is_redone(
    trained_model: Path, private_cache: Path, damage: str
) -> None:
    first = load_backend("llamacpp", trained_model, threads=1)
    path = the_gguf_file(private_cache)
    whole = path.read_bytes()
    assert gguf_export.file_is_complete(path, first_config(trained_model))
    path.write_bytes(_damaged(whole, damage))
    if damage != "random_bytes":  # the cheap check catches these; the digest the rest
        assert not gguf_export.file_is_complete(path, first_config(trained_model))
    again = load_backend("llamacpp", trained_model, threads=1)
    assert path.read_bytes() == whole
    assert run(again, PREFIXES[1])[0] == run(first, PREFIXES[1])[0]


def first_config(model_dir: Path) -> dict[str, object]:
    import json

    return dict(json.loads((model_dir / "config.json").read_text()))


def test_auto_prefers_llamacpp_and_falls_back_saying_why(
    trained_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert auto_backend_kind(trained_model) == "llamacpp"
    backend = load_backend("auto", trained_model, threads=1)
    assert backend.name == "llamacpp" and getattr(backend, "fallback_note", None) is None
    # Something where the GGUF conversion goes: "auto" runs the next backend and says why.
    target = ggml_cache.cache_path(backend.model_id, ggml_cache.GGUF)
    target.unlink()
    (target / "inside").mkdir(parents=True)
    with pytest.raises(ModelError, match="is not a file; remove it"):
        load_backend("llamacpp", trained_model, threads=1)
    with caplog.at_level(logging.WARNING):
        fallback = load_backend("auto", trained_model, threads=1)
    expected = "ctransformers" if auto_has("ctransformers") else "transformers"
    assert fallback.name == expected
    note = getattr(fallback, "fallback_note", "")
    assert note.startswith("llamacpp cannot run") and "is not a file" in note
    assert note.endswith(f"using {expected}")


def auto_has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_other_architectures_get_a_clear_error(tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(build_tiny_model(tmp_path / "m"), tmp_path / "llama"))
    config = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(config.replace('"gpt_bigcode"', '"llama"'))
    with pytest.raises(ModelError, match="GPTBigCode"):
        load_backend("llamacpp", model_dir)
    assert auto_backend_kind(model_dir) == "transformers"


def test_without_llama_cpp_installed_auto_skips_it_and_explicit_fails(
    trained_model: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a),
    )
    assert auto_backend_kind(trained_model) != "llamacpp"
    assert load_backend("auto", trained_model, threads=1).name != "llamacpp"
    with pytest.raises(ModelError, match="pip install"):
        load_backend("llamacpp", trained_model, threads=1)
    assert not (private_cache / "gguf").exists()  # nothing converted for nothing
