"""`rubytailor corpus`, `rubytailor tokenizer` and `rubytailor prepare`: data for training.

rubytailor corpus --out runs/corpus                 # Debian packages (curated list)
rubytailor corpus --out runs/corpus --no-debian --dir ~/src/some_gem --dir-license MIT
rubytailor corpus --out runs/corpus --prism-only    # Prism pass over an existing corpus
rubytailor corpus --out runs/corpus-v2 --apps runs/rails-apps \
    --apps-manifest /work/shared/data/rails-apps-manifest.jsonl   # + Rails apps, held out
rubytailor tokenizer --corpus runs/corpus --out runs/tokenizer
rubytailor prepare --corpus runs/corpus --tokenizer runs/tokenizer --out runs/data
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rubytailor import paths
from rubytailor.errors import RubytailorError

if TYPE_CHECKING:
    from rubytailor.training.corpus import Source

log = logging.getLogger(__name__)


def add_corpus_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("corpus", help="build a licensed, deduplicated Ruby corpus")
    p.add_argument("--out", type=Path, required=True, help="corpus directory to write")
    p.add_argument("--dir", type=Path, action="append", default=[], help="Ruby source dir")
    p.add_argument("--dir-license", default="", help="license of the --dir sources")
    p.add_argument("--no-debian", action="store_true", help="skip the Debian packages")
    p.add_argument("--packages", nargs="*", help="Debian packages (default: curated list)")
    p.add_argument(
        "--all-ruby", action="store_true", help="every ruby-* Debian package, plus the list"
    )
    p.add_argument(
        "--cache-dir", type=Path, help=f"apt download cache (default: {paths.cache_dir()}/apt)"
    )
    p.add_argument("--all-licenses", action="store_true", help="keep non-permissive files")
    a = p.add_argument_group("applications (one folder per app: owner__name/ or any name)")
    a.add_argument("--apps", type=Path, help="folder of application folders")
    a.add_argument(
        "--apps-manifest",
        type=Path,
        help="JSONL {repo, commit, path, license, sha256, bytes}: file list, SHA-256, licence",
    )
    a.add_argument(
        "--hold-out",
        action="append",
        default=[],
        metavar="OWNER/NAME",
        help="evaluation app kept out of every split (repeatable)",
    )
    a.add_argument(
        "--hold-out-file",
        type=Path,
        help="README with a 'Held out' section, or one app per line "
        "(default: X-README.md beside X-manifest.jsonl)",
    )
    a.add_argument(
        "--no-default-hold-out", action="store_true", help="ignore the README beside the manifest"
    )
    a.add_argument(
        "--held-out-eval",
        action="store_true",
        help="build an evaluation corpus instead: only the held-out apps, all in the test split",
    )
    p.add_argument("--near-threshold", type=float, default=0.85)
    p.add_argument("--no-prism", action="store_true", help="skip the Prism parse filter")
    p.add_argument("--prism-only", action="store_true", help="only run the Prism pass on --out")
    p.set_defaults(func=run_corpus)


def add_tokenizer_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train the byte-level BPE tokenizer")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--context-length", type=int, default=256)
    p.set_defaults(func=run_tokenizer)


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    from rubytailor.training.fim_dataset import FimConfig

    f = FimConfig()
    p = subparsers.add_parser("prepare", help="FIM-transform and tokenize corpus splits")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--splits", nargs="*", default=["train", "validation", "test"])
    p.add_argument("--fim-rate", type=float, default=f.fim_rate)
    p.add_argument("--spm-rate", type=float, default=f.spm_rate)
    p.add_argument(
        "--chunk-chars",
        type=int,
        default=f.chunk_chars,
        help="characters per FIM example (default: one 256-token window; 3200 for 1024)",
    )
    p.add_argument("--seed", type=int, default=f.seed)
    p.set_defaults(func=run_prepare)


def run_corpus(args: argparse.Namespace) -> int:
    from rubytailor.prism import validity_check
    from rubytailor.training.corpus import (
        apply_parse_filter,
        build_corpus,
        debian_source,
        directory_source,
    )

    check = None if args.no_prism else validity_check("no Prism parse filter")
    if args.prism_only:
        if check is None:
            raise RubytailorError("Prism is unavailable; run `make setup` to fetch prism.wasm.")
        summary = apply_parse_filter(args.out, check)
    else:
        sources = [directory_source(d, args.dir_license) for d in args.dir]
        if args.apps is not None:
            sources += _app_sources(args)
        elif args.apps_manifest or args.hold_out or args.held_out_eval:
            raise RubytailorError("--apps-manifest, --hold-out and --held-out-eval need --apps.")
        if not args.no_debian:
            from rubytailor.training.apt_packages import (
                DEFAULT_PACKAGES,
                all_ruby_packages,
                fetch_packages,
            )

            cache = args.cache_dir or paths.cache_dir() / "apt"
            names = args.packages or list(DEFAULT_PACKAGES)
            if args.all_ruby:
                names = sorted(set(names) | set(all_ruby_packages()))
            sources += [debian_source(p.name, p.root) for p in fetch_packages(names, cache)]
        if not sources:
            raise RubytailorError("no sources: give --dir, or drop --no-debian.")
        summary = build_corpus(
            sources,
            args.out,
            permissive_only=not args.all_licenses,
            near_threshold=args.near_threshold,
            parse_ok=check,
        )
    brief = {k: v for k, v in summary.items() if k not in ("sources", "splits")}
    log.info("corpus in %s: %s", args.out, json.dumps(brief))
    return 0


def _app_sources(args: argparse.Namespace) -> list[Source]:
    from rubytailor.training.app_corpus import app_sources, default_held_out_file, read_held_out

    held = set(args.hold_out)
    held_file = args.hold_out_file
    if held_file is None and not args.no_default_hold_out:
        held_file = default_held_out_file(args.apps_manifest)
    if held_file is not None:
        held |= set(read_held_out(held_file))
        log.info("held out (from %s and --hold-out): %s", held_file, ", ".join(sorted(held)))
    if args.held_out_eval and not held:
        raise RubytailorError("--held-out-eval needs held-out apps (--hold-out or a README).")
    return app_sources(
        args.apps,
        manifest=args.apps_manifest,
        held_out=frozenset(held),
        license_name=args.dir_license,
        held_out_eval=args.held_out_eval,
    )


def run_tokenizer(args: argparse.Namespace) -> int:
    from rubytailor.training.corpus import read_split
    from rubytailor.training.tokenizer import save_tokenizer, train_tokenizer

    texts = (row["text"] for row in read_split(args.corpus, "train"))
    save_tokenizer(train_tokenizer(texts, args.vocab_size), args.out, args.context_length)
    log.info("tokenizer written to %s", args.out)
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from rubytailor.training.fim_dataset import FimConfig
    from rubytailor.training.prepare import prepare_split

    config = FimConfig(
        fim_rate=args.fim_rate,
        spm_rate=args.spm_rate,
        chunk_chars=args.chunk_chars,
        seed=args.seed,
    )
    for split in args.splits:
        prepare_split(args.corpus, args.tokenizer, args.out, split, config)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m rubytailor.training.cli_data corpus ...`."""
    parser = argparse.ArgumentParser(prog="rubytailor")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_corpus_parser, add_tokenizer_parser, add_prepare_parser):
        add(sub)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
