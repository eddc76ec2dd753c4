"""Where rubytailor keeps files: XDG data and cache directories, and repo-local assets."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# In a source checkout (the supported install: `pip install -e .`) this is the repo root.
REPO_ROOT = PACKAGE_DIR.parent


def data_dir() -> Path:
    """Per-user data: adapters, project corpora. Honours RUBYTAILOR_DATA_DIR and XDG."""
    env = os.environ.get("RUBYTAILOR_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rubytailor"


def cache_dir() -> Path:
    """Re-creatable files: downloaded packages, extracted corpora. Honours XDG."""
    env = os.environ.get("RUBYTAILOR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rubytailor"


def default_model_dir() -> Path:
    """The bundled default model, committed under models/ in the repository."""
    env = os.environ.get("RUBYTAILOR_MODEL")
    if env:
        return Path(env)
    return REPO_ROOT / "models" / "rubytailor-default"


def prism_wasm_path() -> Path:
    """prism.wasm, fetched by `make setup` (scripts/fetch_prism.sh), never committed."""
    env = os.environ.get("RUBYTAILOR_PRISM_WASM")
    if env:
        return Path(env)
    return REPO_ROOT / "vendor" / "prism" / "prism.wasm"


# -- permissions ---------------------------------------------------------------------------
# The cache and data directories hold the user's code (corpora, project memory, logs) and
# files the server loads and runs (GGML weights): nobody else may read or replace them.

PRIVATE_DIR_MODE = 0o700
_SHARED_BITS = 0o022  # group- or world-writable


def restrict_umask() -> None:
    """Make files this process creates 0600 and directories 0700, whatever umask it got
    (keeps any stricter bits the user set)."""
    current = os.umask(0o077)
    os.umask(current | 0o077)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents, as XDG asks) with mode 0700, independent
    of the umask; warn if it already exists and others can write to it."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    for created in missing:
        # mkdir's mode is filtered by the umask; chmod is not.
        os.chmod(created, PRIVATE_DIR_MODE)
    warn_if_shared(path)
    return path


def shared_problem(path: Path) -> str | None:
    """Why others could change what is in ``path``, or None (also if it does not exist)."""
    try:
        st = path.stat()
    except OSError:
        return None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & _SHARED_BITS:
        return (
            f"{path} is writable by other users (mode {st.st_mode & 0o777:o}); "
            f"run: chmod 700 {path}"
        )
    return None


def warn_if_shared(path: Path) -> str | None:
    """Log a warning (never to stdout) if others can write ``path``; the problem or None."""
    problem = shared_problem(path)
    if problem is not None:
        import logging

        logging.getLogger(__name__).warning(
            "%s: others could replace rubytailor's files there", problem
        )
    return problem
