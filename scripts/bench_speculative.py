"""Speculative decoding from the project memory, on and off, on a Rails project.

    .venv/bin/python scripts/bench_speculative.py PROJECT [--backend llamacpp] [--cases 200]

Line cases from the project's files (as `rubytailor eval --project`), each completed
through the served pipeline with the rest of the project as memory, with drafting off
and on. Two timings per case: cold (empty KV cache: the whole prompt is evaluated) and
warm (the same case with its first character typed, prompt cached: what typing sees).
Prints medians, p90, the totals, draft acceptance and whether every text was the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rubytailor.lsp.workspace_memory import memory_of
from rubytailor.model.backends import load_backend
from rubytailor.model.backends.token_loop import TokenLoopBackend
from rubytailor.paths import default_model_dir
from rubytailor.personalization.file_filters import iter_project_files
from rubytailor.prism import Prism
from rubytailor.training.eval_cases import line_cases
from rubytailor.training.evaluate import EvalConfig, complete


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--backend", default="llamacpp")
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    root = args.project.resolve()
    files = [(str(path), text) for path, text in iter_project_files(root)]
    cases = [c for c in line_cases(files, args.cases, args.seed) if c.answer]
    memory = memory_of(args.model, files)
    backend = load_backend(args.backend, args.model, threads=1)
    # Measured whether or not the engine drafts by default.
    if (
        not isinstance(backend, TokenLoopBackend)
        or type(backend)._forward_rows is TokenLoopBackend._forward_rows
    ):
        print(f"{args.backend} cannot verify drafts", file=sys.stderr)
        return 2
    prism = Prism.load()
    config = EvalConfig()

    times: dict[tuple[str, bool], list[float]] = {}
    tokens = {True: 0, False: 0}
    drafted = accepted = same = 0
    for case in cases:
        texts = {}
        for drafts in (False, True):
            backend.verifies_drafts = drafts
            backend.reset_cache()
            started = time.perf_counter()
            cold = complete(backend, prism, case, config, memory=memory)
            times.setdefault(("cold", drafts), []).append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            warm = complete(
                backend, prism, case, config, prefix=case.prefix + case.answer[0], memory=memory
            )
            times.setdefault(("warm", drafts), []).append((time.perf_counter() - started) * 1e3)
            texts[drafts] = (cold.text, warm.text)
            tokens[drafts] += cold.generated_tokens + warm.generated_tokens
            if drafts:
                drafted += cold.drafted_tokens + warm.drafted_tokens
                accepted += cold.accepted_drafts + warm.accepted_drafts
        same += texts[False] == texts[True]

    print(f"speculative decoding: {root.name}, {len(cases)} line cases, {args.backend}, 1 thread")
    for kind in ("cold", "warm"):
        off, on = times[(kind, False)], times[(kind, True)]
        print(
            f"  {kind}: off median {statistics.median(off):.1f} ms, p90 {p90(off):.1f}, "
            f"total {sum(off) / 1e3:.2f} s | on median {statistics.median(on):.1f} ms, "
            f"p90 {p90(on):.1f}, total {sum(on) / 1e3:.2f} s | speed-up of the total "
            f"{sum(off) / sum(on):.2f}x"
        )
    print(
        f"  generated tokens off {tokens[False]}, on {tokens[True]}; drafted {drafted}, "
        f"accepted {accepted} ({accepted / max(drafted, 1):.0%}), "
        f"{accepted / max(tokens[True], 1):.0%} of the generated tokens came from drafts"
    )
    print(f"  same text with and without drafts: {same}/{len(cases)} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
