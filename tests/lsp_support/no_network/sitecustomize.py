"""Loaded by every Python process started with this folder on PYTHONPATH (the server and
the trainer it spawns): any attempt to reach a network, or any named socket, is refused
and written to $RUBYTAILOR_SOCKET_LOG, so a test can say that nothing tried."""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

_LOG = os.environ.get("RUBYTAILOR_SOCKET_LOG", "")


def _refuse(what: str, *args: Any) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as log:
            stack = "".join(traceback.format_stack(limit=8)[:-2])
            log.write(f"pid {os.getpid()}: {what}{args!r}\n{stack}\n")
    raise PermissionError(f"network access refused in this test: {what}{args!r}")


class _NoNetworkSocket(socket.socket):
    def connect(self, address: Any) -> None:
        _refuse("connect", self.family, address)

    def connect_ex(self, address: Any) -> int:
        _refuse("connect_ex", self.family, address)
        return 1

    def bind(self, address: Any) -> None:
        _refuse("bind", self.family, address)

    def sendto(self, *args: Any) -> int:
        _refuse("sendto", self.family, args[-1])
        return 0


def _no_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
    _refuse("getaddrinfo", *args)


socket.socket = _NoNetworkSocket  # type: ignore[misc]
socket.getaddrinfo = _no_getaddrinfo
socket.create_connection = lambda *a, **k: _refuse("create_connection", *a)  # type: ignore[assignment]
