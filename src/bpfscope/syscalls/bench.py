"""What the syscall tracer costs per syscall, against its references.

``bpfscope syscalls --bench`` times a getpid() loop (a minimal C driver,
built with the system compiler; a Python loop when there is none) in CPU
time of the looping process (so that preemption by other work on a shared
machine does not count) under these conditions, interleaved round by round
so that drift on a shared machine hits all of them alike (:data:`MODES`):

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
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .. import system
from ..errors import EXIT_UNSUPPORTED, UserError
from ..features import Mechanism
from ..sysnames import syscall_nr

__all__ = [
    "BPFTRACE_SCRIPT",
    "COMPARISONS",
    "MODES",
    "BenchResult",
    "Comparison",
    "measure",
    "run_bench",
]

BPFTRACE_SCRIPT: Final = (
    "tracepoint:raw_syscalls:sys_enter { @[pid, args->id] = count(); @start[tid] = nsecs; } "
    "tracepoint:raw_syscalls:sys_exit /@start[tid]/ "
    "{ @lat = hist(nsecs - @start[tid]); delete(@start[tid]); }"
)

BAR_VS_EMPTY: Final = 1.35
BAR_VS_BPFTRACE: Final = 0.5

_DRIVER_C: Final = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long nr = atol(argv[1]), n = atol(argv[2]), i;
	struct timespec a, b;

	/* CPU time, not wall time: preemption does not count. */
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
	for (i = 0; i < n; i++)
		syscall(nr);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
	printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
"""

_PY_DRIVER: Final = """
import ctypes, sys, time
libc = ctypes.CDLL(None)
nr, n = int(sys.argv[1]), int(sys.argv[2])
f = libc.syscall
t = time.process_time_ns()
for _ in range(n):
    f(nr)
print((time.process_time_ns() - t) / n)
"""


MODES: Final = {
    "baseline": "nothing attached",
    "empty": "empty programs on sys_enter + sys_exit",
    "empty_exit": "empty program on sys_exit alone",
    "counts": "bpfscope syscalls (default: counts, errors, errnos; sys_exit)",
    "clock": "clock floor: bpf_ktime_get_ns() alone on sys_enter + sys_exit",
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

    def comparisons(self) -> list[dict[str, Any]]:
        out = []
        for c in COMPARISONS:
            r = self.ratio(c.mode, c.reference)
            if r is not None:
                meets = None if c.bar is None else r <= c.bar
                out.append(
                    {"mode": c.mode, "reference": c.reference, "ratio": r, "bar": c.bar}
                    | {"meets": meets}
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
        for c in self.comparisons():
            line = f"  {c['mode']} / {c['reference']}: {c['ratio']:.2f} of the added cost"
            if c["bar"] is not None:
                verdict = "meets" if c["meets"] else "MISSES"
                line += f" ({verdict} the bar {c['bar']})"
            lines.append(line)
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


@contextmanager
def _driver() -> Iterator[tuple[list[str], str]]:
    """The loop program: a compiled C driver if a compiler exists."""
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    with tempfile.TemporaryDirectory(prefix="bpfscope-bench-") as tmp:
        if cc:
            src, exe = Path(tmp, "loop.c"), Path(tmp, "loop")
            src.write_text(_DRIVER_C)
            done = subprocess.run(
                [cc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True
            )
            if done.returncode == 0:
                yield [str(exe)], f"C loop ({cc})"
                return
        yield [sys.executable, "-c", _PY_DRIVER], "Python ctypes loop (no C compiler)"


def _pin_last_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})


def measure(cmd: list[str], calls: int) -> float:
    """CPU ns per getpid() of one driver run (pinned to one CPU)."""
    done = subprocess.run(
        [*cmd, str(syscall_nr("getpid")), str(calls)],
        capture_output=True,
        text=True,
        preexec_fn=_pin_last_cpu,
        check=False,
    )
    if done.returncode != 0:
        raise UserError(f"benchmark driver failed: {done.stderr.strip()}")
    return float(done.stdout.strip())


@contextmanager
def _bpftrace() -> Iterator[None]:
    """bpftrace running the equivalent script, attached before we return."""
    proc = subprocess.Popen(
        ["bpftrace", "-B", "none", "-e", BPFTRACE_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        said = []
        for line in proc.stdout:  # warnings (memlock), then "Attaching 2 probes..."
            said.append(line.strip())
            if line.startswith("Attaching"):
                break
        else:
            raise UserError(f"bpftrace did not start: {' / '.join(said) or proc.wait()}")
        time.sleep(0.3)  # attached when it says so; let it settle
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)  # it prints its maps on exit
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_bench(
    *,
    calls: int = 2_000_000,
    rounds: int = 3,
    bpftrace: bool = True,
    force: Mechanism | None = None,
    btf_path: str | None = None,
    as_json: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the comparison and print it (text or JSON); returns the result."""
    from .collector import SyscallCollector
    from .programs import SyscallFilter, load_reference

    if progress is None and sys.stderr.isatty():

        def progress(msg: str) -> None:
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    notes = []
    if bpftrace and shutil.which("bpftrace") is None:
        notes.append("bpftrace is not installed: no bpftrace comparison")
        bpftrace = False
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
        return lambda: load_reference(name, force=mech, btf_path=btf_path)

    modes: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "baseline": nullcontext,
        "empty": reference("empty"),
        "empty_exit": reference("empty_exit"),
        "counts": tracer(False),
        "clock": reference("clock"),
        "latency": tracer(True),
    }
    if bpftrace:
        modes["bpftrace"] = _bpftrace
    mechanism = str(mech)
    with _driver() as (cmd, driver_name):
        measure(cmd, max(10_000, calls // 20))  # warm caches and the CPU
        result = BenchResult(calls, rounds, driver_name, mechanism, notes=notes)
        for r in range(rounds):
            for mode, setup in modes.items():
                if progress:
                    progress(f"round {r + 1}/{rounds}: {mode}")
                with setup():
                    result.samples.setdefault(mode, []).append(measure(cmd, calls))
        if progress:
            progress("")
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.text())
    return result


def main() -> int:  # pragma: no cover - python -m bpfscope.syscalls.bench
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-bpftrace", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        run_bench(
            calls=args.calls,
            rounds=args.rounds,
            bpftrace=not args.no_bpftrace,
            as_json=args.json,
        )
    except UserError as exc:
        print(f"bpfscope: error: {exc}", file=sys.stderr)
        return exc.exit_code or EXIT_UNSUPPORTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
