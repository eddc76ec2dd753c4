"""`rubytailor train`: one command from a corpus to a trained (or resumed) model.

With ``--corpus``, the tokenizer and the packed token files are built inside the run
directory first (skipped when already there), so a run directory holds everything that
made the model. Run it again with the same ``--run`` to resume from the last checkpoint.
Multi-GPU: ``accelerate launch -m rubytailor.training.cli_train ...`` or ``torchrun``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from rubytailor.errors import ConfigError
from rubytailor.training.fim_dataset import FimConfig, chunk_chars_for
from rubytailor.training.trainer import ModelShape, TrainConfig

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train or resume a model (from scratch, continued, or LoRA)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(data_dir=Path(), run_dir=Path())
    s = ModelShape()
    f = FimConfig()
    # --run-dir is the spelling for torchrun, whose own parser takes --run for --run-path.
    parser.add_argument(
        "--run", "--run-dir", dest="run", type=Path, required=True, help="run directory"
    )
    parser.add_argument("--corpus", type=Path, help="corpus from `rubytailor corpus`")
    parser.add_argument("--data", type=Path, help="packed token files (default: RUN/data)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer dir (default: RUN/tokenizer)")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size)
    parser.add_argument("--init-from", type=Path, help="local HF model to continue training")
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 trains all weights")
    parser.add_argument("--n-embd", type=int, default=s.n_embd)
    parser.add_argument("--n-layer", type=int, default=s.n_layer)
    parser.add_argument("--n-head", type=int, default=s.n_head)
    parser.add_argument("--dropout", type=float, default=s.dropout)
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--time-budget-minutes", type=float, default=0.0)
    parser.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--fim-rate", type=float, default=f.fim_rate)
    parser.add_argument("--spm-rate", type=float, default=f.spm_rate)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    from rubytailor.training.prepare import prepare_split
    from rubytailor.training.tokenizer import save_tokenizer, train_tokenizer
    from rubytailor.training.trainer import train

    run_dir: Path = args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = args.tokenizer or run_dir / "tokenizer"
    data_dir = args.data or run_dir / "data"
    if os.environ.get("RANK", "0") != "0":
        # Other ranks neither log to the run's files nor build data (that would race).
        if not (data_dir / "train.bin").is_file():
            raise ConfigError(
                f"{data_dir}/train.bin is missing; under torchrun/accelerate build the data "
                "first with `rubytailor tokenizer` and `rubytailor prepare --out DATA`."
            )
        args.corpus = None
    else:
        _log_to_file(run_dir / "train.log")
        with (run_dir / "commands.txt").open("a", encoding="utf-8") as fh:
            fh.write(shlex.join(["rubytailor", "train", *argv_of(args)]) + "\n")
    if args.corpus is not None:
        from rubytailor.training.corpus import read_split

        if not (tokenizer_dir / "tokenizer.json").is_file() and args.init_from is None:
            log.info("training a %d-token BPE tokenizer on %s", args.vocab_size, args.corpus)
            texts = (row["text"] for row in read_split(args.corpus, "train"))
            save_tokenizer(train_tokenizer(texts, args.vocab_size), tokenizer_dir, args.seq_len)
        if args.init_from is not None and args.tokenizer is None:
            tokenizer_dir = args.init_from
        fim = FimConfig(
            fim_rate=args.fim_rate,
            spm_rate=args.spm_rate,
            chunk_chars=chunk_chars_for(args.seq_len),
            seed=args.seed,
        )
        for split in ("train", "validation"):
            if not (data_dir / f"{split}.bin").is_file():
                prepare_split(args.corpus, tokenizer_dir, data_dir, split, fim)
    config = TrainConfig(
        data_dir=data_dir,
        run_dir=run_dir,
        vocab_size=args.vocab_size,
        shape=ModelShape(
            n_embd=args.n_embd,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_positions=args.seq_len,
            dropout=args.dropout,
        ),
        init_from=args.init_from,
        lora_r=args.lora_r,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        time_budget_minutes=args.time_budget_minutes,
        checkpoint_minutes=args.checkpoint_minutes,
        eval_every=args.eval_every,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    state = train(config)
    log.info(
        "done: step %d, %.2fM tokens, %.1f min",
        state.step,
        state.tokens_seen / 1e6,
        state.elapsed_s / 60,
    )
    return 0


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command line as given (sys.argv after the subcommand), for the run's record."""
    argv = sys.argv[1:]
    return argv[argv.index("train") + 1 :] if "train" in argv else argv


def _log_to_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m rubytailor.training.cli_train`, accelerate)."""
    parser = argparse.ArgumentParser(prog="rubytailor train")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
