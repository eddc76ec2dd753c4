"""One personalization run for a project: split, train, gate, promote.

  split    hold-out by recency (personalization/holdout.py)
  train    a LoRA adapter on the training split (personalization/adapter_training.py)
  commit   the adapter becomes a version in the registry, not yet served
  gate     base model vs adapter through the served pipeline (personalization/gate.py)
  promote  the registry's `current` pointer moves to it (or the version is deleted)

Everything goes to the project's state directory; the decision and its figures are
appended to the metrics file. Only one run per project at a time (a lock that a killed
run releases). ``run`` is what `rubytailor personalize PROJECT` and the server's
background trainer (the same command, in a separate low-priority process) execute.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rubytailor.errors import RubytailorError
from rubytailor.personalization.adapter_training import (
    AdapterConfig,
    discard_runs,
    train_adapter,
    write_adapter,
)
from rubytailor.personalization.base_ruby import BaseRuby, find_base_ruby
from rubytailor.personalization.gate import GateConfig, run_gate
from rubytailor.personalization.holdout import Split, git_split, recency_split, time_split_commit
from rubytailor.personalization.registry import AdapterRegistry
from rubytailor.personalization.state import ProjectState, train_lock, write_json_atomic

log = logging.getLogger(__name__)

Event = dict[str, Any]
OnEvent = Callable[[Event], None]

# The share of the whole run each stage takes, for one progress bar.
_TRAIN_START, _TRAIN_END = 5.0, 80.0


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    model_dir: Path
    backend: str = "auto"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    base_corpus: Path | None = None
    # Benchmarks: learn from this share of the git history, evaluate on lines added later.
    time_split: float | None = None
    cases: int = 300
    exclude: tuple[str, ...] = ()
    keep: int = 3


def run(root: Path, options: JobOptions, on_event: OnEvent | None = None) -> dict[str, Any]:
    """Train, gate and maybe promote an adapter for the project at ``root``; the metrics
    record (also appended to the project's metrics file)."""
    started = time.monotonic()
    emit = _emitter(on_event)
    state = ProjectState.for_project(root)
    with train_lock(state):
        registry = AdapterRegistry(state, keep=options.keep)
        registry.prune()  # staging left by a killed run
        emit("split", "choosing held-out code", 1)
        split = _split(state.root, options)
        if not split.cases:
            raise RubytailorError(
                f"{state.root} has no recent code lines to evaluate an adapter on; "
                "personalization needs a few hundred lines of project code"
            )
        _write_manifest(state, split)
        emit(
            "split",
            f"{len(split.train_files)} training files, {len(split.cases)} held-out cases "
            f"({split.method})",
            _TRAIN_START,
        )

        def on_progress(record: dict[str, Any]) -> None:
            if "loss" not in record:
                emit("train", f"validation loss {record['val_loss']:.3f}", None, record)
                return
            share = min(record["elapsed_s"] / max(record["budget_s"], 1e-9), 1.0)
            emit(
                "train",
                f"loss {record['loss']:.3f}, {record['tok_s']:.0f} tokens/s",
                _TRAIN_START + share * (_TRAIN_END - _TRAIN_START),
                record,
            )

        base_ruby = find_base_ruby(options.base_corpus)
        train_started = time.monotonic()
        run_dir = train_adapter(
            state.work_dir,
            split,
            options.model_dir,
            options.adapter,
            on_progress,
            rehearse=base_ruby.rehearse,
        )
        train_s = time.monotonic() - train_started
        emit("export", "writing the adapter", _TRAIN_END)
        with registry.staging() as staging:
            facts = write_adapter(run_dir, options.model_dir, staging)
            version = registry.commit(
                staging,
                {
                    **facts,
                    "split": split.detail,
                    "split_method": split.method,
                    "adapter_config": asdict(options.adapter),
                },
            )
        emit("gate", f"checking {version.name} against the base model", _TRAIN_END + 3)
        report = _gate(state.root, options, split, version.path, base_ruby, emit)
        promoted = bool(report["promote"])
        if promoted:
            registry.promote(version.name)
        else:
            registry.discard(version.name)
        discard_runs(state.work_dir)
        record = {
            "event": "personalize",
            "project": str(state.root),
            "version": version.name,
            "promoted": promoted,
            "reasons": report["reasons"],
            "train_wall_s": round(train_s, 1),
            "total_wall_s": round(time.monotonic() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "split": split.detail,
            "split_method": split.method,
            "adapter": facts,
            "gate": report,
        }
        state.append_metrics(record)
        verdict = "promoted" if promoted else "rejected"
        emit("done", f"{version.name} {verdict}: {'; '.join(report['reasons'])}", 100, record)
        return record


def _split(root: Path, options: JobOptions) -> Split:
    if options.time_split is not None:
        commit = time_split_commit(root, options.time_split)
        return git_split(root, commit, cases=options.cases, exclude=options.exclude)
    return recency_split(root, cases=options.cases, exclude=options.exclude)


def _gate(
    root: Path,
    options: JobOptions,
    split: Split,
    version_dir: Path,
    base_ruby: BaseRuby,
    emit: Callable[..., None],
) -> dict[str, Any]:
    from rubytailor.lsp.workspace_memory import memory_of
    from rubytailor.model.backends import load_backend
    from rubytailor.personalization.file_filters import iter_project_files
    from rubytailor.prism import Prism

    threads = options.adapter.threads or None
    base = load_backend(options.backend, options.model_dir, threads=threads)
    candidate = load_backend(
        options.backend, options.model_dir, threads=threads, adapter=version_dir
    )
    # What the server would index: the project's files as they are now (each case's own
    # file is left out of its memory by the pipeline, through the case's memory key).
    files = [(str(p), text) for p, text in iter_project_files(root, exclude=options.exclude)]
    memory = memory_of(options.model_dir, files)
    try:
        prism: Prism | None = Prism.load()
    except RubytailorError as exc:
        log.warning("the gate runs without Prism: %s", exc)
        prism = None
    report = run_gate(
        base,
        candidate,
        prism,
        split.cases,
        memory,
        base_ruby.check,
        options.gate,
        on_stage=lambda text: emit("gate", text, None),
    )
    report["base_ruby_source"] = base_ruby.source
    report["backend"] = base.name
    return report


def _write_manifest(state: ProjectState, split: Split) -> None:
    """What the run learns from and is judged on, by content hash (never the text)."""

    def entries(files: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                "bytes": len(text.encode("utf-8", "surrogatepass")),
            }
            for name, text in files
        }

    write_json_atomic(
        state.corpus_manifest_path,
        {
            "method": split.method,
            "detail": split.detail,
            "train": entries(split.train_files),
            "eval": entries(split.eval_files),
        },
    )


def _emitter(on_event: OnEvent | None) -> Callable[..., None]:
    def emit(
        stage: str, message: str, percent: float | None, data: dict[str, Any] | None = None
    ) -> None:
        log.info("%s: %s", stage, message)
        if on_event is not None:
            event: Event = {"stage": stage, "message": message}
            if percent is not None:
                event["percent"] = round(percent, 1)
            if data is not None:
                event["data"] = data
            on_event(event)

    return emit
