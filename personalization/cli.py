"""`rubytailor personalize PROJECT`: train, gate and promote an adapter for a project.

  rubytailor personalize ~/src/shop                # blocking, with a progress bar
  rubytailor personalize ~/src/shop --status       # adapters and their figures
  rubytailor personalize ~/src/shop --rollback     # serve the previous adapter again

The server's background trainer runs the same command with ``--json-progress`` (one JSON
event per line on stdout) in a separate process at low priority.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rubytailor import paths
from rubytailor.errors import RubytailorError

if TYPE_CHECKING:
    from rubytailor.personalization.state import ProjectState

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from rubytailor.personalization.adapter_training import AdapterConfig
    from rubytailor.personalization.gate import GateConfig

    d = AdapterConfig()
    p = subparsers.add_parser(
        "personalize", help="train a LoRA adapter on a project, keep it if it helps"
    )
    p.add_argument("project", type=Path, help="the project's root directory")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="show adapters and their figures")
    what.add_argument("--rollback", action="store_true", help="serve the previous adapter")
    p.add_argument("--model", type=Path, default=None, help="base model directory")
    p.add_argument("--backend", choices=("auto", "ctransformers", "transformers"), default="auto")
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes)
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads (default 1)")
    p.add_argument("--nice", type=int, default=19, help="scheduling niceness of the trainer")
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-targets", default=d.lora_targets)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--rehearsal-share", type=float, default=d.rehearsal_share)
    p.add_argument(
        "--kl-weight",
        type=float,
        default=d.kl_weight,
        help="weight of KL(base || adapted) in the loss (0: off)",
    )
    p.add_argument(
        "--memory-loss",
        action=argparse.BooleanOptionalAction,
        default=d.memory_loss,
        help="train on the loss of the model mixed with the project memory, as served",
    )
    p.add_argument(
        "--prompt-weight",
        type=float,
        default=d.prompt_weight,
        help="loss weight of FIM prompt tokens against the middle's 1 (1: plain)",
    )
    p.add_argument("--fim-rate", type=float, default=d.fim.fim_rate)
    p.add_argument("--line-middle-rate", type=float, default=d.fim.line_middle_rate)
    p.add_argument("--cases", type=int, default=300, help="held-out project cases")
    p.add_argument(
        "--base-cases", type=int, default=GateConfig().base_cases, help="base-Ruby cases"
    )
    p.add_argument(
        "--base-corpus",
        type=Path,
        help="base-Ruby test code for the gate: a `rubytailor corpus` directory (its test "
        "split) or a directory of Ruby files (default: $RUBYTAILOR_BASE_CORPUS, "
        "<data dir>/base-corpus, else the installed Ruby's standard library)",
    )
    p.add_argument(
        "--time-split",
        type=float,
        help="benchmark: learn from this share of the git history (e.g. 0.85) and evaluate "
        "on the lines added after it",
    )
    p.add_argument(
        "--all-figures",
        action="store_true",
        help="also score both models without project memory (for benchmarks; slower)",
    )
    p.add_argument("--json-progress", action="store_true", help="JSON events on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rubytailor.personalization.registry import AdapterRegistry
    from rubytailor.personalization.state import ProjectState

    root = args.project.expanduser().resolve()
    if not root.is_dir():
        raise RubytailorError(f"{root} is not a directory")
    state = ProjectState.for_project(root)
    if args.status:
        print(json.dumps(status(state), indent=2))
        return 0
    if args.rollback:
        version = AdapterRegistry(state).rollback()
        now = version.name if version is not None else "the base model (no adapter)"
        print(f"{root}: now serving {now}", file=sys.stderr)
        return 0
    return _personalize(root, args)


def status(state: ProjectState) -> dict[str, Any]:
    """Adapters of a project, the current one, and the last runs' decisions."""
    from rubytailor.personalization.registry import AdapterRegistry

    registry = AdapterRegistry(state)
    current = registry.current()
    runs = [m for m in state.read_metrics() if m.get("event") == "personalize"]
    by_version = {m["version"]: m for m in runs}
    return {
        "project": str(state.root),
        "state_dir": str(state.dir),
        "current": current.name if current is not None else None,
        "adapters": [
            {
                "name": v.name,
                "created": v.created,
                "current": current is not None and v.name == current.name,
                "steps": v.info.get("steps"),
                "train_minutes": v.info.get("train_minutes"),
                "reasons": by_version.get(v.name, {}).get("reasons"),
            }
            for v in registry.versions()
        ],
        "last_runs": [
            {
                "time": m.get("time"),
                "version": m.get("version"),
                "promoted": m.get("promoted"),
                "reasons": m.get("reasons"),
                "train_wall_s": m.get("train_wall_s"),
            }
            for m in runs[-5:]
        ],
    }


def _personalize(root: Path, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rubytailor.personalization.adapter_training import AdapterConfig
    from rubytailor.personalization.gate import GateConfig
    from rubytailor.personalization.job import JobOptions, run

    if args.nice:
        os.nice(args.nice)
    # One thread for every library, before torch starts its pools.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    adapter = replace(
        AdapterConfig(),
        budget_minutes=args.budget_minutes,
        threads=args.threads,
        lora_r=args.lora_r,
        lora_targets=args.lora_targets,
        lr=args.lr,
        rehearsal_share=args.rehearsal_share,
        kl_weight=args.kl_weight,
        memory_loss=args.memory_loss,
        prompt_weight=args.prompt_weight,
        fim=replace(
            AdapterConfig().fim, fim_rate=args.fim_rate, line_middle_rate=args.line_middle_rate
        ),
    )
    options = JobOptions(
        model_dir=(args.model or paths.default_model_dir()).expanduser(),
        backend=args.backend,
        adapter=adapter,
        gate=GateConfig(memory_off_figures=args.all_figures, base_cases=args.base_cases),
        base_corpus=args.base_corpus,
        time_split=args.time_split,
        cases=args.cases,
    )
    show = _json_events if args.json_progress else _ProgressBar().show
    record = run(root, options, show)
    if not args.json_progress:
        print(json.dumps(_summary(record), indent=2))
    return 0


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    gate = record["gate"]
    return {
        "version": record["version"],
        "promoted": record["promoted"],
        "reasons": record["reasons"],
        "train_wall_s": record["train_wall_s"],
        "total_wall_s": record["total_wall_s"],
        "peak_rss_mb": record["peak_rss_mb"],
        "project": {
            side: {k: gate["project"][side][k] for k in ("exact_match", "edit_similarity")}
            for side in ("base", "candidate")
        },
    }


def _json_events(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _ProgressBar:
    """One line on stderr, redrawn on a terminal; a line every few seconds otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._percent = 0.0

    def show(self, event: dict[str, Any]) -> None:
        self._percent = event.get("percent", self._percent)
        now = time.monotonic()
        final = event["stage"] == "done"
        if not self._tty and not final and now - self._last < 5:
            return
        self._last = now
        filled = int(self._percent / 5)
        line = f"[{'#' * filled}{'-' * (20 - filled)}] {self._percent:3.0f}% "
        line += f"{event['stage']}: {event['message']}"
        if self._tty:
            sys.stderr.write("\r\x1b[K" + line[:150] + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
