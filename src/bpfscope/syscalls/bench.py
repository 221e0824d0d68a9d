"""What the syscall tracer costs per syscall, against its references.

``bpfscope syscalls --bench`` times a getpid() loop (a minimal C driver,
built with the system compiler; a Python loop when there is none) in CPU
time of the looping process (so that preemption by other work on a shared
machine does not count) under
five conditions, interleaved round by round so that drift on a shared
machine hits all of them alike:

* ``baseline``: nothing attached;
* ``empty``: empty programs on the same sys_enter/sys_exit hooks, through
  the same rung of the ladder as the tracer;
* ``bpfscope``: the tracer with ``-L``, unfiltered (every process, like bpftrace);
* ``counts``: the tracer's default mode (sys_exit alone, no latency);
* ``bpftrace``: the equivalent bpftrace script (:data:`BPFTRACE_SCRIPT`).

Each condition's *added* cost is its median ns/call minus the baseline's;
the report gives ``bpfscope / empty`` (issue bar: <= 1.35) and
``bpfscope / bpftrace`` (bar: <= 0.5).
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
from . import syscall_nr

__all__ = ["BPFTRACE_SCRIPT", "BenchResult", "measure", "run_bench"]

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


@dataclass
class BenchResult:
    calls: int
    rounds: int
    driver: str
    mechanism: str
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

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "rounds": self.rounds,
            "driver": self.driver,
            "mechanism": self.mechanism,
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "ns_per_call": {
                m: {"best": self.best(m), "median": self.median(m), "samples": s}
                for m, s in self.samples.items()
            },
            "added_ns": {m: self.added(m) for m in self.samples if m != "baseline"},
            "ratio_vs_empty": self.ratio("bpfscope", "empty"),
            "ratio_vs_bpftrace": self.ratio("bpfscope", "bpftrace"),
            "bars": {"vs_empty": BAR_VS_EMPTY, "vs_bpftrace": BAR_VS_BPFTRACE},
            "bpftrace_script": BPFTRACE_SCRIPT,
            "notes": self.notes,
        }

    def text(self) -> str:
        lines = [
            f"getpid() x {self.calls:,} per run, {self.rounds} round(s), driver: {self.driver}, "
            f"kernel {os.uname().release}, {os.cpu_count()} CPUs, rung: {self.mechanism}",
            f"  {'mode':<10} {'best':>9} {'added':>9} {'median':>9}   CPU ns/call of each run",
        ]
        for mode, samples in self.samples.items():
            best, med, added = self.best(mode), self.median(mode), self.added(mode)
            plus = "" if mode == "baseline" or added is None else f"{added:+.1f}"
            lines.append(
                f"  {mode:<10} {best:>9.1f} {plus:>9} {med:>9.1f}   "
                + " ".join(f"{x:.1f}" for x in samples)
            )
        for label, mode, ref, bar in (
            ("bpfscope / empty programs", "bpfscope", "empty", BAR_VS_EMPTY),
            ("bpfscope / bpftrace", "bpfscope", "bpftrace", BAR_VS_BPFTRACE),
            ("counts (default) / empty programs", "counts", "empty", BAR_VS_EMPTY),
        ):
            r = self.ratio(mode, ref)
            if r is not None:
                verdict = "meets" if r <= bar else "MISSES"
                lines.append(f"  {label}: {r:.2f} of the added cost ({verdict} the bar {bar})")
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
    from .tool import SyscallFilter, load_nop

    if progress is None and sys.stderr.isatty():

        def progress(msg: str) -> None:
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    notes = []
    if bpftrace and shutil.which("bpftrace") is None:
        notes.append("bpftrace is not installed: no bpftrace comparison")
        bpftrace = False
    system.ensure_tracefs()

    # Resolve the rung once, so that empty and tracer programs share it.
    with SyscallCollector(SyscallFilter(), latency=True, force=force, btf_path=btf_path) as probe:
        mechanism = probe.mechanism
        rung = probe.tool.choices[0].rung
    mech = rung.mechanism if rung is not None else force

    def tracer() -> AbstractContextManager[Any]:
        return SyscallCollector(SyscallFilter(), latency=True, force=mech, btf_path=btf_path)

    def counts_only() -> AbstractContextManager[Any]:
        return SyscallCollector(SyscallFilter(), latency=False, force=mech, btf_path=btf_path)

    def empty() -> AbstractContextManager[Any]:
        return load_nop(force=mech, btf_path=btf_path)

    modes: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "baseline": nullcontext,
        "empty": empty,
        "bpfscope": tracer,
        "counts": counts_only,
    }
    if bpftrace:
        modes["bpftrace"] = _bpftrace
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
