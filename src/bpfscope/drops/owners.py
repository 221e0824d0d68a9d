"""Owners of dropping sockets the kernel program could not name at once.

The BPF program names the owner of a TCP socket it saw connect, and of any
socket the sweep already found. Drops of other sockets (accepted TCP, UDP,
sockets older than the collector) carry the socket's inode; here they get
their owner from, in order:

1. the flows collector's owner of the same flow (the agent only: same
   netns, protocol, local and remote address and port);
2. the sweep: ``iter/task_file`` over every process's file table, which
   fills the kernel's ``drop_ino_owners`` for the inodes drops asked about,
   read back here. It runs at most once per poll, only when a record waits
   for an owner, and :data:`SWEEP_COST_FACTOR` times its own duration apart.

A socket already closed when the collector looks has no file table entry:
its drops stay ``pid: null`` (nobody can know whose it was any more).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Iterable
from typing import Any, Final, Protocol

from . import programs
from .records import DropOwnerC, DropRecord

__all__ = ["SWEEP_COST_FACTOR", "FlowOwners", "OwnerSweep", "resolve"]

log = logging.getLogger("bpfscope.drops")

# The sweep took 0.2-0.4 ms for ~500 open files here: at most one per poll
# and this many times its own last duration apart (under 2 % of a core).
SWEEP_COST_FACTOR: Final = 50.0


class _FlowLike(Protocol):
    pid: int
    comm: str
    netns: int
    proto: str
    laddr: str
    lport: int
    raddr: str | None
    rport: int | None


_Exact = tuple[int, str, str, int, str | None, int | None]
_Local = tuple[int, str, int]


class FlowOwners:
    """The owners of the flows collector's flows, by flow and by local port.

    A drop matches its flow exactly, or else (an unconnected UDP socket, a
    listener's port) the only owner of its netns, protocol and local port."""

    def __init__(self, flows: Iterable[_FlowLike]) -> None:
        self._flows = flows
        self._exact: dict[_Exact, tuple[int, str]] | None = None
        self._local: dict[_Local, tuple[int, str]] = {}

    def _index(self) -> dict[_Exact, tuple[int, str]]:
        """Built on the first question only: most polls have no drop that
        waits for an owner, and the agent may hold 100,000 flows."""
        if self._exact is None:
            self._exact = {}
            local: dict[_Local, set[tuple[int, str]]] = {}
            for f in self._flows:
                if not f.pid:
                    continue
                owner = (f.pid, f.comm)
                self._exact[(f.netns, f.proto, f.laddr, f.lport, f.raddr, f.rport)] = owner
                local.setdefault((f.netns, f.proto, f.lport), set()).add(owner)
            self._local = {k: next(iter(v)) for k, v in local.items() if len(v) == 1}
        return self._exact

    def owner(self, r: DropRecord) -> tuple[int, str] | None:
        if not r.socket:
            return None
        exact = self._index()
        found = exact.get((r.netns, r.proto, r.laddr, r.lport, r.raddr, r.rport))
        return found or self._local.get((r.netns, r.proto, r.lport))


class OwnerSweep:
    """The loaded object's sweep iterator and its owners-by-inode map."""

    def __init__(self, obj: Any) -> None:
        self._iter = obj.program(programs.SWEEP_ITER).attach()
        self._owners = obj.map(programs.INO_OWNERS_MAP)
        self._last = 0.0
        self.seconds = 0.0  # the last sweep's duration
        self.runs = 0

    def due(self, now: float) -> bool:
        return now - self._last >= self.seconds * SWEEP_COST_FACTOR

    def run(self) -> bool:
        t0 = time.monotonic()
        try:
            self._iter.run_iter()
        except OSError as exc:
            log.warning("sweeping for socket owners failed: %s", exc)
            return False
        finally:
            self._last = time.monotonic()
            self.seconds = self._last - t0
            self.runs += 1
        return True

    def owner(self, ino: int) -> tuple[int, str] | None:
        raw = self._owners.lookup(struct.pack("=I", ino))
        if raw is None:
            return None
        o = DropOwnerC.from_buffer_copy(raw[: ctypes.sizeof(DropOwnerC)])
        return (o.tgid, o.comm.decode("utf-8", "replace")) if o.tgid else None


def resolve(
    records: Iterable[DropRecord], flows: FlowOwners | None, sweep: OwnerSweep | None
) -> int:
    """Give an owner to the records of a socket that wait for one and grew
    in this poll (a closed socket's record is not looked up again and
    again); how many got one. The sweep runs only if one still waits."""
    waiting = [r for r in records if r.socket and not r.pid and r.delta]
    if flows is not None:
        for r in waiting:
            found = flows.owner(r)
            if found:
                r.pid, r.comm = found
                r.owner_from = "flows"
    waiting = [r for r in waiting if not r.pid and r.sock_ino]
    if waiting and sweep is not None and sweep.due(time.monotonic()) and sweep.run():
        for r in waiting:
            found = sweep.owner(r.sock_ino)
            if found:
                r.pid, r.comm = found
                r.owner_from = "sweep"
    return sum(1 for r in waiting if r.pid)
