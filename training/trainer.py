"""Causal-LM training on packed token windows: from scratch (GPTBigCode) or from a local
Hugging Face model, full or LoRA; resumable, time-budgeted, CPU or CUDA.

Data order is a pure function of (seed, step): window ``p`` of the run is window
``perm_e[p mod n]`` of epoch ``e = p // n``, with ``perm_e`` seeded by ``seed + e``. So a
run killed at any point resumes from its last checkpoint and sees exactly the batches it
would have seen. The learning rate follows linear warmup then cosine decay to
``min_lr_ratio * lr``: over ``max_steps`` steps when that is set (the run is then
reproducible bit for bit, resumed or not), otherwise over the time budget (progress =
training seconds / budget), so the decay ends as the budget runs out whatever the
machine's load. Checkpoints hold the RNG state, so dropout (off by default) resumes too.

Distributed: under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1 in the
environment) each rank trains on its own slice of every global batch with DDP; rank 0
logs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from rubytailor.errors import ConfigError
from rubytailor.training.fim_dataset import (
    LOSS_WEIGHTS,
    MEMORY_TARGETS,
    load_loss_weights,
    load_memory_targets,
    load_tokens,
)
from rubytailor.training.plot import write_loss_png

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass(kw_only=True)
class ModelShape:
    """A from-scratch GPTBigCode. multi_query=False so the GGML starcoder loader accepts it."""

    n_embd: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_positions: int = 256
    dropout: float = 0.0  # GPTBigCode's default is 0.1; short pretraining runs do better without


@dataclass(kw_only=True)
class TrainConfig:
    data_dir: Path  # holds train.bin (and validation.bin) from `rubytailor prepare`
    run_dir: Path
    vocab_size: int = 8192
    shape: ModelShape = field(default_factory=ModelShape)
    init_from: Path | None = None  # a local HF model directory to continue training
    lora_r: int = 0  # > 0: train a LoRA adapter of this rank instead of all weights
    lora_alpha: int = 16
    # peft's target_modules: "all-linear", or module names separated by commas ("c_attn,c_proj").
    lora_targets: str = "all-linear"
    # With LoRA: add this times KL(base || adapted) over every predicted position, the
    # base being the same model with the adapter switched off (one more forward pass,
    # no gradient), so the adapter learns the data without moving the model elsewhere.
    kl_weight: float = 0.0
    # Loss of the model mixed with the project memory, -log((1 - W) p + Q), from the
    # (W, Q) pairs in MEMORY_TARGETS beside train.bin (personalization/memory_loss.py).
    memory_loss: bool = False
    # Weigh each predicted token's loss by the float32 in LOSS_WEIGHTS beside train.bin
    # (a weighted mean): e.g. less weight on FIM prompts than on the middles served.
    loss_weights: bool = False
    seq_len: int = 256
    batch_size: int = 16  # per rank, per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 0  # 0: schedule over time_budget_minutes instead
    time_budget_minutes: float = 0.0  # 0: no budget (max_steps must be set)
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    device: str = "auto"  # "auto", "cpu" or "cuda"


@dataclass(kw_only=True)
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training seconds over all sessions of this run
    max_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, config: TrainConfig, max_steps: int, progress: float | None = None) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``
    (or at ``progress`` 1.0, when a time-based progress in [0, 1] is given)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if progress is None:
        span = max(max_steps - config.warmup_steps, 1)
        progress = (step - config.warmup_steps) / span
    progress = min(max(progress, 0.0), 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


def window_ids(
    step: int, batch: int, rank: int, world: int, n_windows: int, seed: int
) -> list[int]:
    """The window indices of one rank's batch at ``step`` (see the module docstring)."""
    ids: list[int] = []
    start = (step * world + rank) * batch
    cached: dict[int, np.ndarray] = {}
    for p in range(start, start + batch):
        epoch, idx = divmod(p, n_windows)
        if epoch not in cached:
            cached[epoch] = np.random.default_rng(seed + epoch).permutation(n_windows)
        ids.append(int(cached[epoch][idx]))
    return ids


def get_batch(tokens: np.ndarray, ids: list[int], seq_len: int) -> torch.Tensor:
    """(batch, seq_len + 1) int64: window i is tokens[i*seq_len : (i+1)*seq_len + 1]."""
    rows = [np.asarray(tokens[i * seq_len : (i + 1) * seq_len + 1], dtype=np.int64) for i in ids]
    return torch.from_numpy(np.stack(rows))


def get_target_batch(targets: np.ndarray, ids: list[int], seq_len: int) -> torch.Tensor:
    """(batch, seq_len, ...) float32: the per-token values (memory (W, Q), loss weight)
    of the tokens window i predicts."""
    rows = [np.asarray(targets[i * seq_len + 1 : (i + 1) * seq_len + 1]) for i in ids]
    return torch.from_numpy(np.stack(rows))


def build_model(config: TrainConfig) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPTBigCodeConfig, GPTBigCodeForCausalLM

    model: torch.nn.Module
    if config.init_from is not None:
        model = AutoModelForCausalLM.from_pretrained(str(config.init_from), local_files_only=True)
        model = model.float()
        if config.seq_len > int(getattr(model.config, "n_positions", config.seq_len)):
            extend_positions(model, config.seq_len)
    else:
        s = config.shape
        hf_config = GPTBigCodeConfig(
            vocab_size=config.vocab_size,
            n_positions=s.n_positions,
            n_embd=s.n_embd,
            n_layer=s.n_layer,
            n_head=s.n_head,
            multi_query=False,
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=s.dropout,
            embd_pdrop=s.dropout,
            attn_pdrop=s.dropout,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=4,
        )
        torch.manual_seed(config.seed)
        model = GPTBigCodeForCausalLM(hf_config)
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_targets
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            target_modules=targets if targets == "all-linear" else targets.split(","),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def extend_positions(model: torch.nn.Module, n_positions: int) -> None:
    """Grow a GPTBigCode model's learned position table to ``n_positions`` rows, for
    continued training at a longer context: the trained rows are kept and repeated
    over the new ones (as Longformer extended RoBERTa's), so every new position starts
    from a trained embedding instead of noise. Earlier positions compute exactly what
    they did before."""
    transformer: Any = getattr(model, "transformer", None)
    old = getattr(transformer, "wpe", None)
    if not isinstance(old, torch.nn.Embedding):
        raise ConfigError("only GPTBigCode-style models (transformer.wpe) can be extended")
    have = old.num_embeddings
    grown = torch.nn.Embedding(n_positions, old.embedding_dim, dtype=old.weight.dtype)
    with torch.no_grad():
        for start in range(0, n_positions, have):
            rows = min(have, n_positions - start)
            grown.weight[start : start + rows] = old.weight[:rows]
    transformer.wpe = grown
    model.config.n_positions = n_positions  # type: ignore[union-attr]  # HF config
    log.info("extended the learned positions from %d to %d", have, n_positions)


def _loss(
    model: torch.nn.Module,
    batch: torch.Tensor,
    kl_weight: float = 0.0,
    memory: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    # batch: (B, T+1); predict tokens 1..T from 0..T-1. memory: (B, T, 2) or None;
    # weights: (B, T) or None.
    logits = model(input_ids=batch[:, :-1]).logits.float()  # (B, T, V)
    flat = logits.reshape(-1, logits.size(-1))
    log_p = -F.cross_entropy(flat, batch[:, 1:].reshape(-1), reduction="none")
    if memory is None:
        token_loss = -log_p
    else:
        mem_weight, share = memory.reshape(-1, 2).unbind(-1)
        # log((1 - W) p + Q); where Q is 0, log(0) = -inf leaves log((1 - W) p).
        token_loss = -torch.logaddexp(torch.log1p(-mem_weight) + log_p, torch.log(share))
    if weights is None:
        loss = token_loss.mean()
    else:
        w = weights.reshape(-1)
        loss = (token_loss * w).sum() / w.sum().clamp_min(1e-6)
    if kl_weight > 0:
        with torch.no_grad(), _without_adapter(model):
            base = model(input_ids=batch[:, :-1]).logits.float().reshape(-1, logits.size(-1))
        kl = F.kl_div(
            F.log_softmax(flat, dim=-1),
            F.log_softmax(base, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = loss + kl_weight * kl
    return loss


def _without_adapter(model: torch.nn.Module) -> Any:
    """peft's context that switches the LoRA weights off (DDP-wrapped or not)."""
    inner: Any = getattr(model, "module", model)
    if not hasattr(inner, "disable_adapter"):
        raise ConfigError("kl_weight needs a LoRA run (lora_r > 0)")
    return inner.disable_adapter()


ProgressHook = Callable[[dict[str, float]], bool | None]


def train(config: TrainConfig, on_record: ProgressHook | None = None) -> TrainState:
    """Train (or resume) the run in ``config.run_dir``; returns the final state.

    ``on_record`` sees every logged record (step, loss, tok/s, ...) and every validation
    record; returning True stops the run after a checkpoint (a memory bound, a pause).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = _pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    train_tokens = load_tokens(config.data_dir / "train.bin")
    val_path = config.data_dir / "validation.bin"
    # numpy cannot map an empty file (a corpus whose validation split got no files).
    has_val = val_path.is_file() and val_path.stat().st_size > 0
    val_tokens = load_tokens(val_path) if has_val else None
    if val_path.is_file() and (val_tokens is None or len(val_tokens) <= config.seq_len):
        log.warning("%s is shorter than one window; no validation loss", val_path)
        val_tokens = None
    memory_targets = None
    if config.memory_loss:
        path = config.data_dir / MEMORY_TARGETS
        if not path.is_file():
            raise ConfigError(f"memory_loss needs {path} (personalization/memory_loss.py)")
        memory_targets = load_memory_targets(path)
        if len(memory_targets) != len(train_tokens):
            raise ConfigError(f"{path} does not match train.bin: {len(memory_targets)} tokens")
    loss_weights = None
    if config.loss_weights:
        path = config.data_dir / LOSS_WEIGHTS
        if not path.is_file():
            raise ConfigError(f"loss_weights needs {path} (training/fim_dataset.py)")
        loss_weights = load_loss_weights(path)
        if len(loss_weights) != len(train_tokens):
            raise ConfigError(f"{path} does not match train.bin: {len(loss_weights)} tokens")
    n_windows = (len(train_tokens) - 1) // config.seq_len
    if n_windows < 1:
        raise ConfigError(f"{config.data_dir}/train.bin is shorter than one window.")
    if config.max_steps <= 0 and config.time_budget_minutes <= 0:
        raise ConfigError("give --max-steps or --time-budget-minutes (or both).")
    if world > 1 and config.max_steps <= 0:
        # Ranks would each read their own clock and could stop at different steps.
        raise ConfigError(
            "with several processes, give --max-steps (a time budget alone is per rank)."
        )

    config.run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    state = TrainState(max_steps=config.max_steps)
    ckpt_path = config.run_dir / CHECKPOINT
    if ckpt_path.is_file():
        saved = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
        if "rng" in saved:
            torch.set_rng_state(saved["rng"])
        state.max_steps = config.max_steps  # an explicit --max-steps may change the schedule
        log.info("resumed %s at step %d (%d tokens seen)", ckpt_path, state.step, state.tokens_seen)
    if is_main:
        _write_run_config(config, model, resumed_at=state.step)
    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model)

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    session_start = time.monotonic()
    last_ckpt = session_start
    window_start, window_tokens = time.monotonic(), 0
    budget_s = config.time_budget_minutes * 60
    elapsed_before = state.elapsed_s
    model.train()
    while True:
        elapsed = elapsed_before + time.monotonic() - session_start
        if state.max_steps and state.step >= state.max_steps:
            break
        if budget_s and elapsed >= budget_s:
            log.info("time budget of %.1f min reached at step %d", budget_s / 60, state.step)
            break
        progress = None if state.max_steps else elapsed / budget_s
        lr = lr_at(state.step, config, state.max_steps, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = window_ids(state.step, config.batch_size, rank, world, n_windows, config.seed)
        batch = get_batch(train_tokens, ids, config.seq_len).to(device)
        memory: torch.Tensor | None = None
        weights: torch.Tensor | None = None
        if memory_targets is not None:
            memory = get_target_batch(memory_targets, ids, config.seq_len).to(device)
        if loss_weights is not None:
            weights = get_target_batch(loss_weights, ids, config.seq_len).to(device)
        with autocast:
            loss = _loss(train_model, batch, config.kl_weight, memory, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        state.step += 1
        step_tokens = batch[:, 1:].numel() * world
        state.tokens_seen += step_tokens
        window_tokens += step_tokens
        if is_main and state.step % config.log_every == 0:
            now = time.monotonic()
            tok_s = window_tokens / max(now - window_start, 1e-9)
            window_start, window_tokens = now, 0
            state.elapsed_s = elapsed_before + now - session_start
            record = {
                "step": state.step,
                "loss": float(loss.item()),
                "lr": lr,
                "tokens": state.tokens_seen,
                "tok_s": tok_s,
                "elapsed_s": state.elapsed_s,
            }
            state.history.append(record)
            log.info(
                "step %d/%s loss %.4f lr %.2e %.0f tok/s %.2fM tokens %.1f min",
                state.step,
                state.max_steps or "?",
                record["loss"],
                lr,
                tok_s,
                state.tokens_seen / 1e6,
                state.elapsed_s / 60,
            )
            _append_metrics(config.run_dir, record)
            if on_record is not None and on_record(record):
                log.info("stopped at step %d on request", state.step)
                break
        if is_main and val_tokens is not None and state.step % config.eval_every == 0:
            val = evaluate_loss(model, val_tokens, config, device)
            val_record = {"step": state.step, "tokens": state.tokens_seen, "val_loss": val}
            state.history.append(val_record)
            _append_metrics(config.run_dir, val_record)
            log.info("step %d validation loss %.4f", state.step, val)
            if on_record is not None:
                on_record(val_record)
            model.train()
        if is_main and time.monotonic() - last_ckpt >= config.checkpoint_minutes * 60:
            state.elapsed_s = elapsed_before + time.monotonic() - session_start
            save_checkpoint(config.run_dir, model, optimizer, state)
            last_ckpt = time.monotonic()
    state.elapsed_s = elapsed_before + time.monotonic() - session_start
    if is_main:
        if val_tokens is not None:
            val = evaluate_loss(model, val_tokens, config, device)
            val_record = {"step": state.step, "tokens": state.tokens_seen, "val_loss": val}
            state.history.append(val_record)
            _append_metrics(config.run_dir, val_record)
            log.info("final validation loss %.4f", val)
        save_checkpoint(config.run_dir, model, optimizer, state)
    if world > 1:
        torch.distributed.destroy_process_group()
    return state


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, tokens: np.ndarray, config: TrainConfig, device: torch.device
) -> float:
    """Mean loss on the first ``eval_batches`` batches of evenly spaced windows."""
    model.eval()
    n_windows = (len(tokens) - 1) // config.seq_len
    count = min(config.eval_batches * config.batch_size, n_windows)
    ids = np.linspace(0, n_windows - 1, count).astype(int).tolist()
    losses: list[float] = []
    for i in range(0, len(ids), config.batch_size):
        batch = get_batch(tokens, ids[i : i + config.batch_size], config.seq_len).to(device)
        losses.append(float(_loss(model, batch).item()))
    return float(np.mean(losses)) if losses else float("nan")


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    """Write the checkpoint atomically (a kill mid-write leaves the previous one intact)."""
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": asdict(state),
            "rng": torch.get_rng_state(),
        },
        tmp,
    )
    tmp.replace(run_dir / CHECKPOINT)
    _write_plot(run_dir, state)
    log.info("checkpoint at step %d written to %s", state.step, run_dir / CHECKPOINT)


def load_trained_model(run_dir: Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The model of a run's last checkpoint (LoRA merged into the weights) and its state."""
    run_config = json.loads((run_dir / "run_config.json").read_text(encoding="utf-8"))
    config = _config_from_json(run_config["train_config"])
    model = build_model(config)
    saved = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    model.load_state_dict(saved["model"])
    if config.lora_r > 0:
        model = model.merge_and_unload()  # type: ignore[operator]
    model.eval()
    # A transformers model (build_model's), whatever peft wrapped it in while training.
    return cast("PreTrainedModel", model), saved["state"]


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was given but torch sees no CUDA device.")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _write_run_config(config: TrainConfig, model: torch.nn.Module, resumed_at: int) -> None:
    """The config now in effect; earlier sessions' configs are kept under "sessions"."""
    path = config.run_dir / "run_config.json"
    sessions: list[Any] = []
    if resumed_at and path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        sessions = [*previous.pop("sessions", []), previous]
    payload = {
        "train_config": _config_to_json(config),
        "resumed_at_step": resumed_at,
        "sessions": sessions,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "torch": torch.__version__,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _config_to_json(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    for key in ("data_dir", "run_dir", "init_from"):
        if data[key] is not None:
            data[key] = str(data[key])
    return data


def _config_from_json(data: dict[str, Any]) -> TrainConfig:
    data = dict(data)
    # Runs from before ``dropout`` was a setting used GPTBigCode's default of 0.1.
    data["shape"] = ModelShape(**{"dropout": 0.1, **data["shape"]})
    for key in ("data_dir", "run_dir", "init_from"):
        if data.get(key) is not None:
            data[key] = Path(data[key])
    return TrainConfig(**data)


def _append_metrics(run_dir: Path, record: dict[str, float]) -> None:
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _write_plot(run_dir: Path, state: TrainState) -> None:
    train_pts = [(h["tokens"], h["loss"]) for h in state.history if "loss" in h]
    val_pts = [(h["tokens"], h["val_loss"]) for h in state.history if "val_loss" in h]
    write_loss_png(run_dir / "loss.png", [(train_pts, (31, 119, 180)), (val_pts, (214, 39, 40))])
