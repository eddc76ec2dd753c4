"""The allocator calls the server makes: real on glibc, harmless no-ops elsewhere."""

from __future__ import annotations

import platform

import pytest

from rubytailor import native_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_on_glibc_both_calls_take_effect() -> None:
    assert native_memory.limit_arenas(native_memory.SERVER_ARENAS)
    assert native_memory.release_freed()


def test_without_glibc_they_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_memory, "_glibc", lambda: None)
    assert not native_memory.limit_arenas()
    assert not native_memory.release_freed()
