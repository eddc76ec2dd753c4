"""The `rubytailor` command: complete, doctor, serve --tcp, and the subcommand registry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_support.raw import connect_tcp, frame, free_port, read_frame

from rubytailor import cli
from rubytailor.errors import RubytailorError
from rubytailor.paths import prism_wasm_path

RUBYTAILOR = [sys.executable, "-m", "rubytailor.cli"]
SOURCE = "class Cart\n  def total(items)\n    \n  end\nend\n"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUBYTAILOR, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def ruby_file(tmp_path: Path) -> Path:
    path = tmp_path / "cart.rb"
    path.write_text(SOURCE, encoding="utf-8")
    return path


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"completions": ["sum = items.sum\n    sum\n"]}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("app.rb:3:5", (Path("app.rb"), 3, 5)),
        ("C:/code/app.rb:10:1", (Path("C:/code/app.rb"), 10, 1)),
        ("dir:with:colons/a.rb:2:7", (Path("dir:with:colons/a.rb"), 2, 7)),
    ],
)
def test_locations_parse_from_the_right(location: str, expected: tuple[Path, int, int]) -> None:
    assert cli.parse_location(location) == expected


@pytest.mark.parametrize(
    "location", ["app.rb", "app.rb:3", "app.rb:0:1", "app.rb:1:0", "app.rb:x:1", ":1:1"]
)
def test_bad_locations_say_what_is_expected(location: str) -> None:
    with pytest.raises(RubytailorError, match="FILE:LINE:COL"):
        cli.parse_location(location)


def test_offsets_count_characters_and_allow_the_column_after_the_last() -> None:
    text = "ab\r\nçé😀\nlast"
    assert cli.offset_of(text, 1, 1, "f") == 0
    assert cli.offset_of(text, 1, 3, "f") == 2  # end of line 1, before \r\n
    assert cli.offset_of(text, 2, 4, "f") == text.index("😀") + 1
    assert cli.offset_of(text, 3, 5, "f") == len(text)
    with pytest.raises(RubytailorError, match="column 4 is past the end of line 1"):
        cli.offset_of(text, 1, 4, "f")
    with pytest.raises(RubytailorError, match="line 4 is past the end"):
        cli.offset_of(text, 4, 1, "f")


def test_complete_prints_the_suggestion(ruby_file: Path, script: Path) -> None:
    done = run_cli("complete", f"{ruby_file}:3:5", "--backend", "fake", "--model", str(script))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "sum = items.sum\n    sum\n"


def test_complete_json_and_max_lines(ruby_file: Path, script: Path) -> None:
    done = run_cli(
        "complete",
        f"{ruby_file}:3:5",
        "--backend",
        "fake",
        "--model",
        str(script),
        "--max-lines",
        "1",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] == "sum = items.sum"
    assert result["source"] == "model" and result["stop_reason"] == "max_lines"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{file}:9:1"], "line 9 is past the end of the file"),
        (["{dir}/missing.rb:1:1"], "cannot read"),
        (["{file}:3:5", "--model", "{dir}/nope.json"], "does not exist"),
    ],
)
def test_complete_errors_exit_non_zero_with_a_message(
    ruby_file: Path, script: Path, args: list[str], message: str
) -> None:
    filled = [a.format(file=ruby_file, dir=ruby_file.parent) for a in args]
    if "--model" not in filled:
        filled += ["--model", str(script)]
    done = run_cli("complete", *filled, "--backend", "fake")
    assert done.returncode == 1
    assert done.stdout == ""
    assert message in done.stderr and done.stderr.startswith("rubytailor complete: ")


@pytest.mark.skipif(not prism_wasm_path().exists(), reason="prism.wasm not fetched")
def test_doctor_passes_with_a_working_setup(script: Path, tmp_path: Path) -> None:
    done = run_cli(
        "doctor",
        "--backend",
        "fake",
        "--model",
        str(script),
        env={"RUBYTAILOR_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 0, done.stdout
    for name in ("python packages", "prism.wasm", "model (fake)", "data directory"):
        assert f"OK    {name}:" in done.stdout
    assert "all required checks passed" in done.stdout


def test_doctor_fails_and_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_cli(
        "doctor",
        "--backend",
        "fake",
        "--model",
        str(tmp_path / "nope.json"),
        env={
            "RUBYTAILOR_DATA_DIR": str(blocker / "data"),
            "RUBYTAILOR_PRISM_WASM": str(tmp_path / "x.wasm"),
        },
    )
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL  model (fake):" in out and "does not exist" in out
    assert "FAIL  data directory:" in out and "RUBYTAILOR_DATA_DIR" in out
    assert "FAIL  prism.wasm:" in out and "make setup" in out
    assert out.count("fix:") >= 3
    assert "3 required check(s) failed" in out


@pytest.mark.slow
def test_doctor_loads_a_real_model_and_generates(tiny_model_dir: Path, tmp_path: Path) -> None:
    done = run_cli(
        "doctor",
        "--backend",
        "transformers",
        "--model",
        str(tiny_model_dir),
        env={"RUBYTAILOR_DATA_DIR": str(tmp_path / "data")},
    )
    assert "OK    model (transformers):" in done.stdout, done.stdout
    assert "loads and generates" in done.stdout
    assert "OK    transformers backend:" in done.stdout


def test_help_lists_every_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name, _module in cli.COMMANDS:
        assert name in out


def test_a_command_whose_module_fails_to_import_reports_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, ("ghost", "rubytailor.no_such_module")])
    assert cli.main(["ghost", "--anything"]) == 1
    assert "rubytailor ghost is unavailable" in capsys.readouterr().err
    # The other commands are unaffected.
    with pytest.raises(SystemExit):
        cli.main(["complete", "--help"])


def test_serve_rejects_a_bad_tcp_address() -> None:
    done = run_cli("serve", "--tcp", "localhost:http")
    assert done.returncode == 2 and "HOST:PORT" in done.stderr


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"processId": None, "rootUri": None, "capabilities": {}},
}


async def test_serve_over_tcp_answers_initialize(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    server = await asyncio.create_subprocess_exec(
        *RUBYTAILOR,
        "serve",
        "--tcp",
        str(port),
        "--log-file",
        str(log),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        reader, writer = await connect_tcp(port)
        writer.write(frame(INITIALIZE))
        answer = await read_frame(reader, 10)
        assert answer["result"]["serverInfo"]["name"] == "rubytailor"
        writer.close()
    finally:
        server.kill()
        await server.wait()
    assert "serving on 127.0.0.1:" in log.read_text()
    assert server.stdout is not None and await server.stdout.read() == b""


def test_serve_accepts_the_flags_lsp_clients_add(tmp_path: Path) -> None:
    """vscode-languageclient runs `rubytailor serve --stdio --clientProcessId=N`."""
    stdin = frame(INITIALIZE) + frame({"jsonrpc": "2.0", "method": "exit"})
    done = subprocess.run(
        [*RUBYTAILOR, "serve", "--stdio", "--clientProcessId=4242"],
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    assert b"unrecognized arguments" not in done.stderr
    assert b'"serverInfo"' in done.stdout and b'"rubytailor"' in done.stdout


def test_serve_refuses_stdio_and_tcp_together() -> None:
    done = run_cli("serve", "--stdio", "--tcp", "2087")
    assert done.returncode == 2 and "not both" in done.stderr
