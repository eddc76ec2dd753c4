"""rubytailor/status: what the server is running, for editor status lines and bug reports.

Returns the model id and any load error, whether Prism works, the negotiated position
encoding and the effective settings. Backends may expose counters (the scripted fake
reports ``pieces_after_cancel``), which lets end-to-end tests measure cancellation
from outside the process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rubytailor.lsp.server import RubytailorServer
from rubytailor.protocol import STATUS_METHOD

# Numeric attributes a backend may carry that are worth showing.
BACKEND_COUNTERS = ("pieces_after_cancel",)


async def status(ls: RubytailorServer, params: Any) -> dict[str, Any]:
    completer = ls.completer
    backend = completer.backend
    counters = {
        name: getattr(backend, name)
        for name in BACKEND_COUNTERS
        if isinstance(getattr(backend, name, None), int)
    }
    return {
        "model_id": completer.model_id,
        # The backend that runs the model ("auto" in the settings resolves to this).
        "backend": getattr(backend, "name", None),
        "model_error": str(completer.model_error) if completer.model_error else None,
        "backend_note": completer.backend_note,
        "prism_error": str(completer.prism_error) if completer.prism_error else None,
        "position_encoding": ls.position_encoding,
        "settings": dataclasses.asdict(ls.settings),
        "backend_counters": counters,
        # off (with a reason), scanning, building or ready; files and tokens indexed.
        "project_memory": ls.memory_status(),
        # The adapter served (its name is also in model_id) and the background trainer.
        "personalization": ls.personalizer.status(),
        # What pre-warming did (lsp/prewarm.py): scheduled, done, preempted, tokens.
        "prewarm": dataclasses.asdict(ls.prewarmer.counts),
    }


def register(server: RubytailorServer) -> None:
    server.feature(STATUS_METHOD)(status)
