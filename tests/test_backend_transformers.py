"""TransformersBackend on a tiny model built in the test session (no downloads)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from rubytailor.errors import ModelError
from rubytailor.model.backends import METADATA_FILE, load_backend
from rubytailor.model.backends.base import (
    Backend,
    CancelToken,
    GenerationParams,
    GenerationStats,
)
from rubytailor.model.backends.token_loop import IncrementalDecoder
from rubytailor.model.backends.transformers_backend import TransformersBackend
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import assemble
from rubytailor.training.tiny import build_tiny_model

pytestmark = pytest.mark.slow

FIM = get_format("starcoder")
SUFFIX = "\n  end\nend\n"


def spm(prefix: str, suffix: str = SUFFIX) -> str:
    return assemble(prefix, suffix, FIM, "spm")


def generate(
    backend: TransformersBackend,
    prompt: str,
    params: GenerationParams | None = None,
    cancel: CancelToken | None = None,
) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    pieces = backend.stream(
        prompt, params or GenerationParams(max_new_tokens=12), cancel or CancelToken(), stats
    )
    return "".join(pieces), stats


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend.load(tiny_model_dir, threads=1)


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_loads_metadata_and_meets_the_backend_contract(
    backend: TransformersBackend, tiny_model_dir: Path
) -> None:
    assert isinstance(backend, Backend)
    assert (backend.fim_format, backend.fim_order, backend.context_length) == (
        "starcoder",
        "spm",
        512,
    )
    assert backend.model_id.startswith(tiny_model_dir.name + "@")
    assert isinstance(load_backend("transformers", tiny_model_dir), TransformersBackend)


def test_count_tokens_adds_no_special_tokens(backend: TransformersBackend) -> None:
    assert backend.count_tokens("") == 0
    assert backend.count_tokens("<fim_prefix>") == 1
    assert backend.count_tokens("def foo\n") == len(
        backend.tokenizer.encode("def foo\n", add_special_tokens=False)
    )


def test_greedy_output_matches_transformers_generate(backend: TransformersBackend) -> None:
    """Reference check: the hand-written decoding loop equals HF's own greedy search."""
    backend.reset_cache()
    prompt = spm("class Inventory\n  def total\n    @items.")
    # HF's greedy search does not heal.
    params = GenerationParams(max_new_tokens=16, token_healing=False)
    text, stats = generate(backend, prompt, params)
    ids = torch.tensor([backend.tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        out = backend.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=sorted(backend._stop_ids),
            pad_token_id=0,
        )
    new = [t for t in out[0, ids.shape[1] :].tolist() if t not in backend._stop_ids]
    assert stats.generated_tokens == len(new) > 0
    assert text == backend.tokenizer.decode(new)


def test_a_tokenizer_that_adds_bos_gets_it_before_the_prompt(model_copy: Path) -> None:
    tokenizer_file = model_copy / "tokenizer.json"
    spec = json.loads(tokenizer_file.read_text())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}
        },
    }
    tokenizer_file.write_text(json.dumps(spec))
    loaded = TransformersBackend.load(model_copy)
    prompt = spm("def total\n  ")
    # Compared with plain generate() below.
    text, stats = generate(loaded, prompt, GenerationParams(max_new_tokens=8, token_healing=False))
    ids = torch.tensor([loaded.tokenizer.encode(prompt)])  # with the BOS, as trained
    assert ids[0, 0].item() == 0
    assert stats.prompt_tokens == ids.shape[1] == loaded.count_tokens(prompt) + 1
    with torch.inference_mode():
        out = loaded.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=sorted(loaded._stop_ids),
            pad_token_id=0,
        )
    new = [t for t in out[0, ids.shape[1] :].tolist() if t not in loaded._stop_ids]
    assert stats.generated_tokens == len(new)
    # An incomplete UTF-8 character at the end is held back by the streaming decoder.
    assert text == loaded.tokenizer.decode(new).rstrip("\ufffd")


def test_cache_reuse_never_changes_results(tiny_model_dir: Path) -> None:
    """Typing through a line, deleting, jumping elsewhere: same text with and without reuse."""
    cached = TransformersBackend.load(tiny_model_dir)
    fresh = TransformersBackend.load(tiny_model_dir)
    line = "    @items.sum { |item| item[:quantity] }"
    prefixes = ["class Inventory\n  def total\n" + line[:n] for n in range(0, len(line), 3)]
    prefixes += [prefixes[5], "module Shop\n  VERSION = ", prefixes[-1] + "\n"]
    reused = []
    for prefix in prefixes:
        fresh.reset_cache()
        with_cache, stats = generate(cached, spm(prefix))
        without_cache, fresh_stats = generate(fresh, spm(prefix))
        assert with_cache == without_cache, prefix
        assert fresh_stats.reused_tokens == 0
        reused.append(stats.reused_tokens)
    assert reused[0] == 0
    # Each keystroke-extended prompt reused most of the previous one.
    assert all(r > 10 for r in reused[1 : len(prefixes) - 3])
    # A different prefix: only the markers and the suffix, which SPM puts first, are shared.
    assert reused[-2] == cached.count_tokens(spm(""))


def test_reused_tokens_counts_the_shared_prompt_prefix(backend: TransformersBackend) -> None:
    backend.reset_cache()
    base = spm("def classify(score)\n  if score >= 90\n")
    _, first = generate(backend, base)
    _, extended = generate(backend, base + '    "excellent"')
    _, unrelated = generate(backend, "totally different text")
    assert first.reused_tokens == 0
    assert extended.reused_tokens >= first.prompt_tokens - 1
    assert extended.reused_tokens < extended.prompt_tokens
    assert unrelated.reused_tokens == 0


def test_accepting_a_suggestion_reuses_its_generated_tokens(backend: TransformersBackend) -> None:
    backend.reset_cache()
    # Healing takes the prompt's last word off (and would take the suggestion's off the
    # second prompt), so this exact-token check runs without it. Mid-word, so the
    # (untrained) model's suggestion is not whitespace, which would re-tokenize together
    # with the indentation before it and not match the model's own tokens.
    prompt = spm("config.each do |key, value|\n  puts key")
    params = GenerationParams(max_new_tokens=8, token_healing=False)
    suggestion, first = generate(backend, prompt, params)
    assert suggestion
    _, after = generate(backend, prompt + suggestion, params)
    # The prompt, and the suggestion the model itself wrote, were already in the cache.
    assert after.reused_tokens > first.prompt_tokens


def test_a_failed_generation_does_not_poison_the_next(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = TransformersBackend.load(tiny_model_dir)
    prompt = spm("def size\n  ")
    expected, _ = generate(loaded, prompt)
    forward = loaded.model.forward
    calls = 0

    def failing_forward(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "forward", failing_forward)
    with pytest.raises(RuntimeError):
        generate(loaded, prompt + "@")
    monkeypatch.setattr(loaded.model, "forward", forward)
    again, stats = generate(loaded, prompt)
    assert again == expected
    assert stats.reused_tokens == 0  # the cache was dropped, not trusted


def test_the_caller_runs_outside_inference_mode(backend: TransformersBackend) -> None:
    stats = GenerationStats()
    stream = backend.stream(spm("x = "), GenerationParams(max_new_tokens=4), CancelToken(), stats)
    for _ in stream:
        assert not torch.is_inference_mode_enabled()


def test_cancel_before_the_call_runs_no_forward_pass(backend: TransformersBackend) -> None:
    backend.reset_cache()
    cancel = CancelToken()
    cancel.cancel()
    text, stats = generate(backend, spm("def foo"), cancel=cancel)
    assert text == ""
    assert stats.generated_tokens == 0
    assert stats.stopped_by == "cancelled"
    assert backend._cached_ids == []


def test_cancel_during_generation_stops_within_one_token(backend: TransformersBackend) -> None:
    backend.reset_cache()
    cancel = CancelToken()
    stats = GenerationStats()
    stream = backend.stream(spm("def foo\n  "), GenerationParams(max_new_tokens=30), cancel, stats)
    first = next(stream)
    cancel.cancel()
    at_cancel = stats.generated_tokens
    rest = list(stream)
    assert first and rest == []
    assert stats.generated_tokens == at_cancel
    assert stats.stopped_by == "cancelled"


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_max_new_tokens_is_honoured(backend: TransformersBackend, max_new_tokens: int) -> None:
    _, stats = generate(backend, spm("x = "), GenerationParams(max_new_tokens=max_new_tokens))
    assert stats.generated_tokens <= max_new_tokens
    assert stats.stopped_by in ("max_tokens", "eos")
    _, longer = generate(backend, spm("x = "), GenerationParams(max_new_tokens=20))
    if stats.stopped_by == "max_tokens":
        assert longer.generated_tokens > max_new_tokens


def test_overlong_prompt_keeps_its_tail(
    backend: TransformersBackend, caplog: pytest.LogCaptureFixture
) -> None:
    long_prefix = "".join(f"value_{i} = compute({i})\n" for i in range(200))
    params = GenerationParams(max_new_tokens=8)
    with caplog.at_level(logging.WARNING):
        _, stats = generate(backend, spm(long_prefix), params)
    assert stats.prompt_tokens == backend.context_length - 8
    assert "keeping its last" in caplog.text


def test_a_prompt_ending_in_indentation_is_healed(backend: TransformersBackend) -> None:
    backend.reset_cache()
    prompt = spm("def total\n    ")
    ids = backend.tokenizer.encode(prompt, add_special_tokens=False)
    whitespace = backend.tokenizer.decode([ids[-1]])
    assert whitespace.isspace()
    text, stats = generate(backend, prompt, GenerationParams(max_new_tokens=4))
    # The last prompt token was taken off and re-created by the first generated token,
    # whose whitespace is not repeated in the suggestion.
    generated = backend.tokenizer.decode(backend._cached_ids[len(ids) - 1 :])
    assert generated.startswith(whitespace)
    assert stats.prompt_tokens == len(ids)
    # The suggestion is what was generated after the whitespace (an incomplete UTF-8
    # character at the end of the cached tokens is held back by the decoder).
    after = generated[len(whitespace) :].rstrip("\ufffd")
    assert after and text.startswith(after)


def test_sampling_is_repeatable_with_a_seed(backend: TransformersBackend) -> None:
    params = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    first, _ = generate(backend, spm("def add(a, b)\n  "), params)
    second, _ = generate(backend, spm("def add(a, b)\n  "), params)
    assert first == second


@pytest.mark.parametrize("text", ["puts 'café ☕ 😀'\n", "# 日本語のコメント\nx = 1\n"])
def test_incremental_decoding_never_splits_a_character(
    backend: TransformersBackend, text: str
) -> None:
    ids = backend.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.encode()) // 2  # the tiny vocabulary splits these characters
    decoder = IncrementalDecoder(backend._decode, [])
    pieces = [decoder.push(t) for t in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_loading_never_touches_the_network(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = TransformersBackend.load(tiny_model_dir)
    assert generate(loaded, spm("def foo"))[1].prompt_tokens > 0
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_without_metadata_the_format_is_detected_from_the_tokenizer(model_copy: Path) -> None:
    (model_copy / METADATA_FILE).unlink()
    loaded = TransformersBackend.load(model_copy)
    assert (loaded.fim_format, loaded.fim_order, loaded.context_length) == (
        "starcoder",
        "psm",
        512,
    )


def _break(model_dir: Path, how: str) -> Path:
    if how == "missing dir":
        return model_dir / "nope"
    if how == "file, not dir":
        return model_dir / "config.json"
    if how == "no config":
        (model_dir / "config.json").unlink()
    elif how == "bad config":
        (model_dir / "config.json").write_text("{ not json")
    elif how == "no weights":
        (model_dir / "model.safetensors").unlink()
    elif how == "truncated weights":
        weights = model_dir / "model.safetensors"
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif how == "no tokenizer":
        (model_dir / "tokenizer.json").unlink()
    elif how == "bad metadata":
        (model_dir / METADATA_FILE).write_text(json.dumps({"format_version": 1}))
    return model_dir


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing dir", "does not exist"),
        ("file, not dir", "must be a model directory"),
        ("no config", "no config.json"),
        ("bad config", "cannot read the model config"),
        ("no weights", "no model weights"),
        ("truncated weights", "corrupt or truncated"),
        ("no tokenizer", "no tokenizer"),
        ("bad metadata", "not valid model metadata"),
    ],
)
def test_broken_model_dirs_raise_model_error_saying_what_to_fix(
    model_copy: Path, how: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message) as info:
        TransformersBackend.load(_break(model_copy, how))
    assert str(model_copy) in str(info.value)


def test_a_model_without_fim_tokens_is_refused(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "nofim")
    (model_dir / METADATA_FILE).unlink()
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("extra_special_tokens")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if "fim" not in t["content"]]
    (model_dir / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ModelError, match="no fill-in-the-middle tokens"):
        TransformersBackend.load(model_dir)
