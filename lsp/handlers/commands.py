"""workspace/executeCommand: personalization's commands (lsp/personalization.py).

  rubytailor.personalize                 train now (when not already training)
  rubytailor.personalization.pause       stop scheduling, and pause a running trainer
  rubytailor.personalization.resume
  rubytailor.personalization.rollback    serve the previous adapter (or the base model)
  rubytailor.personalization.status      what is served, what the scheduler waits for

Each answers with ``{"message": ..., "status": ...}``; pygls answers an unknown command
with InvalidParams and lists these in the ``executeCommandProvider`` capability.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rubytailor.lsp.personalization import Personalizer
from rubytailor.lsp.server import RubytailorServer

COMMANDS: dict[str, Callable[[Personalizer], str]] = {
    "rubytailor.personalize": Personalizer.trigger,
    "rubytailor.personalization.pause": Personalizer.pause,
    "rubytailor.personalization.resume": Personalizer.resume,
    "rubytailor.personalization.rollback": Personalizer.rollback,
    "rubytailor.personalization.status": lambda p: "",
}


def _handler(
    name: str, action: Callable[[Personalizer], str]
) -> Callable[..., Awaitable[dict[str, Any]]]:
    # pygls passes the command's arguments after ``ls``; these commands take none.
    async def handler(ls: RubytailorServer, *_arguments: Any) -> dict[str, Any]:
        await ls.wait_for_settings()  # the workspace's own settings say whether it is on
        return {"message": action(ls.personalizer), "status": ls.personalizer.status()}

    handler.__name__ = name.replace(".", "_")
    return handler


def register(server: RubytailorServer) -> None:
    for name, action in COMMANDS.items():
        server.command(name)(_handler(name, action))
