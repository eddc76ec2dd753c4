"""initialize, initialized, workspace/didChangeConfiguration, shutdown."""

from __future__ import annotations

from lsprotocol import types

from rubytailor.lsp import settings_sync
from rubytailor.lsp.server import RubytailorServer


def initialize(ls: RubytailorServer, params: types.InitializeParams) -> None:
    settings_sync.remember_initialize(ls, params)


async def initialized(ls: RubytailorServer, params: types.InitializedParams) -> None:
    await settings_sync.on_initialized(ls)


async def did_change_configuration(
    ls: RubytailorServer, params: types.DidChangeConfigurationParams
) -> None:
    await settings_sync.on_did_change(ls, params)


def shutdown(ls: RubytailorServer, params: None) -> None:
    ls.inflight.cancel_all()


def register(server: RubytailorServer) -> None:
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.SHUTDOWN)(shutdown)
