"""What the syscall collector reports: per-interval records of calls,
errors and latency per (process, syscall), errno breakdowns, the drops the
kernel counted, and cumulative totals for Prometheus-style consumers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .programs import HIST_SLOTS, SyscallFilter

__all__ = [
    "CollectorStats",
    "Drops",
    "ErrnoStat",
    "Snapshot",
    "SyscallStat",
    "SyscallTotals",
    "bucket_bounds_ns",
    "bucket_of",
]


def bucket_of(latency_ns: int) -> int:
    """The histogram slot the kernel puts ``latency_ns`` in (floor(log2), capped)."""
    if latency_ns <= 1:
        return 0
    return min(latency_ns.bit_length() - 1, HIST_SLOTS - 1)


def bucket_bounds_ns(slot: int) -> tuple[int, int | None]:
    """[low, high) of a slot in ns; the last slot has no upper bound."""
    low = 0 if slot == 0 else 1 << slot
    return low, (None if slot == HIST_SLOTS - 1 else 1 << (slot + 1))


@dataclass(frozen=True)
class SyscallStat:
    """One (process, syscall) over an interval (or since start, for totals)."""

    tgid: int
    comm: str
    nr: int
    syscall: str
    count: int
    errors: int
    total_ns: int
    hist: tuple[int, ...]

    @property
    def mean_ns(self) -> float:
        timed = sum(self.hist)
        return self.total_ns / timed if timed else 0.0

    def to_json(self, latency: bool = True) -> dict[str, Any]:
        """``latency=False`` (counts mode: nothing was timed) leaves out
        ``total_ns``, ``mean_ns`` and ``latency_log2_ns``."""
        out: dict[str, Any] = {
            "pid": self.tgid,
            "comm": self.comm,
            "syscall": self.syscall,
            "nr": self.nr,
            "count": self.count,
            "errors": self.errors,
        }
        if latency:
            out["total_ns"] = self.total_ns
            out["mean_ns"] = round(self.mean_ns, 1)
            out["latency_log2_ns"] = list(self.hist)
        return out


@dataclass(frozen=True)
class ErrnoStat:
    tgid: int
    comm: str
    nr: int
    syscall: str
    err: int
    errno: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.tgid,
            "comm": self.comm,
            "syscall": self.syscall,
            "nr": self.nr,
            "errno": self.errno,
            "err": self.err,
            "count": self.count,
        }


@dataclass(frozen=True)
class Drops:
    """Cumulative kernel-side losses since start (maps full)."""

    inflight_nomem: int = 0
    stats_full: int = 0
    errnos_full: int = 0
    skipped: int = 0  # program runs the kernel skipped (recursion guard)

    @property
    def total(self) -> int:
        return self.inflight_nomem + self.stats_full + self.errnos_full + self.skipped

    def to_json(self) -> dict[str, int]:
        return {
            "inflight_nomem": self.inflight_nomem,
            "stats_full": self.stats_full,
            "errnos_full": self.errnos_full,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Snapshot:
    """What happened between two polls."""

    time: float  # wall clock at the poll (Unix seconds)
    elapsed_s: float
    stats: tuple[SyscallStat, ...]
    errnos: tuple[ErrnoStat, ...]
    drops: Drops
    mechanism: str
    filter: SyscallFilter = field(default_factory=SyscallFilter)
    latency: bool = False  # calls were timed (latency mode)

    @property
    def total_calls(self) -> int:
        return sum(s.count for s in self.stats)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": round(self.time, 3),
            "interval_s": round(self.elapsed_s, 3),
            "mechanism": self.mechanism,
            "filter": self.filter.describe(),
            "latency": self.latency,
            "total_calls": self.total_calls,
            "stats": [s.to_json(self.latency) for s in self.stats],
            "errnos": [e.to_json() for e in self.errnos],
            "drops": self.drops.to_json(),
        }
        if self.latency:
            out["hist_buckets"] = "slot i: [2^i, 2^(i+1)) ns; slot 0 from 0; last slot unbounded"
        return out


@dataclass(frozen=True)
class CollectorStats:
    """The syscall collector's own figures as of its last poll."""

    rungs: dict[str, str | None]
    mechanism: str
    polls: int
    drops: Drops

    def to_json(self) -> dict[str, Any]:
        return {
            "rungs": dict(self.rungs),
            "mechanism": self.mechanism,
            "polls": self.polls,
            "events_dropped": self.drops.total,
            "drops": self.drops.to_json(),
        }


@dataclass
class SyscallTotals:
    """Cumulative per-syscall counters since start (no pid dimension);
    ``total_ns`` and ``hist`` stay empty in counts mode."""

    count: dict[str, int] = field(default_factory=dict)
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (syscall, errno)
    total_ns: dict[str, int] = field(default_factory=dict)
    hist: dict[str, list[int]] = field(default_factory=dict)

    def add(self, snap: Snapshot) -> None:
        for s in snap.stats:
            self.count[s.syscall] = self.count.get(s.syscall, 0) + s.count
            if not snap.latency:
                continue
            self.total_ns[s.syscall] = self.total_ns.get(s.syscall, 0) + s.total_ns
            h = self.hist.setdefault(s.syscall, [0] * HIST_SLOTS)
            for i, v in enumerate(s.hist):
                h[i] += v
        for e in snap.errnos:
            k = (e.syscall, e.errno)
            self.errors[k] = self.errors.get(k, 0) + e.count
