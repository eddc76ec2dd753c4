"""What project memory costs per generated token: the token loop's stages timed apart.

    .venv/bin/python scripts/profile_memory_cost.py WORKSPACE

Indexes WORKSPACE's .rb files as the server does, then generates up to 16 tokens at
cut points of examples/inventory.rb (every third column of 12 typed lines) with the
bundled model on ctransformers, once without and once with the memory, and prints the
milliseconds per generation step spent in the forward pass, the memory lookups, the
mixing, the softmax and the rest of the loop. Same prompts both times, one thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rubytailor import paths
from rubytailor.lsp.workspace_memory import memory_of
from rubytailor.model.backends import load_backend, token_loop
from rubytailor.model.backends.base import (
    CancelToken,
    GenerationParams,
    GenerationStats,
)
from rubytailor.model.fim import get_format
from rubytailor.model.project_memory import MemoryRequest
from rubytailor.model.prompt import assemble
from rubytailor.typing_replay import scenarios_from_file

MAX_FILE_BYTES = 1 << 20
timers: dict[str, float] = {"forward": 0.0, "lookup": 0.0, "mix": 0.0, "softmax": 0.0}


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers[name] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    args = parser.parse_args()
    files = []
    for path in sorted(args.workspace.rglob("*.rb")):
        if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
            files.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
    model = paths.default_model_dir()
    memory = memory_of(model, files)
    backend = load_backend("ctransformers", model, threads=1)
    backend._forward = timed("forward", backend._forward)  # type: ignore[method-assign]
    token_loop.mix = timed("mix", token_loop.mix)
    token_loop.softmax = timed("softmax", token_loop.softmax)
    memory.lookup = timed("lookup", memory.lookup)  # type: ignore[method-assign]
    fmt = get_format(backend.fim_format)
    scenarios = scenarios_from_file(paths.REPO_ROOT / "examples" / "inventory.rb", 12, 0)
    print(f"workspace: {len(files)} files, {memory.index.stats().tokens:,} tokens")
    for use_memory in (False, True):
        for name in timers:
            timers[name] = 0.0
        steps, total = 0, 0.0
        for sc in scenarios:
            lines = sc.text.splitlines(keepends=True)
            for n in range(0, min(len(sc.typed), 30), 3):
                prefix = "".join(lines[: sc.line]) + lines[sc.line][: sc.column] + sc.typed[:n]
                suffix = "\n" + "".join(lines[sc.line + 1 :])
                request = MemoryRequest(memory, prefix, suffix, None) if use_memory else None
                stats = GenerationStats()
                params = GenerationParams(max_new_tokens=16, memory=request)
                started = time.perf_counter()
                for _ in backend.stream(
                    assemble(prefix, suffix, fmt, "spm"), params, CancelToken(), stats
                ):
                    pass
                total += time.perf_counter() - started
                steps += stats.generated_tokens + 1
        parts = ", ".join(f"{k} {1000 * v / steps:.2f}" for k, v in timers.items())
        rest = 1000 * (total - sum(timers.values())) / steps
        print(
            f"memory {'on ' if use_memory else 'off'}: {steps} steps, "
            f"{1000 * total / steps:.2f} ms/step: {parts}, rest {rest:.2f}"
        )


if __name__ == "__main__":
    main()
