"""`rubytailor stats` on hand-made events files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rubytailor.cli import main

SHOP = "shop-1f2e3d4c5b6a"
BLOG = "blog-0a1b2c3d4e5f"
NOW = datetime.now(UTC)
TODAY = NOW.date()


def event(
    event: str,
    suggestion_id: str,
    *,
    days_ago: int = 0,
    project: str = SHOP,
    latency_ms: float | None = 40.0,
    chars: int | None = 20,
    accepted_chars: int | None = 0,
) -> dict[str, Any]:
    when = NOW - timedelta(days=days_ago)
    return {
        "time": when.isoformat(timespec="milliseconds"),
        "event": event,
        "suggestion_id": suggestion_id,
        "project": project,
        "model_id": "rubytailor-default@0d14ec8b8e",
        "source": "model",
        "latency_ms": latency_ms,
        "chars": chars,
        "accepted_chars": accepted_chars,
    }


def write(path: Path, records: list[dict[str, Any] | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def stats(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["stats", *args]) == 0
    return capsys.readouterr().out


def stats_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(stats(capsys, *args, "--json"))
    return data


# Today in the shop: 10 suggestions shown (latencies 10, 20, ... 100 ms), 4 accepted, one
# of them after two partial accepts, 3 dismissed. Yesterday: the blog, and the shop again.
RECORDS: list[dict[str, Any] | str] = [
    *(event("shown", f"s{n}", latency_ms=10.0 * n) for n in range(1, 11)),
    event("shown", "s1", latency_ms=999.0),  # a client reporting twice counts once
    event("partial", "s1", accepted_chars=4),
    event("partial", "s1", accepted_chars=9),
    event("accepted", "s1", accepted_chars=20),
    event("accepted", "s2", accepted_chars=12, chars=12),
    event("accepted", "s3", accepted_chars=30, chars=30),
    event("accepted", "s3", accepted_chars=30, chars=30),  # and accepting twice too
    event("accepted", "s4", accepted_chars=5, chars=5),
    event("partial", "s5", accepted_chars=7),
    *(event("dismissed", f"s{n}") for n in (5, 6, 7)),
    event("shown", "b1", days_ago=1, project=BLOG, latency_ms=50.0),
    event("shown", "b2", days_ago=1, project=BLOG, latency_ms=70.0),
    event("accepted", "b2", days_ago=1, project=BLOG, accepted_chars=8, chars=8),
    event("shown", "s20", days_ago=1, latency_ms=30.0),
    # Out of the default 30 days.
    event("shown", "old", days_ago=40),
    event("accepted", "old", days_ago=40, accepted_chars=20),
    # Corrupt: not JSON, cut in half, no event, an unknown event, a bad time.
    "not json at all",
    json.dumps(event("shown", "x"))[:40],
    json.dumps({"time": NOW.isoformat(), "suggestion_id": "x"}),
    json.dumps(event("clicked", "x")),
    json.dumps({**event("shown", "x"), "time": "yesterday"}),
]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    return write(tmp_path / "events.jsonl", RECORDS)


def test_figures_per_day_and_project(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = stats_json(capsys, "--file", str(events_file))
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    rows = {(row["day"], row["project"]): row for row in data["rows"]}
    assert list(rows) == [(yesterday, BLOG), (yesterday, SHOP), (TODAY.isoformat(), SHOP)]
    shop = rows[(TODAY.isoformat(), SHOP)]
    assert shop == {
        "day": TODAY.isoformat(),
        "project": SHOP,
        "shown": 10,
        "accepted": 4,
        "acceptance_rate": 0.4,
        "partial": 3,
        # Each suggestion's furthest accept: 20 + 12 + 30 + 5, and s5's partial 7.
        "accepted_chars": 74,
        "dismissed": 3,
        # 10..100 ms, interpolated: p50 between 50 and 60, p95 between 90 and 100.
        "latency_p50_ms": 55.0,
        "latency_p95_ms": 95.5,
    }
    blog = rows[(yesterday, BLOG)]
    assert (blog["shown"], blog["accepted"], blog["acceptance_rate"]) == (2, 1, 0.5)
    assert (blog["latency_p50_ms"], blog["latency_p95_ms"]) == (60.0, 69.0)
    assert rows[(yesterday, SHOP)]["accepted"] == 0
    total = data["total"]
    assert (total["shown"], total["accepted"], total["dismissed"]) == (13, 5, 3)
    assert total["accepted_chars"] == 74 + 8
    assert data["corrupt_lines"] == 5
    assert data["events"] == len(RECORDS) - 5 - 2  # corrupt and too old left out


def test_the_table(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = stats(capsys, "--file", str(events_file)).splitlines()
    assert out[0].startswith("rubytailor stats: 26 events in the last 30 days")
    header = out[1].split()
    assert header[:4] == ["day", "(UTC)", "project", "shown"]
    today = next(line for line in out if line.startswith(TODAY.isoformat()))
    assert today.split() == [
        TODAY.isoformat(),
        SHOP,
        "10",
        "4",
        "40.0%",
        "3",
        "74",
        "3",
        "55.0",
        "95.5",
    ]
    total = next(line for line in out if line.startswith("total"))
    assert total.split()[:4] == ["total", "13", "5", "38.5%"]
    assert out[-1] == "5 corrupt lines skipped"


def test_days_and_project_filters(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    today_only = stats_json(capsys, "--file", str(events_file), "--days", "1")
    assert [row["project"] for row in today_only["rows"]] == [SHOP]
    longer = stats_json(capsys, "--file", str(events_file), "--days", "60")
    assert longer["total"]["shown"] == 14 and longer["total"]["accepted"] == 6
    # A project by its name or by its full key.
    for name in ("blog", BLOG):
        blog = stats_json(capsys, "--file", str(events_file), "--project", name)
        assert {row["project"] for row in blog["rows"]} == {BLOG}
        assert blog["total"]["shown"] == 2
    out = stats(capsys, "--file", str(events_file), "--project", "nothing")
    assert out.count("\n") == 1 and "no suggestion events" in out and "nothing" in out


def test_the_rotated_file_is_read_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    write(path.with_name("events.jsonl.1"), [event("shown", "s1"), event("accepted", "s1")])
    write(path, [event("shown", "s2")])
    data = stats_json(capsys, "--file", str(path))
    assert (data["total"]["shown"], data["total"]["accepted"]) == (2, 1)
    assert len(data["files"]) == 2


def test_the_default_file_is_in_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUBYTAILOR_DATA_DIR", str(tmp_path))
    write(tmp_path / "events" / "events.jsonl", [event("shown", "s1")])
    assert stats_json(capsys)["total"]["shown"] == 1


def test_a_missing_or_empty_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = stats(capsys, "--file", str(tmp_path / "none.jsonl"))
    assert missing.count("\n") == 1 and "no suggestion events yet" in missing
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = stats(capsys, "--file", str(empty))
    assert out.count("\n") == 1 and "no suggestion events" in out
    data = stats_json(capsys, "--file", str(tmp_path / "none.jsonl"))
    assert data["rows"] == [] and data["total"]["shown"] == 0 and "message" in data
