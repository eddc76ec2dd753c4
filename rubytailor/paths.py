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
