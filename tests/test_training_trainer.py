"""The trainer: loss goes down, checkpoints resume with the same data order, schedule shape."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rubytailor.training import trainer as trainer_mod
from rubytailor.training.trainer import (
    ModelShape,
    TrainConfig,
    load_trained_model,
    lr_at,
    train,
    window_ids,
)

SEQ = 16


def _data(tmp_path: Path) -> Path:
    """A learnable token stream: counting runs 6..37 with a random start every 32 tokens."""
    rng = np.random.default_rng(0)
    runs = [(np.arange(32) + rng.integers(32)) % 32 + 6 for _ in range(300)]
    data = tmp_path / "data"
    data.mkdir()
    np.concatenate(runs).astype(np.uint16).tofile(data / "train.bin")
    np.concatenate(runs[:20]).astype(np.uint16).tofile(data / "validation.bin")
    return data


def _config(tmp_path: Path, run: str, **overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "data_dir": _data(tmp_path) if not (tmp_path / "data").exists() else tmp_path / "data",
        "run_dir": tmp_path / run,
        "vocab_size": 48,
        "shape": ModelShape(n_embd=32, n_layer=1, n_head=2, n_positions=SEQ),
        "seq_len": SEQ,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 5,
        "max_steps": 60,
        "checkpoint_minutes": 60.0,
        "log_every": 5,
        "eval_every": 1000,
        "eval_batches": 2,
        "threads": 1,
        "device": "cpu",
    }
    base.update(overrides)
    return TrainConfig(**base)


def test_a_short_run_lowers_the_loss_and_writes_its_run_files(tmp_path: Path) -> None:
    state = train(_config(tmp_path, "run"))
    losses = [h["loss"] for h in state.history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0  # random-init loss is ~ln(48) = 3.9
    val = [h["val_loss"] for h in state.history if "val_loss" in h]
    assert val and val[-1] < 3.0
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").is_file()
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "tok_s", "tokens"} <= set(metrics[0])
    model, saved = load_trained_model(run)
    assert saved["step"] == 60 and not model.config.multi_query


def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train(_config(tmp_path, "straight", max_steps=12))

    real_get_batch = trainer_mod.get_batch
    calls = {"n": 0}

    def dying_get_batch(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 8:  # die while fetching step 8's batch: 7 steps are done
            raise KeyboardInterrupt
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "get_batch", dying_get_batch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "killed", max_steps=12, checkpoint_minutes=0.0))
    monkeypatch.setattr(trainer_mod, "get_batch", real_get_batch)
    saved = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    assert saved["state"]["step"] == 7

    resumed = train(_config(tmp_path, "killed", max_steps=12, checkpoint_minutes=0.0))
    assert resumed.step == 12 and resumed.tokens_seen == straight.tokens_seen
    resumed_steps = [h["step"] for h in resumed.history if "loss" in h]
    assert resumed_steps == [5, 10]  # history carried over, logging continued after step 7
    a, _ = load_trained_model(tmp_path / "straight")
    b, _ = load_trained_model(tmp_path / "killed")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_every_window_is_seen_once_per_epoch_and_ranks_do_not_overlap() -> None:
    n = 20
    epoch = [i for step in range(5) for i in window_ids(step, 4, 0, 1, n, seed=1)]
    assert sorted(epoch) == list(range(n))
    next_epoch = [i for step in range(5, 10) for i in window_ids(step, 4, 0, 1, n, seed=1)]
    assert sorted(next_epoch) == list(range(n)) and next_epoch != epoch
    r0 = window_ids(0, 4, 0, 2, n, seed=1)
    r1 = window_ids(0, 4, 1, 2, n, seed=1)
    assert not set(r0) & set(r1)


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    config = TrainConfig(data_dir=Path(), run_dir=Path(), lr=1e-3, warmup_steps=10)
    lrs = [lr_at(s, config, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[100] == pytest.approx(1e-4)  # min_lr_ratio 0.1


def test_kl_to_the_base_is_zero_for_a_fresh_adapter_and_holds_a_trained_one_near_it(
    tmp_path: Path,
) -> None:
    from rubytailor.errors import ConfigError
    from rubytailor.training.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "base")
    config = _config(tmp_path, "lora", init_from=model_dir, lora_r=4, vocab_size=0)
    model = trainer_mod.build_model(config)
    batch = torch.randint(0, 48, (2, SEQ + 1))  # ids both vocabularies have
    # peft starts LoRA's B at zero: the adapted model is the base, the KL term is 0.
    plain = trainer_mod._loss(model, batch)
    assert trainer_mod._loss(model, batch, 5.0).item() == pytest.approx(plain.item(), abs=1e-6)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    moved = trainer_mod._loss(model, batch)
    assert trainer_mod._loss(model, batch, 1.0).item() > moved.item() + 1e-4
    with pytest.raises(ConfigError):
        trainer_mod._loss(trainer_mod.build_model(_config(tmp_path, "full")), batch, 1.0)


def test_learned_positions_extend_to_a_longer_context_without_changing_earlier_ones(
    tmp_path: Path,
) -> None:
    from rubytailor.training.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "base", n_positions=32)
    config = _config(tmp_path, "long", init_from=model_dir, seq_len=80, vocab_size=0)
    original = trainer_mod.build_model(_config(tmp_path, "short", init_from=model_dir))
    model = trainer_mod.build_model(config)
    table = model.transformer.wpe.weight
    assert table.shape[0] == 80 and model.config.n_positions == 80
    old = original.transformer.wpe.weight
    assert torch.equal(table[:32], old) and torch.equal(table[32:64], old)
    assert torch.equal(table[64:], old[:16])
    ids = torch.randint(0, 48, (1, 80))
    with torch.no_grad():
        long = model(input_ids=ids).logits
        short = original(input_ids=ids[:, :32]).logits
    assert torch.allclose(long[:, :32], short, atol=1e-5)  # causal: the first 32 see the same
    # And training runs at the longer length.
    state = train(replace(config, max_steps=3))
    assert state.step == 3


def test_the_memory_loss_is_the_mixtures_negative_log_likelihood(tmp_path: Path) -> None:
    model = trainer_mod.build_model(_config(tmp_path, "mem"))
    batch = torch.randint(0, 48, (2, SEQ + 1))
    with torch.no_grad():
        log_p = torch.log_softmax(model(input_ids=batch[:, :-1]).logits.float(), dim=-1)
        p = log_p.gather(-1, batch[:, 1:, None]).squeeze(-1).exp()
    silent = torch.zeros(2, SEQ, 2)
    plain = trainer_mod._loss(model, batch)
    assert trainer_mod._loss(model, batch, memory=silent).item() == pytest.approx(plain.item())
    weight = torch.rand(2, SEQ) * 0.9
    share = weight * torch.rand(2, SEQ)
    share[0, :4] = 0.0  # the memory gives the true token nothing there
    memory = torch.stack([weight, share], dim=-1)
    want = -torch.log((1 - weight) * p + share).mean()
    assert trainer_mod._loss(model, batch, memory=memory).item() == pytest.approx(want.item())


def test_a_memory_loss_run_needs_targets_that_match_its_tokens(tmp_path: Path) -> None:
    from rubytailor.errors import ConfigError
    from rubytailor.training.fim_dataset import MEMORY_TARGETS

    config = _config(tmp_path, "mem", memory_loss=True, max_steps=10)
    with pytest.raises(ConfigError, match="needs"):
        train(config)
    tokens = np.fromfile(config.data_dir / "train.bin", dtype=np.uint16)
    targets = config.data_dir / MEMORY_TARGETS
    np.zeros((tokens.size - 1, 2), dtype=np.float32).tofile(targets)
    with pytest.raises(ConfigError, match="does not match"):
        train(config)
    # The memory is sure of every token after a 6: the run gets no gradient there.
    pairs = np.zeros((tokens.size, 2), dtype=np.float32)
    after_six = np.flatnonzero(tokens[:-1] == 6) + 1
    pairs[after_six] = 0.9
    pairs.tofile(targets)
    state = train(config)
    assert state.step == 10 and all(math.isfinite(h["loss"]) for h in state.history if "loss" in h)


def test_loss_weights_give_the_weighted_mean_of_the_token_losses(tmp_path: Path) -> None:
    model = trainer_mod.build_model(_config(tmp_path, "weights"))
    batch = torch.randint(0, 48, (2, SEQ + 1))
    with torch.no_grad():
        log_p = torch.log_softmax(model(input_ids=batch[:, :-1]).logits.float(), dim=-1)
        nll = -log_p.gather(-1, batch[:, 1:, None]).squeeze(-1)
    ones = torch.ones(2, SEQ)
    plain = trainer_mod._loss(model, batch)
    assert trainer_mod._loss(model, batch, weights=ones).item() == pytest.approx(plain.item())
    weights = torch.rand(2, SEQ)
    weights[1] = 0.0  # the second window's tokens do not count at all
    want = (nll * weights).sum() / weights.sum()
    got = trainer_mod._loss(model, batch, weights=weights)
    assert got.item() == pytest.approx(want.item()) and got.item() != pytest.approx(plain.item())


def test_a_weighted_run_needs_weights_that_match_its_tokens(tmp_path: Path) -> None:
    from rubytailor.errors import ConfigError
    from rubytailor.training.fim_dataset import LOSS_WEIGHTS

    config = _config(tmp_path, "weighted", loss_weights=True, max_steps=10)
    with pytest.raises(ConfigError, match="needs"):
        train(config)
    tokens = np.fromfile(config.data_dir / "train.bin", dtype=np.uint16)
    path = config.data_dir / LOSS_WEIGHTS
    np.ones(tokens.size + 1, dtype=np.float32).tofile(path)
    with pytest.raises(ConfigError, match="does not match"):
        train(config)
    np.where(tokens == 6, 0.0, 1.0).astype(np.float32).tofile(path)
    state = train(config)
    assert state.step == 10 and all(math.isfinite(h["loss"]) for h in state.history if "loss" in h)
