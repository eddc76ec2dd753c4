"""GGML export and the ctransformers backend, checked against transformers on tiny models."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rubytailor.errors import ModelError
from rubytailor.model import ggml_cache, ggml_export
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
def without_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "auto" here chooses between ctransformers and transformers, as where the optional
    llama.cpp engine is not installed (tests/test_backend_llamacpp.py covers it)."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a),
    )


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


def _damaged(whole: bytes, damage: str) -> bytes:
    middle = len(whole) // 2
    if damage == "garbage":
        return b"not a ggml file"
    if damage == "truncated":  # ggml's loader would run with missing weights
        return whole[:-100]
    if damage == "ff_run":  # same size: passes the size check; killed the server at load
        return whole[:middle] + b"\xff" * 4096 + whole[middle + 4096 :]
    rng = np.random.default_rng(0)  # same size, random weights: wrong suggestions, silently
    noise = rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    return whole[:middle] + noise + whole[middle + len(noise) :]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "ff_run", "random_bytes"])
def test_conversion_is_cached_and_a_damaged_one_is_redone(
    trained_model: Path, private_cache: Path, damage: str
) -> None:
    first = load_backend("ctransformers", trained_model, threads=1)
    files = list((private_cache / "ggml").glob("*.bin"))
    assert len(files) == 1
    whole = files[0].read_bytes()
    files[0].write_bytes(_damaged(whole, damage))
    again = load_backend("ctransformers", trained_model, threads=1)
    assert files[0].read_bytes() == whole
    assert run(again, PREFIXES[1])[0] == run(first, PREFIXES[1])[0]


def test_a_conversion_without_its_checksum_is_not_trusted(
    trained_model: Path, private_cache: Path
) -> None:
    load_backend("ctransformers", trained_model, threads=1)
    (ggml_file,) = (private_cache / "ggml").glob("*.bin")
    ggml_cache.digest_path(ggml_file).unlink()
    ggml_file.write_bytes(_damaged(ggml_file.read_bytes(), "random_bytes"))
    load_backend("ctransformers", trained_model, threads=1)
    assert (
        ggml_cache.digest_path(ggml_file).read_text().strip()
        == hashlib.sha256(ggml_file.read_bytes()).hexdigest()
    )


def test_a_directory_in_place_of_the_conversion_is_reported(
    trained_model: Path, private_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = load_backend("ctransformers", trained_model, threads=1).model_id
    target = ggml_cache.cache_path(ident)
    target.unlink()
    (target / "inside").mkdir(parents=True)
    with pytest.raises(ModelError, match="is not a file; remove it"):
        load_backend("ctransformers", trained_model, threads=1)
    # "auto" still serves, with the slower backend, and says why.
    with caplog.at_level(logging.WARNING):
        assert load_backend("auto", trained_model, threads=1).name == "transformers"
    assert "is not a file" in caplog.text and (target / "inside").is_dir()


def test_killed_conversions_leave_no_files_behind(trained_model: Path, private_cache: Path) -> None:
    ident = load_backend("ctransformers", trained_model, threads=1).model_id
    target = ggml_cache.cache_path(ident)
    target.unlink()  # the next load converts, and cleans up while it holds the lock
    mine = target.with_name(f".{target.name}.abc123.tmp")
    other_old = target.with_name(".other-model-f16-v1.bin.def456.tmp")
    other_live = target.with_name(".other-model-f16-v1.bin.ghi789.tmp")
    for path in (mine, other_old, other_live):
        path.write_bytes(b"half a conversion")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(other_old, (two_days_ago, two_days_ago))
    load_backend("ctransformers", trained_model, threads=1)
    assert not mine.exists() and not other_old.exists()
    assert other_live.exists()  # may be another model's conversion in progress


def test_two_processes_on_a_fresh_cache_convert_once_and_agree(
    trained_model: Path, private_cache: Path, tmp_path: Path
) -> None:
    source = tmp_path / "cart.rb"
    source.write_text(PREFIXES[0] + "\nend\n")
    line = PREFIXES[0].count("\n")
    column = len(PREFIXES[0].rsplit("\n", 1)[-1])
    # A tiny model converts in milliseconds: a slower conversion opens the race's window.
    slow_conversion = (
        "import logging, sys, time; logging.basicConfig(level=logging.INFO)\n"
        "from rubytailor.model import ggml_export\n"
        "real = ggml_export.export_ggml\n"
        "def slow(*args):\n"
        "    time.sleep(2)\n"
        "    return real(*args)\n"
        "ggml_export.export_ggml = slow\n"
        "from rubytailor.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [
        sys.executable, "-c", slow_conversion, "complete", f"{source}:{line + 1}:{column + 1}",
        "--model", str(trained_model), "--backend", "ctransformers", "--min-confidence", "0",
        "--json",
    ]  # fmt: skip
    env = {**os.environ, "RUBYTAILOR_CACHE_DIR": str(private_cache)}
    both = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    results = [process.communicate(timeout=300) for process in both]
    assert [process.returncode for process in both] == [0, 0], results
    # What the model generated (a tiny model's text seldom passes Prism and the gate).
    answers = [json.loads(out)["unchecked_text"] for out, _ in results]
    assert answers[0] == answers[1] != ""
    conversions = sum(err.decode().count("converted ") for _, err in results)
    assert conversions == 1, results
    assert len(list((private_cache / "ggml").glob("*.bin"))) == 1
    assert not list((private_cache / "ggml").glob(".*.tmp"))


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
