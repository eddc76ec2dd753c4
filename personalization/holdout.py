"""Hold-out by recency: the train/evaluation split of a project for its per-project adapter.

An adapter is worth having if it completes the code the user writes next, so it is judged on
code newer than anything it trained on. A random split by file or line would leak: the same
idioms, helpers and near-duplicate lines sit on both sides and flatter the adapter.

With git history, the split is a commit: training sees the project as it was there (its tree,
blob by blob) and the evaluation cases are cut on the code lines added since (the work tree
diffed against it), so no evaluated line was visible in training. Without git, modification
times stand in for history: the newest files are evaluated and the rest trained on; weaker (an
edited old file is evaluated on its unchanged lines too), but it is the only signal there.

The offline time-split benchmark is the same code: ``git_split(root, time_split_commit(root))``
on an application's clone. Both sides pass the project's filters (`file_filters`: .gitignore,
`exclude`, secrets, vendor/, generated files, size cap); a path of the split commit is judged as
if it were in today's work tree, so a file that is ignored or secret now was never trained on.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rubytailor.errors import RubytailorError
from rubytailor.personalization.file_filters import (
    IgnoreRules,
    content_drop_reason,
    iter_project_files,
)
from rubytailor.training.eval_cases import Case, cut_line_cases, is_candidate, line_cases
from rubytailor.training.filters import RUBY_NAMES, RUBY_SUFFIXES, decode_source

log = logging.getLogger(__name__)

# iter_project_files' default per-file cap, passed explicitly so both sides share one value.
MAX_FILE_BYTES = 1_000_000

# Limits git's diff and listings to Ruby names (a superset of is_ruby_file; the filters decide),
# so lock files, assets and JavaScript are never diffed. A bare pattern matches at any depth.
_RUBY_PATHSPECS = (
    *(f"*{suffix}" for suffix in RUBY_SUFFIXES),
    *RUBY_NAMES,
    *(f"*/{name}" for name in RUBY_NAMES),
)
# Variables that would point git at another repository or change how pathspecs match.
_GIT_OVERRIDES = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_LITERAL_PATHSPECS",
        "GIT_GLOB_PATHSPECS",
        "GIT_NOGLOB_PATHSPECS",
        "GIT_ICASE_PATHSPECS",
    }
)
_HUNK = re.compile(rb"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_C_ESCAPES = dict(zip(b"abtnvfr", b"\a\b\t\n\v\f\r", strict=True))  # and \" \\ as themselves


@dataclass(frozen=True, kw_only=True)
class Split:
    method: str  # "git" or "mtime"
    train_files: list[tuple[str, str]]  # (name, text): for git, the text at the split commit
    eval_files: list[tuple[str, str]]  # (name, current text) of the files holding eval lines
    cases: list[Case]  # line cases, source = name, cut on evaluation lines of the current text
    detail: dict[str, Any]  # JSON-serialisable figures (commits, times, bytes, counts)


# --- git plumbing --------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_OVERRIDES}
    # C locale: messages we may quote are stable; no system config; no index lock taken while
    # the user's own git may be running (as `git status` does in editors).
    env.update(LC_ALL="C", GIT_CONFIG_NOSYSTEM="1", GIT_OPTIONAL_LOCKS="0")
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _git_failure(root: Path, args: Sequence[str], exc: Exception) -> RubytailorError:
    if isinstance(exc, subprocess.CalledProcessError):
        err = exc.stderr
        msg = (err.decode("utf-8", "replace") if isinstance(err, bytes) else err or "").strip()
        why = msg.splitlines()[-1] if msg else f"exit status {exc.returncode}"
    else:
        why = str(exc)
    return RubytailorError(
        f"git {args[0]} failed in {root}: {why}. The hold-out split needs a readable git "
        "repository (or none at all, to split by file modification time)."
    )


def _git(root: Path, *args: str) -> str:
    """stdout of a git command in root, as text (paths never read from it)."""
    return _git_bytes(root, *args).decode("utf-8", "surrogateescape")


def _git_bytes(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """stdout of a git command as bytes: file contents, and paths in their filesystem form."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            input=stdin,
            capture_output=True,
            check=True,
            env=_git_env(),
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise _git_failure(root, args, exc) from exc
    return proc.stdout


def _first_parent_commits(root: Path) -> list[str]:
    """HEAD's first-parent history, newest first: the project's own line of development."""
    return _git(root, "rev-list", "--first-parent", "HEAD").split()


def _git_history(root: Path) -> list[str] | None:
    """First-parent commits if root is inside a git work tree with git on PATH, else None."""
    if shutil.which("git") is None:
        log.info("hold-out: git is not on PATH; splitting %s by modification time", root)
        return None
    try:
        if _git(root, "rev-parse", "--is-inside-work-tree").strip() != "true":
            return None
    except RubytailorError:  # not a repository: the ordinary no-git case
        return None
    try:
        return _first_parent_commits(root)
    except RubytailorError:  # no commit yet
        return []


def _resolve(root: Path, commit: str) -> str:
    out = _git(root, "rev-parse", "--verify", "--end-of-options", f"{commit}^{{commit}}")
    return out.strip()


def _commit_time(root: Path, commit: str) -> tuple[int, str]:
    out = _git(root, "log", "-1", "--no-show-signature", "--format=%ct %cI", commit, "--")
    stamp, iso = out.split()
    return int(stamp), iso


def _unquote(raw: bytes) -> bytes:
    """A path git wrote C-quoted ("a\\tb", octal bytes) back to its bytes."""
    out = bytearray()
    i, end = 1, len(raw) - 1
    while i < end:
        c = raw[i]
        if c != 0x5C:  # backslash
            out.append(c)
            i += 1
        elif 0x30 <= raw[i + 1] <= 0x37:
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(_C_ESCAPES.get(raw[i + 1], raw[i + 1]))
            i += 2
    return bytes(out)


def _diff_path(raw: bytes) -> str | None:
    # git appends a tab to ---/+++ names that contain a space; a name ending in one is quoted.
    raw = raw.removesuffix(b"\t")
    if raw == b"/dev/null":
        return None
    if raw.startswith(b'"'):
        raw = _unquote(raw)
    return os.fsdecode(raw.removeprefix(b"b/"))


def _added_lines(root: Path, commit: str) -> dict[str, list[int]]:
    """0-based line numbers, in today's work-tree file, of the lines added since commit."""
    out = _git_bytes(
        root,
        "-c",
        "core.quotePath=false",
        "diff",
        "--unified=0",
        "--no-renames",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--ignore-submodules",
        "--relative",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        commit,
        "--",
        *_RUBY_PATHSPECS,
    )
    added: dict[str, list[int]] = {}
    lines: list[int] | None = None
    old_left = new_left = 0  # body lines of the current hunk still to skip
    # Split on "\n" only: a source line may hold "\r" or other separators splitlines() honours.
    for row in out.split(b"\n"):
        if old_left or new_left:  # hunk body: an added line may well start with "+++ "
            if row.startswith(b"+"):
                new_left -= 1
            elif row.startswith(b"-"):
                old_left -= 1
            continue  # "\ No newline at end of file" counts for neither side
        if row.startswith(b"diff "):
            lines = None
        elif row.startswith(b"+++ "):
            path = _diff_path(row[4:])
            lines = None if path is None else added.setdefault(path, [])
        elif row.startswith(b"@@ "):
            match = _HUNK.match(row)
            if match is None:
                raise RubytailorError(f"git diff in {root}: unexpected hunk header {row!r}")
            # "+c,d": d new lines from line c (1-based); ",d" is left out when d is 1.
            old_left = 1 if match[1] is None else int(match[1])
            new_left = 1 if match[3] is None else int(match[3])
            start = int(match[2]) - 1
            if lines is not None:
                lines.extend(range(start, start + new_left))
    return added


def _cat_blobs(root: Path, oids: Sequence[str]) -> list[bytes | None]:
    """Contents of blobs, in order, from one `git cat-file --batch` (None for a missing one)."""
    if not oids:
        return []
    out = _git_bytes(root, "cat-file", "--batch", stdin="".join(f"{o}\n" for o in oids).encode())
    blobs: list[bytes | None] = []
    pos = 0
    for _ in oids:
        eol = out.index(b"\n", pos)
        header = out[pos:eol].split()
        if len(header) != 3:  # "<oid> missing" (a partial clone, say)
            blobs.append(None)
            pos = eol + 1
            continue
        size = int(header[2])
        blobs.append(out[eol + 1 : eol + 1 + size])
        pos = eol + 1 + size + 1  # content is followed by a newline
    return blobs


# --- both sides of a git split ---------------------------------------------------------------


@dataclass
class _Worktree:
    """Today's project, read once: reused by every split commit recency_split tries."""

    root: Path
    root_str: str
    rules: IgnoreRules
    current: dict[str, str]  # rel path -> text, the files passing the filters, in walk order
    untracked: list[str]  # rel paths of current files git does not track


def _read_worktree(root: Path, exclude: Sequence[str]) -> _Worktree:
    root = Path(os.path.abspath(root))
    root_str = str(root)
    current: dict[str, str] = {}
    for path, text in iter_project_files(root, exclude=exclude, max_file_bytes=MAX_FILE_BYTES):
        if path.is_symlink():  # git diffs the link's target name, not the text read through it
            continue
        current[str(path)[len(root_str) + 1 :].replace(os.sep, "/")] = text
    out = _git_bytes(
        root, "ls-files", "-z", "--others", "--exclude-standard", "--", *_RUBY_PATHSPECS
    )
    untracked = [p for p in map(os.fsdecode, out.split(b"\0")) if p in current]
    return _Worktree(
        root=root,
        root_str=root_str,
        rules=IgnoreRules(root, exclude),
        current=current,
        untracked=untracked,
    )


def _eval_lines(wt: _Worktree, commit: str) -> dict[str, list[int]]:
    """Candidate lines (0-based) added since commit, per current file, in path order."""
    added = _added_lines(wt.root, commit)
    if wt.untracked:
        # Untracked files are the newest work of all, unless the commit already held them.
        # The whole listing, not a pathspec per file: there may be thousands of them.
        held = _git_bytes(wt.root, "ls-tree", "-r", "-z", "--name-only", commit)
        held_paths = set(map(os.fsdecode, held.split(b"\0")))
        for rel in wt.untracked:
            if rel not in held_paths:
                added[rel] = list(range(wt.current[rel].count("\n") + 1))
    result: dict[str, list[int]] = {}
    for rel, text in wt.current.items():
        numbers = added.get(rel)
        if not numbers:
            continue
        lines = text.split("\n")
        kept = [i for i in numbers if i < len(lines) and is_candidate(lines[i])]
        if kept:
            result[rel] = kept
    return result


def _train_side(wt: _Worktree, commit: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The files of commit's tree the project's filters accept, with their text there."""
    listing = _git_bytes(wt.root, "ls-tree", "-r", "-z", "-l", commit)
    skipped = {"filtered": 0, "too_large": 0, "binary": 0, "dropped": 0}
    dir_excluded: dict[str, bool] = {}
    wanted: list[tuple[str, str]] = []  # (rel, oid)
    for record in listing.split(b"\0"):
        meta, _, raw_path = record.partition(b"\t")
        fields = meta.split()
        # Regular files only: symlinks (120000) hold a target name, gitlinks are submodules.
        if len(fields) != 4 or fields[1] != b"blob" or fields[0] not in (b"100644", b"100755"):
            continue
        rel = os.fsdecode(raw_path)
        if _path_excluded(wt, rel, dir_excluded):
            skipped["filtered"] += 1
        elif int(fields[3]) > MAX_FILE_BYTES:
            skipped["too_large"] += 1
        else:
            wanted.append((rel, fields[2].decode()))
    train: list[tuple[str, str]] = []
    for (rel, _), data in zip(wanted, _cat_blobs(wt.root, [oid for _, oid in wanted]), strict=True):
        text = None if data is None else decode_source(data)
        if text is None:
            skipped["binary"] += 1
        elif content_drop_reason(rel, text):
            skipped["dropped"] += 1
        else:
            train.append((os.path.join(wt.root_str, *rel.split("/")), text))
    return train, skipped


def _path_excluded(wt: _Worktree, rel: str, dir_cache: dict[str, bool]) -> bool:
    """IgnoreRules.excluded for a path as it would sit in the work tree, directories memoised."""
    parts = rel.split("/")
    directory = wt.root_str
    for part in parts[:-1]:
        directory = os.path.join(directory, part)
        excluded = dir_cache.get(directory)
        if excluded is None:
            excluded = dir_cache[directory] = wt.rules.dir_excluded(directory)
        if excluded:
            return True
    return wt.rules.file_excluded(os.path.join(wt.root_str, *parts))


def _utf8_bytes(files: list[tuple[str, str]]) -> int:
    return sum(len(text.encode("utf-8")) for _, text in files)


def _git_split(
    wt: _Worktree, commit: str, *, cases: int, seed: int, evals: dict[str, list[int]] | None = None
) -> Split:
    started = time.monotonic()
    split = _resolve(wt.root, commit)
    head = _resolve(wt.root, "HEAD")
    train, skipped = _train_side(wt, split)
    if evals is None:
        evals = _eval_lines(wt, split)
    eval_files = [(os.path.join(wt.root_str, *rel.split("/")), wt.current[rel]) for rel in evals]
    chosen = cut_line_cases(
        eval_files,
        [(f, i) for f, numbers in enumerate(evals.values()) for i in numbers],
        cases,
        seed,
    )
    split_time, split_iso = _commit_time(wt.root, split)
    head_time, head_iso = _commit_time(wt.root, head)
    after = int(_git(wt.root, "rev-list", "--first-parent", "--count", f"{split}..{head}"))
    total = int(_git(wt.root, "rev-list", "--first-parent", "--count", head))
    detail: dict[str, Any] = {
        "split_commit": split,
        "split_time": split_iso,
        "split_timestamp": split_time,
        "head_commit": head,
        "head_time": head_iso,
        "head_timestamp": head_time,
        "commits_after": after,
        "commits_total": total,
        "added_lines": sum(map(len, evals.values())),
        "eval_lines": sum(map(len, evals.values())),
        "untracked_files": len(wt.untracked),
        "train_files": len(train),
        "train_bytes": _utf8_bytes(train),
        "train_skipped": skipped,
        "eval_files": len(eval_files),
        "eval_bytes": _utf8_bytes(eval_files),
        "cases": len(chosen),
        "seed": seed,
    }
    log.info(
        "hold-out (git) %s: split %s (%s), %d commits after; train %d files, %d bytes; "
        "%d added code lines in %d files, %d cases; %.1f s",
        wt.root,
        split[:12],
        split_iso,
        after,
        len(train),
        detail["train_bytes"],
        detail["added_lines"],
        len(eval_files),
        len(chosen),
        time.monotonic() - started,
    )
    return Split(
        method="git", train_files=train, eval_files=eval_files, cases=chosen, detail=detail
    )


# --- public API ------------------------------------------------------------------------------


def git_split(
    root: Path, split_commit: str, *, cases: int = 300, seed: int = 0, exclude: Sequence[str] = ()
) -> Split:
    """Train on the project at split_commit; evaluate on the code lines added since.

    Lines added since are those of `git diff <split_commit>` of the work tree (uncommitted
    changes included) plus untracked files the commit did not hold. Files deleted since stay in
    training: they were the project then.
    """
    return _git_split(_read_worktree(root, exclude), split_commit, cases=cases, seed=seed)


def time_split_commit(root: Path, fraction: float = 0.85) -> str:
    """The first-parent commit at fraction of the history, counted in commits, oldest first."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], not {fraction}")
    commits = _first_parent_commits(root)
    if not commits:
        raise RubytailorError(f"{root} has no git commits to split")
    commits.reverse()
    return commits[int(fraction * (len(commits) - 1))]


def recency_split(
    root: Path,
    *,
    cases: int = 300,
    seed: int = 0,
    min_added_lines: int = 400,
    max_commit_share: float = 0.15,
    eval_share: float = 0.15,
    exclude: Sequence[str] = (),
) -> Split:
    """The project's most recent work as evaluation, the rest as training (module docstring).

    git (root in a work tree with 2+ commits): the split commit is the newest first-parent
    commit with min_added_lines candidate code lines added since, going back at most
    max_commit_share of the history (1 commit at least). mtime otherwise: the newest files
    holding eval_share of the bytes (one at least, never all of 2+) are evaluated.
    """
    commits = _git_history(root)
    if commits is None or len(commits) < 2:
        return _mtime_split(root, cases=cases, seed=seed, eval_share=eval_share, exclude=exclude)
    wt = _read_worktree(root, exclude)
    limit = min(len(commits) - 1, max(1, int(max_commit_share * len(commits))))
    probed: dict[int, dict[str, list[int]]] = {}

    def added(k: int) -> int:
        if k not in probed:
            probed[k] = _eval_lines(wt, commits[k])
        return sum(map(len, probed[k].values()))

    k = _first_reaching(added, min_added_lines, limit)
    split = _git_split(wt, commits[k], cases=cases, seed=seed, evals=probed.get(k))
    split.detail.update(
        min_added_lines=min_added_lines,
        max_commit_share=max_commit_share,
        max_commits_after=limit,
        reached_min_added_lines=split.detail["added_lines"] >= min_added_lines,
        probes=len(probed),
    )
    return split


def _first_reaching(count: Callable[[int], int], target: int, limit: int) -> int:
    """The smallest k in [1, limit] with count(k) >= target, else limit.

    Each count is a diff of the work tree, so rather than one per commit walked back this
    gallops (1, 2, 4, ...) then bisects: about 2·log2(limit) diffs. It assumes lines added only
    grow going back; where a later commit re-adds what an earlier one deleted that is not quite
    so, and the pick is a commit near the first one reaching the target, not always the first.
    """
    low, k = 0, 1  # count(low) < target is known (low = 0 stands for "nothing")
    while count(k) < target:
        if k >= limit:
            return limit
        low, k = k, min(2 * k, limit)
    high = k
    while high - low > 1:
        mid = (low + high) // 2
        if count(mid) >= target:
            high = mid
        else:
            low = mid
    return high


def _mtime_split(
    root: Path, *, cases: int, seed: int, eval_share: float, exclude: Sequence[str]
) -> Split:
    files: list[tuple[str, str, int]] = []  # (name, text, mtime_ns)
    for path, text in iter_project_files(root, exclude=exclude, max_file_bytes=MAX_FILE_BYTES):
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:  # gone since it was read: as old as can be
            mtime = 0
        files.append((str(path), text, mtime))
    sizes = [len(text.encode("utf-8")) for _, text, _ in files]
    newest = sorted(range(len(files)), key=lambda i: (-files[i][2], files[i][0]))
    target = eval_share * sum(sizes)
    taken, taken_bytes = 0, 0
    while taken < len(files) and (taken == 0 or taken_bytes < target):
        taken_bytes += sizes[newest[taken]]
        taken += 1
    if len(files) >= 2:  # something must be left to train on
        taken = min(taken, len(files) - 1)
    eval_index = sorted(newest[:taken])
    train_index = sorted(newest[taken:])
    eval_files = [(files[i][0], files[i][1]) for i in eval_index]
    train = [(files[i][0], files[i][1]) for i in train_index]
    chosen = line_cases(eval_files, cases, seed)

    def iso(ns: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))

    detail: dict[str, Any] = {
        "eval_share": eval_share,
        "eval_since": iso(min(files[i][2] for i in eval_index)) if eval_index else None,
        "train_newest": iso(max(files[i][2] for i in train_index)) if train_index else None,
        "eval_lines": sum(is_candidate(x) for _, text in eval_files for x in text.split("\n")),
        "train_files": len(train),
        "train_bytes": _utf8_bytes(train),
        "eval_files": len(eval_files),
        "eval_bytes": _utf8_bytes(eval_files),
        "cases": len(chosen),
        "seed": seed,
    }
    if not files:
        log.warning("hold-out: %s has no Ruby files to split", root)
    log.info(
        "hold-out (mtime) %s: train %d files, %d bytes; evaluate %d newest files, %d cases",
        root,
        len(train),
        detail["train_bytes"],
        len(eval_files),
        len(chosen),
    )
    return Split(
        method="mtime", train_files=train, eval_files=eval_files, cases=chosen, detail=detail
    )
