"""mypy sees across the subpackages: a wrong call from lsp/ into model/ is an error.

The probe module is written into lsp/ (reached as rubytailor.lsp through the symlink
in rubytailor/) because that is where a real mistake would be; it is removed after.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rubytailor.paths import REPO_ROOT

WRONG = """from rubytailor.model.pipeline import CompletionRequest

REQUEST = CompletionRequest(doc_key="a.rb", version=None, text="x", offset="0")
"""
RIGHT = WRONG.replace('offset="0"', "offset=0")


def _mypy(source: str) -> subprocess.CompletedProcess[str]:
    name = f"_probe_{uuid.uuid4().hex[:8]}"
    probe = REPO_ROOT / "lsp" / f"{name}.py"
    probe.write_text(source, encoding="utf-8")
    try:
        return subprocess.run(
            [sys.executable, "-m", "mypy", "-m", f"rubytailor.lsp.{name}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        probe.unlink()


@pytest.mark.slow
def test_mypy_flags_a_wrong_call_from_lsp_into_model() -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed in this environment (pip install -e '.[dev]')")
    right = _mypy(RIGHT)
    assert right.returncode == 0, right.stdout + right.stderr
    wrong = _mypy(WRONG)
    assert wrong.returncode == 1
    assert 'Argument "offset" to "CompletionRequest" has incompatible type "str"' in wrong.stdout
