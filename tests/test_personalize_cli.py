"""`rubytailor personalize` end to end on a tiny model and a small git project: split,
train, gate, decision recorded and the registry consistent; secrets never in the
training manifest; a trainer killed at random moments leaves a registry that serves."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lsp_support.adapters import commit_random_adapter

from rubytailor.personalization.registry import AdapterRegistry
from rubytailor.personalization.state import ProjectState

pytestmark = pytest.mark.slow

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _model(n: int) -> str:
    return (
        f"class Order{n} < ApplicationRecord\n"
        f"  belongs_to :customer\n"
        f"  validates :total_{n}, presence: true\n"
        f"  def price_with_tax_{n}\n    total_{n} * 1.2\n  end\nend\n"
    )


def _git(root: Path, *args: str, when: str) -> None:
    env = {**os.environ, **GIT_ENV, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    subprocess.run(["git", "-C", str(root), *args], check=True, env=env, capture_output=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "app" / "models").mkdir(parents=True)
    (root / "config").mkdir()
    for n in range(12):
        (root / "app" / "models" / f"order{n}.rb").write_text(_model(n), encoding="utf-8")
    # Planted secrets, written like code so a leak would be visible in the manifest.
    (root / ".env").write_text("SECRET_TOKEN = 'abc'\n" * 5, encoding="utf-8")
    (root / "config" / "master.key").write_text("0f1e2d3c4b5a69788796a5b4c3d2e1f0\n")
    _git(root, "init", "-q", when="2026-01-01T10:00:00")
    _git(root, "add", "-A", when="2026-01-01T10:00:00")
    _git(root, "commit", "-q", "-m", "first", when="2026-01-01T10:00:00")
    for n in range(12, 16):
        (root / "app" / "models" / f"order{n}.rb").write_text(_model(n), encoding="utf-8")
    _git(root, "add", "-A", when="2026-02-01T10:00:00")
    _git(root, "commit", "-q", "-m", "second", when="2026-02-01T10:00:00")
    return root


def _command(project: Path, model: Path, base: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rubytailor.cli",
        "personalize",
        str(project),
        "--model",
        str(model),
        "--backend",
        "transformers",
        "--budget-minutes",
        "0.05",
        "--base-corpus",
        str(base),
        "--cases",
        "20",
        "--base-cases",
        "20",
        "--nice",
        "0",
        *extra,
    ]


@pytest.fixture
def base_corpus(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir()
    # Several files: half (by name) are checked by the gate, half rehearsed in training.
    for f in range(8):
        (base / f"lib{f}.rb").write_text(
            "".join(f"def helper_{f}_{n}(x)\n  x * {n}\nend\n" for n in range(8)),
            encoding="utf-8",
        )
    return base


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's trainer and the test itself keep project state."""
    monkeypatch.setenv("RUBYTAILOR_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_a_run_records_its_decision_and_leaves_a_consistent_registry(
    tiny_model_dir: Path, project: Path, base_corpus: Path
) -> None:
    done = subprocess.run(
        _command(project, tiny_model_dir, base_corpus, "--json-progress"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]
    stages = {e["stage"] for e in events}
    assert {"split", "train", "export", "gate", "done"} <= stages
    assert any("tokens/s" in e["message"] for e in events if e["stage"] == "train")
    assert events[-1]["percent"] == 100

    state = ProjectState.for_project(project)
    record = [m for m in state.read_metrics() if m.get("event") == "personalize"][-1]
    current = AdapterRegistry(state).current()
    manifest = json.loads(state.corpus_manifest_path.read_text(encoding="utf-8"))
    assert record["split_method"] == "git" and record["gate"]["project_cases"] > 0
    assert "base_ruby" in record["gate"] and record["reasons"]
    if record["promoted"]:
        assert current is not None and current.name == record["version"]
    else:
        assert current is None
        assert not (state.adapters_dir / record["version"]).exists()
    names = " ".join([*manifest["train"], *manifest["eval"]])
    assert "order3.rb" in names and "order14.rb" in names
    assert ".env" not in names and "master.key" not in names
    # Nothing was written into the project.
    untracked = subprocess.run(
        ["git", "-C", str(project), "status", "--porcelain"], capture_output=True, text=True
    )
    assert untracked.stdout == ""

    status = subprocess.run(
        [*_command(project, tiny_model_dir, base_corpus)[:5], "--status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["last_runs"][-1]["version"] == record["version"]


def test_a_killed_trainer_leaves_the_registry_serving(
    tiny_model_dir: Path, project: Path, base_corpus: Path
) -> None:
    served = commit_random_adapter(tiny_model_dir, project)
    AdapterRegistry(ProjectState.for_project(project)).promote(served.name)
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(
            _command(project, tiny_model_dir, base_corpus),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(1.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        registry = AdapterRegistry(ProjectState.for_project(project))
        current = registry.current()
        # The adapter served before, or a newer one that passed the gate: never none.
        assert current is not None and registry.verify(current)
    # The lock died with the trainer: the next run goes through.
    done = subprocess.run(
        _command(project, tiny_model_dir, base_corpus),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
