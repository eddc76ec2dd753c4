"""The training scheduler's decisions (changed bytes, interval, idle, pause, manual runs),
on a fake clock."""

from __future__ import annotations

import threading

import pytest

from rubytailor.personalization.scheduler import (
    ScheduleSettings,
    TrainingScheduler,
    format_duration,
)

HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def scheduler(
    clock: Clock,
    last_run_at: float | None = None,
    *,
    min_changed_bytes: int = 20_000,
    min_interval_s: float = 6 * HOUR,
    idle_s: float = 120.0,
) -> TrainingScheduler:
    settings = ScheduleSettings(
        min_changed_bytes=min_changed_bytes, min_interval_s=min_interval_s, idle_s=idle_s
    )
    return TrainingScheduler(settings, clock=clock, last_run_at=last_run_at)


def test_defaults() -> None:
    s = ScheduleSettings()
    assert (s.min_changed_bytes, s.min_interval_s, s.idle_s) == (20_000, 6 * HOUR, 120.0)
    with pytest.raises(TypeError):
        ScheduleSettings(1)  # type: ignore[call-arg]


def test_due_once_enough_code_changed_and_the_editor_is_idle(clock: Clock) -> None:
    s = scheduler(clock)
    clock.advance(200)
    s.note_change(12_000)
    assert not s.due()
    assert s.why_not() == "waiting for 8.0 KB more changed code (12.0 of 20.0 KB)"
    s.note_change(8_000)
    assert s.due()
    assert s.why_not() == ""


def test_bytes_text_matches_the_example(clock: Clock) -> None:
    s = scheduler(clock)
    s.note_change(7_700)
    assert s.why_not() == "waiting for 12.3 KB more changed code (7.7 of 20.0 KB)"


def test_negative_or_zero_changes_are_ignored(clock: Clock) -> None:
    s = scheduler(clock, min_changed_bytes=10)
    s.note_change(0)
    s.note_change(-50)
    assert s.status()["changed_bytes"] == 0


def test_waits_for_the_editor_to_be_idle(clock: Clock) -> None:
    s = scheduler(clock)
    s.note_change(25_000)
    # A server that just started counts as busy: the user is about to type.
    assert s.why_not() == "waiting for the editor to be idle (2 min)"
    clock.advance(100)
    s.note_activity()
    clock.advance(75)
    assert s.why_not() == "waiting for the editor to be idle (45 s)"
    clock.advance(44.5)
    assert not s.due()
    clock.advance(0.5)
    assert s.due()


def test_interval_between_runs_start_to_start(clock: Clock) -> None:
    s = scheduler(clock, idle_s=0)
    s.note_change(30_000)
    s.started()
    clock.advance(HOUR)
    s.finished(ok=True)
    s.note_change(30_000)
    assert s.why_not() == "next run allowed in 5.0 h"
    clock.advance(4.8 * HOUR)
    assert s.why_not() == "next run allowed in 12 min"
    clock.advance(0.2 * HOUR - 30)
    assert s.why_not() == "next run allowed in 30 s"
    clock.advance(30)
    assert s.due()


def test_last_run_at_from_the_caller(clock: Clock) -> None:
    s = scheduler(clock, last_run_at=clock.now - 2.8 * HOUR, idle_s=0)
    s.note_change(50_000)
    assert s.why_not() == "next run allowed in 3.2 h"
    assert s.last_run_at == clock.now - 2.8 * HOUR


def test_started_resets_bytes_and_blocks_while_running(clock: Clock) -> None:
    s = scheduler(clock, idle_s=0, min_interval_s=0)
    s.note_change(20_000)
    assert s.due()
    s.started()
    assert s.running
    assert s.why_not() == "training now"
    s.note_change(5_000)  # changes during the run count for the next one
    s.request()
    assert not s.due()
    s.finished(ok=True)
    assert not s.running
    assert s.status()["changed_bytes"] == 5_000
    assert s.due()  # the request made during the run still stands


def test_a_failed_run_respects_the_interval_and_keeps_its_code(clock: Clock) -> None:
    s = scheduler(clock, idle_s=0)
    s.note_change(20_000)
    s.started()
    s.note_change(1_000)
    clock.advance(60)
    s.finished(ok=False)
    assert s.status()["changed_bytes"] == 21_000
    assert s.why_not().startswith("next run allowed in")
    clock.advance(6 * HOUR)
    assert s.due()


def test_a_successful_run_consumes_its_code(clock: Clock) -> None:
    s = scheduler(clock, idle_s=0, min_interval_s=0)
    s.note_change(20_000)
    s.started()
    s.finished(ok=True)
    assert s.status()["changed_bytes"] == 0
    assert s.why_not().startswith("waiting for 20.0 KB more")


def test_pause_and_resume(clock: Clock) -> None:
    s = scheduler(clock, idle_s=0)
    s.note_change(30_000)
    s.pause()
    assert s.paused
    assert s.why_not() == "paused"
    s.request()
    assert not s.due()  # not even a manual run
    s.resume()
    assert not s.paused
    assert s.due()


def test_manual_request_ignores_bytes_interval_and_idle(clock: Clock) -> None:
    s = scheduler(clock, last_run_at=clock.now)
    s.note_activity()
    assert not s.due()
    s.request()
    assert s.due()
    assert s.why_not() == ""
    s.started()  # clears the request
    s.finished(ok=True)
    assert not s.due()


def test_configure_takes_new_thresholds(clock: Clock) -> None:
    s = scheduler(clock, idle_s=0)
    s.note_change(5_000)
    assert not s.due()
    s.configure(ScheduleSettings(min_changed_bytes=4_000, idle_s=0))
    assert s.settings.min_changed_bytes == 4_000
    assert s.due()
    s.settings = ScheduleSettings(min_changed_bytes=6_000, idle_s=0)
    assert not s.due()


def test_status_report(clock: Clock) -> None:
    s = scheduler(clock)
    s.note_change(1_234)
    status = s.status()
    assert status["paused"] is False
    assert status["running"] is False
    assert status["changed_bytes"] == 1_234
    assert status["due"] is False
    assert status["why_not"] == s.why_not() and status["why_not"].startswith("waiting for")


def test_reason_order_paused_then_running_then_bytes_then_interval_then_idle(
    clock: Clock,
) -> None:
    s = scheduler(clock, last_run_at=clock.now)
    s.note_activity()
    assert s.why_not().startswith("waiting for 20.0 KB")
    s.note_change(20_000)
    assert s.why_not().startswith("next run allowed")
    clock.advance(6 * HOUR)
    s.note_activity()
    assert s.why_not().startswith("waiting for the editor")
    s.started()
    assert s.why_not() == "training now"
    s.pause()
    assert s.why_not() == "paused"


def test_changes_from_another_thread(clock: Clock) -> None:
    s = scheduler(clock)

    def note() -> None:
        for _ in range(1000):
            s.note_change(1)

    threads = [threading.Thread(target=note) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.status()["changed_bytes"] == 4000


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (44.2, "45 s"), (60, "1 min"), (61, "2 min"), (3600, "1.0 h"), (11520, "3.2 h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
