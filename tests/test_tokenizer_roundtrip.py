"""The Ruby BPE tokenizer: exact round trips, single-token specials, versioned saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rubytailor.errors import ModelError
from rubytailor.model.fim import get_format
from rubytailor.model.prompt import training_text
from rubytailor.training.tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "class User < ApplicationRecord\n  has_many :posts\n  validates :email, presence: true\nend\n",
    "def each_pair\n  return enum_for(:each_pair) unless block_given?\n"
    "  @h.each { |k, v| yield k, v }\nend\n",
    "describe Cart do\n  it 'sums' do\n    expect(cart.total).to eq(42)\n  end\nend\n",
] * 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(TEXTS, vocab_size=400), out, context_length=128)
    return out


@pytest.mark.parametrize(
    "text",
    [
        "puts 'héllo wörld' # ünïcode\n",
        '\tindented_with_tab = "😀 emoji"\r\n',
        "x   =   1  \n\n\n  \n",
        "<<~SQL\n  SELECT * FROM users WHERE id = #{id}\nSQL\n",
        "byte soup: \x00\x01\x7f ∀x∈ℝ",
        "",
    ],
)
def test_any_text_round_trips_exactly(saved: Path, text: str) -> None:
    tok = load_tokenizer(saved)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_special_tokens_are_single_tokens_with_starcoder_ids(saved: Path) -> None:
    tok = load_tokenizer(saved)
    for expected_id, special in enumerate(SPECIAL_TOKENS):
        assert tok.encode(special, add_special_tokens=False) == [expected_id]
    assert tok.eos_token == "<|endoftext|>"


def test_fim_example_keeps_markers_whole_and_round_trips(saved: Path) -> None:
    tok = load_tokenizer(saved)
    fmt = get_format("starcoder")
    text = training_text("def add(a, b)\n  ", "a + b", "\nend\n", fmt, "spm")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[:2] == [1, 3]  # <fim_prefix><fim_suffix> open an SPM example
    assert ids.count(2) == 1 and ids[-1] == 0  # one <fim_middle>, ends with <|endoftext|>
    assert tok.decode(ids) == text


def test_code_compresses_to_fewer_tokens_than_bytes(saved: Path) -> None:
    tok = load_tokenizer(saved)
    text = TEXTS[0]
    assert len(tok.encode(text, add_special_tokens=False)) < len(text.encode()) / 2


def test_saved_tokenizer_carries_its_version_and_other_versions_are_refused(
    saved: Path, tmp_path: Path
) -> None:
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["rubytailor_tokenizer_version"] == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (other / "tokenizer_config.json").write_text(
        json.dumps({**config, "rubytailor_tokenizer_version": 99})
    )
    with pytest.raises(ModelError, match="version 99"):
        load_tokenizer(other)
