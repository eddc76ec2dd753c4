"""workspace/didChangeWorkspaceFolders: project memory and personalization follow the folders.

pygls updates its workspace first; this handler then lets the server add or drop the
folders in the project memory.
"""

from __future__ import annotations

from lsprotocol import types

from rubytailor.lsp.server import RubytailorServer


def did_change_workspace_folders(
    ls: RubytailorServer, params: types.DidChangeWorkspaceFoldersParams
) -> None:
    ls.refresh_project_memory()
    if ls.personalizer.refresh():
        ls.load_model()


def register(server: RubytailorServer) -> None:
    server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)(did_change_workspace_folders)
