"""What the syscall tracer costs per syscall, against its references.

``bpfscope bench tracer`` (alias ``bpfscope syscalls --bench``) times a
getpid() loop (the lab's C driver, pinned to one CPU) in CPU time of the
looping process (so that preemption by other work on a shared machine does
not count) under these conditions, interleaved round by round so that drift
on a shared machine hits all of them alike (:data:`MODES`):

* ``baseline``: nothing attached;
* ``empty``: empty programs on sys_enter and sys_exit, through the same rung
  of the ladder as the tracer (the issue's reference);
* ``empty_exit``: an empty program on sys_exit alone (the counts mode's hook);
* ``counts``: the tracer's default mode (sys_exit alone), unfiltered;
* ``clock``: programs on sys_enter and sys_exit that only call
  bpf_ktime_get_ns(): the floor of any tracer that times every call;
* ``latency``: the tracer with ``-L`` (both hooks, every call timed);
* ``bpftrace``: the equivalent bpftrace script (:data:`BPFTRACE_SCRIPT`).

Each condition's *added* cost is its best ns/call minus the baseline's; the
report gives the ratios of :data:`COMPARISONS`. The issue's bar (<= 1.35 of
the empty programs) is judged on the default mode; the bpftrace bar
(<= 0.5) on ``-L``, the like-for-like comparison (bpftrace times calls).
Bars are judged by the lab's rule (:mod:`.verdict`): on the ratio of added
costs in each round, "meets"/"misses" only when the interval of their
median clears the bar, else "inconclusive".
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .. import system
from ..features import Mechanism
from ..sysnames import syscall_nr
from . import driver, peer, references
from .pinning import bench_cpu, interleave
from .verdict import Verdict, added_ratios, judge

__all__ = [
    "BPFTRACE_SCRIPT",
    "COMPARISONS",
    "DEFAULT_CALLS",
    "DEFAULT_ROUNDS",
    "MODES",
    "BenchResult",
    "Comparison",
    "run_bench",
]

BPFTRACE_SCRIPT: Final = (
    "tracepoint:raw_syscalls:sys_enter { @[pid, args->id] = count(); @start[tid] = nsecs; } "
    "tracepoint:raw_syscalls:sys_exit /@start[tid]/ "
    "{ @lat = hist(nsecs - @start[tid]); delete(@start[tid]); }"
)

BAR_VS_EMPTY: Final = 1.35
BAR_VS_BPFTRACE: Final = 0.5

DEFAULT_CALLS: Final = 2_000_000
# Enough rounds for the verdict's interval to drop the most extreme rounds
# (order statistics need n >= 9 at 95%) and for three consecutive default
# runs to agree on this 2-core VM (docs/bench-syscalls.md).
DEFAULT_ROUNDS: Final = 15

MODES: Final = {
    "baseline": "nothing attached",
    "empty": references.SYSCALLS["empty"][0],
    "empty_exit": references.SYSCALLS["empty_exit"][0],
    "counts": "bpfscope syscalls (default: counts, errors, errnos; sys_exit)",
    "clock": references.SYSCALLS["clock"][0],
    "latency": "bpfscope syscalls -L (every call timed; sys_enter + sys_exit)",
    "bpftrace": "bpftrace equivalent (counts + latency histogram)",
}


@dataclass(frozen=True)
class Comparison:
    """``mode``'s added cost over ``reference``'s, against ``bar`` if any."""

    mode: str
    reference: str
    bar: float | None = None


COMPARISONS: Final = (
    Comparison("counts", "empty", BAR_VS_EMPTY),  # the bar, on the default mode
    Comparison("counts", "empty_exit"),
    Comparison("latency", "empty", BAR_VS_EMPTY),
    Comparison("latency", "bpftrace", BAR_VS_BPFTRACE),
    Comparison("clock", "empty"),
    Comparison("latency", "clock"),
)


@dataclass
class BenchResult:
    calls: int
    rounds: int
    driver: str
    mechanism: str  # the rung every mode was loaded on
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, mode: str) -> float | None:
        s = self.samples.get(mode)
        return statistics.median(s) if s else None

    def best(self, mode: str) -> float | None:
        """Fastest run: the one least disturbed by the rest of the machine."""
        s = self.samples.get(mode)
        return min(s) if s else None

    def added(self, mode: str) -> float | None:
        """Added ns per call, best run against best baseline run."""
        m, base = self.best(mode), self.best("baseline")
        return None if m is None or base is None else m - base

    def ratio(self, mode: str, reference: str) -> float | None:
        a, r = self.added(mode), self.added(reference)
        if a is None or r is None or r <= 0:
            return None
        return a / r

    def over_clock_floor(self) -> float | None:
        """ns per call the latency mode adds on top of two bare clock reads."""
        lat, clock = self.added("latency"), self.added("clock")
        return None if lat is None or clock is None else lat - clock

    def verdict(self, mode: str, reference: str, bar: float | None = None) -> Verdict | None:
        """The ratio of added costs round by round, judged against ``bar``."""
        m, r, b = (self.samples.get(x) for x in (mode, reference, "baseline"))
        if not m or not r or not b:
            return None
        return judge(added_ratios(m, r, b), bar)

    def comparisons(self) -> list[dict[str, Any]]:
        """``ratio``: best runs; ``meets``: the per-round verdict (None when
        inconclusive or without a bar), detailed under ``rounds``."""
        out = []
        for c in COMPARISONS:
            r = self.ratio(c.mode, c.reference)
            v = self.verdict(c.mode, c.reference, c.bar)
            if r is not None and v is not None:
                out.append(
                    {"mode": c.mode, "reference": c.reference, "ratio": r, "bar": c.bar}
                    | {"meets": v.meets, "verdict": v.outcome, "rounds": v.to_json()}
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "rounds": self.rounds,
            "driver": self.driver,
            "mechanism": self.mechanism,
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "modes": {m: MODES[m] for m in self.samples},
            "ns_per_call": {
                m: {"best": self.best(m), "median": self.median(m), "samples": s}
                for m, s in self.samples.items()
            },
            "added_ns": {m: self.added(m) for m in self.samples if m != "baseline"},
            "comparisons": self.comparisons(),
            "latency_over_clock_floor_ns": self.over_clock_floor(),
            "bpftrace_script": BPFTRACE_SCRIPT,
            "notes": self.notes,
        }

    def text(self) -> str:
        lines = [
            f"getpid() x {self.calls:,} per run, {self.rounds} round(s), driver: {self.driver}, "
            f"kernel {os.uname().release}, {os.cpu_count()} CPUs, rung: {self.mechanism}",
            f"  {'mode':<10} {'best':>7} {'added':>7} {'median':>7}   CPU ns/call of each run",
        ]
        for mode, samples in self.samples.items():
            best, med, added = self.best(mode), self.median(mode), self.added(mode)
            plus = "" if mode == "baseline" or added is None else f"{added:+.1f}"
            lines.append(
                f"  {mode:<10} {best:>7.1f} {plus:>7} {med:>7.1f}   "
                + " ".join(f"{x:.1f}" for x in samples)
            )
        lines += ["  modes:"] + [f"    {m:<10} {MODES[m]}" for m in self.samples]
        for c in COMPARISONS:
            r = self.ratio(c.mode, c.reference)
            v = self.verdict(c.mode, c.reference, c.bar)
            if r is None or v is None:
                continue
            lines.append(
                f"  {c.mode} / {c.reference}: {r:.2f} of the added cost (best runs); "
                f"per round {v.text()}"
            )
        empty, clock, floor = self.added("empty"), self.added("clock"), self.over_clock_floor()
        if empty is not None and clock is not None:
            lines.append(
                f"  the bar {BAR_VS_EMPTY} x empty allows {BAR_VS_EMPTY * empty:+.1f} ns; "
                f"reading the clock at entry and exit alone adds {clock:+.1f} ns"
            )
        if floor is not None:
            lines.append(f"  latency mode above the clock floor: {floor:+.1f} ns per call")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def measure(exe: Path, calls: int, cpu: int | None) -> float:
    """CPU ns per getpid() of one driver run."""
    out = driver.run(exe, "getpid", syscall_nr("getpid"), calls, cpu=cpu)
    return out.sample.clock / out.calls * 1e9


def run_bench(
    *,
    calls: int = DEFAULT_CALLS,
    rounds: int = DEFAULT_ROUNDS,
    bpftrace: bool = True,
    force: Mechanism | None = None,
    btf_path: str | None = None,
    as_json: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the comparison and print it (text or JSON); returns the result."""
    from ..syscalls.collector import SyscallCollector
    from ..syscalls.programs import SyscallFilter

    if progress is None and sys.stderr.isatty():

        def progress(msg: str) -> None:
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    notes = []
    bt = peer.find_bpftrace() if bpftrace else None
    if bpftrace and bt is None:
        notes.append("bpftrace is not installed: no bpftrace comparison")
    system.ensure_tracefs()

    # Resolve the rung once (on the latency mode: it needs the most), so
    # that every mode shares it.
    with SyscallCollector(latency=True, force=force, btf_path=btf_path) as probe:
        rung = probe.tool.choices[0].rung
    mech = rung.mechanism if rung is not None else force

    def tracer(latency: bool) -> Callable[[], AbstractContextManager[Any]]:
        return lambda: SyscallCollector(
            SyscallFilter(), latency=latency, force=mech, btf_path=btf_path
        )

    def reference(name: str) -> Callable[[], AbstractContextManager[Any]]:
        return lambda: references.load_reference(name, force=mech, btf_path=btf_path)

    modes: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "baseline": nullcontext,
        "empty": reference("empty"),
        "empty_exit": reference("empty_exit"),
        "counts": tracer(False),
        "clock": reference("clock"),
        "latency": tracer(True),
    }
    if bt is not None:
        bt_run = bt
        modes["bpftrace"] = lambda: bt_run.running(peer.with_marker(BPFTRACE_SCRIPT))
    compiler = driver.find_compiler()
    exe = driver.build(compiler=compiler)
    cpu = bench_cpu()
    measure(exe, max(10_000, calls // 20), cpu)  # warm caches and the CPU
    result = BenchResult(calls, rounds, f"C driver ({' '.join(compiler)})", str(mech), notes=notes)
    result.notes.append(f"driver pinned to CPU {cpu}; modes rotated round by round")
    for r, mode in interleave(list(modes), rounds):
        if progress:
            progress(f"round {r + 1}/{rounds}: {mode}")
        with modes[mode]():
            result.samples.setdefault(mode, []).append(measure(exe, calls, cpu))
    if progress:
        progress("")
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.text())
    return result
