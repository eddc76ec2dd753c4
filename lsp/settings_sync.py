"""Getting the editor's settings: initializationOptions, then workspace/configuration.

At ``initialized`` the server pulls the ``rubytailor`` section if the client can answer
``workspace/configuration``; on ``workspace/didChangeConfiguration`` it takes the section
from the notification when the client pushed it there, and pulls it otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from rubytailor.config import SECTION, merge_wire, settings_from_wire, unwrap_section

if TYPE_CHECKING:
    from rubytailor.lsp.server import RubytailorServer

logger = logging.getLogger(__name__)

# A client that never answers workspace/configuration must not stall the server.
PULL_TIMEOUT_S = 5.0


def plain(value: Any) -> Any:
    """pygls hands custom payloads over as namedtuples; turn them back into JSON values."""
    if hasattr(value, "_asdict"):
        return {key: plain(item) for key, item in value._asdict().items()}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def remember_initialize(ls: RubytailorServer, params: types.InitializeParams) -> None:
    ls.init_options = unwrap_section(plain(params.initialization_options))
    workspace = params.capabilities.workspace
    ls.supports_configuration = bool(workspace and workspace.configuration)


async def pull(ls: RubytailorServer) -> Mapping[str, Any] | None:
    """The client's ``rubytailor`` section, or None if it has none or did not answer."""
    if not ls.supports_configuration:
        return None
    request = types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
    try:
        answer = await asyncio.wait_for(ls.workspace_configuration_async(request), PULL_TIMEOUT_S)
    except Exception as exc:  # a timeout or an error answer: keep going without it
        logger.warning("workspace/configuration failed (%s); using the other settings", exc)
        return None
    value = plain(answer[0]) if answer else None
    return value if isinstance(value, Mapping) else None


def apply(ls: RubytailorServer) -> None:
    """Recompute the settings from every layer and switch the server to them."""
    wire = merge_wire(ls.overrides, ls.init_options, ls.client_settings)
    settings, problems = settings_from_wire(wire)
    ls.apply_settings(settings, problems)


async def on_initialized(ls: RubytailorServer) -> None:
    try:
        ls.client_settings = await pull(ls)
        apply(ls)
    finally:
        ls.settings_ready.set()
    await ask_for_change_notifications(ls)


async def ask_for_change_notifications(ls: RubytailorServer) -> None:
    """Register for workspace/didChangeConfiguration where the client wants that.

    Pull-model clients (VS Code without ``synchronize.configurationSection``) only tell
    a server about setting changes it registered for; the notification then triggers
    a pull of the section.
    """
    workspace = ls.client_capabilities.workspace
    change = workspace.did_change_configuration if workspace else None
    if not (change and change.dynamic_registration):
        return
    registration = types.Registration(
        id=str(uuid.uuid4()),
        method=types.WORKSPACE_DID_CHANGE_CONFIGURATION,
        register_options=types.DidChangeConfigurationRegistrationOptions(section=SECTION),
    )
    try:
        await asyncio.wait_for(
            ls.client_register_capability_async(
                types.RegistrationParams(registrations=[registration])
            ),
            PULL_TIMEOUT_S,
        )
    except Exception as exc:  # the client said no or never answered: pushes still work
        logger.warning("could not register for configuration changes: %s", exc)


async def on_did_change(ls: RubytailorServer, params: types.DidChangeConfigurationParams) -> None:
    pushed = plain(params.settings)
    section = pushed.get(SECTION) if isinstance(pushed, Mapping) else None
    if isinstance(section, Mapping):
        ls.client_settings = section
    elif ls.supports_configuration:
        ls.client_settings = await pull(ls)
    else:
        logger.info("didChangeConfiguration without a %r section; settings unchanged", SECTION)
        return
    apply(ls)
