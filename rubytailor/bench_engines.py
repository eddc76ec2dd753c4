"""`rubytailor bench engines`: the inference engines side by side on one model.

Each installed engine (llama.cpp, ctransformers, transformers) runs the same token ids,
taken from real Ruby (the repository's .rb files), in a fresh process of its own, so
the resident memory it reports is that engine's. Per engine:

- prefill ms/token: one forward pass over a full context of 256 tokens (1024 too,
  where the model's context allows; else "n/a"), median of the repeats;
- decode ms/token: greedy tokens, one forward pass each, after a prompt: the median
  over every token of every repeat (robust to the odd slow step on a shared machine);
- agreement: greedy output token for token with transformers (the reference) over a
  few prompts;
- RSS once measured.

The floor for decode is what memory bandwidth allows: every weight read once per token,
at the speed numpy copies a large array. A model this small partly fits in the CPU's
last-level cache, so an engine can come close to it, or under it.

The last line printed is one JSON object, for scripts; the lines above it are for
people. Figures from a busy machine are noisy: the header gives the cores and the load
average, and nothing else is controlled.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rubytailor import paths

# Engine name -> the module it needs; the name is also its backend kind.
ENGINES = {"llamacpp": "llama_cpp", "ctransformers": "ctransformers", "transformers": "torch"}
REFERENCE = "transformers"
PREFILL_LENGTHS = (256, 1024)
DECODE_PROMPT_TOKENS = 128
AGREEMENT_PROMPTS = 4
AGREEMENT_PROMPT_TOKENS = 96
# Large enough to leave every cache level: the copy runs at memory speed.
BANDWIDTH_BYTES = 256 << 20


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What every engine is given: the same token ids and counts."""

    model: str
    threads: int
    repeats: int
    decode_tokens: int
    agreement_tokens: int
    stream: list[int]  # Ruby token ids, long enough for every prompt below

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


def ruby_files(root: Path = paths.REPO_ROOT) -> list[Path]:
    """The repository's own Ruby, examples first; vendored and generated trees left out."""
    skip = {".venv", "vendor", "node_modules", ".git", "runs", ".cache"}
    found = sorted(
        p for p in root.rglob("*.rb") if not skip & set(p.relative_to(root).parts) and p.is_file()
    )
    examples = [p for p in found if p.parts[len(root.parts)] == "examples"]
    return examples + [p for p in found if p not in examples]


def token_stream(model_dir: Path, files: Sequence[Path], needed: int) -> list[int]:
    """Token ids of the files, one after another, repeated until ``needed`` long."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids: list[int] = []
    for path in files:
        ids += tokenizer.encode(path.read_text(encoding="utf-8"), add_special_tokens=False).ids
    if not ids:
        raise ValueError("no Ruby text to benchmark with")
    while len(ids) < needed:
        ids += ids
    return ids


def prompts_for_agreement(plan: Plan) -> list[list[int]]:
    """Windows from spread-out places in the stream, so the prompts differ."""
    step = max((len(plan.stream) - AGREEMENT_PROMPT_TOKENS) // AGREEMENT_PROMPTS, 1)
    return [
        plan.stream[i * step : i * step + AGREEMENT_PROMPT_TOKENS] for i in range(AGREEMENT_PROMPTS)
    ]


# The worker: one engine in this process.


def measure(backend: Any, plan: Plan, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Figures for one loaded ``TokenLoopBackend``, driven through its forward pass."""
    import numpy as np

    def evaluate(ids: Sequence[int]) -> Any:
        logits = backend._forward(ids)
        backend._cached_ids.extend(ids)
        return logits

    def greedy(prompt: Sequence[int], n: int, times: list[float] | None = None) -> list[int]:
        backend.reset_cache()
        logits = evaluate(prompt)
        out: list[int] = []
        for _ in range(n):
            out.append(int(np.argmax(logits)))
            started = clock()
            logits = evaluate(out[-1:])
            if times is not None:
                times.append(clock() - started)
        return out

    context = int(backend.context_length)
    prefill: dict[str, float | None] = {}
    for length in PREFILL_LENGTHS:
        if length > context:
            prefill[str(length)] = None
            continue
        ids = plan.stream[:length]
        runs = []
        for _ in range(plan.repeats + 1):  # the first warms caches and allocations up
            backend.reset_cache()
            started = clock()
            evaluate(ids)
            runs.append((clock() - started) * 1000 / length)
        prefill[str(length)] = statistics.median(runs[1:])
    decode_prompt = plan.stream[: min(DECODE_PROMPT_TOKENS, context - plan.decode_tokens - 1)]
    times: list[float] = []
    for _ in range(plan.repeats):
        greedy(decode_prompt, plan.decode_tokens, times)
    outputs = [greedy(p, plan.agreement_tokens) for p in prompts_for_agreement(plan)]
    return {
        "engine": backend.name,
        "context_length": context,
        "prefill_ms_per_token": prefill,
        "decode_ms_per_token": statistics.median(times) * 1000,
        "outputs": outputs,
        "rss_mib": own_rss_mib(),
    }


def own_rss_mib() -> float | None:
    """This process's resident memory (Linux /proc); the LSP client's helper would import
    pygls into the worker and count it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def worker(engine: str, plan: Plan) -> dict:
    from rubytailor.model.backends import load_backend

    started = time.perf_counter()
    backend = load_backend(engine, Path(plan.model), threads=plan.threads)
    load_s = time.perf_counter() - started
    figures = measure(backend, plan)
    figures["load_s"] = load_s
    return figures


def run_worker(engine: str, plan: Plan, timeout_s: float = 600) -> dict:
    """``worker`` in a fresh Python process: its RSS is the engine's alone."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(plan.to_json())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rubytailor.bench_engines", engine, f.name],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    return dict(json.loads(lines[-1]))


# The parent: plans, runs the workers, reports.


def memcpy_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Memory bandwidth in bytes per second: a large numpy copy, best of ``repeats``,
    counting the bytes read and the bytes written (STREAM's convention for "copy")."""
    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * nbytes / best


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the model's weights as served (float16 here): what decoding reads per token."""
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def installed_engines() -> list[str]:
    return [name for name, module in ENGINES.items() if importlib.util.find_spec(module)]


def summary(results: dict[str, dict], default: str, floor_ms: float) -> dict[str, Any]:
    """The JSON object the command prints last; agreement is with the reference engine."""
    reference = results.get(REFERENCE, {}).get("outputs")
    engines: dict[str, Any] = {}
    for name, r in results.items():
        if "error" in r:
            engines[name] = {"error": r["error"]}
            continue
        engines[name] = {
            "prefill_ms_per_token": r["prefill_ms_per_token"],
            "decode_ms_per_token": r["decode_ms_per_token"],
            "rss_mib": r["rss_mib"],
            "agrees": None if reference is None else r["outputs"] == reference,
        }
    return {"default": default, "floor_decode_ms_per_token": floor_ms, "engines": engines}


def report_lines(data: dict[str, Any], results: dict[str, dict], plan: Plan) -> list[str]:
    def ms(value: float | None, context: int) -> str:
        return f"{value:.3f}" if value is not None else f"n/a: context {context}"

    lines = [
        "rubytailor bench engines",
        f"  machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end; threads per engine: {plan.threads}",
        f"  model: {plan.model}; repeats: {plan.repeats}, decode: {plan.decode_tokens} greedy "
        f"tokens after {DECODE_PROMPT_TOKENS}; agreement: {AGREEMENT_PROMPTS} prompts x "
        f"{plan.agreement_tokens} tokens with {REFERENCE}",
        f"  auto picks: {data['default']}; decode floor (weights / memcpy bandwidth): "
        f"{data['floor_decode_ms_per_token']:.3f} ms/token",
    ]
    for name, figures in data["engines"].items():
        if "error" in figures:
            lines.append(f"  {name:13} failed: {figures['error']}")
            continue
        context = int(results[name]["context_length"])
        prefill = figures["prefill_ms_per_token"]
        lines.append(
            f"  {name:13} prefill ms/token: 256 {ms(prefill['256'], context)}, "
            f"1024 {ms(prefill['1024'], context)}; decode {figures['decode_ms_per_token']:.3f} "
            f"ms/token; RSS {figures['rss_mib']:.0f} MiB; agrees: {figures['agrees']}; "
            f"load {results[name]['load_s']:.2f} s"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from rubytailor.model.backends import auto_backend_kind

    model_dir = (args.model or paths.default_model_dir()).expanduser().resolve()
    engines = args.engines or installed_engines()
    plan = Plan(
        model=str(model_dir),
        threads=args.threads or 1,
        repeats=args.repeats,
        decode_tokens=args.decode_tokens,
        agreement_tokens=args.agreement_tokens,
        stream=token_stream(model_dir, ruby_files(), max(PREFILL_LENGTHS) + 1),
    )
    results = {engine: run_worker(engine, plan) for engine in engines}
    floor_ms = weight_bytes(model_dir) / memcpy_bandwidth() * 1000
    data = summary(results, auto_backend_kind(model_dir), floor_ms)
    print("\n".join(report_lines(data, results, plan)))
    print(json.dumps(data))
    return 0 if all("error" not in r for r in results.values()) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only ``bench engines`` reads (``--model`` and ``--threads`` are shared)."""
    parser.add_argument(
        "--engines", nargs="+", choices=list(ENGINES), default=None, help="engines: default all"
    )
    parser.add_argument("--repeats", type=int, default=5, help="engines: repeats per figure")
    parser.add_argument("--decode-tokens", type=int, default=64, help="engines: tokens timed")
    parser.add_argument(
        "--agreement-tokens", type=int, default=32, help="engines: greedy tokens compared"
    )


def main(argv: list[str]) -> int:
    """The worker's entry: ``python -m rubytailor.bench_engines ENGINE PLAN_FILE``."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    engine, plan_file = argv
    print(json.dumps(worker(engine, Plan.from_json(Path(plan_file).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
