"""Nothing leaves the machine: a server at work (a real model on both backends, project
memory over a workspace, a personalization run in its trainer process) opens no socket
but the LSP transport.

Two independent checks: every Python process runs under a shim that refuses and records
any connect, bind, sendto or name lookup (tests/lsp_support/no_network), and the
process tree's file descriptors are read from /proc while it works, so a socket opened
by native code (GGML, tokenizers) would show too. Anonymous socket pairs are allowed:
asyncio wakes its event loop through one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_support import open_doc, plain, session, stream
from lsprotocol import types

from rubytailor.protocol import STATUS_METHOD

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc"),
]

SHIM = Path(__file__).parent / "lsp_support" / "no_network"
NETWORK_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the trainer is a child of the server)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(child) for child in children)
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes  # it exited meanwhile
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _table_inodes(pid: int, table: str) -> dict[str, str]:
    """inode -> the table's line, for /proc/PID/net/TABLE (inode is column 10; unix: 7)."""
    try:
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return {}
    column = 6 if table == "unix" else 9
    rows = {}
    for line in lines:
        fields = line.split()
        if len(fields) > column:
            rows[fields[column]] = line
    return rows


def network_sockets(pid: int) -> list[str]:
    """Every socket of the process tree that could reach past it: internet sockets of any
    kind, and unix sockets with a name (a daemon's). Anonymous socket pairs are fine."""
    problems = []
    for member in _tree(pid):
        inodes = _socket_inodes(member)
        if not inodes:
            continue
        for table in NETWORK_TABLES:
            for inode, line in _table_inodes(member, table).items():
                if inode in inodes:
                    problems.append(f"pid {member} {table}: {line.strip()}")
        for inode, line in _table_inodes(member, "unix").items():
            fields = line.split()
            if inode in inodes and len(fields) > 7:  # the eighth column is the path
                problems.append(f"pid {member} unix {fields[7]}")
    return problems


def test_the_socket_check_sees_an_internet_socket() -> None:
    """The /proc reading above is not vacuous: it finds a socket this process opens."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert any("tcp" in line for line in network_sockets(os.getpid()))
    assert not any("tcp" in line for line in network_sockets(os.getpid()))


def test_the_shim_refuses_and_records_a_connection(tmp_path: Path) -> None:
    log = tmp_path / "sockets.log"
    env = {**os.environ, "PYTHONPATH": str(SHIM), "RUBYTAILOR_SOCKET_LOG": str(log)}
    probe = (
        "import socket, urllib.request\n"
        "a, b = socket.socketpair()  # allowed: asyncio's self-pipe\n"
        "try:\n"
        "    urllib.request.urlopen('http://127.0.0.1:9/', timeout=1)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "connect" in log.read_text() and "127.0.0.1" in log.read_text()


def _project(root: Path) -> Path:
    (root / "app" / "models").mkdir(parents=True)
    for n in range(8):
        (root / "app" / "models" / f"invoice{n}.rb").write_text(
            f"class Invoice{n} < ApplicationRecord\n"
            f"  has_many :lines_{n}, dependent: :destroy\n"
            f"  def total_{n}\n    lines_{n}.sum(&:amount)\n  end\nend\n",
            encoding="utf-8",
        )
    (root / "Gemfile").write_text('source "https://rubygems.org"\ngem "rails"\n')
    return root


async def _status(client: Any) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async(STATUS_METHOD, {}))


async def test_a_working_server_and_its_trainer_open_no_network_socket(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "sockets.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SHIM), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RUBYTAILOR_SOCKET_LOG", str(log))
    monkeypatch.setenv("RUBYTAILOR_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "base"  # general Ruby for the trainer's gate
    base.mkdir()
    (base / "lib.rb").write_text("".join(f"def f{n}(x)\n  x + {n}\nend\n" for n in range(40)))
    monkeypatch.setenv("RUBYTAILOR_BASE_CORPUS", str(base))
    project = _project(tmp_path / "shop")
    settings = {
        "backend": "auto",  # ctransformers (GGML) for this model
        "modelPath": str(tiny_model_dir),
        "maxTokens": 12,
        "minConfidence": 0,
        "personalizationBudgetMinutes": 0.02,
        "personalizationMinChangedKb": 1_000_000,  # only the command starts a run
    }
    seen: list[str] = []
    async with session(settings, root=project) as client:
        pid = client._server.pid  # type: ignore[attr-defined]
        uri = (project / "app" / "models" / "invoice9.rb").as_uri()
        open_doc(client, uri, "class Invoice9 < ApplicationRecord\n  has_many :lines_9, dep")
        deadline = time.monotonic() + 60
        while (await _status(client))["project_memory"]["state"] != "ready":
            assert time.monotonic() < deadline, "the project memory never became ready"
            await asyncio.sleep(0.2)
        for column in (24, 30, 38):
            await stream(client, uri, 1, column)
            seen += network_sockets(pid)
        answer = plain(
            await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="rubytailor.personalize")
            )
        )
        assert answer["message"] == "training starts shortly"
        deadline = time.monotonic() + 240
        trainer_seen = False
        while time.monotonic() < deadline:
            trainer_seen = trainer_seen or len(_tree(pid)) > 1
            seen += network_sockets(pid)
            status = (await _status(client))["personalization"]
            if status["last_message"].startswith("done:") and not status["scheduler"]["running"]:
                break
            await asyncio.sleep(0.3)
        assert status["last_message"].startswith("done:"), status
        assert trainer_seen, "the trainer process was never seen"
        seen += network_sockets(pid)
    assert seen == []
    assert not log.exists(), log.read_text()
