"""General Ruby code beside the project: what the gate checks base-Ruby quality on, and
what training rehearses so that learning a project does not unlearn Ruby.

The two never share a file. Sources, in order:

- a corpus directory from `rubytailor corpus` (``--base-corpus``, $RUBYTAILOR_BASE_CORPUS
  or <data dir>/base-corpus): its test split is checked (code the base model never
  saw), its train split rehearsed;
- a plain directory of Ruby files given the same way, split in two by file hash;
- else the standard library of the installed Ruby (on every Ruby developer's machine),
  split in two by file hash. It was in the base model's training data, so the check is
  one of forgetting, not of generalisation; the README says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rubytailor import paths

log = logging.getLogger(__name__)

BASE_CORPUS_ENV = "RUBYTAILOR_BASE_CORPUS"

Files = list[tuple[str, str]]


@dataclass(frozen=True)
class BaseRuby:
    check: Files  # the gate's base-Ruby cases are cut from these
    rehearse: Files  # mixed into the adapter's training data
    source: str  # where they came from, for the metrics file


def find_base_ruby(explicit: Path | None = None) -> BaseRuby:
    """The first source that has code (see the module docstring); empty if none."""
    from rubytailor.training.corpus import iter_ruby_files, read_split

    env = os.environ.get(BASE_CORPUS_ENV)
    for candidate in (explicit, Path(env) if env else None, paths.data_dir() / "base-corpus"):
        if candidate is None or not candidate.is_dir():
            continue
        if (candidate / "test.jsonl").is_file():

            def rows(split: str, where: Path = candidate) -> Files:
                if not (where / f"{split}.jsonl").is_file():
                    return []
                return [(f"{r['source']}:{r['path']}", r["text"]) for r in read_split(where, split)]

            return BaseRuby(rows("test"), rows("train"), f"{candidate} (corpus: test/train)")
        files = [
            (p.relative_to(candidate).as_posix(), _read(p)) for p in iter_ruby_files(candidate)
        ]
        if files:
            return _halves(files, str(candidate))
    stdlib = ruby_stdlib()
    if stdlib is not None:
        files = [
            (f"stdlib:{p.relative_to(stdlib).as_posix()}", _read(p))
            for p in iter_ruby_files(stdlib)
        ]
        if files:
            return _halves(files, f"{stdlib} (Ruby standard library)")
    return BaseRuby([], [], "none")


def _halves(files: Files, source: str) -> BaseRuby:
    """Split by a hash of the name: stable whatever order the files are listed in."""
    check: Files = []
    rehearse: Files = []
    for name, text in files:
        (check if hashlib.sha256(name.encode()).digest()[0] % 2 else rehearse).append((name, text))
    return BaseRuby(check, rehearse, f"{source} (halves by file)")


def ruby_stdlib() -> Path | None:
    """The installed Ruby's library directory, or None."""
    ruby = shutil.which("ruby")
    if ruby is None:
        return None
    try:
        out = subprocess.run(
            [ruby, "-e", 'print RbConfig::CONFIG["rubylibdir"]'],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot ask Ruby for its standard library (%s)", exc)
        return None
    path = Path(out)
    return path if out and path.is_dir() else None


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
