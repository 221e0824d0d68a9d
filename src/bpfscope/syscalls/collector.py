"""Syscall collector: drain the tracer's maps into typed per-interval records.

A plain collector (``start()``, ``poll()``, ``close()``) as the design asks:
it knows nothing about terminals or HTTP. ``poll()`` returns a
:class:`Snapshot` of what happened since the previous poll; ``totals`` keeps cumulative per-syscall
counters for Prometheus-style consumers (the agent).

The kernel keeps one row per (process, syscall[, errno], CPU), written by
that CPU alone; a poll sums the CPU rows of each (process, syscall[, errno])
into one record.

By default only calls and errors are counted (sys_exit alone); with
``latency=True`` every call is also timed, and the records' latency fields
(``total_ns``, ``hist``) are filled in.

The kernel keeps two copies of its tables; programs write the one
``syscalls_gen`` names. A poll flips it, waits until no program still
writes the other (the kernel's wait on a map-in-map update), then reads and
empties that copy: every call made before the flip is in this poll, exactly
once, including those of processes that exited in the interval, and the
maps hold only rows of the current interval (no idle rows to expire, no
rows of exited processes to delete). See docs/syscalls.md.
"""

from __future__ import annotations

import ctypes
import operator
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..features import Mechanism
from ..ladder import Choice
from ..sysnames import syscall_names, syscall_nr
from ..sysnames.errnos import errno_name
from .programs import (
    COMM_LEN,
    DROP_SLOTS,
    HIST_SLOTS,
    CountsValue,
    StatsValue,
    SyscallFilter,
    load,
    stats_map,
    table_copies,
)
from .records import (
    CollectorStats,
    Drops,
    ErrnoStat,
    Snapshot,
    SyscallStat,
    SyscallTotals,
)

__all__ = [
    "ProcessNames",
    "SyscallCollector",
    "decode_stats",
    "kernel_name",
    "name_of",
    "sum_percpu",
]


@dataclass(frozen=True)
class _Layout:
    """Where a mode's value keeps its counters and comm."""

    words: int  # leading u64 counters: count, errors[, total_ns, hist...]
    stride: int  # u64 per value (per copy, when several are concatenated)
    comm: int  # byte offset of comm in a value


# counts mode: count, errors, comm; latency: count, errors, total_ns, hist, comm
_COUNTS = _Layout(2, ctypes.sizeof(CountsValue) // 8, CountsValue.comm.offset)
_STATS = _Layout(3 + HIST_SLOTS, ctypes.sizeof(StatsValue) // 8, StatsValue.comm.offset)
_NOT_TIMED = (0,) * (1 + HIST_SLOTS)  # total_ns, hist of a counts-mode row
_INVALID_NR = 0xFFFFFFFF
# Leading fields of the keys: (tgid, nr) of syscalls_key, (tgid, nr, err) of
# syscalls_errno_key; the CPU comes last in both.
_U32X2 = struct.Struct("=II")
_U32X3 = struct.Struct("=III")


_NAMES_BY_NR: dict[int, str] | None = None
_EXEC_NRS: frozenset[int] | None = None


def _exec_nrs() -> frozenset[int]:
    """execve and execveat: a successful one renames the process."""
    global _EXEC_NRS
    if _EXEC_NRS is None:
        _EXEC_NRS = frozenset(syscall_nr(n) for n in ("execve", "execveat"))
    return _EXEC_NRS


def name_of(nr: int) -> str:
    """Syscall name for this architecture; ``syscall_<nr>`` if unnamed."""
    global _NAMES_BY_NR
    if _NAMES_BY_NR is None:
        _NAMES_BY_NR = {syscall_nr(n): n for n in syscall_names()}
    if nr == _INVALID_NR:
        return "invalid(-1)"
    return _NAMES_BY_NR.get(nr, f"syscall_{nr}")


def sum_percpu(raw: bytes, words: int, stride: int | None = None) -> tuple[int, ...]:
    """Sum the first ``words`` native u64 columns over the copies (CPU rows)
    concatenated in ``raw``; each copy is ``stride`` u64 long (default
    ``words``)."""
    stride = stride or words
    values = memoryview(raw).cast("Q")
    if len(values) % stride:
        raise ValueError(f"{len(raw)} bytes are not whole copies of {stride} u64")
    return tuple(sum(values[i::stride]) for i in range(words))


def decode_stats(raw: bytes, latency: bool = True) -> tuple[int, ...]:
    """Counters of (process, syscall) values concatenated in ``raw`` (one or
    more CPU rows), summed: count, errors, total_ns, hist[HIST_SLOTS] (the
    last two all 0 in counts mode, ``latency=False``, whose value has no
    such fields)."""
    if latency:
        return sum_percpu(raw, _STATS.words, _STATS.stride)
    return sum_percpu(raw, _COUNTS.words, _COUNTS.stride) + _NOT_TIMED


def _copies(raw: bytes, latency: bool) -> list[tuple[str, int, int]]:
    """(comm, count, errors) of each value in ``raw`` that counted calls."""
    lay = _STATS if latency else _COUNTS
    values = memoryview(raw).cast("Q")
    out = []
    for cpu, n in enumerate(values[:: lay.stride]):
        if n:
            off = cpu * lay.stride * 8 + lay.comm
            name = raw[off : off + COMM_LEN].split(b"\0", 1)[0].decode("utf-8", "replace")
            out.append((name, n, values[cpu * lay.stride + 1]))
    return out


def kernel_name(entries: Iterable[tuple[int, bytes]], latency: bool = True) -> str:
    """A process's name from its (syscall nr, value) rows (each CPU's its
    own), as the kernel saw it ("" if it saw none). A process that exec'd is
    named by the program it became: the comm its successful execve/execveat
    left on its row (the kernel takes it again on each successful exec; if
    it exec'd on several CPUs, the program among them that made most of its
    calls). A
    fork+exec'd child makes its first calls, sometimes most of them (a
    posix_spawn from Python: 120 rt_sigaction), under its parent's name.
    Else the command that made most of its calls."""
    calls: dict[str, int] = {}
    became: set[str] = set()
    for nr, raw in entries:
        for name, n, errors in _copies(raw, latency):
            if not name:
                continue
            calls[name] = calls.get(name, 0) + n
            if n > errors and nr in _exec_nrs():
                became.add(name)
    return max(became or calls, key=lambda name: (calls[name], name), default="")


class ProcessNames:
    """tgid -> command from ``/proc``, cached (a process may be gone by the
    time it is shown; then its last known name, or ``?``)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._cache: dict[int, str] = {}

    def alive(self, tgid: int) -> bool:
        return os.path.exists(f"{self._proc}/{tgid}")

    def lookup(self, tgid: int) -> str | None:
        """The command of ``tgid``; None when the process is gone and was
        never seen alive."""
        name = self._cache.get(tgid)
        if name is None:
            try:
                with open(f"{self._proc}/{tgid}/comm", encoding="utf-8", errors="replace") as f:
                    name = f.read().rstrip("\n")
            except OSError:
                return None
            self._cache[tgid] = name
        return name

    def get(self, tgid: int, fallback: str = "") -> str:
        """The command of ``tgid``; ``fallback`` (what the kernel saw) or
        ``?`` when the process is gone and was never seen alive."""
        return self.lookup(tgid) or fallback or "?"

    def forget(self, tgid: int) -> None:
        self._cache.pop(tgid, None)


class _ToolLike(Protocol):
    obj: Any
    choices: list[Choice]

    def rungs(self) -> dict[str, str | None]: ...
    def rungs_summary(self) -> str: ...
    def skipped_runs(self) -> int: ...
    def close(self) -> None: ...


def _tgids(*rows: Iterable[tuple[bytes, bytes]]) -> dict[int, None]:
    """The processes of map rows, in order of first appearance."""
    return {_U32X2.unpack_from(key)[0]: None for part in rows for key, _ in part}


def _split(d: tuple[int, ...], latency: bool) -> tuple[int, int, int, tuple[int, ...]]:
    """count, errors, total_ns, hist of a delta (the last two 0 in counts mode)."""
    if not latency:
        d = d + _NOT_TIMED
    return d[0], d[1], d[2], d[3:]


class SyscallCollector:
    """Load the tracer, then ``poll()`` for per-interval :class:`Snapshot`s.

    Counts and errors by default (sys_exit alone); ``latency=True`` times
    every call too (sys_enter and sys_exit). ``loader`` exists for tests; by
    default the real BPF object is loaded.
    """

    def __init__(
        self,
        flt: SyscallFilter | None = None,
        *,
        latency: bool = False,
        track_errnos: bool = True,
        max_entries: int | None = None,
        force: Mechanism | None = None,
        btf_path: str | None = None,
        names: ProcessNames | None = None,
        loader: Callable[[], _ToolLike] | None = None,
    ) -> None:
        self.filter = flt or SyscallFilter()
        self.latency = latency
        self._track_errnos = track_errnos
        self._loader = loader or (
            lambda: load(
                self.filter,
                track_errnos=track_errnos,
                latency=latency,
                max_entries=max_entries,
                force=force,
                btf_path=btf_path,
            )
        )
        self.names = names or ProcessNames()
        self._tool: _ToolLike | None = None
        self._gen = 0  # the copy of the tables programs write (syscalls_gen)
        self._named: set[int] = set()  # processes whose name ProcessNames may cache
        self._last = 0.0
        self._polls = 0
        self._drops = Drops()
        self.totals = SyscallTotals()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._tool is None:
            self._tool = self._loader()
            self._last = time.monotonic()

    def close(self) -> None:
        if self._tool is not None:
            self._tool.close()
            self._tool = None

    def __enter__(self) -> SyscallCollector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tool(self) -> _ToolLike:
        if self._tool is None:
            raise RuntimeError("collector is not started")
        return self._tool

    @property
    def mechanism(self) -> str:
        return self.tool.rungs_summary()

    # -- reading -----------------------------------------------------------

    def drops(self) -> Drops:
        m = self.tool.obj.map("syscalls_drops")
        return Drops(
            **{
                name: m.sum_percpu_u64(slot.to_bytes(4, "little"))
                for name, slot in DROP_SLOTS.items()
            },
            skipped=self.tool.skipped_runs(),
        )

    def _swap(self) -> tuple[Any, Any]:
        """Point programs at the other copy of the tables and wait until no
        program still writes the one they used; return that copy (calls
        map, errno map), complete and unchanging from here on."""
        obj = self.tool.obj
        old, self._gen = self._gen, self._gen ^ 1
        obj.bss["syscalls_gen"] = self._gen
        # Updating a map-in-map makes the kernel wait for every running
        # non-sleepable BPF program (an RCU grace period) before it returns:
        # a program that read the old syscalls_gen has finished its writes.
        inner = obj.map("syscalls_sync_in").fd
        obj.map("syscalls_sync").update(b"\0\0\0\0", inner.to_bytes(4, sys.byteorder))
        return (
            obj.map(table_copies(stats_map(self.latency))[old]),
            obj.map(table_copies("syscalls_errnos")[old]),
        )

    def poll(self) -> Snapshot:
        """Everything counted since the previous poll (or since start)."""
        now = time.monotonic()
        elapsed = now - self._last
        self._last = now

        # The copy programs wrote until now is read and emptied: each row
        # holds what its (process, syscall, CPU) did since the last poll, so
        # a process that exited in the interval is complete here, and
        # nothing is read twice or lost (no program writes it meanwhile).
        # Both maps before /proc: a gone process's failed open is a syscall
        # of ours, counted in the next interval.
        calls_map, errnos_map = self._swap()
        stats_raw = calls_map.lookup_and_delete_batch()
        errnos_raw = errnos_map.lookup_and_delete_batch() if self._track_errnos else []
        proc_names = {t: self.names.lookup(t) for t in _tgids(stats_raw, errnos_raw)}

        # Rows (tgid, nr, cpu) summed per (tgid, nr).
        merged: dict[tuple[int, int], tuple[int, ...]] = {}
        raws: dict[int, list[tuple[int, bytes]]] = {}  # tgid -> its (nr, value)s
        lay = _STATS if self.latency else _COUNTS
        for key, raw in stats_raw:
            d = sum_percpu(raw, lay.words, lay.stride)  # kept short: counts mode has 2
            tgid, nr = _U32X2.unpack_from(key)
            raws.setdefault(tgid, []).append((nr, raw))
            if not any(d):
                continue
            prev = merged.get((tgid, nr))
            merged[tgid, nr] = d if prev is None else tuple(map(operator.add, prev, d))
        for (tgid, nr), d in merged.items():
            if nr in _exec_nrs() and d[0] > d[1] and proc_names.get(tgid) is not None:
                # it exec'd since: the name /proc gave before is stale
                self.names.forget(tgid)
                proc_names[tgid] = self.names.lookup(tgid)

        err_counts: dict[tuple[int, int, int], int] = {}  # (tgid, nr, err): summed CPU rows
        for key, raw in errnos_raw:
            n = sum(memoryview(raw).cast("Q"))
            if n:
                k = _U32X3.unpack_from(key)
                err_counts[k] = err_counts.get(k, 0) + n

        # One name per process and poll, the same on its stats and errno
        # rows: /proc while it runs, else what the kernel saw (kernel_name:
        # the program it exec'd, or the command that made most of its calls).
        named: dict[int, str] = {}
        for tgid in dict.fromkeys([t for t, _ in merged] + [t for t, _, _ in err_counts]):
            name = proc_names.get(tgid)
            named[tgid] = name or kernel_name(raws.get(tgid, ()), self.latency) or "?"
        stats = [
            SyscallStat(tgid, named[tgid], nr, name_of(nr), *_split(d, self.latency))
            for (tgid, nr), d in merged.items()
        ]
        errs = [
            ErrnoStat(tgid, named[tgid], nr, name_of(nr), err, errno_name(err), n)
            for (tgid, nr, err), n in err_counts.items()
        ]
        self._forget_gone(proc_names)

        snap = Snapshot(
            time=time.time(),
            elapsed_s=elapsed,
            stats=tuple(stats),
            errnos=tuple(errs),
            drops=self.drops(),
            mechanism=self.mechanism,
            filter=self.filter,
            latency=self.latency,
        )
        self.totals.add(snap)
        self._polls += 1
        self._drops = snap.drops
        return snap

    def _forget_gone(self, proc_names: dict[int, str | None]) -> None:
        """Drop the cached names of processes that have exited: those /proc
        no longer has now, and those seen before and not in this poll that
        are gone (a silent process is checked once per poll, as before)."""
        gone = {t for t, name in proc_names.items() if name is None}
        quiet = self._named - proc_names.keys()
        gone |= {t for t in quiet if not self.names.alive(t)}
        for tgid in gone:
            self.names.forget(tgid)
        self._named = (self._named | proc_names.keys()) - gone

    def stats(self) -> CollectorStats:
        """Rungs, and the drops the last poll read (no kernel call)."""
        return CollectorStats(self.tool.rungs(), self.mechanism, self._polls, self._drops)
