"""Golden expectations for the pure stages: the prompt builder and the stop rules.

Each fixture under tests/golden/ marks the cursor with █; the expected output sits
beside it (``.expected``). After an intended change, rewrite them with

    RUBYTAILOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py

and read the diff: it shows exactly what the change does to prompts and suggestions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rubytailor.model.fim import get_format
from rubytailor.model.prompt import PromptBudget, build_prompt
from rubytailor.model.stop_rules import StopConfig, StopRules
from rubytailor.paths import REPO_ROOT

GOLDEN = Path(__file__).parent / "golden"
CURSOR = "█"
UPDATE = os.environ.get("RUBYTAILOR_UPDATE_GOLDEN") == "1"
# Prompts are counted with the bundled model's tokenizer, as served.
TOKENIZER = REPO_ROOT / "models" / "rubytailor-default" / "tokenizer.json"
PROMPT_BUDGET = 96  # tokens: small, so fixtures show what the budget cuts


def _read(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as f:
        return f.read()


def _compare(expected_path: Path, actual: str) -> None:
    if UPDATE:
        with expected_path.open("w", encoding="utf-8", newline="") as f:
            f.write(actual)
        return
    if not expected_path.exists():
        pytest.fail(f"{expected_path.name} is missing; run with RUBYTAILOR_UPDATE_GOLDEN=1")
    assert actual == _read(expected_path), f"{expected_path.name} differs (see module docstring)"


def _split_cursor(document: str) -> tuple[str, str]:
    assert document.count(CURSOR) == 1, "a fixture marks exactly one cursor"
    prefix, suffix = document.split(CURSOR)
    return prefix, suffix


@pytest.fixture(scope="module")
def count_tokens() -> object:
    if not TOKENIZER.is_file():
        pytest.skip(f"no bundled tokenizer at {TOKENIZER}")
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("fixture", sorted(GOLDEN.glob("prompt/*.rb")), ids=lambda p: p.stem)
def test_prompt(fixture: Path, count_tokens: object) -> None:
    prefix, suffix = _split_cursor(_read(fixture))
    fmt = get_format("starcoder")
    sections = []
    for order in ("spm", "psm"):
        prompt = build_prompt(
            prefix,
            suffix,
            fmt,
            PromptBudget(max_prompt_tokens=PROMPT_BUDGET),
            count_tokens,  # type: ignore[arg-type]
            order=order,
        )
        sections.append(
            f"=== {order} (estimated {prompt.estimated_tokens} tokens of {PROMPT_BUDGET})\n"
            f"{prompt.text}\n"
        )
    _compare(fixture.with_suffix(".expected"), "".join(sections))


def _stop_rules_case(fixture: Path) -> tuple[str, str, str]:
    text = _read(fixture)
    head, _, model = text.partition("=== model\n")
    document = head.removeprefix("=== document\n")
    prefix, suffix = _split_cursor(document)
    return prefix, suffix, model


def _run_rules(prefix: str, suffix: str, pieces: list[str]) -> tuple[str, str | None]:
    rules = StopRules(prefix, suffix, StopConfig(max_lines=8))
    for piece in pieces:
        if rules.push(piece):
            break
    return rules.text, rules.reason


@pytest.mark.parametrize("fixture", sorted(GOLDEN.glob("stop_rules/*.txt")), ids=lambda p: p.stem)
def test_stop_rules(fixture: Path) -> None:
    prefix, suffix, model = _stop_rules_case(fixture)
    text, reason = _run_rules(prefix, suffix, [model])
    # The rules judge one character at a time: how the stream is split never matters.
    assert _run_rules(prefix, suffix, list(model)) == (text, reason)
    _compare(fixture.with_suffix(".expected"), f"stop: {reason or '-'}\n=== suggestion\n{text}\n")
