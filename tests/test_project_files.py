"""The project-files watcher: filters, caps, overlays and live events, on tmp_path trees."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rubytailor.personalization import file_filters, project_files
from rubytailor.personalization.file_filters import iter_project_files
from rubytailor.personalization.project_files import FileEvent, FileLimits, ProjectFiles

KEY_BLOCK = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"


class Recorder:
    """on_event for tests: the latest text per path, plus every event in order."""

    def __init__(self) -> None:
        self.files: dict[Path, str] = {}
        self.events: list[FileEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: FileEvent) -> None:
        with self._lock:
            self.events.append(event)
            if event.text is None:
                self.files.pop(event.path, None)
            else:
                self.files[event.path] = event.text

    def names(self, root: Path) -> set[str]:
        with self._lock:
            return {p.relative_to(root).as_posix() for p in self.files}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate():
                    return True
            time.sleep(0.01)
        return False


def write(root: Path, rel: str, text: str = "puts 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def start() -> Iterator[Callable[..., tuple[ProjectFiles, Recorder]]]:
    """Start a watcher on roots, wait for its initial scan; stopped after the test."""
    started: list[ProjectFiles] = []

    def _start(*roots: Path, **kwargs: Any) -> tuple[ProjectFiles, Recorder]:
        recorder = Recorder()
        pf = ProjectFiles(list(roots), recorder, debounce_s=0.02, **kwargs)
        started.append(pf)
        pf.start()
        assert pf.wait_ready(timeout=10)
        return pf, recorder

    yield _start
    for pf in started:
        pf.stop()


def test_only_ruby_files_are_delivered(tmp_path: Path, start: Any) -> None:
    for rel in ["app/models/user.rb", "lib/tasks/db.rake", "x.gemspec", "Gemfile", "Rakefile"]:
        write(tmp_path, rel)
    write(tmp_path, "config.ru")
    write(tmp_path, "README.md", "# hi\n")
    write(tmp_path, "app/assets/app.js", "let x = 1\n")
    _, rec = start(tmp_path)
    assert rec.names(tmp_path) == {
        "app/models/user.rb",
        "lib/tasks/db.rake",
        "x.gemspec",
        "Gemfile",
        "Rakefile",
        "config.ru",
    }
    assert rec.files[tmp_path / "Gemfile"] == "puts 1\n"


def test_secrets_are_never_read_or_delivered(
    tmp_path: Path, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = [
        ".env",
        ".env.production",
        ".env.rb",
        "config/master.key",
        "config/credentials.yml.enc",
        "config/credentials.rb",
        "server.pem",
        "id_rsa",
        "id_rsa.rb",
        "certs/site.key",
    ]
    for rel in secrets:
        write(tmp_path, rel, "SECRET=1\n")
    write(tmp_path, "lib/signer.rb", f"KEY = <<~PEM\n{KEY_BLOCK}PEM\n")
    write(tmp_path, "lib/ok.rb")
    write(tmp_path, "app/controllers/credentials_controller.rb")  # app code, not a secret
    opened: list[str] = []
    real_open = Path.open

    def spy_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy_open)
    pf, rec = start(tmp_path)
    assert rec.names(tmp_path) == {"lib/ok.rb", "app/controllers/credentials_controller.rb"}
    assert not set(opened) & {Path(rel).name for rel in secrets}  # dropped by name, unopened
    # The editor cannot smuggle one in either.
    pf.overlay(tmp_path / "config/credentials.rb", "x = 1\n")
    pf.overlay(tmp_path / "lib/ok.rb", KEY_BLOCK)
    pf.overlay(tmp_path / "lib/new.rb", "# fine\n")
    assert rec.wait_for(lambda: tmp_path / "lib/new.rb" in rec.files)
    # ok.rb now looks like a key: dropped.
    assert rec.names(tmp_path) == {"lib/new.rb", "app/controllers/credentials_controller.rb"}
    assert all(KEY_BLOCK not in (e.text or "") for e in rec.events)
    assert sorted(p for p, _ in iter_project_files(tmp_path)) == [
        tmp_path / "app/controllers/credentials_controller.rb",
        tmp_path / "lib/ok.rb",
    ]


def test_ignored_vendored_and_generated_files_are_left_out(tmp_path: Path, start: Any) -> None:
    write(tmp_path, ".gitignore", "/ignored/\n*.local.rb\nbuild/\n")
    write(tmp_path, "lib/.gitignore", "/only_here.rb\nlocal_*.rb\n!local_keep.rb\n")
    keep = ["app/a.rb", "only_here.rb", "lib/deep/only_here.rb", "lib/local_keep.rb"]
    drop = [
        "ignored/x.rb",
        "app/b.local.rb",
        "build/x.rb",
        "lib/only_here.rb",
        "lib/local_x.rb",
        "vendor/bundle/gems/x.rb",
        "node_modules/pkg/x.rb",
        "tmp/cache/x.rb",
        "log/x.rb",
        "coverage/x.rb",
        ".bundle/x.rb",
        ".git/hooks/x.rb",
        "app/vendor/x.rb",
        "db/schema.rb",
        "db/cache_schema.rb",
    ]
    for rel in keep + drop:
        write(tmp_path, rel)
    write(tmp_path, "build/.gitignore", "!x.rb\n")  # cannot re-include inside an ignored dir
    write(tmp_path, "app/gen.rb", "# This file was generated by protoc. DO NOT EDIT.\nX = 1\n")
    write(tmp_path, "app/min.rb", "x = [" + "1," * 600 + "]\n")
    # A "do not edit" note only marks a file generated in its header (first 10 lines).
    write(tmp_path, "app/late_note.rb", "x = 1\n" * 11 + "# do not edit the next line\n")
    pf, rec = start(tmp_path)
    assert rec.names(tmp_path) == {*keep, "app/late_note.rb"}
    assert {p.relative_to(tmp_path).as_posix() for p, _ in iter_project_files(tmp_path)} == {
        *keep,
        "app/late_note.rb",
    }
    assert pf.included(tmp_path / "app/new.rb")
    assert not pf.included(tmp_path / "lib/local_y.rb")
    assert not pf.included(tmp_path / "build/x.rb")
    assert not pf.included(tmp_path.parent / "elsewhere.rb")


def test_gitignore_above_the_root_applies_up_to_the_repository_top(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    write(tmp_path, ".gitignore", "generated_*.rb\n")
    write(tmp_path, ".git/info/exclude", "mine.rb\n")
    sub = tmp_path / "engines/billing"
    for rel in ["a.rb", "generated_b.rb", "mine.rb"]:
        write(sub, rel)
    assert [p.name for p, _ in iter_project_files(sub)] == ["a.rb"]


def test_exclude_setting(tmp_path: Path, start: Any) -> None:
    for rel in ["app/a.rb", "spec/fixtures/big.rb", "spec/a_spec.rb", "spec/support.rb"]:
        write(tmp_path, rel)
    _, rec = start(tmp_path, exclude=["spec/fixtures/", "*_spec.rb"])
    assert rec.names(tmp_path) == {"app/a.rb", "spec/support.rb"}


def test_file_count_cap_bites_with_a_message(tmp_path: Path, start: Any) -> None:
    for i in range(5):
        write(tmp_path, f"f{i}.rb")
    pf, rec = start(tmp_path, limits=FileLimits(max_files=3))
    status = pf.status()
    assert (status.files, len(rec.files), status.ready) == (3, 3, True)
    assert status.messages == ("project memory: 3-file cap reached; 2 files left out",)


def test_byte_caps_bite_with_messages(tmp_path: Path, start: Any) -> None:
    for i in range(4):
        write(tmp_path, f"f{i}.rb", f"x{i} = 1\n" * 5)  # 35 bytes each
    write(tmp_path, "huge.rb", "y = 1\n" * 50)
    limits = FileLimits(max_file_bytes=100, max_total_bytes=100)
    pf, _ = start(tmp_path, limits=limits)
    status = pf.status()
    assert (status.files, status.bytes) == (2, 70)
    assert status.messages == (
        "project memory: 100 bytes total cap reached; 2 files left out",
        "project memory: files over the 100 bytes per-file limit; 1 file left out",
    )


def test_rescan_admits_files_left_out_once_there_is_room(tmp_path: Path, start: Any) -> None:
    for i in range(3):
        write(tmp_path, f"f{i}.rb")
    pf, rec = start(tmp_path, limits=FileLimits(max_files=2))
    assert len(rec.files) == 2 and pf.status().messages
    first = min(rec.files)
    first.unlink()
    assert rec.wait_for(lambda: first not in rec.files)
    pf.rescan()
    assert pf.wait_ready(timeout=5)
    assert rec.names(tmp_path) == {"f0.rb", "f1.rb", "f2.rb"} - {first.name}
    assert pf.status().messages == ()


def test_default_per_file_cap_is_one_megabyte(tmp_path: Path, start: Any) -> None:
    write(tmp_path, "big.rb", "y = 1\n" * 170_000)  # 1.02 MB
    write(tmp_path, "fits.rb", "y = 1\n" * 160_000)  # 960 KB: over training's 500 KB, kept
    pf, rec = start(tmp_path)
    assert rec.names(tmp_path) == {"fits.rb"}
    assert pf.status().messages == (
        "project memory: files over the 1 MB per-file limit; 1 file left out",
    )


def test_symlink_loops_and_links_out_of_the_root(tmp_path: Path, start: Any) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(root, "lib/a.rb")
    write(outside, "secret_place.rb")
    os.symlink(root, root / "loop")
    os.symlink("../..", root / "lib/up")
    os.symlink(outside, root / "out")
    os.symlink(outside / "secret_place.rb", root / "linked_out.rb")
    os.symlink(root / "lib/a.rb", root / "linked_in.rb")
    _, rec = start(root)
    assert rec.names(root) == {"lib/a.rb", "linked_in.rb"}
    assert len(rec.events) == 2


def test_binary_non_utf8_and_unreadable_files_are_skipped(
    tmp_path: Path, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "ok.rb")
    (tmp_path / "bin.rb").write_bytes(b"x = 1\x00\x01")
    (tmp_path / "latin1.rb").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    locked = write(tmp_path, "locked.rb")
    locked_dir = tmp_path / "locked_dir"
    write(locked_dir, "inner.rb")
    locked.chmod(0)
    locked_dir.chmod(0)
    if os.geteuid() == 0:  # chmod does not stop root: simulate the refusal
        real_open, real_scandir = Path.open, os.scandir

        def refuse_open(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self == locked:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        def refuse_scandir(path: Any) -> Any:
            if os.fsdecode(path) == str(locked_dir):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(Path, "open", refuse_open)
        monkeypatch.setattr(file_filters.os, "scandir", refuse_scandir)
    try:
        _, rec = start(tmp_path)
        assert rec.names(tmp_path) == {"ok.rb"}
    finally:
        locked_dir.chmod(0o755)
        locked.chmod(0o644)


def test_scan_runs_in_the_background(tmp_path: Path) -> None:
    write(tmp_path, "a.rb")
    release = threading.Event()
    rec = Recorder()

    def slow(event: FileEvent) -> None:
        release.wait(5)
        rec(event)

    pf = ProjectFiles([tmp_path], slow)
    try:
        pf.start()  # returns while the scan is stuck in on_event
        assert pf.status().scanning
        release.set()
        assert pf.wait_ready(timeout=5)
        assert rec.names(tmp_path) == {"a.rb"}
    finally:
        release.set()
        pf.stop()


def test_live_create_modify_delete_rename(tmp_path: Path, start: Any) -> None:
    write(tmp_path, "lib/a.rb", "a = 1\n")
    (tmp_path / "tmp").mkdir()
    _, rec = start(tmp_path)
    files = rec.files

    write(tmp_path, "vendor/gems/x.rb")  # filters hold for live events too
    write(tmp_path, "config/credentials.rb")
    write(tmp_path, "lib/key.rb", KEY_BLOCK)
    b = write(tmp_path, "lib/b.rb", "b = 1\n")
    assert rec.wait_for(lambda: files.get(b) == "b = 1\n")
    assert set(files) == {tmp_path / "lib/a.rb", b}
    (tmp_path / "lib/key.rb").unlink()
    b.write_text("b = 2\n")
    assert rec.wait_for(lambda: files.get(b) == "b = 2\n")
    b.unlink()
    assert rec.wait_for(lambda: b not in files)

    a, c = tmp_path / "lib/a.rb", tmp_path / "lib/c.rb"
    a.rename(c)
    assert rec.wait_for(lambda: a not in files and files.get(c) == "a = 1\n")
    c.rename(tmp_path / "tmp/c.rb")  # into an ignored dir: a delete
    assert rec.wait_for(lambda: not files)
    (tmp_path / "tmp/c.rb").rename(a)  # out of it: a create
    assert rec.wait_for(lambda: files.get(a) == "a = 1\n")

    (tmp_path / "lib").rename(tmp_path / "app")  # a directory move moves its files
    moved = tmp_path / "app/a.rb"
    assert rec.wait_for(lambda: set(files) == {moved})

    write(tmp_path, ".gitignore", "app/\n")  # honoured at once: its directory is rescanned
    assert rec.wait_for(lambda: not files)
    (tmp_path / ".gitignore").unlink()
    assert rec.wait_for(lambda: set(files) == {moved})


def test_bursts_are_coalesced(tmp_path: Path) -> None:
    rec = Recorder()
    pf = ProjectFiles([tmp_path], rec, debounce_s=0.3)
    pf.start()
    try:
        assert pf.wait_ready(timeout=5)
        path = tmp_path / "a.rb"
        for i in range(10):
            path.write_text(f"a = {i}\n")
        assert rec.wait_for(lambda: rec.files.get(path) == "a = 9\n")
        time.sleep(0.4)
        assert len(rec.events) < 5
    finally:
        pf.stop()


def test_overlay_replaces_disk_text_until_closed(tmp_path: Path, start: Any) -> None:
    a = write(tmp_path, "a.rb", "disk = 1\n")
    pf, rec = start(tmp_path)
    pf.overlay(a, "unsaved = 2\n")
    assert rec.wait_for(lambda: rec.files.get(a) == "unsaved = 2\n")
    a.write_text("disk = 3\n")  # disk changes do not replace an open document's text
    time.sleep(0.2)
    assert rec.files[a] == "unsaved = 2\n"
    pf.overlay(a, None)
    assert rec.wait_for(lambda: rec.files.get(a) == "disk = 3\n")

    new = tmp_path / "new.rb"  # never saved: closing it is a delete
    pf.overlay(new, "draft = 1\n")
    assert rec.wait_for(lambda: new in rec.files)
    pf.overlay(new, None)
    assert rec.wait_for(lambda: new not in rec.files)

    pf.overlay(tmp_path.parent / "outside.rb", "x = 1\n")  # not under a root: ignored
    pf.overlay(tmp_path / "vendor/x.rb", "x = 1\n")
    pf.overlay(a, "last = 1\n")
    assert rec.wait_for(lambda: rec.files.get(a) == "last = 1\n")
    assert set(rec.files) == {a}


def test_roots_added_and_removed_at_runtime(tmp_path: Path, start: Any) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "a.rb")
    write(two, "b.rb")
    pf, rec = start(one)
    pf.add_root(two)
    assert rec.wait_for(lambda: set(rec.files) == {one / "a.rb", two / "b.rb"})
    write(two, "c.rb")  # the new root is watched too
    assert rec.wait_for(lambda: two / "c.rb" in rec.files)
    pf.remove_root(two)
    assert rec.wait_for(lambda: set(rec.files) == {one / "a.rb"})
    assert not pf.included(two / "b.rb")


def test_polling_fallback_when_inotify_is_unavailable(
    tmp_path: Path, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoInotify(project_files.PollingObserver):
        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(project_files, "Observer", NoInotify)
    monkeypatch.setattr(project_files, "POLL_INTERVAL_S", 0.05)
    write(tmp_path, "a.rb")
    _, rec = start(tmp_path)
    b = write(tmp_path, "b.rb")
    assert rec.wait_for(lambda: set(rec.files) == {tmp_path / "a.rb", b})


def test_only_included_directories_are_watched(tmp_path: Path, start: Any) -> None:
    """No inotify watch (and no event traffic) for node_modules/, .venv-like ignored trees."""
    write(tmp_path, "app/models/user.rb")
    write(tmp_path, "node_modules/pkg/lib/index.rb")
    write(tmp_path, ".gitignore", "build/\n")
    write(tmp_path, "build/deep/x.rb")
    pf, rec = start(tmp_path)
    watched = set(pf._watches[tmp_path][1])
    assert {tmp_path, tmp_path / "app", tmp_path / "app/models"} <= watched
    assert not any("node_modules" in d.parts or "build" in d.parts for d in watched)

    # A directory made after the start gets its own watch: edits inside it arrive.
    new = write(tmp_path, "app/services/billing/charge.rb", "x = 1\n")
    assert rec.wait_for(lambda: rec.files.get(new) == "x = 1\n")
    new.write_text("x = 2\n")
    assert rec.wait_for(lambda: rec.files.get(new) == "x = 2\n")
    assert tmp_path / "app/services/billing" in pf._watches[tmp_path][1]
