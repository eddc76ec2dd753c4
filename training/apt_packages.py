"""Ruby code from Debian packages: a curated list, fetched with apt and unpacked, never installed.

``apt-get download`` needs no root and no install; ``dpkg-deb -x`` unpacks a .deb into a
directory. Each package's licenses come from its DEP-5 file in usr/share/doc/<pkg>/copyright.

Not packaged in Debian 12 (so not in the list): Hanami, dry-monads, dry-schema,
dry-validation, dry-struct.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rubytailor.errors import RubytailorError

log = logging.getLogger(__name__)

# The standard library, Rails and its parts, and widely used gems (names checked with
# apt-cache on Debian 12). Some gems are packaged without the ruby- prefix.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "libruby3.1",
    # Rails 6.1
    "ruby-rails", "ruby-actionpack", "ruby-activerecord", "ruby-activesupport",
    "ruby-actionview", "ruby-activemodel", "ruby-railties", "ruby-actionmailer",
    "ruby-activejob", "ruby-actioncable", "ruby-activestorage", "ruby-actiontext",
    "ruby-actionmailbox", "ruby-globalid", "ruby-rails-html-sanitizer", "ruby-marcel",
    # Web
    "ruby-sinatra", "ruby-rack", "ruby-rack-protection", "ruby-rack-test", "ruby-mustermann",
    "ruby-grape", "ruby-devise", "ruby-warden", "puma", "ruby-faraday", "ruby-httparty",
    "ruby-rest-client", "ruby-tilt", "ruby-erubi", "ruby-haml", "ruby-slim", "ruby-builder",
    "ruby-loofah", "ruby-capybara",
    # dry-rb
    "ruby-dry-types", "ruby-dry-logic", "ruby-dry-core", "ruby-dry-inflector",
    "ruby-dry-configurable", "ruby-dry-container", "ruby-dry-equalizer",
    # Testing
    "ruby-rspec-core", "ruby-rspec-expectations", "ruby-rspec-mocks", "ruby-rspec-support",
    "ruby-minitest", "ruby-factory-bot", "ruby-webmock", "ruby-vcr",
    # Tools and libraries
    "rubocop", "ruby-rubocop-ast", "rake", "pry", "jekyll", "ruby-liquid", "ruby-kramdown",
    "ruby-rouge", "ruby-sequel", "ruby-sidekiq", "ruby-redis", "ruby-thor", "ruby-i18n",
    "ruby-concurrent", "ruby-zeitwerk", "ruby-tzinfo", "ruby-addressable", "ruby-mail",
    "ruby-mime-types", "ruby-bcrypt", "ruby-nokogiri", "ruby-json",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class UnpackedPackage:
    name: str
    root: Path  # the unpacked file tree
    deb: Path


def fetch_packages(names: tuple[str, ...] | list[str], cache: Path) -> list[UnpackedPackage]:
    """Download and unpack each package into ``cache``; reuse what is already there."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RubytailorError(
            "apt-get and dpkg-deb are needed to fetch Debian packages; on other systems "
            "pass Ruby source directories with --dir instead."
        )
    debs = cache / "debs"
    unpacked = cache / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(parents=True, exist_ok=True)
    _download_missing([n for n in names if _find_deb(debs, n) is None], debs)
    result: list[UnpackedPackage] = []
    for name in names:
        root = unpacked / name
        deb = _find_deb(debs, name)
        if deb is None:
            continue  # _download_missing said why
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            (root / ".complete").write_text(deb.name + "\n", encoding="utf-8")
        result.append(UnpackedPackage(name=name, root=root, deb=deb))
    log.info("%d of %d packages available under %s", len(result), len(names), unpacked)
    return result


def all_ruby_packages() -> list[str]:
    """Every ``ruby-*`` package apt knows, minus documentation-only ones, plus the list."""
    proc = subprocess.run(
        ["apt-cache", "pkgnames", "ruby-"], capture_output=True, text=True, check=True
    )
    names = {n for n in proc.stdout.split() if not n.endswith("-doc")}
    return sorted(names | set(DEFAULT_PACKAGES))


def _download_missing(names: list[str], debs: Path, chunk: int = 100) -> None:
    """Download in batches: one apt call per package costs about a second each."""
    for start in range(0, len(names), chunk):
        batch = names[start : start + chunk]
        proc = subprocess.run(
            ["apt-get", "download", *batch], cwd=debs, capture_output=True, text=True
        )
        if proc.returncode == 0:
            continue
        # One unknown name fails the whole batch: fall back to one call per package.
        for name in batch:
            if _find_deb(debs, name) is not None:
                continue
            one = subprocess.run(
                ["apt-get", "download", name], cwd=debs, capture_output=True, text=True
            )
            if one.returncode != 0 or _find_deb(debs, name) is None:
                log.warning("skipping %s: apt-get download failed: %s", name, one.stderr.strip())


def _find_deb(debs: Path, name: str) -> Path | None:
    # apt names files <name>_<version>_<arch>.deb (version with ':' escaped as %3a).
    found = sorted(debs.glob(f"{name}_*.deb"))
    return found[-1] if found else None
