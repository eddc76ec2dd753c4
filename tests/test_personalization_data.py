"""What an adapter trains on: general Ruby beside the project (checked or rehearsed,
never both) and the mix of project and rehearsed code in the training file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rubytailor.personalization.adapter_training import (
    AdapterConfig,
    batch_size,
    prepare_data,
    rehearsal_texts,
)
from rubytailor.personalization.base_ruby import find_base_ruby
from rubytailor.personalization.holdout import Split


def _rb(n: int) -> str:
    return f"module Util{n}\n  def self.twice(x)\n    x * 2 + {n}\n  end\nend\n"


def test_a_corpus_directory_is_checked_on_its_test_split_and_rehearsed_from_train(
    tmp_path: Path,
) -> None:
    for split, count in (("test", 2), ("train", 3)):
        rows = [
            {"source": split, "path": f"lib/{n}.rb", "sha256": "", "text": _rb(n)}
            for n in range(count)
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = find_base_ruby(tmp_path)
    assert [n for n, _ in found.check] == ["test:lib/0.rb", "test:lib/1.rb"]
    assert len(found.rehearse) == 3 and "test/train" in found.source


def test_a_plain_directory_is_split_in_two_halves_that_never_overlap(tmp_path: Path) -> None:
    for n in range(20):
        (tmp_path / f"f{n}.rb").write_text(_rb(n))
    found = find_base_ruby(tmp_path)
    checked = {n for n, _ in found.check}
    rehearsed = {n for n, _ in found.rehearse}
    assert checked and rehearsed and not checked & rehearsed
    assert checked | rehearsed == {f"f{n}.rb" for n in range(20)}
    assert find_base_ruby(tmp_path).check == found.check  # stable


def test_nothing_found_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUBYTAILOR_BASE_CORPUS", raising=False)
    monkeypatch.setenv("RUBYTAILOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no ruby
    found = find_base_ruby(tmp_path / "missing")
    assert (found.check, found.rehearse, found.source) == ([], [], "none")


def test_rehearsal_is_the_configured_share_of_each_pass() -> None:
    project = [_rb(n) * 10 for n in range(10)]
    general = [(f"g{n}.rb", _rb(n)) for n in range(200)]
    config = AdapterConfig(rehearsal_share=0.3, fim_passes=3)
    passes = rehearsal_texts(project, general, config)
    want = sum(map(len, project)) * 0.3 / 0.7
    assert len(passes) == 3
    for picked in passes:
        assert want <= sum(map(len, picked)) < want + max(len(t) for _, t in general)
    assert passes[0] != passes[1]  # later passes draw other files
    assert rehearsal_texts(project, general, AdapterConfig(rehearsal_share=0)) == [[], [], [], []]


def test_the_training_file_holds_project_and_rehearsed_code(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = Split(
        method="mtime",
        train_files=[(f"/p/app/m{n}.rb", _rb(n) * 3) for n in range(6)],
        eval_files=[("/p/app/new.rb", _rb(99) * 30)],
        cases=[],
        detail={},
    )
    config = AdapterConfig(fim_passes=2)
    alone = prepare_data(split, tiny_model_dir, tmp_path / "a", config)
    general = [(f"g{n}.rb", f"class Gen{n}\n  attr_reader :value\nend\n") for n in range(50)]
    mixed = prepare_data(split, tiny_model_dir, tmp_path / "b", config, general)
    assert mixed > alone > 0
    tokens = np.fromfile(tmp_path / "b" / "train.bin", dtype=np.uint16)
    assert tokens.size == mixed
    assert (tmp_path / "b" / "validation.bin").is_file()


def test_a_longer_context_trains_fewer_sequences_per_step_not_more_tokens() -> None:
    config = AdapterConfig()
    assert [batch_size(config, n) for n in (256, 512, 1024)] == [8, 4, 2]
    assert batch_size(AdapterConfig(tokens_per_step=100), 1024) == 1
