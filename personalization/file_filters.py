"""Which of a workspace's files personalization may read: the watcher's and trainer's filters.

Vendored/generated/minified rules come from `rubytailor.training.filters`, so the corpus and
the project memory share one definition of what is excluded; this module adds what only a
user's own workspace has: .gitignore files, an `exclude` setting, secrets, build output.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from pathspec import GitIgnoreSpec

from rubytailor.training.filters import (
    MAX_BYTES as TRAINING_MAX_BYTES,
)
from rubytailor.training.filters import (
    MAX_LINE_CHARS,
    VENDOR_DIRS,
    decode_source,
    drop_reason,
    is_ruby_file,
)

log = logging.getLogger(__name__)

# Never listed, at any depth: VCS data, dependencies, build/run output.
SKIP_DIRS = VENDOR_DIRS | {".git", "tmp", "log", "coverage"}
# .env*, credentials*, *.pem/*.key (config/master.key), SSH keys: dropped by name, never
# opened. "credentials" as a whole word (credentials.yml.enc, credentials.rb), so app code
# such as credentials_controller.rb is still read.
_SECRET_NAME = re.compile(
    r"^\.env|^credentials\b|\.(pem|key|p12|pfx)$|^id_(rsa|dsa|ecdsa|ed25519)", re.IGNORECASE
)
_KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY")


class FileTooLarge(Exception):
    """A file over the per-file byte limit (so the caller can report the cap)."""


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def name_excluded(rel: str) -> bool:
    """Filters on the path alone (relative to its root, "/"-separated), before any open."""
    parts = rel.split("/")
    if not is_ruby_file(parts[-1]) or is_secret_name(parts[-1]):
        return True
    # db/schema.rb and multi-database siblings (db/cache_schema.rb) are dumped by Rails.
    return len(parts) > 1 and parts[-2] == "db" and parts[-1].endswith("schema.rb")


def content_drop_reason(rel: str, text: str) -> str:
    """Why a file's text must not be handed out ("" = keep): key material, or training's rules."""
    if _KEY_MATERIAL.search(text):
        return "key_material"
    reason = drop_reason(rel, text)
    if reason != "too_large":
        return reason
    # Our own per-file cap governs size, but drop_reason stops at its 500 KB rule: judge the
    # rest on a head that fits under it (4 bytes a char at most), and every line's length.
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        return "minified"
    head = text[: text.rfind("\n", 0, TRAINING_MAX_BYTES // 4) + 1]
    return drop_reason(rel, head)


def read_source(path: Path, root: Path, max_bytes: int) -> str | None:
    """UTF-8 text of path, or None if unreadable, binary, non-UTF-8 or a symlink leaving root.

    Raises FileTooLarge over max_bytes (checked on the open file, so growth races are caught).
    """
    try:
        if os.path.islink(path) and not Path(os.path.realpath(path)).is_relative_to(
            os.path.realpath(root)
        ):
            return None
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        log.debug("project files: cannot read %s: %s", path, exc)
        return None
    if len(data) > max_bytes:
        raise FileTooLarge(path)
    return decode_source(data)


def _git_top(root: Path) -> Path | None:
    for d in (root, *root.parents):
        if (d / ".git").exists():
            return d
    return None


class IgnoreRules:
    """The .gitignore files and `exclude` patterns that apply under one root.

    Git semantics: each .gitignore's rules are relative to its directory and the deepest file
    with a matching rule decides (last matching rule within it wins, `!` re-includes); then
    .git/info/exclude. .gitignore files between the repository top and the root apply too.
    Specs are cached per directory; `invalidate` one when its .gitignore changes.
    Paths are handled as strings: pathlib's operations dominated a 20,000-file walk.
    Thread-safety: cache updates are single dict operations, safe under the GIL.
    """

    def __init__(self, root: Path, exclude: Sequence[str] = ()) -> None:
        self.root = root
        self._root = str(root)
        self._top = str(_git_top(root) or root)
        self._exclude = GitIgnoreSpec.from_lines(exclude) if exclude else None
        self._specs: dict[str, GitIgnoreSpec | None] = {}
        self._info = self._load(os.path.join(self._top, ".git", "info", "exclude"))

    @staticmethod
    def _load(file: str) -> GitIgnoreSpec | None:
        try:
            with open(file, encoding="utf-8", errors="replace") as f:
                return GitIgnoreSpec.from_lines(f.read().splitlines())
        except OSError:  # absent (the usual case) or unreadable: no rules
            return None

    def invalidate(self, directory: Path) -> None:
        self._specs.pop(str(directory), None)

    def _spec(self, directory: str) -> GitIgnoreSpec | None:
        if directory not in self._specs:
            self._specs[directory] = self._load(os.path.join(directory, ".gitignore"))
        return self._specs[directory]

    def rel(self, path: str | Path) -> str:
        """path relative to the root, "/"-separated (path must be under the root)."""
        return os.fspath(path)[len(self._root) + 1 :].replace(os.sep, "/")

    def _ignored(self, path: str, slash: str) -> bool:
        if self._exclude is not None and self._exclude.match_file(self.rel(path) + slash):
            return True
        d = os.path.dirname(path)
        while True:  # from path's directory up to the repository top
            spec = self._spec(d)
            if spec is not None:
                decision = spec.check_file(path[len(d) + 1 :] + slash).include
                if decision is not None:
                    return decision
            if len(d) <= len(self._top):
                break
            d = os.path.dirname(d)
        return self._info is not None and bool(
            self._info.match_file(path[len(self._top) + 1 :] + slash)
        )

    def dir_excluded(self, path: str | Path) -> bool:
        """Whether the walk skips directory path (its parents already passed)."""
        path = os.fspath(path)
        return os.path.basename(path) in SKIP_DIRS or self._ignored(path, "/")

    def file_excluded(self, path: str | Path) -> bool:
        """Whether file path is left out (its parent directories already passed)."""
        path = os.fspath(path)
        return name_excluded(self.rel(path)) or self._ignored(path, "")

    def excluded(self, path: Path, *, is_dir: bool = False) -> bool:
        """The full decision for one path under root, its parent directories included.

        An excluded directory hides everything below it, as in git (no re-including inside).
        """
        full = str(path)
        if full == self._root:
            return False
        parts = self.rel(full).split("/")
        dirs = (os.path.join(self._root, *parts[:i]) for i in range(1, len(parts)))
        if any(self.dir_excluded(d) for d in dirs):
            return True
        return self.dir_excluded(full) if is_dir else self.file_excluded(full)


def walk(top: Path, rules: IgnoreRules) -> Iterator[Path]:
    """Candidate files under directory top (itself not excluded), in sorted order.

    Symlinked directories are never followed, so links out of the root and loops cannot be
    walked; unlistable directories are skipped with a debug log.
    """
    stack = [str(top)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            log.debug("project files: cannot list %s: %s", directory, exc)
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if not rules.dir_excluded(entry.path):
                    subdirs.append(entry.path)
            elif not rules.file_excluded(entry.path):
                yield Path(entry.path)
        stack.extend(reversed(subdirs))


def iter_project_files(
    root: Path, *, exclude: Sequence[str] = (), max_file_bytes: int = 1_000_000
) -> Iterator[tuple[Path, str]]:
    """Included (path, text) pairs under root, with the watcher's filters; no watching.

    Only the per-file cap applies here; count and total caps are the caller's business.
    """
    root = Path(os.path.abspath(root))
    rules = IgnoreRules(root, exclude)
    for path in walk(root, rules):
        try:
            text = read_source(path, root, max_file_bytes)
        except FileTooLarge:
            continue
        if text is not None and not content_drop_reason(rules.rel(path), text):
            yield path, text
