"""Keeping glibc's allocator from holding on to memory the server has freed.

glibc gives each thread that allocates its own malloc arena (up to eight per core), and
memory freed in an arena mostly stays with the process. The server's threads (protocol,
model, watcher, index builder) each allocate through native code (tokenizers, numpy),
so a project's first scan left tens of MiB resident after its buffers were freed. Two
arenas, and a trim once the first scan is indexed, return most of it (measured on a
5.7 MB workspace: README "Project memory"). Elsewhere than glibc both calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
SERVER_ARENAS = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both; musl, macOS do not
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Cap the number of malloc arenas; call before the server starts its threads."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def release_freed() -> bool:
    """Give memory that was freed back to the system (after a large, passing peak)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
