"""The server's half of personalization: when to train, the trainer process, its
progress in the editor, and the hot swap of a promoted adapter.

The project is the first workspace folder. Its current adapter (the registry's
``current`` pointer) is served from the start; a tick every few seconds looks at the
pointer again, so an adapter promoted by the background trainer or by
`rubytailor personalize` in a terminal (or a rollback) is swapped in without a restart.

Training runs `rubytailor personalize ROOT --json-progress` as a separate process at
the lowest priority with one thread, so typing stays fast; its JSON events become
``$/progress`` reports. The scheduler (personalization/scheduler.py) decides when:
enough changed code (files touched since the last run, counted once each, from the
project-files watcher), not more often than an interval, and only while the editor is
idle. Pause stops a running trainer (SIGSTOP) as well as the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from rubytailor.model.backends.model_dir import model_id
from rubytailor.personalization.registry import AdapterRegistry, AdapterVersion
from rubytailor.personalization.scheduler import ScheduleSettings, TrainingScheduler
from rubytailor.personalization.state import ProjectState

if TYPE_CHECKING:
    from rubytailor.lsp.server import RubytailorServer

logger = logging.getLogger(__name__)

TICK_S = 5.0


class Personalizer:
    """Owned by the server; every method runs on the event loop except ``note_file``."""

    def __init__(self, server: RubytailorServer) -> None:
        self._server = server
        self.scheduler = TrainingScheduler(ScheduleSettings())
        self.root: Path | None = None
        self.state: ProjectState | None = None
        self.serving: AdapterVersion | None = None
        self.off_reason = "waiting for the client's settings"
        self.last_message = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._tick: asyncio.Task[None] | None = None
        self._trained_hashes: dict[str, str] = {}
        # Files counted as changed since the last run (the scheduler holds their bytes).
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._pointer_stamp: tuple[int, int] | None = None

    # -- configuration -----------------------------------------------------------------

    def refresh(self) -> bool:
        """Follow the settings and the workspace folders; whether the adapter to serve
        changed (the caller then reloads the model)."""
        settings = self._server.settings
        self.scheduler.configure(
            ScheduleSettings(
                min_changed_bytes=settings.personalization_min_changed_kb * 1000,
                min_interval_s=settings.personalization_interval_hours * 3600,
                idle_s=settings.personalization_idle_seconds,
            )
        )
        roots = self._server.workspace_roots()
        # The scripted test backend has no weights to adapt.
        enabled = settings.personalization and settings.backend != "fake"
        root = roots[0].resolve() if roots and enabled else None
        if root != self.root:
            self._stop_trainer()
            self.root = root
            self.state = None
            with self._dirty_lock:
                self._dirty.clear()
            # Another project's changed code and pause do not carry over.
            self.scheduler = TrainingScheduler(self.scheduler.settings)
            if root is not None:
                try:
                    self.state = ProjectState.for_project(root)
                except OSError as exc:
                    self.off_reason = f"cannot create its state directory ({exc})"
                    self.root = None
                else:
                    self._trained_hashes = _trained_hashes(self.state)
        if not settings.personalization:
            self.off_reason = "personalization is false"
        elif settings.backend == "fake":
            self.off_reason = "the fake backend has no weights to adapt"
        elif self.root is None and not roots:
            self.off_reason = "no workspace folder"
        elif self.root is not None:
            self.off_reason = ""
        self._pointer_stamp = None  # look at the adapter again
        changed = self.check_adapter(load=False)
        if self._tick is None and self.root is not None:
            self._tick = asyncio.ensure_future(self._ticking())
        return changed

    def note_file(self, key: str, text: str | None) -> None:
        """A project file's text as the watcher delivers it (on the watcher's thread)."""
        if text is None or key in self._dirty:  # each file counts once until the next run
            return
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._dirty_lock:
            if key in self._dirty or self._trained_hashes.get(key) == digest:
                return
            self._dirty.add(key)
        self.scheduler.note_change(len(text))  # thread-safe

    def note_activity(self) -> None:
        self.scheduler.note_activity()

    # -- adapter -----------------------------------------------------------------------

    def check_adapter(self, *, load: bool = True) -> bool:
        """Serve the registry's current adapter if it changed (promotion, rollback);
        whether it changed. ``load``: reload the model for it now."""
        wanted: AdapterVersion | None = None
        if self.state is not None:
            stamp = _stamp(self.state.adapters_dir / "current")
            if stamp == self._pointer_stamp and self._pointer_stamp is not None:
                return False
            self._pointer_stamp = stamp
            wanted = AdapterRegistry(self.state).current()
            if wanted is not None and not self._fits_model(wanted):
                wanted = None
        current = self.serving.path if self.serving is not None else None
        if (wanted.path if wanted is not None else None) == current:
            return False
        self.serving = wanted
        logger.info("personalization: serving %s", wanted.name if wanted else "no adapter")
        if load:
            self._server.load_model()
        return True

    def _fits_model(self, version: AdapterVersion) -> bool:
        base = Path(self._server.settings.model_path).expanduser()
        try:
            fits = version.info.get("adapter_of") == model_id(base)
        except OSError:
            fits = False
        if not fits:
            logger.info("adapter %s was trained for another model; not used", version.name)
        return fits

    @property
    def adapter_path(self) -> Path | None:
        return self.serving.path if self.serving is not None else None

    # -- commands ----------------------------------------------------------------------

    def trigger(self) -> str:
        if self.root is None:
            return f"personalization is off: {self.off_reason}"
        self.scheduler.request()
        return "training starts shortly" if not self.scheduler.running else "already training"

    def pause(self) -> str:
        self.scheduler.pause()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGSTOP)
        return "personalization paused"

    def resume(self) -> str:
        self.scheduler.resume()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)
        return "personalization resumed"

    def rollback(self) -> str:
        if self.state is None:
            return f"personalization is off: {self.off_reason}"
        version = AdapterRegistry(self.state).rollback()
        self.check_adapter()
        return f"now serving {version.name if version else 'the base model'}"

    def status(self) -> dict[str, Any]:
        return {
            "state": "off" if self.root is None else "on",
            "reason": self.off_reason,
            "project": str(self.root) if self.root else None,
            "adapter": self.serving.name if self.serving else None,
            "scheduler": self.scheduler.status(),
            "last_message": self.last_message,
        }

    def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self._stop_trainer()

    # -- training ----------------------------------------------------------------------

    async def _ticking(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick_once()
            except Exception:  # the server keeps serving whatever happens here
                logger.exception("personalization tick failed")

    async def _tick_once(self) -> None:
        self.check_adapter()
        if self.root is not None and self.scheduler.due():
            await self.train()

    async def train(self) -> int:
        """One background run; returns its exit code (-1: it could not start)."""
        assert self.root is not None and self.state is not None
        self.scheduler.started()
        with self._dirty_lock:
            self._dirty.clear()
        token = f"rubytailor-personalize-{int(time.time() * 1000)}"
        progress = await self._progress_begin(token)
        code = -1
        try:
            code = await self._run_trainer(self.root, self.state, token if progress else None)
        except OSError as exc:
            self.last_message = f"could not start the trainer: {exc}"
            logger.warning("personalization: %s", self.last_message)
        finally:
            self._proc = None
            self.scheduler.finished(code == 0)
            if progress:
                self._server.work_done_progress.end(
                    token, types.WorkDoneProgressEnd(message=self.last_message[:200])
                )
        self._trained_hashes = _trained_hashes(self.state)
        self.check_adapter()
        return code

    async def _run_trainer(self, root: Path, state: ProjectState, token: str | None) -> int:
        settings = self._server.settings
        command = [
            sys.executable,
            "-m",
            "rubytailor.cli",
            "personalize",
            str(root),
            "--json-progress",
            "--model",
            str(Path(settings.model_path).expanduser()),
            "--backend",
            settings.backend,
            "--budget-minutes",
            str(settings.personalization_budget_minutes),
            "--threads",
            "1",
            "--nice",
            "19",
        ]
        log_path = state.logs_dir / time.strftime("train-%Y%m%d-%H%M%S.log")
        logger.info("personalization: training in the background (log: %s)", log_path)
        with log_path.open("ab") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
            assert self._proc.stdout is not None
            async for line in self._proc.stdout:
                self._on_event(line, token)
            code = await self._proc.wait()
        if code != 0:
            self.last_message = f"training stopped (exit {code}); see {log_path}"
        return code

    def _on_event(self, line: bytes, token: str | None) -> None:
        try:
            event = json.loads(line)
            message = f"{event['stage']}: {event['message']}"
        except (ValueError, KeyError, TypeError):
            return
        self.last_message = message
        if token is not None:
            percent = event.get("percent")
            self._server.work_done_progress.report(
                token,
                types.WorkDoneProgressReport(
                    message=message[:200],
                    percentage=int(percent) if isinstance(percent, int | float) else None,
                ),
            )

    async def _progress_begin(self, token: str) -> bool:
        """Start a $/progress bar if the client supports server-initiated progress."""
        window = self._server.client_capabilities.window
        if window is None or not window.work_done_progress:
            return False
        try:
            await asyncio.wait_for(self._server.work_done_progress.create_async(token), 10)
        except Exception as exc:  # the client refused or never answered: train anyway
            logger.info("no progress bar: %s", exc)
            return False
        self._server.work_done_progress.begin(
            token,
            types.WorkDoneProgressBegin(
                title="rubytailor: learning this project", percentage=0, cancellable=False
            ),
        )
        return True

    def _stop_trainer(self) -> None:
        """A trainer of another project or of a closing server: it resumes next time."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()


def _trained_hashes(state: ProjectState) -> dict[str, str]:
    """Content hashes of the files the last run learned from or was judged on."""
    try:
        manifest = json.loads(state.corpus_manifest_path.read_text(encoding="utf-8"))
        entries = {**manifest.get("train", {}), **manifest.get("eval", {})}
        return {name: str(entry["sha256"]) for name, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)
