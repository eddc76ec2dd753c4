"""The pygls language server: its state, and the few operations handlers share.

Threads: the asyncio event loop runs the protocol and every handler; one worker thread
("rubytailor-model") loads and runs the model, since backends are not thread-safe;
one more ("rubytailor-prism") computes syntax diagnostics so they never queue behind
a generation. Handlers live in ``lsp/handlers``, one module per LSP method or group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcServerNotInitialized
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.uris import to_fs_path

from rubytailor import __version__
from rubytailor.config import Settings, settings_from_wire
from rubytailor.lsp.diagnostics import RUBY_SUFFIXES, DiagnosticsPublisher
from rubytailor.lsp.document_sync import DocumentSync
from rubytailor.lsp.inflight import InFlight
from rubytailor.lsp.jsonrpc import strict_scalars
from rubytailor.lsp.personalization import Personalizer
from rubytailor.lsp.prewarm import Prewarmer
from rubytailor.lsp.snapshot import UTF16, Snapshot
from rubytailor.lsp.worker import Worker
from rubytailor.lsp.workspace_memory import WorkspaceMemory, tokenizer_encoder
from rubytailor.model.completer import Completer, ModelSpec

logger = logging.getLogger(__name__)

# How long a completion waits for the settings of `initialized` before using what it has.
SETTINGS_WAIT_S = 5.0


class RubytailorProtocol(LanguageServerProtocol):
    """Answers requests sent before ``initialize`` with ServerNotInitialized (-32002).

    The LSP specification asks for that error; pygls alone would run the handler
    against a workspace that does not exist yet and answer with an internal error.
    Also: strict types when structuring params, didChange applied all or nothing
    (lsp/document_sync.py), no traceback in any error sent to the client. Messages
    reach it through lsp/jsonrpc.py, which checks them first.
    """

    def __init__(self, server: Any, converter: Any) -> None:
        strict_scalars(converter)  # before pygls builds any structuring function
        super().__init__(server, converter)
        self.documents = DocumentSync(self._warn_user)

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        if self._workspace is None and method_name != types.INITIALIZE:
            logger.warning(
                "request %r before initialize; answering ServerNotInitialized", method_name
            )
            error = JsonRpcServerNotInitialized(
                f"{method_name} was sent before initialize; send initialize first"
            )
            self._send_response(msg_id, None, error.to_response_error())
            return
        super()._handle_request(msg_id, method_name, params)

    def _warn_user(self, message: str) -> None:
        self._server.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Warning, message=message)
        )

    def _send_response(
        self, msg_id: Any, result: Any | None = None, error: types.ResponseError | None = None
    ) -> None:
        if error is not None and error.data is not None:
            # pygls puts the traceback of an internal error here; it stays in our log.
            logger.debug("not sending error data to the client: %r", error.data)
            error = types.ResponseError(code=error.code, message=error.message)
        super()._send_response(msg_id, result, error)

    def on_invalid_notification(self, method: str, message: Any, problem: str) -> None:
        self.documents.invalid_notification(method, message, problem)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        self.documents.opened(params.text_document.uri)
        return (yield from super().lsp_text_document__did_open(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        self.documents.opened(params.text_document.uri)
        return (yield from super().lsp_text_document__did_close(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        # All changes or none, lines split the LSP way (pygls: one by one, splitlines).
        encoding = str(getattr(self._server, "position_encoding", UTF16))
        if not self.documents.did_change(self.workspace, params, encoding):
            return None
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None
        return None


class RubytailorServer(LanguageServer):
    protocol: RubytailorProtocol

    def __init__(
        self,
        *,
        overrides: Mapping[str, Any] | None = None,
        completer: Completer | None = None,
    ) -> None:
        super().__init__(
            name="rubytailor",
            version=__version__,
            protocol_cls=RubytailorProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        # Settings layers, lowest first: command line, initializationOptions, client.
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.init_options: Mapping[str, Any] | None = None
        self.client_settings: Mapping[str, Any] | None = None
        self.supports_configuration = False
        self.settings, problems = settings_from_wire(self.overrides)
        for problem in problems:
            logger.warning("command-line setting: %s", problem)
        self.last_problems: list[str] = []
        self.completer = completer or Completer(model_spec(self.settings))
        self.model_thread = Worker("rubytailor-model")
        self.inflight = InFlight()
        self.diagnostics = DiagnosticsPublisher(self)
        # Set once `initialized` has gathered the client's settings.
        self.settings_ready = asyncio.Event()
        self._shown: set[str] = set()
        self._model_loads = 0
        self.workspace_memory: WorkspaceMemory | None = None
        # What the running memory was started for; "unset" until the first settings.
        self._memory_key: tuple[Any, ...] | str | None = "unset"
        self.memory_off_reason = "waiting for the client's settings"
        self.personalizer = Personalizer(self)
        self.prewarmer = Prewarmer(self)

    # -- documents ---------------------------------------------------------------------

    @property
    def position_encoding(self) -> str:
        encoding = self.workspace.position_encoding
        return str(getattr(encoding, "value", encoding) or UTF16)

    def snapshot(self, uri: str) -> Snapshot | None:
        """An immutable copy of an open document, or None if the client never opened it."""
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None or self.protocol.documents.is_stale(uri):
            # A stale copy (an edit was rejected) would put suggestions in wrong places.
            return None
        return Snapshot(
            uri=uri,
            version=document.version,
            text=document.source,
            encoding=self.position_encoding,
        )

    def is_ruby(self, uri: str) -> bool:
        """Whether an open document is Ruby, so that Prism's errors mean something for it."""
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None:
            return False
        if document.language_id:
            return document.language_id == "ruby"
        return uri.endswith(RUBY_SUFFIXES)

    def document_version(self, uri: str) -> int | None:
        document = self.workspace.text_documents.get(unquote(uri))
        return None if document is None else document.version

    def open_uris(self) -> list[str]:
        return [doc.uri for doc in self.workspace.text_documents.values()]

    # -- messages ----------------------------------------------------------------------

    def show(self, kind: types.MessageType, message: str) -> None:
        logger.log(
            logging.ERROR if kind == types.MessageType.Error else logging.WARNING, "%s", message
        )
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def show_once(self, kind: types.MessageType, message: str, key: str | None = None) -> None:
        """Show a message the first time only; ``key`` groups messages that say the same."""
        key = key or message
        if key in self._shown:
            logger.debug("not repeating: %s", message)
            return
        self._shown.add(key)
        self.show(kind, message)

    # -- settings and model ------------------------------------------------------------

    def apply_settings(self, settings: Settings, problems: list[str]) -> None:
        """Switch to new settings: report problems, reload the model if it changed."""
        previous = self.settings
        self.settings = settings
        if problems and problems != self.last_problems:
            self.show(
                types.MessageType.Warning,
                "rubytailor: some settings are invalid and use their defaults: "
                + " ".join(problems),
            )
        self.last_problems = problems
        adapter_changed = self.personalizer.refresh()
        model_changed = settings.model_key != previous.model_key or self._model_loads == 0
        if model_changed or adapter_changed or self.completer.model_error is not None:
            # A model that failed to load gets another try whenever settings change.
            self.load_model()
        if settings.diagnostics != previous.diagnostics:
            self.diagnostics.refresh_all()
        self.refresh_project_memory()

    # -- project memory ----------------------------------------------------------------

    def workspace_roots(self) -> list[Path]:
        """The workspace folders as directories (the root URI for older clients)."""
        try:
            workspace = self.workspace
        except RuntimeError:  # before initialize
            return []
        uris_ = [folder.uri for folder in workspace.folders.values()]
        if not uris_ and workspace.root_uri:
            uris_ = [workspace.root_uri]
        roots = []
        for uri in uris_:
            path = to_fs_path(uri)
            if path and Path(path).is_dir():
                roots.append(Path(path))
        return roots

    def refresh_project_memory(self) -> None:
        """Start, restart or stop the workspace memory to match settings and folders.

        Runs on the event loop; the scan and indexing happen on their own threads.
        """
        settings = self.settings
        roots = self.workspace_roots()
        tokenizer = Path(settings.model_path).expanduser() / "tokenizer.json"
        stamp = _file_stamp(tokenizer)
        key = (tuple(roots), settings.exclude, stamp) if settings.project_memory else None
        old, self._memory_key = self._memory_key, key
        if key == old:
            return
        if (
            self.workspace_memory is not None
            and isinstance(key, tuple)
            and isinstance(old, tuple)
            and key[1:] == old[1:]
            and roots
        ):
            # Only the folders changed: watch the new ones, forget the removed ones.
            for root in set(key[0]) - set(old[0]):
                self.workspace_memory.add_root(root)
            for root in set(old[0]) - set(key[0]):
                self.workspace_memory.remove_root(root)
            return
        if self.workspace_memory is not None:
            self.workspace_memory.stop()
            self.workspace_memory = None
            self.completer.memory = None
        if not settings.project_memory:
            self.memory_off_reason = "projectMemory is false"
        elif not roots:
            self.memory_off_reason = "no workspace folder"
        elif (encode := tokenizer_encoder(tokenizer.parent)) is None:
            self.memory_off_reason = f"the model has no tokenizer.json ({tokenizer.parent})"
        else:
            memory = WorkspaceMemory(
                roots, encode, exclude=settings.exclude, on_file=self.personalizer.note_file
            )
            memory.start()
            self.workspace_memory = memory
            self.completer.memory = memory.memory
            self.memory_off_reason = ""
            logger.info("project memory: indexing %s", ", ".join(str(r) for r in roots))
            return
        logger.info("project memory is off: %s", self.memory_off_reason)

    def overlay_document(self, uri: str) -> None:
        """The open document's current text replaces its file in the project memory."""
        if self.workspace_memory is None or not self.is_ruby(uri):
            return
        document = self.workspace.text_documents.get(unquote(uri))
        if document is not None:
            self.workspace_memory.overlay(uri, document.source)

    def memory_status(self) -> dict[str, Any]:
        if self.workspace_memory is None:
            return {"state": "off", "reason": self.memory_off_reason}
        status = self.workspace_memory.status()
        for message in status["messages"]:
            self.show_once(types.MessageType.Warning, f"rubytailor {message}")
        return status

    def load_model(self) -> asyncio.Future[None]:
        """(Re)load the model on the model thread; report a failure once per message.

        Only the adapter changed (one was promoted or rolled back): a hot swap, the
        current model serves until the new one is loaded and keeps serving if it fails.
        """
        spec = model_spec(self.settings, self.personalizer.adapter_path)
        self._model_loads += 1
        # Work for the previous model is moot; stop it within a token.
        self.inflight.cancel_all()

        def job() -> None:
            if self.completer.swappable(spec):
                self.completer.swap(spec)
                return
            if self.completer.reconfigure(spec):
                logger.info("model set to %s %s", spec.backend, spec.path)
            self.completer.load(retry=True)

        future = asyncio.wrap_future(self.model_thread.submit(job))
        future.add_done_callback(lambda _f: self.report_model_state())
        return future

    def report_model_state(self) -> None:
        error = self.completer.model_error
        if error is not None:
            self.show_once(
                types.MessageType.Error, f"rubytailor has no model, so no suggestions: {error}"
            )
        note = self.completer.backend_note
        if note is not None:
            self.show_once(
                types.MessageType.Warning, f"rubytailor is slower than it could be: {note}"
            )
        prism_error = self.completer.prism_error
        if prism_error is not None:
            self.show_once(
                types.MessageType.Warning,
                f"rubytailor suggestions are not syntax-checked: {prism_error}",
            )

    async def wait_for_settings(self) -> None:
        if self.settings_ready.is_set():
            return
        try:
            await asyncio.wait_for(self.settings_ready.wait(), SETTINGS_WAIT_S)
        except TimeoutError:
            logger.warning(
                "no `initialized` after %.0f s; using the settings so far", SETTINGS_WAIT_S
            )
            self.settings_ready.set()

    def shutdown(self) -> None:
        self.prewarmer.preempt()
        self.personalizer.stop()
        if self.workspace_memory is not None:
            self.workspace_memory.stop()
        self.inflight.cancel_all()
        self.diagnostics.close()
        self.model_thread.shutdown()
        super().shutdown()


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """Size and mtime: a replaced tokenizer means a new index."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def model_spec(settings: Settings, adapter: Path | None = None) -> ModelSpec:
    return ModelSpec(
        backend=settings.backend,
        path=Path(settings.model_path).expanduser(),
        threads=settings.threads,
        adapter=adapter,
    )


def create_server(overrides: Mapping[str, Any] | None = None) -> RubytailorServer:
    """A server with every handler registered; ``overrides`` are wire-format settings."""
    from rubytailor.lsp.handlers import register_all

    server = RubytailorServer(overrides=overrides)
    register_all(server)
    return server
