"""Train -> export -> serve -> eval, end to end on a tiny model built in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rubytailor.model.backends.transformers_backend import TransformersBackend
from rubytailor.model.fim import get_format
from rubytailor.training.eval_cases import Case, line_cases, multiline_cases
from rubytailor.training.evaluate import EvalConfig, complete, evaluate
from rubytailor.training.export import export_run
from rubytailor.training.fim_dataset import FimConfig, make_examples, write_token_file
from rubytailor.training.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from rubytailor.training.trainer import ModelShape, TrainConfig, train

FILES = [
    f"class Thing{i}\n  def initialize(name)\n    @name = name\n  end\n\n"
    f'  def to_s\n    "Thing{i}(#{{@name}})"\n  end\nend\n'
    for i in range(30)
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    run = root / "run"
    save_tokenizer(train_tokenizer(FILES, vocab_size=300), run / "tokenizer", context_length=64)
    tok = load_tokenizer(run / "tokenizer")

    def encode(batch: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.backend_tokenizer.encode_batch(batch)]

    fmt = get_format("starcoder")
    for split, seed in (("train", 0), ("validation", 1)):
        examples = make_examples(FILES * 4, fmt, FimConfig(chunk_chars=120, seed=seed))
        write_token_file(examples, encode, root / "data" / f"{split}.bin", {"fim": {"seed": seed}})
    train(
        TrainConfig(
            data_dir=root / "data",
            run_dir=run,
            vocab_size=len(tok),
            shape=ModelShape(n_embd=64, n_layer=2, n_head=4, n_positions=64),
            seq_len=64,
            batch_size=8,
            lr=3e-3,
            warmup_steps=5,
            max_steps=200,
            threads=1,
            device="cpu",
            eval_every=1000,
        )
    )
    out = root / "model"
    export_run(run, out)
    return out


def test_export_writes_a_complete_fp16_model_directory(exported: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (exported / name).is_file(), name
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"torch.float16"}
    meta = json.loads((exported / "rubytailor.json").read_text())
    assert meta["format_version"] == 1
    assert (meta["fim_format"], meta["fim_order"], meta["context_length"]) == (
        "starcoder",
        "spm",
        64,
    )
    assert meta["trained"]["steps"] == 200 and meta["trained"]["tokens_seen"] == 200 * 8 * 64
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode" and config["multi_query"] is False


def test_exported_model_serves_ruby_suggestions(exported: Path) -> None:
    backend = TransformersBackend.load(exported, threads=1)
    prefix = FILES[7][: FILES[7].index("#{@") + 3]  # ... "Thing7(#{@
    suffix = FILES[7][FILES[7].index("})") :]
    case = Case(kind="line", source="t.rb", line=0, prefix=prefix, suffix=suffix, answer="")
    result = complete(backend, None, case, EvalConfig(max_tokens=8))
    assert result.generated_tokens > 0
    assert result.unchecked_text.startswith(
        "name"
    )  # 200 steps on 30 near-identical classes learn this


def test_eval_report_beats_the_random_init_floor(exported: Path) -> None:
    from rubytailor.training.cli_eval import random_init_like

    backend = TransformersBackend.load(exported, threads=1)
    files = [(f"t{i}.rb", t) for i, t in enumerate(FILES[:5])]
    config = EvalConfig(
        line_cases=6, multiline_cases=2, latency_cases=2, bpb_max_bytes=2000, max_tokens=8
    )
    cases = line_cases(files, 6, 0) + multiline_cases(files, 2, 0)
    report = evaluate(
        backend,
        cases,
        config,
        prism=None,
        check=None,
        texts=[t for _, t in files],
        baseline_backend=random_init_like(backend),
    )
    line = report["results"]["line"]
    assert set(line) == {"model", "copy_line_baseline", "random_init"}
    assert line["model"]["cases"] == 6 and report["results"]["multiline"]["model"]["cases"] == 2
    assert report["bits_per_byte"]["model"] < report["bits_per_byte"]["random_init"] / 2
    assert line["model"]["edit_similarity"] > line["random_init"]["edit_similarity"]
    assert report["latency_warm_single_line"]["cases"] == 2
    json.dumps(report)  # the report is plain JSON


@pytest.mark.parametrize("lora_r", [0, 4])
def test_continued_training_from_a_local_model_full_or_lora(
    exported: Path, tmp_path: Path, lora_r: int
) -> None:
    from safetensors.torch import load_file

    run = tmp_path / "continued"
    state = train(
        TrainConfig(
            data_dir=exported.parent / "data",
            run_dir=run,
            init_from=exported,
            lora_r=lora_r,
            seq_len=64,
            batch_size=8,
            lr=1e-2,
            warmup_steps=2,
            max_steps=10,
            threads=1,
            device="cpu",
            eval_every=1000,
        )
    )
    assert state.step == 10
    run_config = json.loads((run / "run_config.json").read_text())
    trainable, total = run_config["trainable_parameters"], run_config["parameters"]
    if lora_r:
        assert trainable < total / 5  # only the adapter trains
    else:
        assert trainable == total
    out = tmp_path / "continued_model"
    export_run(run, out, tokenizer_dir=exported)
    before = load_file(str(exported / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert set(after) == set(before)  # LoRA is merged: same plain GPTBigCode tensors
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed
    if lora_r:  # LoRA on linear layers leaves embeddings and norms alone
        assert "transformer.wte.weight" not in changed
        assert not any(".ln_" in k for k in changed)
    backend = TransformersBackend.load(out, threads=1)
    assert backend.fim_format == "starcoder"
