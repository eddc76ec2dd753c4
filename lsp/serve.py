"""Starting the server: logging that never touches stdout, then stdio or TCP."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rubytailor.lsp.server import create_server

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Log to ``log_file`` or stderr; stdout carries the protocol."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pygls logs every message body at INFO; only worth it when debugging.
    if root.level > logging.DEBUG:
        logging.getLogger("pygls").setLevel(logging.WARNING)


def parse_tcp(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT``; the host defaults to 127.0.0.1 (local only)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tcp {address!r}: expected HOST:PORT or PORT, e.g. 127.0.0.1:2087")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(overrides: Mapping[str, Any] | None = None, tcp: tuple[str, int] | None = None) -> None:
    """Run until the client says exit (stdio) or the connection closes (TCP)."""
    server = create_server(overrides)
    if tcp is None:
        logger.info("rubytailor serving on stdio")
        server.start_io()
    else:
        logger.info("rubytailor serving on %s:%d", *tcp)
        server.start_tcp(*tcp)
