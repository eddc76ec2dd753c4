"""`rubytailor bench latency`: replay typing through a real stdio LSP session and print figures.

For each scenario (a line of a sample file, deleted and then typed back one character
at a time) the client sends the keystroke as an incremental change and asks for a
streamed suggestion, like an editor showing ghost text. It prints p50/p95 of the time
to the first partial and to the final suggestion, how many prompt tokens the backend
reused from its KV cache, how often the suggestion cache answered without the model,
and the server's resident memory. Then it opens a file of about 1,000 tokens and asks
for the first suggestion at places the cache knows nothing of: cold, and after a pause
in which the client reported the cursor there (`rubytailor/prewarm`).

The session's workspace (``--workspace``, default the repository) is indexed as project
memory unless ``--no-project-memory``; the typed files themselves are excluded from it,
so the memory cannot simply recall the lines being typed. Typing starts once the index
is ready, and the time that took is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rubytailor import bench_engines, paths
from rubytailor.lsp.workspace_memory import tokenizer_encoder
from rubytailor.lsp_client import RubytailorClient, StreamOutcome, rss_mib, server_command
from rubytailor.typing_replay import scenarios_from_file

# The newer request goes out this long after the older one, mid-generation.
SUPERSEDE_AFTER_S = 0.005
DEFAULT_FILES = [paths.REPO_ROOT / "examples" / "inventory.rb"]
# The file opened for the cold figures: the examples, cut to about this many tokens.
COLD_FILE_TOKENS = 1000
COLD_FILES = sorted((paths.REPO_ROOT / "examples").glob("*.rb"))
COLD_PLACES = 6  # places asked cold, and as many after a pre-warmed pause
PAUSE_S = 1.0  # the pause: longer than the server's idle wait plus a whole prompt


@dataclass
class Tally:
    outcomes: list[StreamOutcome] = field(default_factory=list)
    exact_lines: int = 0
    lines: int = 0
    # Milliseconds from a newer request for the same document to the older one's answer.
    supersede_ms: list[float] = field(default_factory=list)
    # First suggestions in the ~1,000-token file: cold, and after a pre-warmed pause.
    cold: list[StreamOutcome] = field(default_factory=list)
    prewarmed: list[StreamOutcome] = field(default_factory=list)
    cold_file_tokens: int = 0

    def by_source(self, *sources: str) -> list[StreamOutcome]:
        return [o for o in self.outcomes if o.result.get("source") in sources]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def session_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The server's settings for a benchmark session (the typed files kept out of memory)."""
    workspace = args.workspace.resolve()
    settings: dict[str, Any] = {
        "backend": args.backend,
        "diagnostics": False,
        "projectMemory": not args.no_project_memory,
        "exclude": [
            p.resolve().relative_to(workspace).as_posix()
            for p in args.files
            if p.resolve().is_relative_to(workspace)
        ],
    }
    if args.model:
        settings["modelPath"] = str(args.model)
    if args.threads:
        settings["threads"] = args.threads
    if args.max_prompt_tokens:
        settings["maxPromptTokens"] = args.max_prompt_tokens
    return settings


async def start_session(args: argparse.Namespace) -> tuple[RubytailorClient, dict[str, Any]]:
    """A started server with its model loaded and its project memory indexed."""
    extra = ["--log-file", str(args.server_log)] if args.server_log else []
    client = RubytailorClient(server_command(extra), session_settings(args))
    await client.start(args.workspace.resolve())
    started = time.perf_counter()
    info = await client.wait_until_ready()
    if info.get("model_error"):
        await client.stop()
        raise RuntimeError(f"the server has no model: {info['model_error']}")
    info["memory"] = await client.wait_for_memory()
    info["memory_ready_s"] = time.perf_counter() - started
    info["rss_before_typing"] = rss_mib(client.server_pid)
    return client, info


async def replay(args: argparse.Namespace) -> tuple[Tally, float | None, dict[str, Any]]:
    tally = Tally()
    client, info = await start_session(args)
    try:
        for file_index, path in enumerate(args.files):
            for n, scenario in enumerate(scenarios_from_file(path, args.lines, seed=args.seed)):
                virtual = path.with_name(f"{path.stem}.bench{file_index}_{n}.rb")
                uri = client.open(virtual, scenario.text)
                # Warm-up request at the start of the line, as when the cursor lands there.
                first = await client.stream(uri, scenario.line, scenario.column)
                info = {**info, **(first.result or {})}
                tally.lines += 1
                if first.text.split("\n", 1)[0] == scenario.typed:
                    tally.exact_lines += 1
                column = scenario.column
                for ch in scenario.typed[: args.max_keystrokes]:
                    client.insert(uri, scenario.line, column, ch)
                    column += 1
                    tally.outcomes.append(await client.stream(uri, scenario.line, column))
                await measure_supersede(client, uri, scenario.line + 1, tally)
        await measure_cold(client, args, tally)
        memory = rss_mib(client.server_pid)
    finally:
        await client.stop()
    return tally, memory, info


async def measure_supersede(client: RubytailorClient, uri: str, line: int, tally: Tally) -> None:
    """Start a suggestion on a fresh line, then a newer request for the same document.

    The older request's generation must stop within one token; the time from sending
    the newer request to the older one's answer is what an editor waits for.
    """
    client.insert(uri, line, 0, "\n")
    older = asyncio.ensure_future(client.stream(uri, line, 0))
    await asyncio.sleep(SUPERSEDE_AFTER_S)
    if older.done():
        await older
        return
    sent = time.perf_counter()
    newer = asyncio.ensure_future(client.stream(uri, line, 0))
    outcome = await older
    if outcome.result.get("cancelled"):
        tally.supersede_ms.append((time.perf_counter() - sent) * 1000)
    await newer


def cold_file(model_dir: Path) -> tuple[str, int]:
    """The examples joined and cut at a line end near COLD_FILE_TOKENS tokens; the text
    and its token count."""
    encode = tokenizer_encoder(model_dir)
    text = "\n".join(p.read_text() for p in COLD_FILES)
    if encode is None:
        return text, 0
    lines, kept = text.split("\n"), 0
    while kept < len(lines) and len(encode("\n".join(lines[: kept + 1]))) <= COLD_FILE_TOKENS:
        kept += 1
    text = "\n".join(lines[:kept]) + "\n"
    return text, len(encode(text))


def cold_places(text: str, count: int) -> list[tuple[int, int]]:
    """(line, character) after the first word of code lines spread over the file."""
    lines = text.split("\n")
    candidates = [
        (n, line.index(line.split()[0]) + len(line.split()[0]))
        for n, line in enumerate(lines)
        if len(line.split()) > 2 and not line.lstrip().startswith("#")
    ]
    step = max(len(candidates) // count, 1)
    return candidates[::step][:count]


async def measure_cold(client: RubytailorClient, args: argparse.Namespace, tally: Tally) -> None:
    """The first suggestion at places of a newly opened ~1,000-token file, alternately
    cold and after a pause in which the client reported the cursor there (pre-warming).

    Each place is far from the last, so nothing of its prompt is in the KV cache (the
    SPM prompt starts with the text after the cursor).
    """
    text, tally.cold_file_tokens = cold_file(args.model or paths.default_model_dir())
    uri = client.open(paths.REPO_ROOT / "examples" / "cold.bench.rb", text)
    for i, (line, column) in enumerate(cold_places(text, 2 * COLD_PLACES)):
        if i % 2:
            client.prewarm(uri, line, column)
            await asyncio.sleep(PAUSE_S)
            tally.prewarmed.append(await client.stream(uri, line, column))
        else:
            await asyncio.sleep(PAUSE_S)  # the same pause, with no pre-warming
            tally.cold.append(await client.stream(uri, line, column))
    client.close(uri)


def _first_line(name: str, outcomes: list[StreamOutcome]) -> str:
    totals = [o.total_ms for o in outcomes]
    prompt = sum(int(o.result.get("prompt_tokens") or 0) for o in outcomes)
    reused = sum(int(o.result.get("reused_tokens") or 0) for o in outcomes)
    return (
        f"  {name}: p50 {percentile(totals, 50):.1f} ms, max {max(totals, default=0):.1f} ms "
        f"({len(outcomes)} places; reused prompt tokens {reused}/{prompt})"
    )


def report(args: argparse.Namespace, tally: Tally, memory: float | None, info: dict) -> str:
    model_served = tally.by_source("model")
    cached = tally.by_source("typed_through", "exact")
    first = [o.first_partial_ms for o in model_served if o.first_partial_ms is not None]
    final_model = [o.total_ms for o in model_served]
    # Suggestions of at most one line: the typing case (multi-line ones generate more).
    one_line = [o.total_ms for o in model_served if "\n" not in o.text.rstrip("\n")]
    final_all = [o.total_ms for o in tally.outcomes]
    prompt = sum(int(o.result.get("prompt_tokens") or 0) for o in model_served)
    reused = sum(int(o.result.get("reused_tokens") or 0) for o in model_served)
    lines = [
        "rubytailor bench latency",
        f"  machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        f"  backend: {info.get('backend') or args.backend}, "
        f"model: {info.get('model_id', args.model or 'default')}",
        f"  workspace: {args.workspace}; project memory: {_memory_line(info)}",
        f"  files: {', '.join(p.name for p in args.files)}; {tally.lines} lines typed, "
        f"{len(tally.outcomes)} keystrokes, one streamed request each",
        f"  answered by the model: {len(model_served)}, from the suggestion cache: {len(cached)}",
        f"  time to first partial (model): p50 {percentile(first, 50):.1f} ms, "
        f"p95 {percentile(first, 95):.1f} ms  ({len(first)} with text)",
        f"  time to final (model):         p50 {percentile(final_model, 50):.1f} ms, "
        f"p95 {percentile(final_model, 95):.1f} ms",
        f"  time to final (model, one line or none): p50 {percentile(one_line, 50):.1f} ms, "
        f"p95 {percentile(one_line, 95):.1f} ms  ({len(one_line)})",
        f"  time to final (all requests):  p50 {percentile(final_all, 50):.1f} ms, "
        f"p95 {percentile(final_all, 95):.1f} ms",
        f"  reused prompt tokens (model):  {reused}/{prompt} = "
        f"{(reused / prompt if prompt else 0):.0%}",
        f"  superseded request answered (newer keystroke, same document): "
        f"p50 {percentile(tally.supersede_ms, 50):.1f} ms, "
        f"p95 {percentile(tally.supersede_ms, 95):.1f} ms  ({len(tally.supersede_ms)} cases)",
        f"  whole line suggested before the first keystroke: {tally.exact_lines}/{tally.lines}",
        f"  a newly opened file of {tally.cold_file_tokens} tokens, first suggestion at a place:",
        _first_line("cold", tally.cold),
        _first_line("after a pause, pre-warmed", tally.prewarmed),
        f"  server RSS: {memory:.0f} MiB (before typing: {info.get('rss_before_typing') or 0:.0f})"
        if memory is not None
        else "  server RSS: unknown",
    ]
    return "\n".join(lines)


def _memory_line(info: dict[str, Any]) -> str:
    memory = info.get("memory") or {}
    if memory.get("state") != "ready":
        return f"{memory.get('state', 'unknown')} ({memory.get('reason', '')})"
    return (
        f"{memory['files']} files, {memory['tokens']:,} tokens, "
        f"ready {info.get('memory_ready_s', 0):.1f} s after start"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that print figures")
    parser.add_argument(
        "what",
        choices=["latency", "soak", "engines"],
        help="latency: typing replay; soak: minutes of it; engines: the inference engines "
        "side by side",
    )
    parser.add_argument("--model", type=Path, default=None, help="model directory")
    parser.add_argument(
        "--backend", default="auto", help="auto, ctransformers, transformers or fake"
    )
    parser.add_argument("--files", type=Path, nargs="+", default=DEFAULT_FILES)
    parser.add_argument("--lines", type=int, default=12, help="lines typed per file")
    parser.add_argument("--max-keystrokes", type=int, default=40, help="per line")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workspace",
        type=Path,
        default=paths.REPO_ROOT,
        help="the session's workspace folder, indexed as project memory",
    )
    parser.add_argument("--no-project-memory", action="store_true")
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="the maxPromptTokens setting"
    )
    parser.add_argument("--server-log", type=Path, default=None, help="the server's log file")
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="soak: how long to type (default 5)"
    )
    bench_engines.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.what == "engines":
        return bench_engines.run(args)
    if args.what == "soak":
        from rubytailor import soak

        print(soak.report(asyncio.run(soak.soak(args))))
        return 0
    tally, memory, info = asyncio.run(replay(args))
    print(report(args, tally, memory, info))
    return 0
