"""The promotion gate: accepts a better adapter, rejects a worse one or one that unlearns
Ruby, through the served pipeline (scripted backends answer the cases in order)."""

from __future__ import annotations

from rubytailor.model.backends.fake import FakeBackend
from rubytailor.personalization.gate import (
    GateConfig,
    decide,
    paired_interval,
    run_gate,
)
from rubytailor.training.eval_cases import Case, line_cases

PROJECT = "\n".join(
    f"  def handler_{n}(record)\n    record.update!(status: :state_{n}, count: {n})\n  end"
    for n in range(40)
)
BASE_RUBY = "\n".join(f"def helper_{n}(x)\n  x.map {{ |v| v * {n} }}.sum\nend" for n in range(40))
CONFIG = GateConfig(base_cases=30, bootstrap_samples=500)


def _cases() -> tuple[list[Case], list[Case]]:
    project = line_cases([("/p/app/models/record.rb", f"class Record\n{PROJECT}\nend\n")], 30, 0)
    base = line_cases([("stdlib:helper.rb", BASE_RUBY)], CONFIG.base_cases, CONFIG.seed)
    return project, base


def _backend(project: list[str], base: list[str]) -> FakeBackend:
    return FakeBackend(project + base, piece_chars=200)


def _gate(base: FakeBackend, candidate: FakeBackend, cases: list[Case]) -> dict:
    return run_gate(base, candidate, None, cases, None, [("stdlib:helper.rb", BASE_RUBY)], CONFIG)


def test_a_better_adapter_is_promoted() -> None:
    project, ruby = _cases()
    right = [c.answer for c in project]
    half = [c.answer if i % 2 else "nil" for i, c in enumerate(project)]
    ruby_right = [c.answer for c in ruby]
    report = _gate(_backend(half, ruby_right), _backend(right, ruby_right), project)
    assert report["promote"], report["reasons"]
    delta = report["project"]["exact_match_delta_points"]
    assert delta["mean"] == 50.0 and delta["low"] > 0
    assert report["base_ruby"]["exact_match_delta_points"]["mean"] == 0.0


def test_a_worse_or_equal_adapter_is_rejected() -> None:
    project, ruby = _cases()
    right = [c.answer for c in project]
    ruby_right = [c.answer for c in ruby]
    worse = _gate(
        _backend(right, ruby_right), _backend(["nil"] * len(project), ruby_right), project
    )
    assert not worse["promote"]
    assert "not beyond noise" in worse["reasons"][0]
    same = _gate(_backend(right, ruby_right), _backend(right, ruby_right), project)
    assert not same["promote"]


def test_an_adapter_that_unlearns_base_ruby_is_rejected() -> None:
    project, ruby = _cases()
    right = [c.answer for c in project]
    wrong = ["nil"] * len(project)
    ruby_right = [c.answer for c in ruby]
    # One base-Ruby case in 30 lost is 3.3 points: over the 0.5-point bound.
    ruby_one_lost = ["nil", *ruby_right[1:]]
    report = _gate(_backend(wrong, ruby_right), _backend(right, ruby_one_lost), project)
    assert report["project"]["exact_match_delta_points"]["low"] > 0
    assert not report["promote"]
    assert any("base-Ruby exact match drops" in r for r in report["reasons"])


def test_without_base_ruby_code_nothing_is_promoted() -> None:
    project, _ = _cases()
    right = [c.answer for c in project]
    report = run_gate(
        _backend(["nil"] * len(project), []),
        _backend(right, []),
        None,
        project,
        None,
        [],
        CONFIG,
    )
    assert not report["promote"]
    assert any("no base-Ruby test code" in r for r in report["reasons"])


def test_a_prism_valid_rate_drop_rejects() -> None:
    project = {
        "exact_match_delta_points": {"mean": 5.0, "low": 1.0, "high": 9.0},
        "edit_similarity_delta_points": {"mean": 3.0, "low": 1.0, "high": 5.0},
        "base": {"prism_valid_rate": 0.99},
        "candidate": {"prism_valid_rate": 0.98},
    }
    base_ruby = {
        "exact_match_delta_points": {"mean": 0.0},
        "edit_similarity_delta_points": {"mean": -0.4},
    }
    ok, reasons = decide(project, base_ruby, CONFIG)
    assert not ok and any("Prism-valid rate drops 1.0" in r for r in reasons)
    project["candidate"]["prism_valid_rate"] = 0.986
    ok, reasons = decide(project, base_ruby, CONFIG)
    assert ok, reasons


def test_the_paired_interval_covers_noise() -> None:
    # One win and one loss in 100 cases: no difference beyond noise.
    base = [1.0] * 50 + [0.0] * 50
    cand = list(base)
    cand[0], cand[99] = 0.0, 1.0
    mean, low, high = paired_interval(base, cand, 0.95, 1000, 0)
    assert mean == 0.0 and low < 0 < high
    # Ten wins, no losses: beyond noise.
    better = [1.0] * 60 + [0.0] * 40
    mean, low, _ = paired_interval(base, better, 0.95, 1000, 0)
    assert abs(mean - 0.1) < 1e-9 and low > 0
