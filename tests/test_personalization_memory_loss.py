"""The project memory's targets for the adapter's training loss: the mixture the server
computes, each token predicted from the other files (and, in a FIM middle, from the
document around the cursor), nothing for rehearsed general Ruby."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from rubytailor.lsp.workspace_memory import memory_of
from rubytailor.model.project_memory import Match, mix, target_share
from rubytailor.personalization.adapter_training import (
    AdapterConfig,
    _data_complete,
    prepare_data,
)
from rubytailor.personalization.holdout import Split
from rubytailor.personalization.memory_loss import MemoryTargets, newline_ids
from rubytailor.training.fim_dataset import (
    LOSS_WEIGHTS,
    MEMORY_TARGETS,
    Example,
    PromptWeights,
    load_loss_weights,
    load_memory_targets,
)

SHARED = "class Invoice\n  def total_amount\n    lines.sum(&:amount)\n  end\nend\n"


def test_target_share_is_the_memory_part_of_the_mixed_probability() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(40))
    matches = [
        Match(3, np.array([2, 7, 30]), np.array([1, 4, 2]), "document"),
        Match(9, np.array([7, 11]), np.array([5, 1]), "workspace"),
    ]
    mixed, weight = mix(probs, matches)
    for token in (2, 7, 11, 30, 5):  # 5: neither source has it
        w, q = target_share(matches, token)
        assert w == pytest.approx(weight)
        assert mixed[token] == pytest.approx((1 - w) * probs[token] + q)
    assert target_share(matches, 5)[1] == 0.0
    assert target_share([], 7) == (0.0, 0.0)


def _targets(
    model_dir: Path, files: list[tuple[str, str]], sources: list[tuple[str | None, str]]
) -> tuple[MemoryTargets, Tokenizer]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    hook = MemoryTargets(
        memory_of(model_dir, files),
        sources,
        encode,
        newline_ids(tokenizer.decode, tokenizer.get_vocab_size()),
        io.BytesIO(),
    )
    return hook, tokenizer


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_a_file_is_predicted_by_the_other_files_never_by_itself(tiny_model_dir: Path) -> None:
    alone, tokenizer = _targets(tiny_model_dir, [("a.rb", SHARED)], [("a.rb", SHARED)])
    ids = _ids(tokenizer, SHARED)
    plain = Example(prompt="", completion=SHARED, source=0)
    assert not alone.targets(plain, [], ids).any()  # only a.rb itself holds this code

    files = [("a.rb", SHARED), ("b.rb", SHARED)]
    both, _ = _targets(tiny_model_dir, files, [("a.rb", SHARED)])
    pairs = both.targets(plain, [], ids)
    weight, share = pairs[:, 0], pairs[:, 1]
    assert weight[0] == 0.0  # the first token has no context
    # b.rb goes on the same way, its weight growing with the match (3 tokens: 0.37).
    assert (weight[3:] > 0.3).all() and (share[3:] > 0.3).all()
    assert (share <= weight + 1e-6).all()


def test_rehearsed_general_ruby_gets_plain_cross_entropy(tiny_model_dir: Path) -> None:
    files = [("a.rb", SHARED), ("b.rb", SHARED)]
    hook, tokenizer = _targets(tiny_model_dir, files, [(None, SHARED)])
    example = Example(prompt="", completion=SHARED, source=0)
    assert not hook.targets(example, [], _ids(tokenizer, SHARED)).any()


def test_a_fim_middle_is_predicted_from_the_document_around_the_cursor(
    tiny_model_dir: Path,
) -> None:
    # The middle repeats what follows the same lines above the cursor in the same file:
    # the document source predicts it, though no other file holds that code.
    text = SHARED * 3
    cursor = 2 * len(SHARED)
    hook, tokenizer = _targets(tiny_model_dir, [("a.rb", text)], [("a.rb", text)])
    line_end = text.index("\n", cursor) + 1
    middle = text[cursor:line_end]
    prompt = _ids(tokenizer, text[:cursor])
    completion = _ids(tokenizer, middle)
    fim = Example(prompt=text[:cursor], completion=middle, source=0, middle=(cursor, line_end))
    pairs = hook.targets(fim, prompt, completion)
    assert not pairs[: len(prompt)].any()  # the prompt's own tokens: no other file
    # Every middle token after the first; the last, the line's newline, is one token in
    # the middle but merges with the next line's indentation in the document.
    inside = pairs[len(prompt) + 1 : -1]
    assert len(inside) >= 3 and (inside > 0.3).all()


def test_prepare_data_writes_one_pair_per_token_and_knows_when_it_is_complete(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = Split(
        method="mtime",
        train_files=[(f"/p/app/m{n}.rb", SHARED * 3) for n in range(4)],
        eval_files=[("/p/app/new.rb", SHARED * 30)],
        cases=[],
        detail={},
    )
    config = AdapterConfig(fim_passes=2, memory_loss=True)
    general = [(f"g{n}.rb", f"class Gen{n}\n  attr_reader :value\nend\n") for n in range(50)]
    out = tmp_path / "data"
    total = prepare_data(split, tiny_model_dir, out, config, general)
    pairs = load_memory_targets(out / MEMORY_TARGETS)
    assert len(pairs) == total == json.loads((out / "train.json").read_text())["tokens"]
    assert 0.3 < (pairs[:, 0] > 0).mean() < 1.0  # project code yes, rehearsal no
    assert _data_complete(out, config)
    data = (out / MEMORY_TARGETS).read_bytes()
    (out / MEMORY_TARGETS).write_bytes(data[:-8])  # a run killed while writing
    assert not _data_complete(out, config)
    assert _data_complete(out, AdapterConfig(fim_passes=2))  # a plain run needs no targets


def test_prompt_weights_weigh_the_fim_prompt_and_stay_complete_with_the_memory_targets(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = Split(
        method="mtime",
        train_files=[(f"/p/app/m{n}.rb", SHARED * 3) for n in range(4)],
        eval_files=[],
        cases=[],
        detail={},
    )
    config = AdapterConfig(fim_passes=2, memory_loss=True, prompt_weight=0.25)
    out = tmp_path / "data"
    total = prepare_data(split, tiny_model_dir, out, config)
    weights = load_loss_weights(out / LOSS_WEIGHTS)
    assert len(weights) == total == len(load_memory_targets(out / MEMORY_TARGETS))
    assert set(np.unique(weights)) == {0.25, 1.0}
    # Token by token: a FIM example's prompt weighs 0.25, its middle and plain text 1.
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    fim = Example(prompt="<fim_prefix>def a", completion="(x)<|endoftext|>", source=0)
    prompt, completion = _ids(tokenizer, fim.prompt), _ids(tokenizer, fim.completion)
    buffer = io.BytesIO()
    hook = PromptWeights(0.25, buffer)
    hook([fim, Example(prompt="", completion="end\n")], [(prompt, completion), ([], [5, 6])])
    row = np.frombuffer(buffer.getvalue(), dtype=np.float32)
    assert row.tolist() == [0.25] * len(prompt) + [1.0] * (len(completion) + 2)
    assert _data_complete(out, config)
    data = (out / LOSS_WEIGHTS).read_bytes()
    (out / LOSS_WEIGHTS).write_bytes(data[:-4])  # a run killed while writing
    assert not _data_complete(out, config)
