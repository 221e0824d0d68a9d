"""Grouping and ranking of syscall records for the views (CLI, API):
by process, by syscall, or both; the top N by count, time or errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .records import ErrnoStat, SyscallStat

__all__ = ["aggregate", "aggregate_errnos", "grouped_json", "top"]


def aggregate(stats: Iterable[SyscallStat], by: str) -> list[SyscallStat]:
    """Group records ``by`` "process", "syscall" or "both" (no grouping)."""
    if by == "both":
        return list(stats)
    groups: dict[int, list[SyscallStat]] = {}
    for s in stats:
        groups.setdefault(s.tgid if by == "process" else s.nr, []).append(s)
    out = []
    for members in groups.values():
        first = members[0]
        hist = tuple(sum(col) for col in zip(*(m.hist for m in members), strict=True))
        out.append(
            SyscallStat(
                tgid=first.tgid if by == "process" else 0,
                comm=first.comm if by == "process" else "",
                nr=first.nr if by == "syscall" else -1,
                syscall=first.syscall if by == "syscall" else "",
                count=sum(m.count for m in members),
                errors=sum(m.errors for m in members),
                total_ns=sum(m.total_ns for m in members),
                hist=hist,
            )
        )
    return out


def top(stats: Sequence[SyscallStat], n: int | None, sort: str) -> list[SyscallStat]:
    """The ``n`` largest by "count", "time" or "errors" (ties: by name)."""
    keyf: Callable[[SyscallStat], tuple[int, int, str, int]]
    if sort == "time":
        keyf = lambda s: (-s.total_ns, -s.count, s.syscall, s.tgid)  # noqa: E731
    elif sort == "errors":
        keyf = lambda s: (-s.errors, -s.count, s.syscall, s.tgid)  # noqa: E731
    else:
        keyf = lambda s: (-s.count, -s.total_ns, s.syscall, s.tgid)  # noqa: E731
    ranked = sorted(stats, key=keyf)
    return ranked if n is None else ranked[:n]


def aggregate_errnos(errs: Iterable[ErrnoStat], by: str) -> list[ErrnoStat]:
    """Group errno records like :func:`aggregate`, keeping the errno; the
    largest counts first."""
    groups: dict[tuple[int, int, int], ErrnoStat] = {}
    for e in errs:
        k = (e.tgid if by != "syscall" else 0, e.nr if by != "process" else -1, e.err)
        prev = groups.get(k)
        if prev is not None:
            groups[k] = dataclasses.replace(prev, count=prev.count + e.count)
        elif by == "syscall":
            groups[k] = dataclasses.replace(e, tgid=0, comm="")
        elif by == "process":
            groups[k] = dataclasses.replace(e, nr=-1, syscall="")
        else:
            groups[k] = e
    return sorted(groups.values(), key=lambda e: (-e.count, e.syscall, e.tgid, e.errno))


def grouped_json(row: dict[str, Any], by: str) -> dict[str, Any]:
    """A row's JSON without the fields its grouping merged away."""
    if by == "process":
        row.pop("syscall", None)
        row.pop("nr", None)
    elif by == "syscall":
        row.pop("pid", None)
        row.pop("comm", None)
    return row
