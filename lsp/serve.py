"""Starting the server: logging that never touches stdout, then stdio or TCP."""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rubytailor import native_memory, paths
from rubytailor.lsp import jsonrpc
from rubytailor.lsp.server import create_server

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Log to ``log_file`` or stderr; stdout carries the protocol."""
    handler: logging.Handler
    if log_file is not None:
        paths.restrict_umask()  # the log holds the user's code: 0600 in a 0700 directory
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (anything else needs --allow-remote)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def serve(overrides: Mapping[str, Any] | None = None, tcp: tuple[str, int] | None = None) -> int:
    """Run until the client says exit (stdio) or the connection closes (TCP); the exit
    code (1 for an exit without shutdown, as LSP asks)."""
    # Whatever the server writes (the GGML cache, logs) is the user's alone, whatever
    # the umask it was started with.
    paths.restrict_umask()
    for directory in (paths.cache_dir(), paths.data_dir()):
        paths.warn_if_shared(directory)
    native_memory.limit_arenas()  # before any thread starts
    server = create_server(overrides)
    # Our reader and message checks instead of pygls' (lsp/jsonrpc.py says why).
    if tcp is None:
        logger.info("rubytailor serving on stdio")
        return jsonrpc.serve_stdio(server)
    logger.info("rubytailor serving on %s:%d", *tcp)
    return jsonrpc.serve_tcp(server, *tcp)
