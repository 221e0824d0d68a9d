"""serve tunes glibc's malloc before it starts threads (bpfscope.memory):
the settings must be ones glibc accepts, and elsewhere nothing breaks."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from bpfscope import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_every_setting() -> None:
    assert memory.tune_malloc() is True


def test_no_c_library_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert memory.tune_malloc() is False
