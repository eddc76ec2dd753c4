"""The server's resident memory with and without project memory on one workspace.

    .venv/bin/python scripts/bench_server_rss.py WORKSPACE [--runs 2]

Starts `rubytailor serve` (bundled model, default backend, personalization off) with
WORKSPACE as the workspace folder, waits until `rubytailor/status` says the model is
loaded and the project memory ready (or off), lets it settle 3 s, and reads the
server's VmRSS from /proc. Alternates memory off / on for --runs rounds.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rubytailor.lsp_client import RubytailorClient, rss_mib, server_command

SETTLE_S = 3.0


async def measure(workspace: Path, memory: bool) -> str:
    client = RubytailorClient(server_command(), {"projectMemory": memory, "personalization": False})
    await client.start(workspace)
    try:
        await client.wait_until_ready()
        state = await client.wait_for_memory()
        await asyncio.sleep(SETTLE_S)
        rss = rss_mib(client.server_pid) or 0.0
    finally:
        await client.stop()
    index = f"{state.get('files')} files, {state.get('tokens')} tokens" if memory else "off"
    return f"project memory {'on ' if memory else 'off'}: RSS {rss:.0f} MiB ({index})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.runs):
        for memory in (False, True):
            print(asyncio.run(measure(args.workspace.resolve(), memory)), flush=True)


if __name__ == "__main__":
    main()
