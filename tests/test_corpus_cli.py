"""The data commands end to end on a local gem directory: corpus -> tokenizer -> prepare."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rubytailor.training.cli_data import main
from rubytailor.training.cli_train import main as train_main
from rubytailor.training.fim_dataset import FimConfig, chunk_chars_for
from rubytailor.training.licenses import license_from_gem_dir


def _gem(root: Path, name: str, license_line: str) -> Path:
    gem = root / name
    (gem / "lib" / name).mkdir(parents=True)
    (gem / f"{name}.gemspec").write_text(
        f'Gem::Specification.new do |s|\n  s.name = "{name}"\n  {license_line}\nend\n'
    )
    for i in range(8):
        (gem / "lib" / name / f"part{i}.rb").write_text(
            f"module {name.capitalize()}\n  class Part{i}\n"
            + "".join(f"    def step_{j}(x)\n      x + {i * 10 + j}\n    end\n\n" for j in range(6))
            + "  end\nend\n"
        )
    return gem


def test_gem_license_comes_from_the_gemspec(tmp_path: Path) -> None:
    assert license_from_gem_dir(_gem(tmp_path, "alpha", 's.license = "MIT"')) == "MIT"
    gem = _gem(tmp_path, "beta", 's.licenses = ["GPL-3.0", "Ruby"]')
    assert license_from_gem_dir(gem) == "GPL-3.0 or Ruby"


def test_corpus_tokenizer_prepare_commands(tmp_path: Path) -> None:
    mit = _gem(tmp_path / "src", "alpha", 's.license = "MIT"')
    gpl = _gem(tmp_path / "src", "gamma", 's.license = "GPL-3.0"')
    corpus = tmp_path / "corpus"
    argv = ["corpus", "--no-debian", "--dir", str(mit), "--dir", str(gpl), "--out", str(corpus)]
    assert main(argv) == 0
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["kept_files"] == 9  # alpha's 8 parts + gemspec; gamma is GPL-only
    assert summary["excluded_licenses"] == {"GPL-3.0": 9}
    assert set(summary["sources"]) == {"alpha"}

    assert summary["splits"]["train"]["files"] == 9  # "alpha" hashes into train
    tok_dir = tmp_path / "tok"
    assert (
        main(["tokenizer", "--corpus", str(corpus), "--out", str(tok_dir), "--vocab-size", "300"])
        == 0
    )
    data = tmp_path / "data"
    argv = ["prepare", "--corpus", str(corpus), "--tokenizer", str(tok_dir), "--out", str(data)]
    assert main([*argv, "--splits", "train"]) == 0
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    meta = json.loads((data / "train.json").read_text())
    assert meta["tokens"] == tokens.size > 500
    assert int(tokens.max()) < meta["vocab_size"]
    assert (tokens == 1).sum() > 0  # <fim_prefix>: FIM examples are in the stream

    # --chunk-chars sets the example size (3200 for a 1024 context); these files are
    # ~700 characters, one 800-character chunk each, so 200 cuts them into more examples.
    short_data = tmp_path / "data-short"
    argv[-1] = str(short_data)
    assert main([*argv, "--splits", "train", "--chunk-chars", "200"]) == 0
    short_meta = json.loads((short_data / "train.json").read_text())
    assert (meta["fim"]["chunk_chars"], short_meta["fim"]["chunk_chars"]) == (800, 200)
    short_tokens = np.fromfile(short_data / "train.bin", dtype=np.uint16)
    assert (short_tokens == 1).sum() > (tokens == 1).sum() > 0


def test_train_builds_its_data_with_examples_sized_to_its_context(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    gem = _gem(tmp_path / "src", "alpha", 's.license = "MIT"')
    assert main(["corpus", "--no-debian", "--dir", str(gem), "--out", str(corpus)]) == 0
    tok_dir = tmp_path / "tok"
    assert (
        main(["tokenizer", "--corpus", str(corpus), "--out", str(tok_dir), "--vocab-size", "300"])
        == 0
    )
    run_dir = tmp_path / "run"
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        paths = ["--run", str(run_dir), "--corpus", str(corpus), "--tokenizer", str(tok_dir)]
        shape = ["--vocab-size", "300", "--n-embd", "32", "--n-layer", "1", "--n-head", "2"]
        steps = ["--seq-len", "64", "--batch-size", "2", "--max-steps", "1", "--eval-every", "0"]
        code = train_main([*paths, *shape, *steps])
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
            handler.close()
    assert code == 0
    meta = json.loads((run_dir / "data" / "train.json").read_text())
    assert meta["fim"]["chunk_chars"] == chunk_chars_for(64) == 200
    assert chunk_chars_for(256) == FimConfig().chunk_chars == 800
