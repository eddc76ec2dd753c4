"""`rubytailor bench soak`: minutes of typing at human speed, with overlapping requests
and cancellations, against one server; prints memory growth and latency against idle.

First an idle reference: a few lines typed one keystroke at a time, each request
answered before the next key (as `bench latency` does). Then the soak: keys arrive
every 60-220 ms whether or not the last suggestion came back, so requests overlap and
the server supersedes older ones; one request in six is also cancelled by the client
10-80 ms after it went out (Escape, a cursor move). Each typed line is a document
opened and closed again, as an editor's tabs come and go. The server's RSS is sampled
every ten seconds.

Targets (the hardening issue): RSS at the end within 10 % of the RSS after the idle
phase, and the soak's p95 time to a final suggestion within 2x of the idle p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import time
from dataclasses import dataclass, field

from rubytailor.bench import percentile, start_session
from rubytailor.lsp_client import RubytailorClient, StreamOutcome, rss_mib
from rubytailor.typing_replay import TypingScenario, scenarios_from_file

IDLE_LINES = 4
KEY_INTERVAL_S = (0.06, 0.22)
CANCEL_SHARE = 1 / 6
CANCEL_AFTER_S = (0.01, 0.08)
PAUSE_AFTER_LINE_S = 0.3
RSS_EVERY_S = 10.0
ANSWER_TIMEOUT_S = 30.0
RSS_GROWTH_TARGET = 0.10
P95_TARGET_RATIO = 2.0


@dataclass
class SoakResult:
    backend: str = ""
    model_id: str = ""
    minutes: float = 0.0
    idle_ms: list[float] = field(default_factory=list)
    answered_ms: list[float] = field(default_factory=list)  # soak requests not cancelled
    sent: int = 0
    cancelled_by_client: int = 0
    cancelled: int = 0  # by the client or superseded by a newer keystroke
    unanswered: int = 0
    errors: list[str] = field(default_factory=list)
    lines: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)
    rss_after_idle: float | None = None
    server_answers_after: bool = False  # rubytailor/status answered after the soak


async def soak(args: argparse.Namespace) -> SoakResult:
    scenarios = [s for path in args.files for s in scenarios_from_file(path, 10_000, args.seed)]
    if len(scenarios) <= IDLE_LINES:
        raise ValueError("the soak needs more lines to type: give it longer --files")
    rng = random.Random(args.seed)
    result = SoakResult(minutes=args.minutes)
    client, info = await start_session(args)
    result.backend, result.model_id = str(info.get("backend", "")), str(info.get("model_id", ""))
    try:
        for n, scenario in enumerate(scenarios[:IDLE_LINES]):
            result.idle_ms += await _type_idle(client, scenario, f"idle{n}", args.max_keystrokes)
        result.rss_after_idle = rss_mib(client.server_pid)
        sampler = asyncio.ensure_future(_sample_rss(client, result))
        deadline = time.perf_counter() + args.minutes * 60
        n = 0
        while time.perf_counter() < deadline:
            scenario = scenarios[IDLE_LINES + n % (len(scenarios) - IDLE_LINES)]
            await _type_overlapping(
                client, scenario, f"soak{n}", rng, result, deadline, args.max_keystrokes
            )
            n += 1
        sampler.cancel()
        result.rss.append((args.minutes * 60, rss_mib(client.server_pid) or 0.0))
        status = await asyncio.wait_for(client.status(), ANSWER_TIMEOUT_S)
        result.server_answers_after = bool(status.get("model_id"))
    finally:
        try:
            await client.stop()
        except Exception as exc:  # reported, not raised: the figures above still stand
            result.errors.append(f"shutdown: {exc!r}")
    return result


async def _type_idle(
    client: RubytailorClient, scenario: TypingScenario, tag: str, max_keys: int
) -> list[float]:
    uri = client.open(scenario.path.with_name(f"{scenario.path.stem}.{tag}.rb"), scenario.text)
    times = []
    column = scenario.column
    await client.stream(uri, scenario.line, column)  # the cursor lands on the line
    for ch in scenario.typed[:max_keys]:
        client.insert(uri, scenario.line, column, ch)
        column += 1
        times.append((await client.stream(uri, scenario.line, column)).total_ms)
    client.close(uri)
    return times


async def _type_overlapping(
    client: RubytailorClient,
    scenario: TypingScenario,
    tag: str,
    rng: random.Random,
    result: SoakResult,
    deadline: float,
    max_keys: int,
) -> None:
    uri = client.open(scenario.path.with_name(f"{scenario.path.stem}.{tag}.rb"), scenario.text)
    pending: list[asyncio.Task[tuple[StreamOutcome, bool]]] = []
    column = scenario.column
    for ch in scenario.typed[:max_keys]:
        if time.perf_counter() >= deadline:
            break
        client.insert(uri, scenario.line, column, ch)
        column += 1
        cancel_after = rng.uniform(*CANCEL_AFTER_S) if rng.random() < CANCEL_SHARE else None
        pending.append(
            asyncio.ensure_future(_request(client, uri, scenario.line, column, cancel_after))
        )
        result.sent += 1
        await asyncio.sleep(rng.uniform(*KEY_INTERVAL_S))
    done, late = await asyncio.wait(pending, timeout=ANSWER_TIMEOUT_S)
    result.unanswered += len(late)
    for task in late:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            result.errors.append(repr(task.exception()))
            continue
        outcome, client_cancelled = task.result()
        result.cancelled_by_client += client_cancelled
        if outcome.result.get("cancelled"):
            result.cancelled += 1
        else:
            result.answered_ms.append(outcome.total_ms)
    client.close(uri)
    result.lines += 1
    await asyncio.sleep(PAUSE_AFTER_LINE_S)


async def _request(
    client: RubytailorClient, uri: str, line: int, column: int, cancel_after: float | None
) -> tuple[StreamOutcome, bool]:
    outcome = await client.stream(uri, line, column, cancel_after_s=cancel_after)
    return outcome, cancel_after is not None


async def _sample_rss(client: RubytailorClient, result: SoakResult) -> None:
    started = time.perf_counter()
    while True:
        result.rss.append((time.perf_counter() - started, rss_mib(client.server_pid) or 0.0))
        await asyncio.sleep(RSS_EVERY_S)


def report(result: SoakResult) -> str:
    idle95 = percentile(result.idle_ms, 95)
    soak95 = percentile(result.answered_ms, 95)
    ratio = soak95 / idle95 if idle95 else float("nan")
    start = result.rss_after_idle or 0.0
    end = result.rss[-1][1] if result.rss else 0.0
    peak = max((mib for _, mib in result.rss), default=0.0)
    growth = (end - start) / start if start else float("nan")
    lines = [
        "rubytailor bench soak",
        f"  machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        f"  backend: {result.backend}, model: {result.model_id}",
        f"  {result.minutes:g} min of typing: {result.lines} lines, {result.sent} requests "
        f"({result.cancelled_by_client} cancelled by the client; {result.cancelled} ended "
        f"cancelled, by the client or superseded by a newer keystroke)",
        f"  unanswered after {ANSWER_TIMEOUT_S:.0f} s: {result.unanswered}; "
        f"errors: {len(result.errors)}"
        + (f" (first: {result.errors[0]})" if result.errors else ""),
        f"  time to final, idle (one request at a time): p50 "
        f"{percentile(result.idle_ms, 50):.1f} ms, p95 {idle95:.1f} ms ({len(result.idle_ms)})",
        f"  time to final, soak (answered requests):     p50 "
        f"{percentile(result.answered_ms, 50):.1f} ms, p95 {soak95:.1f} ms "
        f"({len(result.answered_ms)})",
        f"  p95 soak / idle: {ratio:.2f} (target <= {P95_TARGET_RATIO:g}: "
        f"{_met(ratio <= P95_TARGET_RATIO)})",
        f"  server RSS: {start:.0f} MiB after the idle phase, {end:.0f} MiB at the end, "
        f"peak {peak:.0f} MiB; growth {growth:+.1%} (target < {RSS_GROWTH_TARGET:.0%}: "
        f"{_met(growth < RSS_GROWTH_TARGET)})",
        "  RSS every 10 s (MiB): " + " ".join(f"{mib:.0f}" for _, mib in result.rss),
    ]
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"
