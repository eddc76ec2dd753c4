"""Licenses of corpus files: Debian DEP-5 copyright files, gemspecs, and a permissive allowlist.

A license *expression* is what DEP-5 writes, e.g. ``BSD-2-clause or Ruby`` or
``Expat and MIT``. ``or`` means we may choose (permissive if any alternative is), ``and``
means all apply (permissive only if every part is).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

# Lower-cased short names counted as permissive. "Ruby" is the Ruby license, which lets
# the code be used under the 2-clause BSD license as an alternative (Ruby's COPYING).
PERMISSIVE: frozenset[str] = frozenset(
    {
        "mit", "expat", "x11", "isc", "apache-2.0", "apache-2", "apache", "0bsd",
        "bsd-2-clause", "bsd-2", "bsd-3-clause", "bsd-3", "3c-bsd", "bsd", "bsd-2-clause-freebsd",
        "bsd-2-clause-views",
        "ruby", "bsdl", "public-domain", "publicdomain", "cc0", "cc0-1.0", "zlib",
        "zlib/libpng", "unlicense", "wtfpl", "permissive", "allpermissions", "unicode",
        "psf-2.0", "python-2.0", "bsl-1.0", "mpl-2.0-no-copyleft-exception",
    }
)  # fmt: skip


def is_permissive(expression: str) -> bool:
    """Whether code under ``expression`` may go into a permissively licensed model's corpus."""
    expr = expression.strip().lower()
    if not expr:
        return False
    alternatives = re.split(r"\s+or\s+|\s*\|\s*", expr)
    return any(
        all(_short(part) in PERMISSIVE for part in re.split(r"\s+and\s+|\s*&\s*", alt))
        for alt in alternatives
    )


def _short(name: str) -> str:
    name = name.strip().strip("()").strip()
    # "MIT License" / "BSD-2-Clause license" -> the identifier; "Ruby's" -> ruby.
    name = re.sub(r"\s+licen[sc]e$", "", name)
    return name.replace("'s", "")


@dataclass(frozen=True, kw_only=True)
class FilesParagraph:
    patterns: tuple[str, ...]
    license: str


def parse_dep5(text: str) -> list[FilesParagraph]:
    """The ``Files:`` paragraphs of a DEP-5 copyright file, in file order."""
    paragraphs: list[FilesParagraph] = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            license_name = fields["license"].split("\n", 1)[0].strip()
            patterns = tuple(fields["files"].split())
            if patterns and license_name:
                paragraphs.append(FilesParagraph(patterns=patterns, license=license_name))
    return paragraphs


def license_for(paragraphs: list[FilesParagraph], installed_path: str) -> str:
    """The license of an installed file; the last matching paragraph wins, as in DEP-5.

    Patterns name paths in the *source* tree (``lib/rack/utils.rb``) while we see
    installed paths (``usr/lib/ruby/vendor_ruby/rack/utils.rb``), so a pattern matches
    when it matches a tail of the installed path, also with its first directory dropped
    (``lib/``, or a Rails component directory). ``debian/*`` never matches installed code.
    """
    parts = installed_path.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    found = ""
    for para in paragraphs:
        for pattern in para.patterns:
            if _matches(pattern, tails):
                found = para.license
                break
    return found


def _matches(pattern: str, tails: list[str]) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("debian/"):
        return False
    candidates = [pattern]
    head, _, rest = pattern.partition("/")
    if rest and rest.strip("*?/") and head:
        candidates.append(rest)
    return any(fnmatch.fnmatchcase(tail, cand) for cand in candidates for tail in tails)


_GEMSPEC_LICENSE = re.compile(r"""\.licen[sc]es?\s*=\s*(\[[^\]]*\]|['"][^'"]+['"])""")
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "MIT-LICENSE", "COPYING", "LICENCE")


def license_from_gem_dir(root: Path) -> str:
    """A gem checkout's license from its gemspec, else from the text of its LICENSE file."""
    for spec in sorted(root.glob("*.gemspec")):
        match = _GEMSPEC_LICENSE.search(spec.read_text(encoding="utf-8", errors="replace"))
        if match:
            names = re.findall(r"""['"]([^'"]+)['"]""", match.group(1))
            if names:
                return " or ".join(names)
    for name in _LICENSE_FILES:
        path = root / name
        if path.is_file():
            return classify_license_text(path.read_text(encoding="utf-8", errors="replace"))
    return ""


def classify_license_text(text: str) -> str:
    """A short license name for a license file's text, or "" when not recognised."""
    head = " ".join(text[:4000].split())
    if "GNU LESSER GENERAL PUBLIC" in head.upper():
        return "LGPL"
    if "GNU GENERAL PUBLIC" in head.upper() or "GNU AFFERO" in head.upper():
        return "GPL"
    if "Permission is hereby granted, free of charge" in head:
        return "MIT"
    if "Apache License" in head:
        return "Apache-2.0"
    if "Redistribution and use in source and binary forms" in head:
        return "BSD-3-clause" if "endorse or promote" in head else "BSD-2-clause"
    if "Permission to use, copy, modify, and/or distribute" in head:
        return "ISC"
    return ""
