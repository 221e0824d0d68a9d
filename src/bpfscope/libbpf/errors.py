"""Errors of libbpf and bpf() calls: errno, libbpf's message and what to do.

libbpf 1.x reports failure in two ways, and the helpers here turn both into
:class:`BpfError`: functions returning ``int`` return ``-errno``; functions
returning a pointer return NULL and set ``errno``.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from collections.abc import Callable
from typing import Any, Final

from ..errors import EXIT_FAILURE, EXIT_PRIVILEGES, BpfscopeError
from .ffi import loaded, take_log_tail

__all__ = [
    "ENOTSUPP",
    "ERRNO_HINTS",
    "BpfError",
    "call_ptr",
    "check_ptr",
    "check_ret",
]

# Kernel's ENOTSUPP (524) is not in Python's errno table; batch ops use it.
ENOTSUPP: Final = 524

ERRNO_HINTS: Final[dict[int, str]] = {
    errno_mod.EPERM: (
        "run as root, or grant CAP_BPF and CAP_PERFMON (CAP_NET_ADMIN for "
        "network hooks; CAP_SYS_RESOURCE on kernels older than 5.11 that "
        "account BPF memory against RLIMIT_MEMLOCK); `bpfscope doctor` "
        "names what is missing"
    ),
    errno_mod.EACCES: (
        "the verifier rejected the program or the caller lacks privileges; "
        "rerun with -v to see libbpf's log"
    ),
    errno_mod.ENOENT: (
        "the hook does not exist on this kernel (tracepoint, kernel function "
        "or symbol not found); `bpfscope doctor` lists the mechanisms that "
        "work here"
    ),
    errno_mod.ESRCH: (
        "a BTF type or kernel symbol was not found: the kernel needs "
        "CONFIG_DEBUG_INFO_BTF=y, or pass a BTF file with --btf"
    ),
    errno_mod.EOPNOTSUPP: "this kernel does not support the operation",
    ENOTSUPP: "this kernel does not support the operation",
    errno_mod.E2BIG: "the kernel is too old for this program or map layout",
    errno_mod.ENOMEM: (
        "out of memory for BPF maps: raise RLIMIT_MEMLOCK (ulimit -l) or the cgroup memory limit"
    ),
    errno_mod.EBUSY: "the hook is already in use by another exclusive attachment",
}


# libbpf's own error codes (LIBBPF_ERRNO__*): bad ELF, relocation, ...
_LIBBPF_ERRNO_FIRST: Final = 4000
_LIBBPF_ERRNO_LAST: Final = 4100


def _strerror(code: int) -> str:
    lib = loaded()
    if _LIBBPF_ERRNO_FIRST <= code < _LIBBPF_ERRNO_LAST and lib is not None:
        buf = ctypes.create_string_buffer(256)
        if lib.libbpf_strerror(code, buf, len(buf)) == 0:
            return buf.value.decode(errors="replace")
    return os.strerror(code)


def _errno_name(code: int) -> str:
    if code == ENOTSUPP:
        return "ENOTSUPP"
    if _LIBBPF_ERRNO_FIRST <= code < _LIBBPF_ERRNO_LAST:
        return f"libbpf error {code}"
    return errno_mod.errorcode.get(code, f"errno {code}")


class BpfError(BpfscopeError, OSError):
    """A libbpf or bpf() failure with errno, libbpf's message and a hint.

    ``libbpf_log`` holds the last lines libbpf printed while the failing call
    ran (its verifier and relocation messages), so that the user sees why.
    """

    def __init__(
        self,
        what: str,
        err: int,
        *,
        hint: str | None = None,
        libbpf_log: list[str] | None = None,
    ) -> None:
        self.what = what
        self.hint = hint if hint is not None else ERRNO_HINTS.get(err)
        self.libbpf_log = libbpf_log or []
        self.exit_code = EXIT_PRIVILEGES if err == errno_mod.EPERM else EXIT_FAILURE
        super().__init__(err, self._message(err))

    def _message(self, err: int) -> str:
        text = f"{self.what}: {_strerror(err)} ({_errno_name(err)})"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __str__(self) -> str:
        return str(self.args[1])

    def user_message(self) -> str:
        text = str(self)
        if self.libbpf_log:
            tail = "\n  ".join(self.libbpf_log[-8:])
            text += f"\nlibbpf said:\n  {tail}"
        return text


def check_ret(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno from int functions."""
    if ret < 0:
        raise BpfError(what, -ret, libbpf_log=take_log_tail())
    return ret


def check_ptr(ptr: int | None, what: str, hint: str | None = None) -> int:
    """libbpf 1.x returns NULL and sets errno from pointer functions."""
    if not ptr:
        err = ctypes.get_errno() or errno_mod.EINVAL
        raise BpfError(what, err, hint=hint, libbpf_log=take_log_tail())
    return ptr


def call_ptr(fn: Callable[..., int | None], *args: Any) -> int | None:
    """Call a pointer-returning function with errno cleared first."""
    ctypes.set_errno(0)
    return fn(*args)
