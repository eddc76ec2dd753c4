"""The ``rubytailor`` command: one entry point, one subcommand per job.

Adding a subcommand is one line in ``COMMANDS``: ``(name, "package.module")`` where the
module defines ``add_parser(subparsers)``, which adds the subparser and sets
``func=run`` with ``run(args) -> int`` (see rubytailor/demo.py); or
``(name, "package.module:function")`` to name another function than ``add_parser``.
Modules are imported when the parser is built, so keep heavy imports (torch) inside
``run``. A module that fails to import leaves its subcommand in place, reporting the
import error, so one broken extra never takes the other commands down.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import sys
import tempfile
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rubytailor import __version__, paths
from rubytailor.config import BackendKind, Settings
from rubytailor.errors import RubytailorError

logger = logging.getLogger(__name__)

COMMANDS: list[tuple[str, str]] = [
    ("serve", "rubytailor.cli:add_serve_parser"),
    ("complete", "rubytailor.cli:add_complete_parser"),
    ("doctor", "rubytailor.cli:add_doctor_parser"),
    ("demo", "rubytailor.demo"),
    ("bench", "rubytailor.bench"),
    ("corpus", "rubytailor.training.cli_data:add_corpus_parser"),
    ("tokenizer", "rubytailor.training.cli_data:add_tokenizer_parser"),
    ("prepare", "rubytailor.training.cli_data:add_prepare_parser"),
    ("train", "rubytailor.training.cli_train"),
    ("export", "rubytailor.training.cli_eval:add_export_parser"),
    ("eval", "rubytailor.training.cli_eval:add_eval_parser"),
    ("personalize", "rubytailor.personalization.cli"),
    ("stats", "rubytailor.stats"),
]

BACKENDS = typing.get_args(BackendKind)
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` one subcommand: then the other commands'
    modules are not imported (the trainer's torch import would slow `serve` down)."""
    parser = argparse.ArgumentParser(
        prog="rubytailor", description="Local, private AI code completion for Ruby."
    )
    parser.add_argument("--version", action="version", version=f"rubytailor {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS:
        if only is not None and name != only:
            continue
        module_name, _, function_name = target.partition(":")
        try:
            add = getattr(importlib.import_module(module_name), function_name or "add_parser")
        except Exception as exc:  # a broken extra must not break the other commands
            _add_broken(subparsers, name, target, exc)
            continue
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # What rubytailor writes (caches, corpora, logs: the user's code) is private whatever
    # the umask; files meant to be shared (an exported model) are chmod'ed explicitly.
    paths.restrict_umask()
    words = sys.argv[1:] if argv is None else argv
    named = words[0] if words and words[0] in dict(COMMANDS) else None
    parser = build_parser(only=named)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_anything", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except RubytailorError as exc:
        print(f"rubytailor {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _add_broken(subparsers: Any, name: str, target: str, exc: Exception) -> None:
    parser = subparsers.add_parser(name, help=f"(unavailable: {exc})", add_help=False)

    def run(_args: argparse.Namespace) -> int:
        print(
            f"rubytailor {name} is unavailable: importing {target} failed: {exc}", file=sys.stderr
        )
        return 1

    parser.set_defaults(func=run, takes_anything=True)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (for --backend fake: a JSON script)",
    )
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="inference backend")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model")


# -- serve -------------------------------------------------------------------------------


def add_serve_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the language server (stdio by default)")
    parser.add_argument(
        "--tcp", metavar="HOST:PORT", default=None, help="listen on TCP instead (host: 127.0.0.1)"
    )
    # LSP client libraries add these to the command line (vscode-languageclient appends
    # --stdio for TransportKind.stdio, and --clientProcessId): stdio is the default anyway.
    parser.add_argument("--stdio", action="store_true", help="serve on stdio (the default)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --tcp listen on an address other machines can reach (no authentication!)",
    )
    parser.add_argument("--clientProcessId", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log-file", type=Path, default=None, help="log here instead of stderr")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    _add_model_options(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from rubytailor.lsp.serve import configure_logging, is_loopback, parse_tcp, serve

    if args.stdio and args.tcp:
        print("rubytailor serve: choose --stdio or --tcp, not both", file=sys.stderr)
        return 2
    try:
        tcp = parse_tcp(args.tcp) if args.tcp else None
    except ValueError as exc:
        print(f"rubytailor serve: {exc}", file=sys.stderr)
        return 2
    if tcp is not None and not is_loopback(tcp[0]):
        # Anyone who can connect reads the open documents and drives the model.
        if not args.allow_remote:
            print(
                f"rubytailor serve: --tcp {args.tcp} would accept connections from other "
                "machines, without authentication; use a loopback address such as "
                "127.0.0.1, or add --allow-remote if you mean it",
                file=sys.stderr,
            )
            return 2
        print(
            f"rubytailor serve: warning: listening on {tcp[0]}:{tcp[1]}, reachable from other "
            "machines; anyone who connects can read the documents you edit",
            file=sys.stderr,
        )
    configure_logging(args.log_level, args.log_file)
    # Command-line choices are the lowest settings layer: the editor's settings win.
    overrides: dict[str, Any] = {}
    if args.model is not None:
        overrides["modelPath"] = str(args.model)
    if args.backend is not None:
        overrides["backend"] = args.backend
    if args.threads is not None:
        overrides["threads"] = args.threads
    return serve(overrides, tcp)


# -- complete ----------------------------------------------------------------------------


def add_complete_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "complete", help="print the suggestion at FILE:LINE:COL (1-based, like compilers)"
    )
    parser.add_argument("location", metavar="FILE:LINE:COL")
    parser.add_argument("--max-lines", type=int, default=Settings().max_lines)
    parser.add_argument("--max-tokens", type=int, default=Settings().max_tokens)
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=Settings().min_confidence,
        help="the confidence gate, as the server applies it (0: show everything)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    _add_model_options(parser)
    parser.set_defaults(func=run_complete)


def parse_location(location: str) -> tuple[Path, int, int]:
    """``FILE:LINE:COL`` -> (path, line, column); the path itself may contain colons."""
    path, line, column = [*location.rsplit(":", 2), "", ""][:3]
    if not (path and line.isdigit() and column.isdigit() and int(line) and int(column)):
        raise RubytailorError(
            f"{location!r} is not FILE:LINE:COL with 1-based LINE and COL, e.g. app.rb:12:5"
        )
    return Path(path), int(line), int(column)


def offset_of(text: str, line: int, column: int, where: str) -> int:
    """Index into ``text`` of a 1-based line and column (columns count characters)."""
    lines = text.split("\n")
    if line > len(lines):
        raise RubytailorError(
            f"{where}: line {line} is past the end of the file ({len(lines)} lines)"
        )
    current = lines[line - 1].removesuffix("\r")
    if column > len(current) + 1:
        raise RubytailorError(
            f"{where}: column {column} is past the end of line {line} "
            f"({len(current)} characters; the last cursor column is {len(current) + 1})"
        )
    return sum(len(previous) + 1 for previous in lines[: line - 1]) + column - 1


def run_complete(args: argparse.Namespace) -> int:
    from rubytailor.model.completer import ModelSpec, complete_once

    # Failures reach the user once, as this command's own error message.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(levelname)s: %(message)s")
    path, line, column = parse_location(args.location)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RubytailorError(f"cannot read {path} as UTF-8 text: {exc}") from exc
    offset = offset_of(text, line, column, args.location)
    defaults = Settings()
    spec = ModelSpec(
        backend=args.backend or defaults.backend,
        path=(args.model or Path(defaults.model_path)).expanduser(),
        threads=args.threads,
    )
    result, completer = complete_once(
        text,
        offset,
        spec,
        doc_key=str(path.resolve()),
        max_lines=args.max_lines,
        max_tokens=args.max_tokens,
        min_confidence=args.min_confidence,
    )
    if completer.prism_error is not None:
        print(
            f"warning: the suggestion is not syntax-checked: {completer.prism_error}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(asdict(result), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(
            result.text if result.text.endswith("\n") or not result.text else result.text + "\n"
        )
    return 0


# -- doctor ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def add_doctor_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("doctor", help="check the installation and say what to fix")
    _add_model_options(parser)
    parser.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    defaults = Settings()
    backend = args.backend or defaults.backend
    model = (args.model or Path(defaults.model_path)).expanduser()
    checks = [
        check_packages(),
        check_prism(),
        check_backend_package(
            "transformers", ("torch", "transformers"), required=backend == "transformers"
        ),
        check_backend_package(
            "ctransformers", ("ctransformers",), required=backend == "ctransformers"
        ),
        check_model(backend, model, args.threads),
        check_data_dir(),
    ]
    print(f"rubytailor {__version__} doctor")
    for check in checks:
        status = "OK  " if check.ok else ("FAIL" if check.required else "--  ")
        print(f"  {status}  {check.name}: {check.detail}")
        if not check.ok and check.fix:
            print(f"        fix: {check.fix}")
    failed = [c.name for c in checks if c.required and not c.ok]
    print("all required checks passed" if not failed else f"{len(failed)} required check(s) failed")
    return 1 if failed else 0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def check_packages() -> Check:
    found, missing = [], []
    for package in ("pygls", "lsprotocol", "wasmtime"):
        try:
            importlib.import_module(package)
            found.append(f"{package} {_version(package)}")
        except Exception as exc:
            missing.append(f"{package} ({exc})")
    if missing:
        return Check(
            "python packages", False, "cannot import " + ", ".join(missing), "run `make setup`"
        )
    return Check("python packages", True, ", ".join(found))


def check_prism() -> Check:
    from rubytailor.errors import PrismError
    from rubytailor.prism import Prism

    try:
        prism = Prism.load()
        valid = prism.errors("def total(items)\n  items.sum { |i| i * 2 }\nend\n")
        broken = prism.errors("def total(items\n")
    except PrismError as exc:
        return Check("prism.wasm", False, str(exc), "run `make setup` (scripts/fetch_prism.sh)")
    if valid or not broken:
        return Check(
            "prism.wasm",
            False,
            f"parses wrongly (valid snippet: {len(valid)} errors, broken snippet: {len(broken)})",
            "delete vendor/prism and run `make setup` again",
        )
    return Check("prism.wasm", True, f"{paths.prism_wasm_path()} parses Ruby")


def check_backend_package(name: str, modules: tuple[str, ...], *, required: bool) -> Check:
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception as exc:
        extra = "pip install 'rubytailor[ggml]'" if name == "ctransformers" else "run `make setup`"
        return Check(f"{name} backend", False, f"not available ({exc})", extra, required)
    versions = ", ".join(f"{m} {_version(m)}" for m in modules)
    return Check(f"{name} backend", True, versions, required=required)


def check_model(backend: str, model: Path, threads: int | None) -> Check:
    """Load the model and complete one snippet through the served pipeline."""
    from rubytailor.model.backends.base import CancelToken
    from rubytailor.model.completer import Completer, ModelSpec
    from rubytailor.model.pipeline import CompletionRequest

    name = f"model ({backend})"
    fix = (
        "set rubytailor.modelPath (or --model) to a model directory with config.json, "
        "weights and tokenizer.json"
    )
    completer = Completer(ModelSpec(backend=backend, path=model, threads=threads))
    completer.load()
    if completer.model_error is not None:
        return Check(name, False, str(completer.model_error), fix)
    text = "def greet(name)\n  \nend\n"
    request = CompletionRequest(
        doc_key="<doctor>", version=None, text=text, offset=text.index("\nend"), max_tokens=4
    )
    try:
        result = completer.generate(request, lambda _delta: None, CancelToken())
    except Exception as exc:  # a model that loads but cannot generate is broken too
        return Check(name, False, f"{model} failed to generate: {exc!r}", fix)
    loaded = completer.backend
    name = f"model ({backend}: {loaded.name})" if backend == "auto" and loaded else name
    # With token healing a token may only re-create the prompt's last spaces, so what
    # counts is that a token was generated, not that text came out.
    if result.generated_tokens == 0 and result.stop_reason != "eos":
        return Check(
            name, False, f"{model} produced no token (stopped by {result.stop_reason!r})", fix
        )
    return Check(
        name,
        True,
        f"{model} loads and generates ({completer.model_id}, {result.total_ms:.0f} ms)",
    )


def check_data_dir() -> Check:
    directory = paths.data_dir()
    try:
        paths.ensure_private_dir(directory)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "data directory",
            False,
            f"{directory} is not writable ({exc})",
            "set RUBYTAILOR_DATA_DIR or XDG_DATA_HOME to a writable directory",
        )
    if (problem := paths.shared_problem(directory)) is not None:
        return Check("data directory", False, problem, f"chmod 700 {directory}", required=False)
    return Check("data directory", True, f"{directory} is writable")


if __name__ == "__main__":
    sys.exit(main())
