"""``bpfscope syscalls``: per-process syscall counts, errors and latency."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from ..bench.tracer import run_bench
from ..clikit import (
    RunLimits,
    comm_option,
    count_option,
    duration_option,
    interval_option,
    parse_cgroup,
    sleep_until,
    stop_on_signals,
    validate_pid,
)
from ..errors import EXIT_USAGE, UserError
from ..features import Mechanism
from ..sysnames import syscall_nr
from ..system import require_privileges
from . import COST_NS
from .collector import SyscallCollector
from .programs import SyscallFilter
from .render import BY_CHOICES, SORT_CHOICES, ViewOptions

__all__ = ["parse_syscalls", "syscalls"]

ATTACH_CHOICES = (str(Mechanism.TP_BTF), str(Mechanism.RAW_TP), str(Mechanism.TRACEPOINT))
_LATENCY_X = COST_NS["latency"] / COST_NS["counts"]


def parse_syscalls(values: Sequence[str]) -> frozenset[int]:
    """``-s read,write -s openat`` -> their numbers; unknown names raise
    :class:`~bpfscope.syscalls.UnknownSyscall` (close matches, exit code 2)."""
    nrs = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name:
                nrs.add(syscall_nr(name))
    return frozenset(nrs)


@click.command("syscalls")
@click.option("-p", "--pid", type=click.IntRange(min=1), help="Only this process (tgid).")
@comm_option(help="Only commands starting with NAME (a prefix, max 15 bytes; in the kernel).")
@click.option("--cgroup", metavar="PATH|ID", help="Only this cgroup v2 (directory or id).")
@click.option(
    "-s",
    "--syscall",
    "syscall_names",
    multiple=True,
    metavar="NAME[,NAME]",
    help="Only these syscalls (repeatable, comma-separated).",
)
@click.option("-x", "--failed", is_flag=True, help="Only failed calls (-4095..-1 returned).")
@interval_option()
@duration_option()
@count_option()
@click.option(
    "-T",
    "--top",
    "--limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Rows per report (0: all).",
)
@click.option(
    "--sort",
    type=click.Choice(SORT_CHOICES),
    default="count",
    show_default=True,
    help="Order of the rows; 'time' needs -L.",
)
@click.option(
    "--by",
    type=click.Choice(BY_CHOICES),
    default="syscall",
    show_default=True,
    help="Group rows per syscall, per process, or per (process, syscall).",
)
@click.option("-e", "--errno", "errnos", is_flag=True, help="Break failed calls down by errno.")
@click.option(
    "-L",
    "--latency",
    is_flag=True,
    help="Also time every call: TIME and MEAN columns, --sort time, log2 latency histograms. "
    f"Hooks sys_enter too and reads the clock twice per call: about {_LATENCY_X:.1f}x "
    "the default's cost (docs/syscalls.md). Also sees exit/exit_group.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per report (JSON lines).")
@click.option(
    "--attach",
    type=click.Choice(ATTACH_CHOICES),
    help="Force an attach mechanism instead of the ladder's first usable rung.",
)
@click.option(
    "--max-entries",
    type=click.IntRange(min=64),
    help="Most (process, syscall, CPU) rows of one interval (default 65536, or 2048 per "
    "possible CPU if more, at most 1048576; -L: 16384, or 512 per CPU, at most 262144); calls "
    "beyond are counted as lost. The errno map gets a quarter. Rows are not preallocated: "
    "~100 B (-L: ~430 B) each while held (each poll empties the tables it reads; there are "
    "two copies). The buckets are, 16 B per max entry: idle, 2.5 MiB at 65536 with the errno "
    "map and both copies, 40 MiB at most (-L: 640 KiB to 10 MiB).",
)
@click.option(
    "--bench",
    is_flag=True,
    help="Measure the tracer's overhead per syscall and exit (= bpfscope bench tracer).",
)
@click.option(
    "--bench-calls",
    type=click.IntRange(min=10_000),
    default=2_000_000,
    show_default=True,
    help="getpid() calls per benchmark run.",
)
@click.option(
    "--bench-rounds",
    type=click.IntRange(min=1),
    default=15,
    show_default=True,
    help="Runs per mode (the verdicts need about 9 or more to be stable).",
)
@click.option("--no-bpftrace", is_flag=True, help="Benchmark without the bpftrace comparison.")
@click.pass_context
def syscalls(
    ctx: click.Context,
    pid: int | None,
    comm: str | None,
    cgroup: str | None,
    syscall_names: tuple[str, ...],
    failed: bool,
    interval: float,
    duration: float | None,
    count: int | None,
    top: int,
    sort: str,
    by: str,
    errnos: bool,
    latency: bool,
    as_json: bool,
    attach: str | None,
    max_entries: int | None,
    bench: bool,
    bench_calls: int,
    bench_rounds: int,
    no_bpftrace: bool,
) -> None:
    """Count syscalls per process: calls and errors; latency with -L.

    By default only sys_exit is hooked and nothing is timed (like syscount);
    -L times every call, at a few times the cost.

    \b
    Examples:
      bpfscope syscalls                       top syscalls, every second
      bpfscope syscalls --by process -n 5     busiest processes, 5 reports
      bpfscope syscalls -s openat,read -x -e  failed openat/read, by errno
      bpfscope syscalls -L --sort time        syscalls by total time, histograms
      bpfscope syscalls -p 1234 -e -L         one process, errnos, latency
      bpfscope syscalls --json -n 1 -i 5      one 5-second report as JSON
      bpfscope syscalls --bench               what each mode costs per call
    """
    btf = (ctx.obj or {}).get("btf")
    force = Mechanism(attach) if attach else None
    if bench:
        require_privileges()
        run_bench(
            calls=bench_calls,
            rounds=bench_rounds,
            bpftrace=not no_bpftrace,
            force=force,
            btf_path=btf,
            as_json=as_json,
        )
        return

    if sort == "time" and not latency:
        raise UserError(
            f"--sort time needs -L/--latency (timing every call costs about {_LATENCY_X:.1f}x "
            "more, see docs/syscalls.md)",
            EXIT_USAGE,
        )
    flt = SyscallFilter(
        tgid=validate_pid(pid) if pid is not None else None,
        comm=comm or None,
        cgroup_id=parse_cgroup(cgroup) if cgroup else None,
        syscalls=parse_syscalls(syscall_names),
        failed_only=failed,
    )
    opts = ViewOptions(by=by, sort=sort, top=top or None, errnos=errnos, latency=latency)
    require_privileges()
    with SyscallCollector(
        flt, latency=latency, max_entries=max_entries, force=force, btf_path=btf
    ) as collector:
        _report_loop(collector.poll, opts, interval, RunLimits(duration, count), as_json)


def _report_loop(
    poll: Callable[[], Any], opts: ViewOptions, interval: float, limits: RunLimits, as_json: bool
) -> None:
    from .render import json_snapshot, plain_snapshot, rich_snapshot

    live_view = sys.stdout.isatty() and not as_json
    with stop_on_signals() as stopped:
        if live_view:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            console = Console()
            with Live(
                Text(f"tracing syscalls; first report in {interval:g}s (Ctrl-C to stop)"),
                console=console,
                auto_refresh=False,
                transient=False,
            ) as live:
                deadline = time.monotonic()
                while not stopped[0] and not limits.reached():
                    deadline += interval
                    sleep_until(limits.deadline(deadline), stopped)
                    live.update(rich_snapshot(poll(), opts), refresh=True)
                    limits.add()
            return
        deadline = time.monotonic()
        while not stopped[0] and not limits.reached():
            deadline += interval
            sleep_until(limits.deadline(deadline), stopped)
            snap = poll()
            if as_json:
                sys.stdout.write(json.dumps(json_snapshot(snap, opts)) + "\n")
            else:
                sys.stdout.write(plain_snapshot(snap, opts) + "\n")
            sys.stdout.flush()
            limits.add()
