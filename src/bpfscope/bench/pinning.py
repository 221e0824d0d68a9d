"""Where and in which order the lab runs its workloads.

One CPU for every timed workload (the last one this process may use), so
that cross-CPU wakeups and migrations on a VM do not change from one run to
the next; and one interleaving: every round runs each configuration once, in
an order rotated from round to round, so that slow drift on a shared machine
hits all configurations alike and each round yields one ratio per pair.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["bench_cpu", "interleave", "pinned", "rotated"]

T = TypeVar("T")


def bench_cpu() -> int:
    """The CPU timed workloads are pinned to: the last one allowed."""
    return max(os.sched_getaffinity(0))


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """This thread on ``cpu`` while the block runs (children started in it
    inherit the affinity); None leaves it as it is."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def rotated(items: Sequence[T], rnd: int) -> list[T]:
    """``items`` started at position ``rnd`` (modulo their number)."""
    if not items:
        return []
    shift = rnd % len(items)
    return [*items[shift:], *items[:shift]]


def interleave(items: Sequence[T], rounds: int, *, rotate: bool = True) -> Iterator[tuple[int, T]]:
    """(round, item): every item once per round; rotated per round unless
    ``rotate`` is False (a fixed order, e.g. the baseline first)."""
    for rnd in range(rounds):
        for item in rotated(items, rnd) if rotate else items:
            yield rnd, item
