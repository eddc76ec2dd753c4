"""Build a Ruby corpus: collect files, record provenance and license, filter, dedup, split.

Output directory layout (all JSON/JSONL, so the data is open and reproducible):

  manifest.jsonl   one record per candidate file, kept or dropped, with the reason
  train.jsonl / validation.jsonl / test.jsonl   kept files: source, path, sha256, text
  summary.json     counts by split, license, drop reason and source

Drop reasons, in the order they are checked: ``unreadable``, ``license``, ``vendored``,
``too_large``, ``empty``, ``generated``, ``minified``, ``duplicate`` (same normalized
content as a kept file), ``near_duplicate`` (MinHash Jaccard >= 0.85), ``unparsable``
(Prism reports a syntax error; applied when prism.wasm is available). Application
sources (``app_corpus.py``) add ``missing`` and ``sha_mismatch`` (a file not as its
manifest lists it), ``held_out`` (an evaluation app: never in any split) and
``held_out_duplicate`` (the same or nearly the same content as a held-out file).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rubytailor.training.dedup import NearDuplicateIndex, content_hash, minhash, normalized_hash
from rubytailor.training.filters import decode_source, drop_reason, is_ruby_file
from rubytailor.training.licenses import (
    is_permissive,
    license_for,
    license_from_gem_dir,
    parse_dep5,
)
from rubytailor.training.split import split_for

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HELD_OUT = "held_out"
ParseCheck = Callable[[str], bool]


@dataclass(frozen=True, kw_only=True)
class ListedFile:
    """A file a manifest promises: its path under the source root, licence and SHA-256."""

    path: str
    license: str
    sha256: str
    commit: str = ""


@dataclass(frozen=True, kw_only=True)
class Source:
    """One unit of provenance and of splitting: a Debian package, a directory or an app."""

    name: str
    kind: str  # "debian", "dir" or "app"
    root: Path
    copyright_file: Path | None = None  # DEP-5, for Debian packages
    license: str = ""  # for directories: given by the user or read from the gem
    files: tuple[ListedFile, ...] | None = None  # from a manifest; None: walk the root
    held_out: bool = False  # an evaluation project: recorded, deduplicated against, not kept
    split: str = ""  # forced split (an evaluation corpus); "": by the name's hash


@dataclass(kw_only=True)
class FileRecord:
    source: str
    source_kind: str
    path: str  # relative to the source root
    license: str
    sha256: str
    bytes: int
    lines: int
    split: str
    kept: bool
    reason: str = ""
    duplicate_of: str = ""
    commit: str = ""


def debian_source(name: str, root: Path) -> Source:
    copyright_file = root / "usr" / "share" / "doc" / name / "copyright"
    return Source(
        name=name,
        kind="debian",
        root=root,
        copyright_file=copyright_file if copyright_file.is_file() else None,
    )


def directory_source(root: Path, license_name: str = "") -> Source:
    """A directory of Ruby code; its license is ``license_name`` or read from the gem."""
    return Source(
        name=root.resolve().name,
        kind="dir",
        root=root,
        license=license_name or license_from_gem_dir(root),
    )


def iter_ruby_files(root: Path) -> Iterator[Path]:
    """Ruby files under ``root`` in a stable order (symlinks are not followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_ruby_file(name) and path.is_file() and not path.is_symlink():
                yield path


def _candidates(source: Source) -> Iterator[tuple[str, Path, ListedFile | None]]:
    """(relative path, file, manifest entry) for each candidate file of ``source``."""
    if source.files is None:
        for path in iter_ruby_files(source.root):
            yield path.relative_to(source.root).as_posix(), path, None
    else:
        for entry in source.files:
            yield entry.path, source.root / entry.path, entry


def _source_order(source: Source) -> tuple[int, str]:
    # Held-out apps first, so training files can be deduplicated against them; apps after
    # packages and directories, so adding apps never drops a library file as a duplicate.
    rank = 0 if source.held_out else 2 if source.kind == "app" else 1
    return rank, source.name


def build_corpus(
    sources: list[Source],
    out: Path,
    *,
    permissive_only: bool = True,
    near_threshold: float = 0.85,
    parse_ok: ParseCheck | None = None,
    validation: float = 0.05,
    test: float = 0.10,
) -> dict[str, object]:
    """Collect, filter, deduplicate and split ``sources`` into ``out``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    near = NearDuplicateIndex(near_threshold)
    exact: dict[str, str] = {}
    held_keys: set[str] = set()
    records: list[FileRecord] = []
    writers = {split: (out / f"{split}.jsonl").open("w", encoding="utf-8") for split in SPLITS}
    try:
        for source in sorted(sources, key=_source_order):
            paragraphs = (
                parse_dep5(source.copyright_file.read_text(encoding="utf-8", errors="replace"))
                if source.copyright_file
                else []
            )
            split = source.split or split_for(source.name, validation, test)
            if source.held_out:
                split = HELD_OUT
            for rel, path, entry in _candidates(source):
                if entry is not None and not path.is_file():
                    records.append(_missing(source, entry, split))
                    continue
                data = path.read_bytes()
                lic = license_for(paragraphs, rel) if paragraphs else source.license
                if entry is not None and entry.license:
                    lic = entry.license
                text = decode_source(data)
                record = FileRecord(
                    source=source.name,
                    source_kind=source.kind,
                    path=rel,
                    license=lic,
                    sha256=content_hash(data),
                    bytes=len(data),
                    lines=text.count("\n") + 1 if text else 0,
                    split=split,
                    kept=False,
                    commit=entry.commit if entry is not None else "",
                )
                records.append(record)
                if entry is not None and record.sha256 != entry.sha256:
                    record.reason = "sha_mismatch"
                    log.warning("%s:%s: SHA-256 differs from the manifest", source.name, rel)
                    continue
                if text is None:
                    record.reason = "unreadable"
                    continue
                key = f"{source.name}:{rel}"
                if source.held_out:
                    # Indexed only, so that copies elsewhere are dropped; never written.
                    record.reason = HELD_OUT
                    exact.setdefault(normalized_hash(text), key)
                    near.add(key, minhash(text))
                    held_keys.add(key)
                    continue
                if permissive_only and not is_permissive(lic):
                    record.reason = "license"
                    continue
                record.reason = drop_reason(rel, text)
                if record.reason:
                    continue
                norm = normalized_hash(text)
                if norm in exact:
                    record.duplicate_of = exact[norm]
                    record.reason = _dup_reason(record.duplicate_of, held_keys, "duplicate")
                    continue
                signature = minhash(text)
                similar = near.find(signature)
                if similar is not None:
                    record.duplicate_of = similar
                    record.reason = _dup_reason(similar, held_keys, "near_duplicate")
                    continue
                if parse_ok is not None and not parse_ok(text):
                    record.reason = "unparsable"
                    continue
                exact[norm] = key
                near.add(key, signature)
                record.kept = True
                row = {"source": source.name, "path": rel, "sha256": record.sha256, "text": text}
                writers[split].write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        for writer in writers.values():
            writer.close()
    _write_manifest(out, records)
    summary = summarize(records, prism_checked=parse_ok is not None)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _missing(source: Source, entry: ListedFile, split: str) -> FileRecord:
    log.warning("%s:%s: listed in the manifest but missing", source.name, entry.path)
    return FileRecord(
        source=source.name,
        source_kind=source.kind,
        path=entry.path,
        license=entry.license or source.license,
        sha256=entry.sha256,
        bytes=0,
        lines=0,
        split=split,
        kept=False,
        reason="missing",
        commit=entry.commit,
    )


def _dup_reason(key: str, held_keys: set[str], reason: str) -> str:
    return "held_out_duplicate" if key in held_keys else reason


def apply_parse_filter(out: Path, parse_ok: ParseCheck) -> dict[str, object]:
    """Drop kept files that fail ``parse_ok`` from an existing corpus (the Prism pass)."""
    records = [FileRecord(**json.loads(line)) for line in _lines(out / "manifest.jsonl")]
    by_key = {(r.source, r.path): r for r in records}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        kept_rows: list[str] = []
        for line in _lines(path):
            row = json.loads(line)
            if parse_ok(row["text"]):
                kept_rows.append(line)
            else:
                rec = by_key[(row["source"], row["path"])]
                rec.kept, rec.reason = False, "unparsable"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(r + "\n" for r in kept_rows), encoding="utf-8")
        tmp.replace(path)
    _write_manifest(out, records)
    summary = summarize(records, prism_checked=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def read_split(out: Path, split: str) -> Iterator[dict[str, str]]:
    """The kept files of one split: dicts with source, path, sha256 and text."""
    for line in _lines(out / f"{split}.jsonl"):
        yield json.loads(line)


def summarize(records: list[FileRecord], *, prism_checked: bool) -> dict[str, object]:
    kept = [r for r in records if r.kept]
    per_split = {
        split: {
            "files": sum(1 for r in kept if r.split == split),
            "bytes": sum(r.bytes for r in kept if r.split == split),
            "sources": sorted({r.source for r in kept if r.split == split}),
        }
        for split in SPLITS
    }
    return {
        "candidates": len(records),
        "kept_files": len(kept),
        "kept_bytes": sum(r.bytes for r in kept),
        "prism_checked": prism_checked,
        "splits": per_split,
        "dropped": dict(Counter(r.reason for r in records if not r.kept).most_common()),
        "kept_licenses": dict(Counter(r.license for r in kept).most_common()),
        "excluded_licenses": dict(
            Counter(r.license for r in records if r.reason == "license").most_common()
        ),
        "sources": dict(sorted(Counter(r.source for r in kept).items())),
        # Files and bytes per source kind ("debian", "dir", "app") and split.
        "kinds": _kind_counts(kept),
        "held_out": sorted({r.source for r in records if r.reason == HELD_OUT}),
    }


def _kind_counts(kept: list[FileRecord]) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for r in sorted(kept, key=lambda r: r.source_kind):
        per_split = counts.setdefault(
            r.source_kind, {split: {"files": 0, "bytes": 0} for split in SPLITS}
        )
        cell = per_split.setdefault(r.split, {"files": 0, "bytes": 0})
        cell["files"] += 1
        cell["bytes"] += r.bytes
    return counts


def _write_manifest(out: Path, records: list[FileRecord]) -> None:
    tmp = out / "manifest.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(asdict(rec), ensure_ascii=False) + "\n")
    tmp.replace(out / "manifest.jsonl")


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip("\n")
