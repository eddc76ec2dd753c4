"""`rubytailor export` and `rubytailor eval`.

  rubytailor export --run runs/default --out models/rubytailor-default
  rubytailor eval --model models/rubytailor-default --corpus runs/corpus --split test \
      --out runs/default/eval.json
  rubytailor eval --model DIR --dir path/to/held-out/ruby --out report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rubytailor.errors import PrismError, RubytailorError

if TYPE_CHECKING:
    from rubytailor.model.backends.base import Backend
    from rubytailor.model.backends.transformers_backend import TransformersBackend
    from rubytailor.model.project_memory import ProjectMemory
    from rubytailor.prism import Prism
    from rubytailor.training.evaluate import Checker

log = logging.getLogger(__name__)


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a training run as a model directory")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, help="default: RUN/tokenizer")
    p.add_argument("--fim-order", choices=("spm", "psm"), default="spm")
    p.set_defaults(func=run_export)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    from rubytailor.training.evaluate import EvalConfig

    d = EvalConfig()
    p = subparsers.add_parser("eval", help="evaluate a model on held-out Ruby code")
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--corpus", type=Path, help="corpus directory (with --split)")
    p.add_argument("--split", default="test")
    p.add_argument("--dir", type=Path, help="or: a directory of held-out Ruby files")
    p.add_argument(
        "--project",
        type=Path,
        help="or: a project (e.g. a Rails app) as a user opens it: its files (the watcher's "
        "filters) are the cases, and each is also completed with the project memory of "
        "the rest of the project",
    )
    p.add_argument(
        "--cases-from",
        nargs="+",
        metavar="SUBDIR",
        help="with --project: take the cases only from these folders of the project (e.g. "
        "app/models app/controllers); the project memory still holds the whole project",
    )
    p.add_argument("--out", type=Path, help="JSON report (default: stdout is not used; log)")
    p.add_argument("--line-cases", type=int, default=d.line_cases)
    p.add_argument("--multiline-cases", type=int, default=d.multiline_cases)
    p.add_argument("--latency-cases", type=int, default=d.latency_cases)
    p.add_argument("--bpb-max-bytes", type=int, default=d.bpb_max_bytes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-random-baseline", action="store_true")
    p.add_argument(
        "--no-token-healing", action="store_true", help="generate as without the serving fix"
    )
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=run_eval)


def run_export(args: argparse.Namespace) -> int:
    from rubytailor.training.export import directory_size, export_run

    export_run(args.run, args.out, tokenizer_dir=args.tokenizer, fim_order=args.fim_order)
    log.info("exported to %s (%.1f MB)", args.out, directory_size(args.out) / 1e6)
    return 0


def load_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, text) of the held-out files, in a stable order."""
    if args.corpus is not None:
        from rubytailor.training.corpus import read_split

        rows = read_split(args.corpus, args.split)
        return [(f"{r['source']}:{r['path']}", r["text"]) for r in rows]
    if getattr(args, "project", None) is not None:
        from rubytailor.personalization.file_filters import iter_project_files

        # Named by absolute path: the key of each file in the project memory.
        return [(str(path), text) for path, text in iter_project_files(args.project.resolve())]
    if args.dir is not None:
        from rubytailor.training.corpus import iter_ruby_files

        return [
            (p.relative_to(args.dir).as_posix(), p.read_text(encoding="utf-8", errors="replace"))
            for p in iter_ruby_files(args.dir)
        ]
    raise RubytailorError("give --corpus (and --split), --dir or --project with held-out code.")


def _case_files(args: argparse.Namespace, files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The files cases are cut from: all of them, or those under --cases-from."""
    subdirs = getattr(args, "cases_from", None)
    if not subdirs:
        return files
    if getattr(args, "project", None) is None:
        raise RubytailorError("--cases-from needs --project")
    root = args.project.resolve()
    folders = [(root / sub).resolve() for sub in subdirs]
    return [
        (name, text) for name, text in files if any(Path(name).is_relative_to(f) for f in folders)
    ]


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from rubytailor.model.backends.transformers_backend import TransformersBackend
    from rubytailor.prism import validity_check
    from rubytailor.training.eval_cases import line_cases, multiline_cases
    from rubytailor.training.evaluate import EvalConfig, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    files = load_files(args)
    case_files = _case_files(args, files)
    if not case_files:
        raise RubytailorError("no Ruby files to evaluate on.")
    config = EvalConfig(
        line_cases=args.line_cases,
        multiline_cases=args.multiline_cases,
        seed=args.seed,
        latency_cases=args.latency_cases,
        bpb_max_bytes=args.bpb_max_bytes,
        token_healing=not args.no_token_healing,
    )
    prism = _load_prism()
    check = _prism_checker(prism)
    cases = line_cases(case_files, config.line_cases, config.seed) + multiline_cases(
        case_files,
        config.multiline_cases,
        config.seed,
        # Confirms multi-line spans are whole statements.
        validity_check("multi-line spans by indentation alone"),
    )
    backend = TransformersBackend.load(args.model)
    baseline = None if args.no_random_baseline else random_init_like(backend)
    report = evaluate(
        backend,
        cases,
        config,
        prism=prism,
        check=check,
        texts=[text for _, text in case_files],
        baseline_backend=baseline,
        latency_backends=_other_backends(args),
        memory=_project_memory(args, files),
    )
    report["model"] = str(args.model)
    report["token_healing"] = config.token_healing
    report["data"] = {
        "corpus": str(args.corpus or args.dir),
        "split": args.split,
        "files": len(files),
        "case_files": len(case_files),
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        log.info("report written to %s", args.out)
    for kind, systems in report["results"].items():
        for name, m in systems.items():
            log.info(
                "%s %s: EM %.3f ES %.3f prism-valid %s (%d cases)",
                kind,
                name,
                m["exact_match"],
                m["edit_similarity"],
                m["prism_valid_rate"],
                m["cases"],
            )
    return 0


def random_init_like(backend: TransformersBackend) -> TransformersBackend:
    """The same architecture and tokenizer with random weights (seed 0): a floor."""
    import torch
    from transformers import AutoModelForCausalLM

    from rubytailor.model.backends.transformers_backend import TransformersBackend
    from rubytailor.model.fim import get_format

    model = backend.model
    torch.manual_seed(0)
    fresh = AutoModelForCausalLM.from_config(model.config).to(model.dtype).eval()
    return TransformersBackend(
        model=fresh,
        tokenizer=backend.tokenizer,
        fim=get_format(backend.fim_format),
        fim_order=backend.fim_order,
        context_length=backend.context_length,
        model_id="random-init",
    )


def _other_backends(args: argparse.Namespace) -> dict[str, Backend]:
    """The same model under each installed converting engine, for its latency."""
    from rubytailor.model.backends import auto_backend_kinds, load_backend

    backends: dict[str, Backend] = {}
    for kind in auto_backend_kinds(args.model)[:-1]:  # all but transformers (measured anyway)
        try:
            backends[kind] = load_backend(kind, args.model, threads=args.threads or None)
        except RubytailorError as exc:
            log.warning("no %s latency: %s", kind, exc)
    return backends


def _project_memory(args: argparse.Namespace, files: list[tuple[str, str]]) -> ProjectMemory | None:
    """The project's files in a workspace index, tokenized as the server does."""
    if getattr(args, "project", None) is None:
        return None
    from rubytailor.lsp.workspace_memory import memory_of

    return memory_of(args.model, files)


def _load_prism() -> Prism | None:
    from rubytailor.prism import Prism

    try:
        return Prism.load()
    except PrismError as exc:
        log.warning("no Prism-valid rate: %s", exc)
        return None


def _prism_checker(prism: Prism | None) -> Checker | None:
    """The one-shot check for baselines' suggestions (the model's runs in the pipeline)."""
    from rubytailor.model.outcomes import Verdict
    from rubytailor.model.syntax_check import check_suggestion

    if prism is None:
        return None

    def check(prefix: str, raw: str, suffix: str) -> tuple[bool, str]:
        result = check_suggestion(prism, prefix, raw, suffix)
        return result.verdict == Verdict.OK, result.text

    return check


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m rubytailor.training.cli_eval eval ...`."""
    parser = argparse.ArgumentParser(prog="rubytailor")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_eval_parser(sub)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
