"""Train a LoRA adapter on one project: its training split as FIM examples, the shared
trainer, and the result written as an adapter version (peft files plus a merged model).

The examples come from ``training/fim_dataset.py``, whose prompts are built by
``model/prompt.py`` exactly as the server builds them (SPM and PSM). The training split
is small (a project, not a corpus), so each file is cut into FIM examples several times
with different random cuts (``fim_passes``): every pass over the data then teaches other
cursor positions instead of repeating the same examples.

A run lives in the project's work directory under a key of everything that decides its
result (base model, training data, settings): a trainer killed or paused resumes the
same run from its last checkpoint; new code or other settings start a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from rubytailor.errors import ConfigError, ModelError
from rubytailor.model.backends import ADAPTER_DIR, MERGED_DIR, ModelMetadata
from rubytailor.model.backends.model_dir import model_id
from rubytailor.model.fim import get_format
from rubytailor.personalization.holdout import Split
from rubytailor.personalization.memory_loss import MemoryTargets, newline_ids
from rubytailor.training.fim_dataset import (
    LOSS_WEIGHTS,
    MEMORY_TARGETS,
    Encoded,
    Example,
    FimConfig,
    IdsHook,
    PromptWeights,
    make_examples,
    write_token_file,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[dict[str, Any]], None]
Files = Sequence[tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """How an adapter is trained; the defaults were chosen by measurement (README)."""

    budget_minutes: float = 8.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: str = "all-linear"
    lr: float = 1e-3
    # Tokens per optimizer step: 8 sequences at the 256-token context the defaults were
    # measured with. A longer context gets fewer sequences, not more tokens: 8 x 1,024
    # passed the memory bound below within a minute.
    tokens_per_step: int = 2048
    warmup_steps: int = 20
    fim_passes: int = 4
    # This share of the training tokens is general Ruby (personalization/base_ruby.py),
    # rehearsed so that the adapter learns the project without unlearning the language.
    rehearsal_share: float = 0.3
    # KL(base || adapted) added to the loss, times this (training/trainer.py); 0: off.
    kl_weight: float = 0.0
    # Train on the loss of the model mixed with the project memory, as it is served
    # (personalization/memory_loss.py).
    memory_loss: bool = False
    # Weight of a FIM prompt's tokens (prefix and suffix) in the loss against 1 for the
    # middle the model writes and for plain text; 1.0: plain cross-entropy everywhere.
    prompt_weight: float = 1.0
    threads: int = 1
    # The trainer stops (after a checkpoint) when its peak RSS passes this.
    max_rss_mb: int = 3072
    seed: int = 0
    fim: FimConfig = field(default_factory=FimConfig)


def run_key(model_dir: Path, split: Split, config: AdapterConfig, rehearse: Files = ()) -> str:
    """A short hash of what decides the run's result."""
    digest = hashlib.sha256(model_id(model_dir).encode())
    for name, text in [*split.train_files, *rehearse]:
        digest.update(name.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
    settings = asdict(replace(config, budget_minutes=0.0, threads=0, max_rss_mb=0))
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def prepare_data(
    split: Split, model_dir: Path, out_dir: Path, config: AdapterConfig, rehearse: Files = ()
) -> int:
    """Write train.bin (the training split, ``fim_passes`` cuts, plus ``rehearse`` files
    for ``rehearsal_share`` of it) and validation.bin (the evaluation files, for the
    validation loss only); returns the training tokens."""
    from tokenizers import Tokenizer

    metadata = ModelMetadata.read(model_dir)
    fmt = get_format(metadata.fim_format if metadata else "starcoder")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def encode_batch(batch: list[str]) -> list[list[int]]:
        return [enc.ids for enc in tokenizer.encode_batch(batch, add_special_tokens=False)]

    texts = [text for _, text in split.train_files]
    if not texts:
        raise ConfigError("the project has no training files after the hold-out split")

    general = rehearsal_texts(texts, rehearse, config)
    # Every text the passes cut, as (key, text) by Example.source; general Ruby has no key.
    sources: list[tuple[str | None, str]] = []

    def passes() -> Iterator[Example]:
        for n in range(config.fim_passes):
            fim = replace(config.fim, seed=config.seed + n)
            # Interleaved file by file, so every part of the run sees both kinds.
            project: list[tuple[str | None, str]] = list(split.train_files)
            rehearsed: list[tuple[str | None, str]] = [(None, t) for t in general[n]]
            cut = _interleave(project, rehearsed)
            offset = len(sources)
            sources.extend(cut)
            for example in make_examples([t for _, t in cut], fmt, fim):
                yield replace(example, source=offset + example.source)

    meta = {"fim": asdict(config.fim), "fim_passes": config.fim_passes, "files": len(texts)}
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as files:
        hooks: list[IdsHook] = []
        if config.memory_loss:
            from rubytailor.lsp.workspace_memory import memory_of

            hooks.append(
                MemoryTargets(
                    memory_of(model_dir, split.train_files),
                    sources,
                    lambda text: encode_batch([text])[0],
                    newline_ids(tokenizer.decode, tokenizer.get_vocab_size()),
                    files.enter_context((out_dir / MEMORY_TARGETS).open("wb")),
                )
            )
        if config.prompt_weight != 1.0:
            out = files.enter_context((out_dir / LOSS_WEIGHTS).open("wb"))
            hooks.append(PromptWeights(config.prompt_weight, out))
        total = write_token_file(passes(), encode_batch, out_dir / "train.bin", meta, _all(hooks))
    held = [text for _, text in split.eval_files]
    if held:
        examples = make_examples(held, fmt, replace(config.fim, seed=config.seed + 1000))
        write_token_file(examples, encode_batch, out_dir / "validation.bin", {"files": len(held)})
    return total


def rehearsal_texts(project: list[str], rehearse: Files, config: AdapterConfig) -> list[list[str]]:
    """For each FIM pass, general Ruby files worth ``rehearsal_share`` of the pass's
    bytes: a different deterministic draw each pass while the files last."""
    share = config.rehearsal_share
    if not rehearse or share <= 0:
        return [[] for _ in range(config.fim_passes)]
    want = int(sum(len(t) for t in project) * share / (1 - share))
    order = sorted(rehearse, key=lambda f: hashlib.sha256(f[0].encode()).hexdigest())
    out: list[list[str]] = []
    at = 0
    for _ in range(config.fim_passes):
        picked: list[str] = []
        size = 0
        for _ in range(len(order)):
            if size >= want:
                break
            text = order[at % len(order)][1]
            at += 1
            picked.append(text)
            size += len(text)
        out.append(picked)
    return out


def _all(hooks: list[IdsHook]) -> IdsHook | None:
    """One ``on_ids`` hook that calls each of ``hooks`` in turn."""
    if not hooks:
        return None

    def call(batch: list[Example], encoded: list[Encoded]) -> None:
        for hook in hooks:
            hook(batch, encoded)

    return call


def _interleave(a: list[T], b: list[T]) -> list[T]:
    """a and b merged evenly (b's items spread among a's)."""
    if not b:
        return a
    merged: list[tuple[float, T]] = [(i / len(a), t) for i, t in enumerate(a)]
    merged += [((j + 0.5) / len(b), t) for j, t in enumerate(b)]
    return [t for _, t in sorted(merged, key=lambda x: x[0])]


def train_adapter(
    work_dir: Path,
    split: Split,
    model_dir: Path,
    config: AdapterConfig,
    on_progress: Progress | None = None,
    rehearse: Files = (),
) -> Path:
    """Train (or resume) the project's LoRA run; returns its run directory."""
    from rubytailor.training.trainer import TrainConfig, train

    run_dir = work_dir / f"run-{run_key(model_dir, split, config, rehearse)}"
    data_dir = run_dir / "data"
    if not _data_complete(data_dir, config):
        tokens = prepare_data(split, model_dir, data_dir, config, rehearse)
        log.info("training data: %d tokens from %d files", tokens, len(split.train_files))
    context = _context_length(model_dir)
    train_config = TrainConfig(
        data_dir=data_dir,
        run_dir=run_dir,
        init_from=model_dir,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_targets=config.lora_targets,
        kl_weight=config.kl_weight,
        memory_loss=config.memory_loss,
        loss_weights=config.prompt_weight != 1.0,
        seq_len=context,
        batch_size=batch_size(config, context),
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        weight_decay=0.0,
        time_budget_minutes=config.budget_minutes,
        checkpoint_minutes=1.0,
        log_every=5,
        eval_every=100,
        eval_batches=4,
        seed=config.seed,
        threads=config.threads,
        device="cpu",
    )

    def on_record(record: dict[str, float]) -> bool:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if on_progress is not None:
            on_progress(
                {
                    **record,
                    "budget_s": config.budget_minutes * 60,
                    "peak_rss_mb": round(peak_mb),
                }
            )
        if peak_mb > config.max_rss_mb:
            log.warning("peak RSS %.0f MB is over the bound of %d MB", peak_mb, config.max_rss_mb)
            return True
        return False

    train(train_config, on_record)
    return run_dir


def _data_complete(data_dir: Path, config: AdapterConfig) -> bool:
    """Whether prepare_data finished there: train.json is written last, after the memory
    targets and loss weights (flushed batch by batch) when the run uses them."""
    meta = data_dir / "train.json"
    if not meta.is_file():
        return False
    tokens = int(json.loads(meta.read_text(encoding="utf-8"))["tokens"])
    needed = {MEMORY_TARGETS: 8 if config.memory_loss else 0}  # bytes per token
    needed[LOSS_WEIGHTS] = 4 if config.prompt_weight != 1.0 else 0
    for name, size in needed.items():
        path = data_dir / name
        if size and not (path.is_file() and path.stat().st_size == tokens * size):
            return False
    return True


def write_adapter(run_dir: Path, model_dir: Path, out: Path) -> dict[str, Any]:
    """The run's adapter into ``out``: ``adapter/`` (peft) and ``merged/`` (a complete fp16
    model directory with the adapter merged in). Returns facts for the version's info."""
    import torch

    from rubytailor.training.export import export_model
    from rubytailor.training.trainer import CHECKPOINT, _config_from_json, build_model

    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ModelError(f"no checkpoint in {run_dir}: the training run did not get far")
    run_config = json.loads((run_dir / "run_config.json").read_text(encoding="utf-8"))
    config = _config_from_json(run_config["train_config"])
    model: Any = build_model(config)  # a peft model: its methods are not torch's
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(saved["model"])
    model.eval()
    model.save_pretrained(str(out / ADAPTER_DIR))  # peft: the LoRA weights and config only
    merged = model.merge_and_unload()
    base_meta = ModelMetadata.read(model_dir)
    state = saved["state"]
    trained = {
        "adapter_of": model_id(model_dir),
        "lora_r": config.lora_r,
        "lora_targets": config.lora_targets,
        "kl_weight": config.kl_weight,
        "memory_loss": config.memory_loss,
        "loss_weights": config.loss_weights,
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "train_minutes": round(state["elapsed_s"] / 60, 2),
    }
    metadata = ModelMetadata(
        fim_format=base_meta.fim_format if base_meta else "starcoder",
        fim_order=base_meta.fim_order if base_meta else "spm",
        context_length=_context_length(model_dir),
        trained={**(base_meta.trained if base_meta else {}), "personalization": trained},
    )
    export_model(merged, out / MERGED_DIR, tokenizer_dir=model_dir, metadata=metadata)
    history = [h for h in state.get("history", []) if "loss" in h]
    val = [h for h in state.get("history", []) if "val_loss" in h]
    return {
        **trained,
        "final_loss": history[-1]["loss"] if history else None,
        "val_loss": val[-1]["val_loss"] if val else None,
        "first_val_loss": val[0]["val_loss"] if val else None,
    }


def discard_runs(work_dir: Path, keep: Path | None = None) -> None:
    """Delete training runs other than ``keep`` (their data and checkpoints)."""
    if not work_dir.is_dir():
        return
    for run in work_dir.glob("run-*"):
        if run != keep:
            shutil.rmtree(run, ignore_errors=True)


def batch_size(config: AdapterConfig, seq_len: int) -> int:
    """Sequences per step: ``tokens_per_step`` of them at ``seq_len``, at least one."""
    return max(1, config.tokens_per_step // seq_len)


def _context_length(model_dir: Path) -> int:
    metadata = ModelMetadata.read(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    n_positions = int(config.get("n_positions", 256))
    return min(metadata.context_length, n_positions) if metadata else n_positions
