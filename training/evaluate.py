"""`rubytailor eval`: a model on held-out Ruby code, through the serving pipeline's pieces.

Each case is completed the way the server completes it: the prompt builder
(``model/prompt.py``, the model's FIM format and order, budget = min(1024, context -
max new tokens)), greedy decoding through the backend, FIM markers cut, then the Ruby
stop rules (single-line for line cases, at most 8 lines for multi-line ones). The
*raw* suggestion is what the stop rules leave; the *served* one is what the Prism check
(``model/syntax_check.check_suggestion``) keeps of it.

Reported per case kind and per system (model, copy-line baseline, random-init model of
the same shape): exact match and edit similarity (``training/metrics.py``) of raw and
served suggestions, the share of empty suggestions, and the Prism-valid rate of
non-empty raw suggestions (they add no syntax error). Also bits per byte on the test
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

from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import PromptBudget, build_prompt
from rubytailor.model.stop_rules import StopConfig, StopRules
from rubytailor.training.baselines import copy_line
from rubytailor.training.eval_cases import Case
from rubytailor.training.metrics import edit_similarity, exact_match

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 1024
MAX_LINES = 8


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    line_cases: int = 200
    multiline_cases: int = 50
    seed: int = 0
    line_max_new_tokens: int = 32
    multiline_max_new_tokens: int = 96
    bpb_max_bytes: int = 200_000
    latency_cases: int = 20


def complete(
    backend: Any, prefix: str, suffix: str, *, single_line: bool, max_new_tokens: int
) -> tuple[str, GenerationStats]:
    """The raw suggestion (stop rules applied, no Prism) and the generation stats."""
    fmt = get_format(backend.fim_format)
    budget = min(MAX_PROMPT_TOKENS, backend.context_length - max_new_tokens)
    prompt = build_prompt(
        prefix,
        suffix,
        fmt,
        PromptBudget(max_prompt_tokens=max(budget, 16)),
        backend.count_tokens,
        order="psm" if backend.fim_order == "psm" else "spm",
    )
    rules = StopRules(prefix, suffix, StopConfig(max_lines=MAX_LINES, single_line=single_line))
    stats = GenerationStats()
    params = GenerationParams(max_new_tokens=max_new_tokens)
    held = ""  # text that might be the start of a FIM marker, held until it is not
    for piece in backend.stream(prompt.text, params, CancelToken(), stats):
        text = held + piece
        cut = _marker_cut(text, fmt.stop_strings)
        if cut is not None:
            rules.push(text[:cut])
            break
        keep = max((_partial_marker(text, m) for m in fmt.stop_strings), default=0)
        held = text[len(text) - keep :]
        if rules.push(text[: len(text) - keep]):
            break
    else:
        rules.push(held)
    return rules.text, stats


def _marker_cut(text: str, markers: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(m) for m in markers) if i >= 0]
    return min(found) if found else None


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


Checker = Callable[[str, str, str], tuple[bool, str]]  # (prefix, raw, suffix) -> (valid, served)


def score(cases: list[Case], raw: list[str], check: Checker | None) -> dict[str, Any]:
    """Aggregate metrics of one system's raw suggestions on ``cases``."""
    served: list[str] = []
    valid: list[bool] = []
    for case, text in zip(cases, raw, strict=True):
        if check is None or not text:
            served.append(text)
            continue
        ok, kept = check(case.prefix, text, case.suffix)
        valid.append(ok)
        served.append(kept)
    answers = [c.answer for c in cases]

    def mean(values: Iterable[float]) -> float:
        return sum(values) / max(len(cases), 1)

    return {
        "cases": len(cases),
        "exact_match": mean(exact_match(p, a) for p, a in zip(raw, answers, strict=True)),
        "edit_similarity": mean(edit_similarity(p, a) for p, a in zip(raw, answers, strict=True)),
        "served_exact_match": mean(exact_match(p, a) for p, a in zip(served, answers, strict=True)),
        "served_edit_similarity": mean(
            edit_similarity(p, a) for p, a in zip(served, answers, strict=True)
        ),
        "empty_rate": mean(not p for p in raw),
        "prism_valid_rate": (sum(valid) / len(valid)) if valid else None,
    }


def run_model(backend: Any, cases: list[Case], config: EvalConfig) -> tuple[list[str], list[float]]:
    """Raw suggestions of ``backend`` for ``cases``, and each case's wall time in ms."""
    out: list[str] = []
    times: list[float] = []
    for case in cases:
        single = case.kind == "line"
        started = time.perf_counter()
        text, _ = complete(
            backend,
            case.prefix,
            case.suffix,
            single_line=single,
            max_new_tokens=config.line_max_new_tokens
            if single
            else config.multiline_max_new_tokens,
        )
        times.append((time.perf_counter() - started) * 1000)
        out.append(text)
    return out, times


def warm_latency(backend: Any, cases: list[Case], config: EvalConfig) -> dict[str, float]:
    """Single-line latency once the prompt is cached: a case, then the same case with one
    more character typed (an SPM prompt then differs only at its end)."""
    totals: list[float] = []
    per_token: list[float] = []
    for case in [c for c in cases if c.kind == "line" and c.answer][: config.latency_cases]:
        backend.reset_cache()
        # The first call fills the cache; the measured one then re-reads almost all of it.
        complete(
            backend,
            case.prefix,
            case.suffix,
            single_line=True,
            max_new_tokens=config.line_max_new_tokens,
        )
        started = time.perf_counter()
        _, stats = complete(
            backend,
            case.prefix + case.answer[0],
            case.suffix,
            single_line=True,
            max_new_tokens=config.line_max_new_tokens,
        )
        total = (time.perf_counter() - started) * 1000
        totals.append(total)
        if stats.generated_tokens:
            per_token.append(total / stats.generated_tokens)
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
    check: Checker | None,
    texts: list[str],
    baseline_backend: Any | None = None,
    latency_backends: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report: metrics per case kind and system, bits per byte, latency.

    ``latency_backends`` (name -> backend, e.g. the same model under ctransformers) add
    warm-latency figures for other backends of the same model.
    """
    report: dict[str, Any] = {"config": asdict(config), "results": {}}
    systems: dict[str, list[str]] = {}
    raw, times = run_model(backend, cases, config)
    systems["model"] = raw
    systems["copy_line_baseline"] = [copy_line(c) for c in cases]
    if baseline_backend is not None:
        systems["random_init"], _ = run_model(baseline_backend, cases, config)
    for kind in ("line", "multiline"):
        idx = [i for i, c in enumerate(cases) if c.kind == kind]
        if not idx:
            continue
        subset = [cases[i] for i in idx]
        report["results"][kind] = {
            name: score(subset, [preds[i] for i in idx], check) for name, preds in systems.items()
        }
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
    report["latency_warm_single_line"] = warm_latency(backend, cases, config)
    report["latency_warm_single_line_by_backend"] = {
        backend.name: report["latency_warm_single_line"],
        **{name: warm_latency(b, cases, config) for name, b in (latency_backends or {}).items()},
    }
    report["examples"] = [
        {
            "source": c.source,
            "kind": c.kind,
            "typed": c.prefix[c.prefix.rfind("\n") + 1 :],
            "answer": c.answer,
            "model": systems["model"][i],
            "copy_line": systems["copy_line_baseline"][i],
        }
        for i, c in enumerate(cases[:12])
    ]
    return report
