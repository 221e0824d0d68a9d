"""Keep the agent's resident memory near what it holds.

glibc's malloc gives each thread that allocates an arena of its own (up to
8 per core) and raises its mmap threshold each time a large block is freed,
so the multi-megabyte byte strings the event thread and the poll loop pass
each other (raw lifecycle events) end up carved from arenas that never
shrink: under connection churn the RSS grew by tens of megabytes that no
object held. Two arenas and a fixed mmap threshold give large blocks back to
the kernel when they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

__all__ = ["tune_malloc"]

log = logging.getLogger("bpfscope.memory")

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8


def tune_malloc(arenas: int = 2, mmap_threshold: int = 256 << 10) -> bool:
    """Call before starting threads. False where the C library is not glibc
    (nothing changed then)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_ARENA_MAX, arenas))
    ok &= bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    ok &= bool(mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold))
    if not ok:
        log.debug("mallopt refused a setting")
    return ok
