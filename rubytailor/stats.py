"""`rubytailor stats`: how often suggestions are accepted, from the local events file.

Reads ``<data dir>/events/events.jsonl`` and its rotated ``.1`` (lsp/events.py writes
them) and prints, per UTC day and project, the suggestions shown, accepted (and the
acceptance rate, accepted / shown), partial accepts, the characters accepted,
dismissals, and the latency (p50/p95, ms) of the suggestions shown, then a total.
Suggestions are counted once per day and event however often a client reported them;
the characters accepted are each suggestion's furthest accept. Lines that are not
events are counted and skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from rubytailor.lsp.events import EVENTS, events_path

TOTAL = "total"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stats", help="acceptance figures from the local suggestion events"
    )
    parser.add_argument(
        "--days", type=_positive, default=30, help="today and the N-1 days before (UTC)"
    )
    parser.add_argument(
        "--project", default=None, help="only this project (its name, or name-hash as listed)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="the events file (default: <data dir>/events/events.jsonl); PATH.1 is read too",
    )
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# -- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventLine:
    time: datetime
    event: str
    suggestion_id: str
    project: str
    latency_ms: float | None
    accepted_chars: int | None


@dataclass
class Read:
    events: list[EventLine] = field(default_factory=list)
    corrupt: int = 0
    files: list[Path] = field(default_factory=list)


def read_events(path: Path) -> Read:
    """Every event of ``path.1`` (older) and ``path``; missing files are skipped."""
    read = Read()
    for candidate in (path.with_name(path.name + ".1"), path):
        try:
            # Bytes: a line cut in half by a crash may end inside a UTF-8 character.
            data = candidate.read_bytes()
        except FileNotFoundError:
            continue
        read.files.append(candidate)
        for raw in data.splitlines():
            if not raw.strip():
                continue
            line = parse_line(raw)
            if line is None:
                read.corrupt += 1
            else:
                read.events.append(line)
    return read


def parse_line(raw: bytes) -> EventLine | None:
    try:
        data = json.loads(raw)
        when = datetime.fromisoformat(data["time"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("event") not in EVENTS:
        return None
    suggestion_id, project = data.get("suggestion_id"), data.get("project") or "none"
    if not isinstance(suggestion_id, str) or not isinstance(project, str):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return EventLine(
        time=when.astimezone(UTC),
        event=data["event"],
        suggestion_id=suggestion_id,
        project=project,
        latency_ms=_number(data.get("latency_ms")),
        accepted_chars=_count(data.get("accepted_chars")),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def matches_project(project: str, wanted: str) -> bool:
    """``shop`` matches ``shop-1f2e3d4c5b6a``; the full key matches itself."""
    name, _, digest = project.rpartition("-")
    hashed = len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)
    return project == wanted or (hashed and name == wanted)


# -- figures ----------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile, interpolated between the values (as rubytailor bench does)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def figures(events: Iterable[EventLine]) -> dict[str, Any]:
    ids: dict[str, set[str]] = defaultdict(set)
    partial = 0
    furthest: dict[str, int] = {}
    latency: dict[str, float] = {}
    for line in events:
        ids[line.event].add(line.suggestion_id)
        if line.event == "partial":
            partial += 1
        if line.event in ("accepted", "partial") and line.accepted_chars is not None:
            furthest[line.suggestion_id] = max(
                furthest.get(line.suggestion_id, 0), line.accepted_chars
            )
        if line.event == "shown" and line.latency_ms is not None:
            latency.setdefault(line.suggestion_id, line.latency_ms)
    shown, accepted = len(ids["shown"]), len(ids["accepted"])
    latencies = sorted(latency.values())
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return {
        "shown": shown,
        "accepted": accepted,
        "acceptance_rate": accepted / shown if shown else None,
        "partial": partial,
        "accepted_chars": sum(furthest.values()),
        "dismissed": len(ids["dismissed"]),
        "latency_p50_ms": None if p50 is None else round(p50, 1),
        "latency_p95_ms": None if p95 is None else round(p95, 1),
    }


def summarize(events: list[EventLine]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (day, project), oldest first, and the total over all of them."""
    groups: dict[tuple[date, str], list[EventLine]] = defaultdict(list)
    for line in events:
        groups[(line.time.date(), line.project)].append(line)
    rows = [
        {"day": day.isoformat(), "project": project, **figures(lines)}
        for (day, project), lines in sorted(groups.items())
    ]
    return rows, {"day": TOTAL, "project": "", **figures(events)}


# -- output ----------------------------------------------------------------------------

COLUMNS = (
    ("day (UTC)", "day", "<"),
    ("project", "project", "<"),
    ("shown", "shown", ">"),
    ("accepted", "accepted", ">"),
    ("rate", "acceptance_rate", ">"),
    ("partial", "partial", ">"),
    ("chars accepted", "accepted_chars", ">"),
    ("dismissed", "dismissed", ">"),
    ("p50 ms", "latency_p50_ms", ">"),
    ("p95 ms", "latency_p95_ms", ">"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "acceptance_rate":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]], total: dict[str, Any]) -> Iterator[str]:
    cells = [[_cell(key, row[key]) for _, key, _ in COLUMNS] for row in [*rows, total]]
    widths = [
        max(len(title), *(len(line[i]) for line in cells))
        for i, (title, _, _) in enumerate(COLUMNS)
    ]

    def render(values: list[str]) -> str:
        parts = [
            f"{value:{align}{width}}"
            for value, width, (_, _, align) in zip(values, widths, COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    yield render([title for title, _, _ in COLUMNS])
    for line in cells[:-1]:
        yield render(line)
    yield render(["-" * width for width in widths])
    yield render(cells[-1])


@dataclass
class Report:
    """What `rubytailor stats` and the server's ``rubytailor.stats`` command show."""

    read: Read
    since: date
    where: str
    selected: list[EventLine]
    rows: list[dict[str, Any]]
    total: dict[str, Any]
    message: str  # non-empty when there is nothing to tabulate

    def lines(self) -> list[str]:
        if self.message:
            return [f"rubytailor stats: {self.message}"]
        files = ", ".join(map(str, self.read.files))
        out = [f"rubytailor stats: {len(self.selected):,} events in {self.where}, from {files}"]
        out += table(self.rows, self.total)
        if self.read.corrupt:
            out.append(
                f"{self.read.corrupt:,} corrupt line{'s' if self.read.corrupt != 1 else ''} skipped"
            )
        return out


def report(path: Path, days: int, project: str | None) -> Report:
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    read = read_events(path)
    selected = [
        line
        for line in read.events
        if line.time.date() >= since and (project is None or matches_project(line.project, project))
    ]
    rows, total = summarize(selected)
    where = f"the last {days} day{'s' if days != 1 else ''} (since {since}, UTC)"
    if project is not None:
        where += f" for project {project}"
    corrupt = f"; {read.corrupt:,} corrupt line{'s' if read.corrupt != 1 else ''} skipped"
    if not read.files:
        message = (
            f"no suggestion events yet: {path} does not exist (the server writes it once "
            "an editor reports what became of its suggestions; see `events` in the README)"
        )
    elif not selected:
        message = f"no suggestion events in {where} in {', '.join(map(str, read.files))}"
        message += corrupt if read.corrupt else ""
    else:
        message = ""
    return Report(read, since, where, selected, rows, total, message)


def run(args: argparse.Namespace) -> int:
    path = args.file if args.file is not None else events_path()
    found = report(path, args.days, args.project)
    read, since, selected, rows, total, message = (
        found.read,
        found.since,
        found.selected,
        found.rows,
        found.total,
        found.message,
    )
    if args.json:
        payload = {
            "files": [str(f) for f in read.files],
            "days": args.days,
            "since": since.isoformat(),
            "project": args.project,
            "events": len(selected),
            "corrupt_lines": read.corrupt,
            "rows": rows,
            "total": total,
        }
        if message:
            payload["message"] = message
        print(json.dumps(payload, indent=2))
        return 0
    for line in found.lines():
        print(line)
    return 0
