"""Token healing in the shared generation loop: the rule, and what a backend does with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rubytailor.model.backends import load_backend, token_loop
from rubytailor.model.backends.base import CancelToken, GenerationParams, GenerationStats
from rubytailor.model.backends.token_loop import MAX_HEALED_TOKENS, TokenLoopBackend, heals
from rubytailor.model.fim import get_format
from rubytailor.model.project_memory import MemoryRequest, ProjectMemory
from rubytailor.model.prompt import assemble
from rubytailor.training.tiny import build_tiny_model

FIM = get_format("starcoder")


@pytest.mark.parametrize(
    ("text", "target", "ok"),
    [
        ("va", "valu", True),  # on the way
        ("vb", "valu", False),
        ("value", "valu", True),  # re-created and continued
        ("valu", "valu", True),  # a word may end where the cursor is
        ("    ", "    ", False),  # whitespace: not the bare boundary again
        ("     x", "    ", False),  # nor a deeper indentation
        ("    def", "    ", True),
        ("\n\n  ", "\n\n  ", False),
        ("\n\n  end", "\n\n  ", True),
        ("\n", "\n\n  ", True),
        ("\nx", "\n\n  ", False),
        ("\n  def", "\n", True),  # at a line's start, indentation may follow
        ("\n", "\n", False),
    ],
)
def test_the_healing_rule(text: str, target: str, ok: bool) -> None:
    assert heals(text, target, target.isspace()) is ok


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> TokenLoopBackend:
    model = build_tiny_model(tmp_path_factory.mktemp("heal"), train_steps=60)
    loaded = load_backend("transformers", model, threads=1)
    assert isinstance(loaded, TokenLoopBackend)
    return loaded


def generate(
    backend: TokenLoopBackend, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[int]]:
    """The suggestion, and every token the loop chose (stop tokens included)."""
    chosen: list[int] = []
    original = token_loop.choose
    monkeypatch.setattr(token_loop, "choose", lambda *a: _record(chosen, original, *a))
    backend.reset_cache()
    prompt = assemble(prefix, "\nend\n", FIM, "spm")
    params = GenerationParams(max_new_tokens=12)
    text = "".join(backend.stream(prompt, params, CancelToken(), GenerationStats()))
    return text, chosen


def _record(chosen: list[int], choose: Any, *args: Any) -> int:
    chosen.append(choose(*args))
    return chosen[-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "prefix",
    [
        "class Cart\n  def initialize(items = [])\n    @ite",  # mid-word
        "class Cart\n  def total\n\n    ",  # indentation after a blank line
        "class Cart\n  def total\n    @items.sum { |item| item[:price] }\n  end\n\n",
    ],
)
def test_the_text_taken_off_is_regenerated_and_not_repeated(
    backend: TokenLoopBackend, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, chosen = generate(backend, prefix, monkeypatch)
    prompt_ids = backend._encode(assemble(prefix, "\nend\n", FIM, "spm"))
    healed_ids, taken = backend._heal(prompt_ids)
    assert taken and prefix.endswith(taken)
    assert backend._decode(prompt_ids[len(healed_ids) :]) == taken
    # What was generated in place of the taken-off tokens starts with exactly their text.
    regenerated = backend._decode([t for t in chosen if t not in backend._stop_ids])
    assert regenerated.startswith(taken)
    # The suggestion is what follows that text, not the text again.
    assert text == regenerated[len(taken) :].rstrip("\ufffd")


@pytest.mark.parametrize(
    "prefix", ["class Cart\n  def initialize\n    respo", "  def total_pri", "x = @opt"]
)
def test_a_word_cut_mid_way_is_taken_off_whole(backend: TokenLoopBackend, prefix: str) -> None:
    """Every token of the word the cursor is in comes off, not just the last one: with
    "el" + "s" of "els" left as "el", the model never saw "else" start that way."""
    ids = backend._encode(assemble(prefix, "\nend\n", FIM, "spm"))
    healed, taken = backend._heal(ids)
    word = re.search(r"\w+$", prefix)
    assert word is not None and len(ids) - len(healed) >= 2  # the word spans tokens
    assert len(ids) - len(healed) <= MAX_HEALED_TOKENS
    assert taken.endswith(word.group()) and prefix.endswith(taken)
    # What is left ends outside the word.
    assert not re.search(r"\w$", backend._decode(healed[-1:]))


def test_the_open_file_does_not_predict_the_text_healing_took_off(
    backend: TokenLoopBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document's own cursor line must not be memory for its healed tail: it would
    predict exactly the token boundary healing takes off (on Redmine, leaving it in
    cost 4 points of exact match)."""
    prefix = "class Cart\n  def total\n    @zebra_quota_for_walrus = compa"
    first_match: list[int] = []
    lookup = ProjectMemory.lookup

    def spy(self: ProjectMemory, context: Any, exclude: Any, document: Any, anchor: Any) -> Any:
        if not first_match and document is not None:
            first_match.append(document.longest_match(context).n)
        return lookup(self, context, exclude, document, anchor)

    monkeypatch.setattr(ProjectMemory, "lookup", spy)
    backend.reset_cache()
    memory = MemoryRequest(ProjectMemory(), prefix, "\nend\n")
    params = GenerationParams(max_new_tokens=4, memory=memory)
    prompt = assemble(prefix, "\nend\n", FIM, "spm")
    list(backend.stream(prompt, params, CancelToken(), GenerationStats()))
    assert backend._heal(backend._encode_prompt(prompt, params))[1].endswith("compa")
    # The cursor line occurs once in the file: with its last word taken off, nothing
    # in the file matches more than a token or two of it (with it, the whole line did).
    assert first_match and first_match[0] <= 2


@pytest.mark.slow
def test_healing_can_be_switched_off(
    backend: TokenLoopBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    healed: list[str] = []
    original = backend._heal

    def spy(ids: list[int]) -> tuple[list[int], str]:
        out = original(ids)
        healed.append(out[1])
        return out

    monkeypatch.setattr(backend, "_heal", spy)
    prompt = "<fim_suffix>\n<fim_middle>def valu"
    for heal in (True, False):
        params = GenerationParams(max_new_tokens=2, token_healing=heal)
        list(backend.stream(prompt, params, CancelToken(), GenerationStats()))
    # Healing ran (and took text off) for the first call only.
    assert len(healed) == 1 and healed[0]


def test_byte_level_tokens_decode_alone_so_healing_is_on(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m")
    loaded = load_backend("transformers", model, threads=1)
    assert isinstance(loaded, TokenLoopBackend)
    assert loaded._heals_cleanly()


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["puts 'café", "# 日本語", "x = '😀"])
def test_pieces_of_a_multi_byte_character_are_not_healed(
    backend: TokenLoopBackend, prefix: str
) -> None:
    ids = backend._encode(prefix)
    assert "\ufffd" in backend._token_texts()[ids[-1]]  # the tiny vocabulary splits it
    assert backend._heal(ids) == (ids, "")
