"""`rubytailor demo`: a real LSP session against the server on a sample Ruby file.

Starts `rubytailor serve` as an editor would, opens examples/inventory.rb with a few
lines cut away, asks for streamed suggestions where they were, and prints each partial
as it arrives with its latency, then the final, Prism-checked suggestion.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from rubytailor import paths
from rubytailor.config import Settings
from rubytailor.lsp_client import RubytailorClient, rss_mib, server_command
from rubytailor.typing_replay import scenarios_from_file

log = logging.getLogger(__name__)

SAMPLE = paths.REPO_ROOT / "examples" / "inventory.rb"


def resolve_model(model: Path | None) -> tuple[Path, str]:
    """The model to demo, and a sentence on where it came from."""
    if model is not None:
        return model, f"model: {model}"
    default = paths.default_model_dir()
    if (default / "config.json").exists():
        return default, f"model: bundled default ({default})"
    # No bundled model in this checkout: build the tiny one (seconds) so the path still runs.
    from rubytailor.training.tiny import build_tiny_model

    tiny = paths.ensure_private_dir(paths.cache_dir()) / "tiny-demo-model"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, train_steps=200)
    return tiny, f"model: tiny demo model built at setup ({tiny}); it knows little Ruby"


def _previous_code_line(text: str, line: int) -> str:
    """The nearest non-blank line above ``line``, to show where the cursor is."""
    lines = text.splitlines()[:line]
    return next((x for x in reversed(lines) if x.strip()), "")


def show(text: str) -> str:
    """Text on the terminal, line ends drawn as ⏎ and later lines indented under the first."""
    if not text:
        return "(nothing)"
    return "⏎\n                        ".join(text.split("\n")).rstrip()


async def session(args: argparse.Namespace) -> None:
    model, origin = resolve_model(args.model)
    # The sample's folder is the workspace, as when a user opens a project; the sample
    # itself is kept out of the project memory, which could otherwise recall the very
    # lines the demo cuts away.
    workspace = args.file.resolve().parent
    # The gate is off so every suggestion can be seen; each says whether the default
    # minConfidence would show it in an editor.
    gate = Settings().min_confidence
    settings: dict[str, Any] = {
        "backend": args.backend,
        "modelPath": str(model),
        "exclude": [args.file.name],
        "minConfidence": 0,
    }
    print(f"rubytailor demo — {origin}")
    print(f"server: {' '.join(server_command())} (stdio), workspace {workspace}\n")
    client = RubytailorClient(server_command(), settings)
    started = time.perf_counter()
    await client.start(workspace)
    try:
        status = await client.wait_until_ready()
        if status.get("model_error"):
            print(f"the server has no model: {status['model_error']}")
            return
        memory = await client.wait_for_memory()
        print(
            f"server ready, model {status.get('model_id')} loaded in "
            f"{time.perf_counter() - started:.1f} s; project memory: "
            f"{memory.get('state')}, {memory.get('files', 0)} files, "
            f"{memory.get('tokens', 0)} tokens\n"
        )
        for n, scenario in enumerate(scenarios_from_file(args.file, args.cases, seed=args.seed)):
            uri = client.open(args.file.with_name(f"{args.file.stem}.demo{n}.rb"), scenario.text)
            before = _previous_code_line(scenario.text, scenario.line)
            print(f"── {args.file.name}:{scenario.line + 1}:{scenario.column + 1}")
            print(f"   {before}")
            print(f"   {' ' * scenario.column}▌   (the line was: {scenario.typed})")
            outcome = await client.stream(uri, scenario.line, scenario.column)
            elapsed = outcome.first_partial_ms
            for i, part in enumerate(p for p in outcome.partials if p):
                stamp = f"{elapsed:6.0f} ms" if i == 0 and elapsed is not None else " " * 9
                print(f"   partial {stamp}: {show(part)}")
            result = outcome.result
            print(
                f"   final   {outcome.total_ms:6.0f} ms: {show(outcome.text)}\n"
                f"   verdict: {result.get('verdict', '?')}, source: {result.get('source', '?')}, "
                f"confidence: {_fmt(result.get('confidence'))}"
                f"{_gate_note(result.get('confidence'), gate, outcome.text)}, "
                f"from memory: {_fmt(result.get('memory_share'))}, "
                f"prompt tokens: {result.get('prompt_tokens', '?')}, "
                f"reused: {result.get('reused_tokens', '?')}\n"
            )
        if client.messages:
            print("server messages:\n  " + "\n  ".join(client.messages))
        rss = rss_mib(client.server_pid)
        if rss is not None:
            print(f"server RSS: {rss:.0f} MiB")
    finally:
        await client.stop()


def _gate_note(confidence: Any, gate: float, text: str) -> str:
    if not text or not isinstance(confidence, float):
        return ""
    return " (shown)" if confidence >= gate else f" (below minConfidence {gate}: not shown)"


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="stream suggestions for a sample Ruby file")
    parser.add_argument("--model", type=Path, default=None, help="model directory")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--file", type=Path, default=SAMPLE)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    asyncio.run(session(args))
    return 0
