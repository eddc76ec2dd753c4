"""Build a Ruby corpus: collect files, record provenance and license, filter, dedup, split.

Output directory layout (all JSON/JSONL, so the data is open and reproducible):

  manifest.jsonl   one record per candidate file, kept or dropped, with the reason
  train.jsonl / validation.jsonl / test.jsonl   kept files: source, path, sha256, text
  summary.json     counts by split, license, drop reason and source

Drop reasons, in the order they are checked: ``unreadable``, ``license``, ``vendored``,
``too_large``, ``empty``, ``generated``, ``minified``, ``duplicate`` (same normalized
content as a kept file), ``near_duplicate`` (MinHash Jaccard >= 0.85), ``unparsable``
(Prism reports a syntax error; applied when prism.wasm is available).
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
ParseCheck = Callable[[str], bool]


@dataclass(frozen=True, kw_only=True)
class Source:
    """One unit of provenance and of splitting: a Debian package or a directory."""

    name: str
    kind: str  # "debian" or "dir"
    root: Path
    copyright_file: Path | None = None  # DEP-5, for Debian packages
    license: str = ""  # for directories: given by the user or read from the gem


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
    records: list[FileRecord] = []
    writers = {split: (out / f"{split}.jsonl").open("w", encoding="utf-8") for split in SPLITS}
    try:
        for source in sorted(sources, key=lambda s: s.name):
            paragraphs = (
                parse_dep5(source.copyright_file.read_text(encoding="utf-8", errors="replace"))
                if source.copyright_file
                else []
            )
            split = split_for(source.name, validation, test)
            for path in iter_ruby_files(source.root):
                rel = path.relative_to(source.root).as_posix()
                data = path.read_bytes()
                lic = license_for(paragraphs, rel) if paragraphs else source.license
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
                )
                records.append(record)
                if text is None:
                    record.reason = "unreadable"
                    continue
                if permissive_only and not is_permissive(lic):
                    record.reason = "license"
                    continue
                record.reason = drop_reason(rel, text)
                if record.reason:
                    continue
                key = f"{source.name}:{rel}"
                norm = normalized_hash(text)
                if norm in exact:
                    record.reason, record.duplicate_of = "duplicate", exact[norm]
                    continue
                signature = minhash(text)
                similar = near.find(signature)
                if similar is not None:
                    record.reason, record.duplicate_of = "near_duplicate", similar
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
    }


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
