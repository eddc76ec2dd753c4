"""`rubytailor eval`: a model on held-out Ruby code, through the served pipeline.

Each case is one request to ``model/pipeline.py:run``, the function the server runs,
with the served defaults of ``rubytailor/config.py`` (max lines, max tokens, prompt
budget); line cases ask for a single line. The *raw* suggestion is what the stop rules
leave (``unchecked_text``); the *served* one is what the Prism check keeps of it.

Reported per case kind and per system (model; model with project memory when a project
is given, each case completed with the memory of the project minus its own file;
copy-line baseline; random-init model of the same shape): exact match and edit
similarity (``training/metrics.py``) of raw and served suggestions, the share of empty
suggestions, the Prism-valid rate of non-empty raw suggestions (they add no syntax
error), and for the models the confidence gate: at each ``minConfidence`` threshold,
the share of cases shown and the exact match among them. Also bits per byte on the test
files and latency with a warm prompt cache.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from rubytailor.config import Settings
from rubytailor.model import pipeline
from rubytailor.model.backends.base import Backend, CancelToken
from rubytailor.model.outcomes import Verdict
from rubytailor.model.pipeline import CompletionRequest, CompletionResult
from rubytailor.model.project_memory import ProjectMemory
from rubytailor.prism import Prism
from rubytailor.training.baselines import copy_line
from rubytailor.training.eval_cases import Case
from rubytailor.training.metrics import edit_similarity, exact_match

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    line_cases: int = 200
    multiline_cases: int = 50
    seed: int = 0
    bpb_max_bytes: int = 200_000
    latency_cases: int = 20
    token_healing: bool = True
    # The served default; smaller only for models with a tiny context (tests).
    max_tokens: int = Settings().max_tokens
    # minConfidence values the gate is reported at.
    gate_thresholds: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def request_for(case: Case, config: EvalConfig, *, prefix: str | None = None) -> CompletionRequest:
    """The request an editor would send at the case's cursor, with the served defaults
    (the gate off: eval reports it at every threshold instead)."""
    served = Settings()
    before = case.prefix if prefix is None else prefix
    return CompletionRequest(
        doc_key=case.source,
        version=None,
        text=before + case.suffix,
        offset=len(before),
        max_lines=served.max_lines,
        max_tokens=config.max_tokens,
        max_prompt_tokens=served.max_prompt_tokens,
        single_line=True if case.kind == "line" else None,
        token_healing=config.token_healing,
        memory_key=case.source,  # a project's cases are named by their index key
        min_confidence=0.0,
    )


def complete(
    backend: Backend,
    prism: Prism | None,
    case: Case,
    config: EvalConfig,
    *,
    prefix: str | None = None,
    memory: ProjectMemory | None = None,
) -> CompletionResult:
    """One case through the served pipeline."""
    request = request_for(case, config, prefix=prefix)
    return pipeline.run(backend, prism, request, lambda _delta: None, CancelToken(), memory)


@dataclass(frozen=True)
class Answer:
    """One system's suggestion for one case."""

    raw: str  # before the Prism check
    served: str  # what a user would see
    valid: bool | None  # raw adds no syntax error; None when empty or unchecked
    confidence: float | None = None  # None: not a model (or nothing generated)


Checker = Callable[[str, str, str], tuple[bool, str]]  # (prefix, raw, suffix) -> (valid, served)


def checked(case: Case, raw: str, check: Checker | None) -> Answer:
    """A baseline's suggestion, checked as the pipeline checks the model's."""
    if check is None or not raw:
        return Answer(raw, raw, None)
    ok, kept = check(case.prefix, raw, case.suffix)
    return Answer(raw, kept, ok)


def answer_of(result: CompletionResult) -> Answer:
    raw = result.unchecked_text
    valid = None
    if raw and result.verdict != Verdict.UNCHECKED:
        valid = result.verdict == Verdict.OK
    return Answer(raw, result.text, valid, result.confidence)


def gate(
    cases: list[Case], answers: list[Answer], thresholds: Iterable[float]
) -> list[dict[str, float]]:
    """Shown rate and precision (exact match among shown) at each minConfidence."""
    rows = []
    for threshold in thresholds:
        shown = [
            exact_match(a.served, c.answer)
            for c, a in zip(cases, answers, strict=True)
            if a.served.strip() and (a.confidence or 0.0) >= threshold
        ]
        rows.append(
            {
                "min_confidence": threshold,
                "shown_rate": len(shown) / max(len(cases), 1),
                "precision": sum(shown) / len(shown) if shown else 0.0,
            }
        )
    return rows


def score(cases: list[Case], answers: list[Answer]) -> dict[str, Any]:
    """Aggregate metrics of one system's answers on ``cases``."""
    refs = [c.answer for c in cases]
    raw = [a.raw for a in answers]
    served = [a.served for a in answers]
    valid = [a.valid for a in answers if a.valid is not None]

    def mean(values: Iterable[float]) -> float:
        return sum(values) / max(len(cases), 1)

    return {
        "cases": len(cases),
        "exact_match": mean(exact_match(p, a) for p, a in zip(raw, refs, strict=True)),
        "edit_similarity": mean(edit_similarity(p, a) for p, a in zip(raw, refs, strict=True)),
        "served_exact_match": mean(exact_match(p, a) for p, a in zip(served, refs, strict=True)),
        "served_edit_similarity": mean(
            edit_similarity(p, a) for p, a in zip(served, refs, strict=True)
        ),
        "empty_rate": mean(not p for p in raw),
        "prism_valid_rate": (sum(valid) / len(valid)) if valid else None,
    }


def run_model(
    backend: Backend,
    prism: Prism | None,
    cases: list[Case],
    config: EvalConfig,
    memory: ProjectMemory | None = None,
) -> tuple[list[Answer], list[float]]:
    """Answers of ``backend`` for ``cases``, and each case's wall time in ms."""
    out: list[Answer] = []
    times: list[float] = []
    for case in cases:
        started = time.perf_counter()
        result = complete(backend, prism, case, config, memory=memory)
        times.append((time.perf_counter() - started) * 1000)
        out.append(answer_of(result))
    return out, times


def warm_latency(
    backend: Any, prism: Prism | None, cases: list[Case], config: EvalConfig
) -> dict[str, float]:
    """Single-line latency once the prompt is cached: a case, then the same case with one
    more character typed (an SPM prompt then differs only at its end)."""
    totals: list[float] = []
    per_token: list[float] = []
    for case in [c for c in cases if c.kind == "line" and c.answer][: config.latency_cases]:
        backend.reset_cache()
        # The first call fills the cache; the measured one then re-reads almost all of it.
        complete(backend, prism, case, config)
        started = time.perf_counter()
        result = complete(backend, prism, case, config, prefix=case.prefix + case.answer[0])
        total = (time.perf_counter() - started) * 1000
        totals.append(total)
        if result.generated_tokens:
            per_token.append(total / result.generated_tokens)
    if not totals:
        return {}
    return {
        "cases": len(totals),
        "median_ms": statistics.median(totals),
        "p90_ms": sorted(totals)[int(0.9 * (len(totals) - 1))],
        "median_ms_per_generated_token": statistics.median(per_token) if per_token else math.nan,
    }


def bits_per_byte(
    model: Any, tokenizer: Any, texts: list[str], context: int, max_bytes: int
) -> float:
    """Mean negative log2-likelihood per UTF-8 byte of ``texts`` (plain, no FIM).

    Each file is preceded by <|endoftext|> and scored in consecutive windows of
    ``context`` tokens; every token of the file is predicted exactly once.
    """
    import torch
    import torch.nn.functional as F

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    total_nats = 0.0
    total_bytes = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for text in texts:
            if total_bytes >= max_bytes:
                break
            ids = [eos, *tokenizer.encode(text, add_special_tokens=False)]
            for start in range(0, len(ids) - 1, context):
                window = torch.tensor([ids[start : start + context + 1]], device=device)
                logits = model(input_ids=window[:, :-1]).logits.float()
                total_nats += float(
                    F.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
                )
            total_bytes += len(text.encode("utf-8"))
    return total_nats / math.log(2) / max(total_bytes, 1)


def evaluate(
    backend: Any,
    cases: list[Case],
    config: EvalConfig,
    *,
    prism: Prism | None,
    check: Checker | None,
    texts: list[str],
    baseline_backend: Any | None = None,
    latency_backends: dict[str, Any] | None = None,
    memory: ProjectMemory | None = None,
) -> dict[str, Any]:
    """The JSON report: metrics per case kind and system, bits per byte, latency.

    ``prism`` checks the model's suggestions inside the pipeline, ``check`` the
    baselines' (both None: unchecked). ``latency_backends`` (name -> backend, e.g. the
    same model under ctransformers) add warm-latency figures for other backends.
    """
    report: dict[str, Any] = {"config": asdict(config), "results": {}}
    systems: dict[str, list[Answer]] = {}
    answers, times = run_model(backend, prism, cases, config)
    systems["model"] = answers
    if memory is not None:
        systems["model_with_memory"], _ = run_model(backend, prism, cases, config, memory)
    systems["copy_line_baseline"] = [checked(c, copy_line(c), check) for c in cases]
    if baseline_backend is not None:
        systems["random_init"], _ = run_model(baseline_backend, prism, cases, config)
    for kind in ("line", "multiline"):
        idx = [i for i, c in enumerate(cases) if c.kind == kind]
        if not idx:
            continue
        subset = [cases[i] for i in idx]
        report["results"][kind] = {
            name: score(subset, [preds[i] for i in idx]) for name, preds in systems.items()
        }
        for name in ("model", "model_with_memory"):
            if name in systems:
                picked = [systems[name][i] for i in idx]
                report["results"][kind][name]["gate"] = gate(subset, picked, config.gate_thresholds)
        report["results"][kind]["model"]["median_ms"] = statistics.median(times[i] for i in idx)
    context = int(backend.context_length)
    report["bits_per_byte"] = {
        "model": bits_per_byte(
            backend.model, backend.tokenizer, texts, context, config.bpb_max_bytes
        )
    }
    if baseline_backend is not None:
        report["bits_per_byte"]["random_init"] = bits_per_byte(
            baseline_backend.model, baseline_backend.tokenizer, texts, context, config.bpb_max_bytes
        )
    report["latency_warm_single_line"] = warm_latency(backend, prism, cases, config)
    report["latency_warm_single_line_by_backend"] = {
        backend.name: report["latency_warm_single_line"],
        **{
            name: warm_latency(b, prism, cases, config)
            for name, b in (latency_backends or {}).items()
        },
    }
    report["examples"] = [
        {
            "source": c.source,
            "kind": c.kind,
            "typed": c.prefix[c.prefix.rfind("\n") + 1 :],
            "answer": c.answer,
            "model": systems["model"][i].raw,
            **(
                {"model_with_memory": systems["model_with_memory"][i].raw}
                if "model_with_memory" in systems
                else {}
            ),
            "copy_line": systems["copy_line_baseline"][i].raw,
        }
        for i, c in enumerate(cases[:12])
    ]
    return report
