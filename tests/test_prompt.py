"""The prompt builder and FIM formats (model/prompt.py, model/fim.py)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from rubytailor.model.fim import all_formats, detect_format, get_format
from rubytailor.model.prompt import (
    PREFIX_WINDOW_STEP,
    PromptBudget,
    assemble,
    build_prompt,
    training_text,
)

STARCODER = get_format("starcoder")


def chars4(text: str) -> int:
    """A stand-in tokenizer: one token per 4 characters, as the fake backend counts."""
    return math.ceil(len(text) / 4)


def utf8_bytes(text: str) -> int:
    """The worst case of a byte-level tokenizer: one token per byte."""
    return len(text.encode())


def ruby_document(methods: int) -> str:
    body = "".join(
        f"  def method_{i}(arg)\n    value = arg * {i}\n    value + 1\n  end\n\n"
        for i in range(methods)
    )
    return f"class Calculator\n{body}end\n"


# -- FIM formats ----------------------------------------------------------------------


def test_known_formats_load_with_all_markers() -> None:
    formats = all_formats()
    assert {"starcoder", "qwen", "deepseek", "codellama"} <= set(formats)
    for fmt in formats.values():
        assert fmt.prefix.strip() and fmt.suffix.strip() and fmt.middle.strip() and fmt.eos
        # Stop strings are the markers without padding, never empty.
        assert all(s and s == s.strip() for s in fmt.stop_strings)
        assert fmt.eos[0] in fmt.stop_strings


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="starcoder"):
        get_format("gpt-17")


@pytest.mark.parametrize("name", ["starcoder", "qwen", "deepseek", "codellama"])
def test_detect_format_from_special_tokens(name: str) -> None:
    fmt = get_format(name)
    tokens = ["<s>", "</s>", *fmt.special_tokens]
    assert detect_format(tokens) == fmt
    # A tokenizer missing one of the three markers cannot do FIM in that format.
    assert detect_format([t for t in tokens if t != fmt.middle.strip()]) is None


def test_detect_format_without_fim_tokens() -> None:
    assert detect_format(["<|endoftext|>", "<pad>", "<unk>"]) is None


# -- assembling -------------------------------------------------------------------------


def test_spm_and_psm_layouts() -> None:
    assert (
        assemble("def a\n  ", "\nend\n", STARCODER, "spm")
        == "<fim_prefix><fim_suffix>\nend\n<fim_middle>def a\n  "
    )
    assert (
        assemble("def a\n  ", "\nend\n", STARCODER, "psm")
        == "<fim_prefix>def a\n  <fim_suffix>\nend\n<fim_middle>"
    )


@pytest.mark.parametrize("order", ["spm", "psm"])
def test_training_text_is_the_serving_prompt_then_the_answer(order: str) -> None:
    prefix, middle, suffix = "def add(a, b)\n  ", "a + b", "\nend\n"
    prompt = build_prompt(prefix, suffix, STARCODER, PromptBudget(), chars4, order)  # type: ignore[arg-type]
    example = training_text(prefix, middle, suffix, STARCODER, order)  # type: ignore[arg-type]
    assert example == prompt.text + middle + "<|endoftext|>"


# -- budgets ----------------------------------------------------------------------------


def test_small_documents_are_kept_whole() -> None:
    doc = ruby_document(3)
    cut = doc.index("value + 1", 100)
    prompt = build_prompt(doc[:cut], doc[cut:], STARCODER, PromptBudget(), chars4)
    assert (prompt.prefix, prompt.suffix) == (doc[:cut], doc[cut:])
    assert prompt.text == assemble(doc[:cut], doc[cut:], STARCODER, "spm")


@pytest.mark.parametrize("max_tokens", [64, 200, 1024])
@pytest.mark.parametrize("count", [chars4, utf8_bytes])
def test_large_documents_fit_the_budget(max_tokens: int, count: object) -> None:
    doc = ruby_document(400)
    cut = doc.index("value = arg * 200")
    prefix, suffix = doc[:cut], doc[cut:]
    budget = PromptBudget(max_prompt_tokens=max_tokens)
    prompt = build_prompt(prefix, suffix, STARCODER, budget, count)  # type: ignore[arg-type]
    assert prompt.estimated_tokens <= max_tokens
    # Whole lines nearest the cursor: the prefix's tail, the suffix's head.
    assert prefix.endswith(prompt.prefix) and prompt.prefix.endswith("    ")
    assert suffix.startswith(prompt.suffix)
    assert prefix[: len(prefix) - len(prompt.prefix)].endswith("\n")
    markers = count(assemble("", "", STARCODER, "spm"))  # type: ignore[operator]
    assert count(prompt.suffix) <= (max_tokens - markers) * budget.suffix_share  # type: ignore[operator]


def test_prefix_window_starts_on_a_step_of_lines() -> None:
    doc = ruby_document(200)
    cut = doc.index("value + 1", len(doc) // 2)
    prompt = build_prompt(
        doc[:cut], doc[cut:], STARCODER, PromptBudget(max_prompt_tokens=300), chars4
    )
    dropped_lines = doc[:cut][: len(doc[:cut]) - len(prompt.prefix)].count("\n")
    assert dropped_lines > 0
    assert dropped_lines % PREFIX_WINDOW_STEP == 0


def test_typing_on_a_line_keeps_extending_the_same_prompt() -> None:
    """SPM prompts grow by what was typed, so a backend can reuse its KV cache."""
    doc = ruby_document(300)
    cut = doc.index("value + 1", len(doc) // 2)
    typed = "value + 1 if value.positive? && arg.respond_to?(:round)"
    budget = PromptBudget(max_prompt_tokens=512)
    prompts = [
        build_prompt(doc[:cut] + typed[:n], doc[cut:], STARCODER, budget, chars4).text
        for n in range(len(typed) + 1)
    ]
    extensions = sum(b.startswith(a) for a, b in itertools.pairwise(prompts))
    assert extensions == len(prompts) - 1


def test_one_enormous_cursor_line_is_cut_to_fit() -> None:
    # Multi-byte text costs a token per byte in a byte-level vocabulary.
    prefix = "x = 1\n# " + "コメント" * 300
    budget = PromptBudget(max_prompt_tokens=100)
    prompt = build_prompt(prefix, "\nend\n", STARCODER, budget, utf8_bytes)
    assert prompt.estimated_tokens <= 100
    assert utf8_bytes(prompt.text) <= 100
    assert prefix.endswith(prompt.prefix) and prompt.prefix


def test_real_tokenizer_budget(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    doc = ruby_document(100)
    cut = doc.index("value + 1", len(doc) // 2)
    prompt = build_prompt(
        doc[:cut], doc[cut:], STARCODER, PromptBudget(max_prompt_tokens=256), count
    )
    # Counting line by line may differ from counting the whole prompt at line joins.
    assert count(prompt.text) <= 256 + 8
    assert prompt.text.startswith("<fim_prefix><fim_suffix>")
