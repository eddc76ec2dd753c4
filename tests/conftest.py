"""Fixtures shared across the test suite. Keep this small: only what several areas use."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nothing the tests run (servers too: they inherit the environment) writes into the real
# per-user data directory, where personalization keeps project state and adapters.
os.environ["RUBYTAILOR_DATA_DIR"] = tempfile.mkdtemp(prefix="rubytailor-test-data-")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained, random-weight) GPTBigCode model directory, built once per session.

    Loads with ``TransformersBackend.load``; about 0.3 s to build. Treat it as read-only:
    tests that damage a model directory build their own with ``build_tiny_model``.
    """
    from rubytailor.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))
