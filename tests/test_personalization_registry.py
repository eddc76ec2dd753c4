"""Project state and the adapter registry: layout, permissions, fallbacks, pruning, locks,
and a trainer SIGKILLed at random moments never leaving a half-written adapter served."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rubytailor.errors import RubytailorError
from rubytailor.personalization.registry import (
    AdapterRegistry,
    AdapterVersion,
    RegistryError,
)
from rubytailor.personalization.state import (
    BusyError,
    ProjectState,
    file_sha256,
    train_lock,
    write_json_atomic,
)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("RUBYTAILOR_DATA_DIR", str(path))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "app").mkdir(parents=True)
    (root / "app" / "order.rb").write_text("class Order\nend\n")
    return root


@pytest.fixture
def state(data: Path, project: Path) -> ProjectState:
    return ProjectState.for_project(project)


@pytest.fixture
def registry(state: ProjectState) -> AdapterRegistry:
    return AdapterRegistry(state)


def make_version(registry: AdapterRegistry, tag: str = "x", size: int = 2000) -> AdapterVersion:
    with registry.staging() as staging:
        (staging / "adapter").mkdir()
        (staging / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(size))
        (staging / "adapter" / "adapter_config.json").write_text(json.dumps({"tag": tag}))
        (staging / "merged").mkdir()
        (staging / "merged" / "model.bin").write_bytes(os.urandom(500))
        return registry.commit(staging, {"tag": tag})


def promoted(registry: AdapterRegistry, tag: str = "x") -> AdapterVersion:
    return registry.promote(make_version(registry, tag).name)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in [root, *root.rglob("*")]
    }


def damage(path: Path) -> None:
    """Flip a byte, keeping the size, and move the mtime on so no stat-keyed cache hides it."""
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


# -- project state ----------------------------------------------------------------------


def test_state_dir_is_under_the_data_dir_named_by_folder_and_path_hash(
    data: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project.parent)
    state = ProjectState.for_project(Path("shop"))  # relative: resolved first
    digest = hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:12]
    assert state.root == project.resolve()
    assert state.dir == data / "projects" / f"shop-{digest}"
    assert state.adapters_dir == state.dir / "adapters"
    assert state.work_dir == state.dir / "work"
    assert state.logs_dir == state.dir / "logs"
    assert state.metrics_path == state.dir / "metrics.jsonl"
    assert state.corpus_manifest_path == state.dir / "corpus-manifest.json"
    assert state.lock_path == state.dir / "train.lock"
    info = json.loads((state.dir / "project.json").read_text())
    assert info["root"] == str(project.resolve())
    # Idempotent: a second call keeps the record of when the project was first seen.
    assert ProjectState.for_project(project) == state
    assert json.loads((state.dir / "project.json").read_text()) == info


def test_two_checkouts_with_the_same_name_get_different_dirs(data: Path, tmp_path: Path) -> None:
    (tmp_path / "a" / "app").mkdir(parents=True)
    (tmp_path / "b" / "app").mkdir(parents=True)
    one = ProjectState.for_project(tmp_path / "a" / "app")
    two = ProjectState.for_project(tmp_path / "b" / "app")
    assert one.dir != two.dir
    assert one.dir.name.startswith("app-") and two.dir.name.startswith("app-")


def test_slug_is_sanitized_and_capped(data: Path, tmp_path: Path) -> None:
    root = tmp_path / ("my shop (é)!" + "x" * 60)
    root.mkdir()
    state = ProjectState.for_project(root)
    slug, _, digest = state.dir.name.rpartition("-")
    assert len(slug) <= 40 and len(digest) == 12
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in slug)
    assert slug.startswith("my_shop_")


def test_state_dirs_are_private_whatever_the_umask(data: Path, project: Path) -> None:
    old = os.umask(0o022)
    try:
        state = ProjectState.for_project(project)
        registry = AdapterRegistry(state)
        version = promoted(registry)
        state.append_metrics({"event": "x"})
    finally:
        os.umask(old)
    for path in (data, data / "projects", state.dir, state.adapters_dir, state.work_dir):
        assert mode(path) == 0o700, path
    assert mode(state.logs_dir) == 0o700
    assert mode(version.path) == 0o700
    for path in (state.dir / "project.json", registry.pointer_path, state.metrics_path):
        assert mode(path) & 0o077 == 0, path


def test_nothing_is_written_into_the_project(data: Path, project: Path) -> None:
    before = tree(project)
    state = ProjectState.for_project(project)
    registry = AdapterRegistry(state, keep=1)
    with train_lock(state):
        for _ in range(3):
            promoted(registry)
    registry.rollback()
    registry.prune()
    state.append_metrics({"event": "personalize"})
    write_json_atomic(state.corpus_manifest_path, {"files": {}})
    assert tree(project) == before


def test_metrics_append_and_skip_a_line_a_killed_writer_cut_short(state: ProjectState) -> None:
    state.append_metrics({"event": "a", "time": "then"})
    state.append_metrics({"event": "b"})
    with state.metrics_path.open("ab") as f:
        f.write(b'{"event": "cut sh')  # the writer died mid-line
    state.append_metrics({"event": "c"})
    records = state.read_metrics()
    assert [r["event"] for r in records] == ["a", "b", "c"]
    assert records[0]["time"] == "then"
    assert records[1]["time"] and records[2]["time"]


def test_read_metrics_without_a_file(state: ProjectState) -> None:
    assert state.read_metrics() == []


def test_write_json_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert os.listdir(tmp_path) == ["x.json"]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"c": object()})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert os.listdir(tmp_path) == ["x.json"]


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    payload = os.urandom(3_000_000)
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()


# -- commit, promote, current -----------------------------------------------------------


def test_commit_records_every_file_and_does_not_promote(registry: AdapterRegistry) -> None:
    assert registry.current() is None
    version = make_version(registry, "first")
    assert version.name == "v0001"
    assert version.path == registry.state.adapters_dir / "v0001"
    assert version.adapter_dir == version.path / "adapter"
    assert version.merged_dir == version.path / "merged"
    assert version.created
    assert version.info["tag"] == "first"
    files = version.info["files"]
    assert set(files) == {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "merged/model.bin",
    }
    for rel, digest in files.items():
        assert file_sha256(version.path / rel) == digest
    assert json.loads((version.path / "info.json").read_text()) == version.info
    assert registry.verify(version)
    assert registry.current() is None  # committed, not promoted
    assert [v.name for v in registry.versions()] == ["v0001"]
    assert not [p for p in registry.state.adapters_dir.iterdir() if p.name.startswith(".stag")]


def test_promote_moves_current(registry: AdapterRegistry) -> None:
    one = promoted(registry, "one")
    assert registry.current() == one
    two = make_version(registry, "two")
    assert registry.current() == one
    assert registry.promote(two.name) == two
    current = registry.current()
    assert current is not None and current.name == "v0002" and current.info["tag"] == "two"
    assert [e["name"] for e in registry.history()] == ["v0001", "v0002"]
    # A fresh registry (another process) sees the same.
    assert AdapterRegistry(registry.state).current() == current


def test_promote_refuses_unknown_and_damaged_versions(registry: AdapterRegistry) -> None:
    good = promoted(registry)
    with pytest.raises(RegistryError):
        registry.promote("v0042")
    with pytest.raises(RegistryError):
        registry.promote("../elsewhere")
    bad = make_version(registry)
    damage(bad.path / "merged" / "model.bin")
    with pytest.raises(RegistryError, match="damaged"):
        registry.promote(bad.name)
    assert registry.current() == good
    assert issubclass(RegistryError, RubytailorError)


def test_commit_refuses_what_is_not_a_staging_dir(
    registry: AdapterRegistry, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(RegistryError):
        registry.commit(elsewhere, {})
    with registry.staging() as staging:
        (staging / "link").symlink_to(tmp_path / "shop" / "app" / "order.rb")
        with pytest.raises(RegistryError, match="regular"):
            registry.commit(staging, {})
    assert registry.versions() == []


def test_staging_is_private_and_removed_when_the_block_raises(registry: AdapterRegistry) -> None:
    with pytest.raises(RuntimeError), registry.staging() as staging:
        assert staging.parent == registry.state.adapters_dir
        assert staging.name.startswith(".staging-")
        assert list(staging.iterdir()) == []
        assert mode(staging) == 0o700
        (staging / "adapter").mkdir()
        (staging / "adapter" / "w.bin").write_bytes(b"x")
        raise RuntimeError("export failed")
    assert not staging.exists()


def test_commit_after_the_staging_block(registry: AdapterRegistry) -> None:
    with registry.staging() as staging:
        (staging / "w.bin").write_bytes(b"w")
    registry.prune()  # must not take a staging dir this process still means to commit
    version = registry.commit(staging, {})
    assert registry.verify(version)


# -- falling back -------------------------------------------------------------------------


@pytest.mark.parametrize("pointer", ["garbage{", "", '{"name": 3}', '{"name": "v0099"}', None])
def test_a_bad_pointer_falls_back_to_the_newest_promoted_version(
    registry: AdapterRegistry, pointer: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    promoted(registry)
    two = promoted(registry)
    make_version(registry)  # newer, but never promoted: not a fallback
    if pointer is None:
        registry.pointer_path.unlink()
    else:
        registry.pointer_path.write_text(pointer)
    with caplog.at_level(logging.WARNING, logger="rubytailor.personalization.registry"):
        assert registry.current() == two
    assert caplog.records


def test_a_pointer_that_is_a_directory_does_not_raise(registry: AdapterRegistry) -> None:
    promoted(registry)
    registry.pointer_path.unlink()
    registry.pointer_path.mkdir()
    registry.history_path.write_text("[[[")
    assert registry.current() is None


def test_corrupt_info_json_falls_back(registry: AdapterRegistry) -> None:
    one = promoted(registry)
    two = promoted(registry)
    (two.path / "info.json").write_text('{"name": "v0002", "files": ')
    assert registry.current() == one
    assert [v.name for v in registry.versions()] == ["v0001"]
    assert not registry.verify(two)


def test_a_modified_file_falls_back(registry: AdapterRegistry) -> None:
    one = promoted(registry)
    two = promoted(registry)
    assert registry.current() == two  # also fills the hash cache
    damage(two.path / "adapter" / "adapter_model.safetensors")
    assert not registry.verify(two)
    assert registry.current() == one


def test_a_grown_file_falls_back(registry: AdapterRegistry) -> None:
    one = promoted(registry)
    two = promoted(registry)
    with (two.path / "merged" / "model.bin").open("ab") as f:
        f.write(b"!")
    assert registry.current() == one


def test_a_deleted_file_falls_back(registry: AdapterRegistry) -> None:
    one = promoted(registry)
    two = promoted(registry)
    (two.path / "adapter" / "adapter_config.json").unlink()
    assert registry.current() == one


def test_a_deleted_version_falls_back_and_all_damaged_means_base(
    registry: AdapterRegistry,
) -> None:
    one = promoted(registry)
    two = promoted(registry)
    shutil.rmtree(two.path)
    assert registry.current() == one
    (one.path / "merged" / "model.bin").unlink()
    assert registry.current() is None


def test_info_json_must_name_its_own_directory(registry: AdapterRegistry) -> None:
    one = promoted(registry)
    two = promoted(registry)
    info = json.loads((two.path / "info.json").read_text())
    info["files"]["../../../etc/passwd"] = "0" * 64
    (two.path / "info.json").write_text(json.dumps(info))
    assert registry.current() == one
    shutil.copytree(one.path, registry.state.adapters_dir / "v0003")
    assert not registry.verify(AdapterVersion("v0003", registry.state.adapters_dir / "v0003", {}))


# -- rollback ---------------------------------------------------------------------------


def test_rollback_to_the_previous_then_to_base(registry: AdapterRegistry) -> None:
    one, two, three = promoted(registry), promoted(registry), promoted(registry)
    assert registry.current() == three
    assert registry.rollback() == two
    assert registry.current() == two
    assert registry.rollback() == one
    assert registry.rollback() is None
    assert registry.current() is None
    assert json.loads(registry.pointer_path.read_text())["name"] == "base"
    assert registry.rollback() is None  # already on the base model
    history = registry.history()
    assert [(e["name"], e.get("rolled_back_from")) for e in history] == [
        ("v0001", None),
        ("v0002", None),
        ("v0003", None),
        ("v0002", "v0003"),
        ("v0001", "v0002"),
        ("base", "v0001"),
    ]
    # Serving resumes with the next promotion; rolling that back returns to base.
    four = promoted(registry)
    assert registry.current() == four
    assert registry.rollback() is None
    assert registry.current() is None


def test_rollback_skips_a_damaged_previous_version(registry: AdapterRegistry) -> None:
    one, two, _three = promoted(registry), promoted(registry), promoted(registry)
    damage(two.path / "merged" / "model.bin")
    assert registry.rollback() == one


def test_rollback_with_nothing_promoted_serves_base(registry: AdapterRegistry) -> None:
    make_version(registry)
    assert registry.rollback() is None
    assert registry.current() is None
    # A base pointer never blocks the next promotion.
    version = promoted(registry)
    assert registry.current() == version


def test_fallback_never_returns_a_version_the_user_rolled_back_from(
    registry: AdapterRegistry,
) -> None:
    one, two, _three = promoted(registry), promoted(registry), promoted(registry)
    assert registry.rollback() == two
    damage(two.path / "adapter" / "adapter_model.safetensors")
    assert registry.current() == one  # not v0003, which the user rejected


def test_a_re_promoted_version_counts_again(registry: AdapterRegistry) -> None:
    one, two = promoted(registry), promoted(registry)
    assert registry.rollback() == one
    registry.promote(two.name)
    registry.pointer_path.write_text("garbage")
    assert registry.current() == two


# -- pruning ----------------------------------------------------------------------------


def test_keep_k_versions(state: ProjectState) -> None:
    registry = AdapterRegistry(state, keep=2)
    for _ in range(4):
        promoted(registry)
    assert [v.name for v in registry.versions()] == ["v0003", "v0004"]
    assert len(registry.history()) == 4
    # Names are never reused, even when every directory is gone.
    for version in registry.versions():
        shutil.rmtree(version.path)
    assert make_version(registry).name == "v0005"


def test_prune_never_deletes_the_current_version(state: ProjectState) -> None:
    registry = AdapterRegistry(state, keep=1)
    one = promoted(registry)
    make_version(registry)
    three = make_version(registry)  # gate still deciding
    assert registry.prune() == ["v0002"]
    assert [v.name for v in registry.versions()] == [one.name, three.name]
    assert registry.current() == one


def test_prune_keeps_the_last_k_promoted(state: ProjectState) -> None:
    registry = AdapterRegistry(state, keep=2)
    promoted(registry)
    promoted(registry)
    make_version(registry)
    make_version(registry)
    assert registry.prune() == []
    assert len(registry.versions()) == 4
    registry.promote("v0003")
    registry.promote("v0004")
    assert [v.name for v in registry.versions()] == ["v0003", "v0004"]


def test_rollback_past_pruned_versions_goes_to_base(state: ProjectState) -> None:
    registry = AdapterRegistry(state, keep=1)
    one = promoted(registry)
    promoted(registry)
    # keep=1 deleted v0001 at the second promotion; roll back is then to base.
    assert registry.rollback() is None
    assert not one.path.exists()


def test_discard_deletes_a_rejected_version_but_never_the_current(
    registry: AdapterRegistry,
) -> None:
    one = promoted(registry)
    two = make_version(registry)
    assert registry.discard(two.name)
    assert not two.path.exists()
    with pytest.raises(RegistryError):
        registry.discard(one.name)
    assert registry.current() == one


def test_prune_removes_abandoned_staging_when_nobody_trains(registry: AdapterRegistry) -> None:
    dead = registry.state.adapters_dir / ".staging-0123abcd"
    (dead / "adapter").mkdir(parents=True)
    (dead / "adapter" / "w.bin").write_bytes(b"half")
    trash = registry.state.adapters_dir / ".trash-v0007-00ff"
    trash.mkdir()
    tmp = registry.state.adapters_dir / f".current.tmp-{'a' * 32}"
    tmp.write_text("{")
    # A version half-deleted by a killed prune still counts for numbering.
    assert make_version(registry).name == "v0008"
    with registry.staging() as mine:
        removed = registry.prune()
        assert mine.exists()  # this process is still filling it
    assert removed == [dead.name]
    assert not dead.exists() and not trash.exists() and not tmp.exists()


def test_prune_inside_train_lock_removes_a_dead_runs_staging(registry: AdapterRegistry) -> None:
    dead = registry.state.adapters_dir / ".staging-dead"
    dead.mkdir()
    with train_lock(registry.state), registry.staging() as mine:
        assert registry.prune() == [dead.name]
        assert mine.exists()


# -- the training lock ------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from rubytailor.personalization.state import ProjectState, train_lock
state = ProjectState.for_project(Path(sys.argv[1]))
with train_lock(state):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def lock_holder(state: ProjectState) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_train_lock_is_busy_while_another_process_holds_it(
    state: ProjectState, lock_holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(BusyError, match=f"pid {lock_holder.pid}"), train_lock(state):
        pass
    assert issubclass(BusyError, RubytailorError)
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()
    # The kernel released the dead holder's lock; and it is exclusive within a process too.
    with train_lock(state), pytest.raises(BusyError), train_lock(state):
        pass
    with train_lock(state):
        pass


def test_prune_keeps_fresh_staging_while_another_process_trains(
    registry: AdapterRegistry, lock_holder: subprocess.Popen[str]
) -> None:
    staging = registry.state.adapters_dir / ".staging-feed"
    (staging / "adapter").mkdir(parents=True)
    (staging / "adapter" / "w.bin").write_bytes(b"being written")
    assert registry.prune() == []
    assert staging.exists()
    old = time.time() - 2 * 3600
    for path in (staging, staging / "adapter", staging / "adapter" / "w.bin"):
        os.utime(path, (old, old))
    assert registry.prune() == [staging.name]


# -- a trainer killed at any moment ------------------------------------------------------

TRAINER = """
import os, sys
from pathlib import Path
from rubytailor.personalization.registry import AdapterRegistry
from rubytailor.personalization.state import ProjectState, train_lock

state = ProjectState.for_project(Path(sys.argv[1]))
registry = AdapterRegistry(state)
with train_lock(state):
    print("ready", flush=True)
    while True:
        with registry.staging() as staging:
            (staging / "adapter").mkdir()
            (staging / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(300_000))
            (staging / "adapter" / "adapter_config.json").write_text('{"r": 8}')
            (staging / "merged").mkdir()
            (staging / "merged" / "model.bin").write_bytes(os.urandom(20_000))
            version = registry.commit(staging, {"by": "child"})
        registry.promote(version.name)
"""


def test_a_trainer_killed_at_random_moments_never_breaks_current(
    state: ProjectState, tmp_path: Path
) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    rng = random.Random(20240601)
    adapters = state.adapters_dir
    promoted(AdapterRegistry(state), "test")
    child_promotions = 0
    for _ in range(25):
        before = len(AdapterRegistry(state).history())
        proc = subprocess.Popen(
            [sys.executable, str(script), str(state.root)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

        # Whatever a reader can see is whole.
        json.loads((adapters / "current").read_text())
        json.loads((adapters / "history.json").read_text())
        registry = AdapterRegistry(state)
        child_promotions += len(registry.history()) - before
        current = registry.current()
        assert current is not None and registry.verify(current)
        versions = registry.versions()
        # The kill interrupted at most the newest version's promotion.
        assert current.name in [v.name for v in versions[-2:]]
        assert all(registry.verify(v) for v in versions)
        numbered = sorted(p.name for p in adapters.iterdir() if p.name.startswith("v"))
        assert numbered == [v.name for v in versions]

        # And the next run works.
        fresh = make_version(registry, "test")
        assert registry.promote(fresh.name) == fresh
        assert registry.current() == fresh
        leftovers = [p.name for p in adapters.iterdir() if p.name.startswith(".")]
        assert leftovers == [".registry.lock"]
    assert child_promotions > 0
