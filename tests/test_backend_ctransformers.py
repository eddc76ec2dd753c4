"""GGML export and the ctransformers backend, checked against transformers on tiny models."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rubytailor.errors import ModelError
from rubytailor.model import ggml_export
from rubytailor.model.backends import auto_backend_kind, load_backend
from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats
from rubytailor.model.backends.token_loop import TokenLoopBackend
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import assemble
from rubytailor.training.tiny import build_tiny_model

ctransformers = pytest.importorskip("ctransformers")
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
    backend = load_backend("ctransformers", model_dir, threads=1)
    return ref, backend._forward(ids)


def test_ggml_logits_match_transformers(trained_model: Path) -> None:
    ref, got = last_logits_both(trained_model, PREFIXES[0] * 3)
    assert got.shape == ref.shape
    # float16 matrices in the GGML file: small rounding, same ranking at the top.
    assert np.abs(got - ref).max() < 2e-2 * max(1.0, float(np.abs(ref).max()))
    assert int(got.argmax()) == int(ref.argmax())


def test_multi_query_models_are_expanded_to_multi_head(tmp_path: Path) -> None:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    model_dir = build_tiny_model(tmp_path / "mqa")
    config = GPTBigCodeConfig.from_pretrained(model_dir)
    config.multi_query = True
    torch.manual_seed(1)
    GPTBigCodeForCausalLM(config).save_pretrained(model_dir)
    ref, got = last_logits_both(model_dir, PREFIXES[1] * 4)
    assert np.abs(got - ref).max() < 2e-2 * max(1.0, float(np.abs(ref).max()))


def test_greedy_suggestions_match_the_transformers_backend(trained_model: Path) -> None:
    fast = load_backend("ctransformers", trained_model, threads=1)
    reference = load_backend("transformers", trained_model, threads=1)
    for prefix in PREFIXES:
        assert run(fast, prefix)[0] == run(reference, prefix)[0], prefix


def test_the_cache_is_reused_and_never_changes_results(trained_model: Path) -> None:
    cached = load_backend("ctransformers", trained_model, threads=1)
    fresh = load_backend("ctransformers", trained_model, threads=1)
    typed = PREFIXES[3]
    for n in range(len(typed) - 8, len(typed) + 1):
        fresh.reset_cache()
        with_cache, stats = run(cached, typed[:n])
        assert with_cache == run(fresh, typed[:n])[0]
    assert stats.reused_tokens > stats.prompt_tokens // 2


def test_cancel_and_max_tokens(trained_model: Path) -> None:
    backend = load_backend("ctransformers", trained_model, threads=1)
    cancel = CancelToken()
    cancel.cancel()
    stats = GenerationStats()
    prompt = assemble(PREFIXES[0], "", FIM, "spm")
    assert list(backend.stream(prompt, GenerationParams(), cancel, stats)) == []
    assert stats.stopped_by == "cancelled" and stats.generated_tokens == 0
    _, stats = run(backend, PREFIXES[2], tokens=3)
    assert stats.generated_tokens <= 3
    assert stats.stopped_by in ("max_tokens", "eos")
    assert stats.generated_tokens == 3 or stats.stopped_by == "eos"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_conversion_is_cached_and_a_damaged_one_is_redone(
    trained_model: Path, private_cache: Path, damage: str
) -> None:
    first = load_backend("ctransformers", trained_model, threads=1)
    files = list((private_cache / "ggml").glob("*.bin"))
    assert len(files) == 1
    whole = files[0].read_bytes()
    # ggml's loader would accept a truncated file and run with missing weights.
    files[0].write_bytes(b"not a ggml file" if damage == "garbage" else whole[:-100])
    again = load_backend("ctransformers", trained_model, threads=1)
    assert files[0].read_bytes() == whole
    assert run(again, PREFIXES[1])[0] == run(first, PREFIXES[1])[0]


def test_a_failed_forward_pass_leaves_nothing_behind(
    trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = load_backend("ctransformers", trained_model, threads=1)
    fresh = load_backend("ctransformers", trained_model, threads=1)
    run(backend, PREFIXES[0])  # fill the cache
    real = backend._forward
    calls = {"n": 0}

    def failing_once(new_ids: list[int]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ModelError("ctransformers failed to evaluate the prompt")
        return real(new_ids)

    monkeypatch.setattr(backend, "_forward", failing_once)
    with pytest.raises(ModelError):
        run(backend, PREFIXES[0] + "x")
    assert backend._cached_ids == []
    assert run(backend, PREFIXES[3])[0] == run(fresh, PREFIXES[3])[0]


def test_vocabulary_bytes_round_trip_through_the_byte_level_alphabet(trained_model: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(trained_model / "tokenizer.json"))
    vocab = ggml_export.vocabulary_bytes(trained_model / "tokenizer.json", tok.get_vocab_size())
    for text in ("  def initialize", "puts 'café'", "<fim_middle>"):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert b"".join(vocab[i] for i in ids) == text.encode("utf-8")


def test_auto_prefers_ctransformers_for_starcoder_models(trained_model: Path) -> None:
    assert auto_backend_kind(trained_model) == "ctransformers"
    assert load_backend("auto", trained_model, threads=1).name == "ctransformers"


def test_other_architectures_get_a_clear_error_and_auto_falls_back(tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(build_tiny_model(tmp_path / "m"), tmp_path / "llama"))
    config = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(config.replace('"gpt_bigcode"', '"llama"'))
    with pytest.raises(ModelError, match="GPTBigCode"):
        load_backend("ctransformers", model_dir)
    assert auto_backend_kind(model_dir) == "transformers"


def test_without_ctransformers_installed_auto_uses_transformers_and_explicit_fails(
    trained_model: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "ctransformers", None)  # import fails
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ctransformers" else real_find_spec(name, *a),
    )
    assert auto_backend_kind(trained_model) == "transformers"
    assert load_backend("auto", trained_model, threads=1).name == "transformers"
    with pytest.raises(ModelError, match="pip install"):
        load_backend("ctransformers", trained_model, threads=1)
    assert not (private_cache / "ggml").exists()  # nothing converted for nothing


def test_auto_falls_back_to_transformers_when_the_conversion_cannot_be_written(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(blocked))
    with pytest.raises(ModelError, match="cannot write the GGML conversion"):
        load_backend("ctransformers", trained_model, threads=1)
    assert load_backend("auto", trained_model, threads=1).name == "transformers"
