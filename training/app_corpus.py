"""Applications as corpus sources: one folder per repository, with or without a manifest.

Layout: ``APPS/owner__name/`` holds one application's files at their repository paths
(the ``rails-apps.tar.zst`` archive unpacks this way). A plain folder name works too, for
your own checkouts: ``APPS/myapp/`` becomes source ``myapp``.

With a manifest (JSONL, one ``{"repo", "commit", "path", "license", "sha256", "bytes"}``
per file) only the listed files are read, each is checked against its SHA-256, and its
licence and commit come from the manifest. Without one, every Ruby file of a folder is
read and the licence is given (``--dir-license``) or read from the app's LICENSE file.

Held-out applications (evaluation projects) never enter a training split: their files
are recorded as dropped with reason ``held_out``, and they go into the duplicate index
first, so a copy of a held-out file in another app is dropped too
(``held_out_duplicate``). The held-out list is given explicitly or read from a README's
"Held out" section (the archive's README marks five apps that way).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path, PurePosixPath

from rubytailor.errors import RubytailorError
from rubytailor.training.corpus import ListedFile, Source
from rubytailor.training.licenses import license_from_gem_dir

log = logging.getLogger(__name__)

_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def repo_of_folder(folder: str) -> str:
    """``owner__name`` -> ``owner/name``; other folder names stay as they are."""
    owner, sep, name = folder.partition("__")
    return f"{owner}/{name}" if sep and owner and name else folder


def folder_of_repo(repo: str) -> str:
    return repo.replace("/", "__")


def read_app_manifest(path: Path) -> dict[str, list[ListedFile]]:
    """The manifest's files grouped by repository, in path order."""
    by_repo: dict[str, list[ListedFile]] = defaultdict(list)
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rel = PurePosixPath(row["path"])
                if rel.is_absolute() or ".." in rel.parts:
                    # The manifest names files under the app folder, never outside it.
                    raise RubytailorError(f"{path}:{number}: path outside the app: {rel}")
                entry = ListedFile(
                    path=row["path"],
                    license=row.get("license", ""),
                    sha256=row["sha256"],
                    commit=row.get("commit", ""),
                )
                by_repo[row["repo"]].append(entry)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise RubytailorError(f"{path}:{number}: bad manifest line ({exc})") from exc
    return {repo: sorted(files, key=lambda f: f.path) for repo, files in by_repo.items()}


def read_held_out(path: Path) -> list[str]:
    """Repositories listed as held out in ``path``.

    A Markdown file: the ``owner/name`` in the first cell of each table row, or each
    bullet, under a heading that says "held out". Any other file: one ``owner/name`` (or
    app folder name) per line, ``#`` comments allowed.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in (".md", ".markdown"):
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return [line for line in lines if line]
    repos: list[str] = []
    in_section = False
    for line in text.splitlines():
        if line.startswith("#"):
            in_section = bool(re.search(r"held[ -]?out", line, re.IGNORECASE))
            continue
        if not in_section:
            continue
        cell = line.strip().lstrip("|-* ").split("|", 1)[0].strip().strip("`*")
        if _REPO.fullmatch(cell):
            repos.append(cell)
    return repos


def default_held_out_file(manifest: Path | None) -> Path | None:
    """The README beside a manifest: ``X-manifest.jsonl`` -> ``X-README.md``."""
    if manifest is None:
        return None
    stem = manifest.name.split("-manifest", 1)[0] if "-manifest" in manifest.name else ""
    candidate = manifest.with_name(f"{stem}-README.md") if stem else None
    return candidate if candidate is not None and candidate.is_file() else None


def app_sources(
    apps_dir: Path,
    *,
    manifest: Path | None = None,
    held_out: frozenset[str] = frozenset(),
    license_name: str = "",
    held_out_eval: bool = False,
) -> list[Source]:
    """One source per application folder (or manifest repository) under ``apps_dir``.

    ``held_out_eval`` inverts the selection for an evaluation corpus: only the held-out
    apps, all forced into the test split.
    """
    listed = read_app_manifest(manifest) if manifest is not None else None
    if listed is not None:
        repos = sorted(listed)
    else:
        repos = sorted(repo_of_folder(d.name) for d in apps_dir.iterdir() if d.is_dir())
    unknown = held_out - set(repos)
    if unknown:
        # A typo here would silently train on an evaluation project, so refuse.
        raise RubytailorError(f"held-out apps not among the apps: {', '.join(sorted(unknown))}")
    sources: list[Source] = []
    for repo in repos:
        root = apps_dir / folder_of_repo(repo)
        if not root.is_dir() and (apps_dir / repo).is_dir():
            root = apps_dir / repo  # owner/name nested folders
        is_held = repo in held_out
        if held_out_eval and not is_held:
            continue
        if listed is None and not root.is_dir():
            continue
        files = tuple(listed[repo]) if listed is not None else None
        # With a manifest the licence is per file; this is only the fallback.
        lic = license_name if listed is not None else license_name or license_from_gem_dir(root)
        sources.append(
            Source(
                name=repo,
                kind="app",
                root=root,
                license=lic,
                files=files,
                held_out=is_held and not held_out_eval,
                split="test" if held_out_eval else "",
            )
        )
    log.info(
        "%d apps from %s (%s held out%s)",
        len(sources),
        apps_dir,
        len(held_out),
        ", evaluation corpus of the held-out apps" if held_out_eval else "",
    )
    return sources
