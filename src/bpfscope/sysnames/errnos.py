"""Errno names (``EBADF``) for the numbers the kernel returns.

Python's :mod:`errno` carries the running platform's table; kernel-internal
codes that can leak out of a syscall (``ERESTARTSYS`` and friends, 512-530)
are named here because libc does not know them.
"""

from __future__ import annotations

import errno
from typing import Final

__all__ = ["errno_name", "errno_number"]

# include/linux/errno.h: never meant for userspace, but visible at sys_exit.
_KERNEL_ONLY: Final = {
    512: "ERESTARTSYS",
    513: "ERESTARTNOINTR",
    514: "ERESTARTNOHAND",
    515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK",
    517: "EPROBE_DEFER",
    518: "EOPENSTALE",
    519: "ENOPARAM",
    521: "EBADHANDLE",
    522: "ENOTSYNC",
    523: "EBADCOOKIE",
    524: "ENOTSUPP",
    525: "ETOOSMALL",
    526: "ESERVERFAULT",
    527: "EBADTYPE",
    528: "EJUKEBOX",
    529: "EIOCBQUEUED",
    530: "ERECALLCONFLICT",
}

# Where Python picks an alias, use the name strace and the kernel headers use.
_PREFERRED: Final = {
    getattr(errno, name): name
    for name in ("EAGAIN", "EDEADLK", "EOPNOTSUPP")
    if hasattr(errno, name)
}
_NAMES: Final = {**errno.errorcode, **_PREFERRED, **_KERNEL_ONLY}
_NUMBERS: Final = {name: nr for nr, name in _NAMES.items()} | {
    name: getattr(errno, name) for name in dir(errno) if name.startswith("E")
}


def errno_name(err: int) -> str:
    """``EBADF`` for 9; ``E<n>`` for a number nobody named."""
    return _NAMES.get(err, f"E{err}")


def errno_number(name: str) -> int | None:
    return _NUMBERS.get(name.upper())
