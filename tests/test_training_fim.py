"""FIM training examples are exactly what the serving prompt builder would produce."""

from __future__ import annotations

import random
import re

import pytest

from rubytailor.model.fim import get_format
from rubytailor.model.prompt import assemble, training_text
from rubytailor.training.fim_dataset import FimConfig, chunk_lines, fim_split, make_examples

FMT = get_format("starcoder")
RUBY = "".join(
    f'def method_{i}(arg)\n  value = arg * {i}\n  puts "got #{{value}}"\nend\n\n' for i in range(40)
)
SPM = re.compile(r"^<fim_prefix><fim_suffix>(.*)<fim_middle>(.*)$", re.S)
PSM = re.compile(r"^<fim_prefix>(.*)<fim_suffix>(.*)<fim_middle>(.*)$", re.S)


def _decompose(example: str) -> tuple[str, str, str, str]:
    """(order, prefix, middle, suffix) of a FIM example, read back from its markers."""
    body = example.removesuffix("<|endoftext|>")
    m = SPM.match(body)
    if m:
        suffix, rest = m.groups()
        return "spm", rest, "", suffix
    m = PSM.match(body)
    assert m, example
    prefix, suffix, middle = m.groups()
    return "psm", prefix, middle, suffix


def test_chunks_are_whole_lines_that_rebuild_the_file() -> None:
    chunks = chunk_lines(RUBY, 200)
    assert "".join(chunks) == RUBY
    assert all(c.endswith("\n") for c in chunks)
    assert all(len(c) <= 200 for c in chunks)


@pytest.mark.parametrize("line_rate", [0.0, 1.0])
def test_fim_split_pieces_concatenate_to_the_chunk(line_rate: float) -> None:
    rng = random.Random(3)
    for _ in range(200):
        prefix, middle, suffix = fim_split(RUBY[:300], rng, line_rate)
        assert prefix + middle + suffix == RUBY[:300]


def test_examples_equal_training_text_for_their_pieces() -> None:
    config = FimConfig(fim_rate=1.0, spm_rate=0.5, chunk_chars=300, seed=7)
    examples = [e.text for e in make_examples([RUBY], FMT, config)]
    chunks = chunk_lines(RUBY, 300)
    assert len(examples) == len(chunks)
    orders = set()
    for example, chunk in zip(examples, chunks, strict=True):
        order, prefix, middle, suffix = _decompose(example)
        orders.add(order)
        if order == "spm":
            # SPM text is suffix, then prefix + middle: the boundary between prefix and
            # middle is not visible in the text, and no split changes the string.
            head = prefix
            assert head + suffix == chunk
            for cut in (0, len(head) // 2, len(head)):
                assert training_text(head[:cut], head[cut:], suffix, FMT, "spm") == example
        else:
            assert prefix + middle + suffix == chunk
            assert training_text(prefix, middle, suffix, FMT, "psm") == example
            assert example.startswith(assemble(prefix, suffix, FMT, "psm"))
    assert orders == {"spm", "psm"}


def test_plain_chunks_of_one_file_end_with_eos_only_at_its_end() -> None:
    config = FimConfig(fim_rate=0.0, chunk_chars=300)
    examples = [e.text for e in make_examples([RUBY, "x = 1\n"], FMT, config)]
    assert "".join(examples) == RUBY + "<|endoftext|>" + "x = 1\n<|endoftext|>"


def test_examples_are_deterministic_for_a_seed() -> None:
    config = FimConfig(seed=11)
    assert list(make_examples([RUBY], FMT, config)) == list(make_examples([RUBY], FMT, config))
    other = list(make_examples([RUBY], FMT, FimConfig(seed=12)))
    assert other != list(make_examples([RUBY], FMT, config))


def test_spm_examples_are_tokenized_as_served_prompt_then_completion() -> None:
    from rubytailor.training.fim_dataset import Example, example_ids
    from rubytailor.training.tokenizer import train_tokenizer

    indented = "".join(f"class C{i}\n  def m{i}\n    {i}\n  end\nend\n" for i in range(50))
    tok = train_tokenizer([indented] * 5, vocab_size=400)

    def encode(batch: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(batch)]

    prefix, middle, suffix = "class A\n  def a\n    1\n  end\n\n  ", "def b", "\nend\n"
    prompt = assemble(prefix, suffix, FMT, "spm")  # what the server sends at this cursor
    example = Example(prompt=prompt, completion=middle + "<|endoftext|>")
    assert example.text == training_text(prefix, middle, suffix, FMT, "spm")
    (ids,) = example_ids([example], encode)
    served = encode([prompt])[0]
    assert ids[: len(served)] == served  # the model trains on exactly the served prompt
    # Encoding the whole string would move the boundary: "  " + "def" -> " " + " def".
    assert encode([example.text])[0] != ids
