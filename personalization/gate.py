"""The promotion gate: an adapter is kept only if it makes the served suggestions better.

Both models answer the project's held-out cases through the served pipeline
(``training/evaluate.py``, i.e. ``model/pipeline.py:run``) with project memory on, as
users run it. The adapter is promoted when, on those cases,

- line exact match or edit similarity rises beyond noise: the lower end of a paired
  bootstrap confidence interval of the per-case difference is above zero;
- the Prism-valid rate of its suggestions is not lower by more than ``max_drop_points``;

and on base-Ruby code (personalization/base_ruby.py: preferably the test split of the base
corpus, code neither the model nor the adapter trained on) its exact match and edit
similarity are not lower by more than ``max_drop_points`` either, so learning a project
does not unlearn Ruby. Loss alone decides nothing. The report holds every figure and
the reasons for the decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rubytailor.model.backends.base import Backend
from rubytailor.model.project_memory import ProjectMemory
from rubytailor.prism import Prism
from rubytailor.training.eval_cases import Case, line_cases
from rubytailor.training.evaluate import Answer, EvalConfig, run_model, score
from rubytailor.training.metrics import edit_similarity, exact_match

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    max_drop_points: float = 0.5
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    base_cases: int = 400
    seed: int = 0
    # Also answer without project memory, for the figures (the decision does not use them).
    memory_off_figures: bool = False


def paired_interval(
    base: list[float], candidate: list[float], confidence: float, samples: int, seed: int
) -> tuple[float, float, float]:
    """Mean of candidate - base per case, with a paired bootstrap confidence interval."""
    diff = np.asarray(candidate, dtype=float) - np.asarray(base, dtype=float)
    if diff.size == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def compare(
    cases: list[Case], base: list[Answer], candidate: list[Answer], config: GateConfig
) -> dict[str, Any]:
    """Both systems' scores and the paired differences (in points) with their intervals."""
    out: dict[str, Any] = {"base": score(cases, base), "candidate": score(cases, candidate)}
    for metric, fn in (("exact_match", exact_match), ("edit_similarity", edit_similarity)):
        b = [float(fn(a.raw, c.answer)) for c, a in zip(cases, base, strict=True)]
        k = [float(fn(a.raw, c.answer)) for c, a in zip(cases, candidate, strict=True)]
        mean, low, high = paired_interval(
            b, k, config.confidence, config.bootstrap_samples, config.seed
        )
        out[f"{metric}_delta_points"] = {
            "mean": 100 * mean,
            "low": 100 * low,
            "high": 100 * high,
        }
    return out


def decide(
    project: dict[str, Any], base_ruby: dict[str, Any] | None, config: GateConfig
) -> tuple[bool, list[str]]:
    """Whether to promote, and why (or why not), in words."""
    reasons: list[str] = []
    em, es = project["exact_match_delta_points"], project["edit_similarity_delta_points"]
    better = em["low"] > 0 or es["low"] > 0
    reasons.append(
        f"project: exact match {em['mean']:+.1f} points [{em['low']:+.1f}, {em['high']:+.1f}], "
        f"edit similarity {es['mean']:+.1f} [{es['low']:+.1f}, {es['high']:+.1f}]"
        + ("" if better else ": not beyond noise")
    )
    ok = better
    b_valid = project["base"]["prism_valid_rate"]
    k_valid = project["candidate"]["prism_valid_rate"]
    if b_valid is not None and k_valid is not None:
        drop = 100 * (b_valid - k_valid)
        if drop > config.max_drop_points:
            ok = False
            reasons.append(f"Prism-valid rate drops {drop:.1f} points")
    if base_ruby is None:
        ok = False
        reasons.append(
            "no base-Ruby test code to check against (give --base-corpus, set "
            "RUBYTAILOR_BASE_CORPUS, or install Ruby)"
        )
    else:
        for metric in ("exact_match", "edit_similarity"):
            drop = -base_ruby[f"{metric}_delta_points"]["mean"]
            if drop > config.max_drop_points:
                ok = False
                reasons.append(f"base-Ruby {metric.replace('_', ' ')} drops {drop:.2f} points")
        if ok:
            reasons.append("base-Ruby quality holds")
    return ok, reasons


def run_gate(
    base: Backend,
    candidate: Backend,
    prism: Prism | None,
    cases: list[Case],
    memory: ProjectMemory | None,
    base_files: list[tuple[str, str]],
    config: GateConfig,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both systems on both case sets; the report, with "promote" and "reasons"."""
    eval_config = EvalConfig(seed=config.seed)

    def answers(backend: Backend, which: list[Case], mem: ProjectMemory | None) -> list[Answer]:
        reset = getattr(backend, "reset_cache", None)
        if reset is not None:  # each system starts cold, whatever ran before
            reset()
        return run_model(backend, prism, which, eval_config, mem)[0]

    def stage(text: str) -> None:
        log.info("gate: %s", text)
        if on_stage is not None:
            on_stage(text)

    report: dict[str, Any] = {"config": asdict(config), "project_cases": len(cases)}
    stage(f"base model on {len(cases)} held-out project cases")
    base_answers = answers(base, cases, memory)
    stage("adapter on the held-out project cases")
    cand_answers = answers(candidate, cases, memory)
    report["project"] = compare(cases, base_answers, cand_answers, config)
    report["project"]["memory"] = memory is not None
    if config.memory_off_figures and memory is not None:
        stage("both without project memory (figures only)")
        report["project_memory_off"] = compare(
            cases, answers(base, cases, None), answers(candidate, cases, None), config
        )
    base_ruby = None
    if base_files:
        ruby_cases = line_cases(base_files, config.base_cases, config.seed)
        stage(f"both on {len(ruby_cases)} base-Ruby cases")
        base_ruby = compare(
            ruby_cases,
            answers(base, ruby_cases, None),
            answers(candidate, ruby_cases, None),
            config,
        )
        report["base_ruby"] = base_ruby
    promote, reasons = decide(report["project"], base_ruby, config)
    report["promote"] = promote
    report["reasons"] = reasons
    return report
