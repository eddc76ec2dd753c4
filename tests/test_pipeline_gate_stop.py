"""The confidence gate stops generation as soon as nothing more can pass it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rubytailor.model import pipeline
from rubytailor.model.backends import load_backend
from rubytailor.model.backends.base import CancelToken
from rubytailor.model.pipeline import CompletionRequest
from rubytailor.paths import default_model_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (default_model_dir() / "model.safetensors").is_file(), reason="no bundled model"
    ),
]

TEXT = "class Cart\n  def total(items)\n    items.\n  end\nend\n"


def test_a_suggestion_the_gate_cannot_pass_stops_at_its_first_unlikely_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(tmp_path))
    backend = load_backend("transformers", default_model_dir(), threads=1)
    request = CompletionRequest(
        doc_key="cart.rb", version=1, text=TEXT, offset=TEXT.index("items.\n") + 6
    )
    free = pipeline.run(backend, None, request, lambda _d: None, CancelToken())
    assert free.generated_tokens > 3
    # No token is certain: nothing can pass, so the first token ends it, not the line's end.
    strict = replace(request, min_confidence=1.0)
    gated = pipeline.run(backend, None, strict, lambda _d: None, CancelToken())
    assert gated.text == "" and gated.stop_reason == "low_confidence"
    # (the first token or two may only re-create the healed text, yielding nothing)
    assert gated.generated_tokens <= 3 < free.generated_tokens
