"""Arithmetic of the overhead lab: spreads, overheads per call, ratios.

Pure functions over plain numbers so that they can be tested on known
inputs. Times are seconds; overheads are nanoseconds per call.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "METRICS",
    "Sample",
    "Spread",
    "overhead_ns",
    "per_copy_overhead_ns",
    "ratio",
    "spread",
]

# real/user/sys: the child's wall and CPU times from wait4 (the `time` view);
# clock: the driver's own clock() (the inside view); gap: real - clock.
METRICS: Final = ("real", "user", "sys", "clock", "gap")


@dataclass(frozen=True)
class Sample:
    """One timed run of the driver."""

    real: float
    user: float
    sys: float
    clock: float
    # Extra evidence gathered around the run (None when not measured).
    events: int | None = None  # events the BPF side (or bpftrace) counted
    copies_fired: int | None = None  # programs that saw every call
    prog_run_ns: int | None = None  # kernel bpf_stats: run time, summed over copies
    prog_run_cnt: int | None = None  # kernel bpf_stats: runs, summed over copies

    @property
    def gap(self) -> float:
        """Outside minus inside: wall time the driver's clock() did not see."""
        return self.real - self.clock

    def metric(self, name: str) -> float:
        if name not in METRICS:
            raise KeyError(name)
        value: float = getattr(self, name)
        return value


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def spread(values: Iterable[float]) -> Spread:
    vals = sorted(values)
    if not vals:
        raise ValueError("no values")
    return Spread(statistics.median(vals), vals[0], vals[-1], len(vals))


def overhead_ns(t: float, t_baseline: float, calls: int) -> float:
    """Added time per call in ns: (t - t_baseline) / N."""
    if calls <= 0:
        raise ValueError("calls must be positive")
    return (t - t_baseline) / calls * 1e9


def ratio(t: float, t_baseline: float) -> float | None:
    """t / t_baseline, or None when the baseline is zero (nothing to compare)."""
    if t_baseline <= 0:
        return None
    return t / t_baseline


def per_copy_overhead_ns(points: Sequence[tuple[int, float]]) -> float | None:
    """Least-squares slope of overhead (ns/call) against program count K:
    what each additional identical program adds. None for fewer than two K."""
    if len({k for k, _ in points}) < 2:
        return None
    mk = statistics.fmean(k for k, _ in points)
    mo = statistics.fmean(o for _, o in points)
    num = sum((k - mk) * (o - mo) for k, o in points)
    den = sum((k - mk) ** 2 for k, _ in points)
    return num / den
