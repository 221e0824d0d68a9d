"""Run an iterator inside other network namespaces.

``iter/tcp`` walks the TCP sockets of the network namespace its reader was
created in. The counters path needs every namespace with sockets (containers,
pods): the kernel lists them (``flow_netns``: namespace inode -> a process in
it), and the collector enters each one through ``/proc/PID/ns/net`` for the
instant of ``bpf_iter_create``, on the polling thread only (``setns`` is per
thread), and always returns to its own.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["NetnsRunner"]

log = logging.getLogger("bpfscope.flows")

CLONE_NEWNET: Final = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetnsRunner:
    """``run(run_once, namespaces)`` calls ``run_once`` in this process's
    network namespace and in each other one listed (inode, pid). Handles are
    opened per run and closed at once: holding one would keep a deleted
    namespace alive."""

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.own_inode = os.fstat(self._own).st_ino
        self.entered = 0  # other namespaces visited by the last run

    @staticmethod
    def _open(inode: int, pid: int) -> int | None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if os.fstat(fd).st_ino != inode:  # the pid moved or was reused
            os.close(fd)
            return None
        return fd

    def run(
        self, run_once: Callable[[], bytes], namespaces: Iterable[tuple[int, int]]
    ) -> tuple[bytes, list[int]]:
        """The iterators' output, and the namespaces that could not be
        entered (their process is gone or moved: forget them)."""
        out = [run_once()]
        gone: list[int] = []
        seen = {self.own_inode}
        for inode, pid in namespaces:
            if inode in seen:
                continue
            seen.add(inode)
            fd = self._open(inode, pid)
            if fd is None:
                gone.append(inode)
                continue
            try:
                _setns(fd)
            except OSError as exc:
                log.debug("cannot enter network namespace %d: %s", inode, exc)
                gone.append(inode)
                continue
            finally:
                os.close(fd)
            try:
                out.append(run_once())
            finally:
                self._back()
        self.entered = len(seen) - 1 - len(gone)
        return b"".join(out), gone

    def _back(self) -> None:
        try:
            _setns(self._own)
        except OSError as exc:  # never go on polling from a foreign namespace
            raise RuntimeError(
                f"cannot return to the collector's network namespace: {exc}"
            ) from exc

    def close(self) -> None:
        if self._own >= 0:
            os.close(self._own)
            self._own = -1
