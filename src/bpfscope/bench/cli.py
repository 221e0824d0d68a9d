"""``bpfscope bench``: the overhead lab's commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_UNSUPPORTED, EXIT_USAGE, UserError
from ..features import Mechanism
from ..system import require_privileges
from .pinning import bench_cpu
from .programs import MECHANISMS, WORKS

__all__ = ["bench", "syscalls_cmd"]

# The commands: syscalls (every mechanism, body and program count per
# syscall), tracer (what `bpfscope syscalls` costs; alias `syscalls --bench`),
# flows (what the flow monitor costs; alias `flows --bench`), flows-conns
# (collector CPU per poll with many open connections), agent (load
# benchmark of `bpfscope serve`).


@click.group()
def bench() -> None:
    """Overhead lab: what tracing costs on this kernel."""


def _split(values: tuple[str, ...] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = (values,)
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _split(text))
    except ValueError:
        raise UserError(
            f"{option}: expected comma-separated whole numbers, got {text!r}", EXIT_USAGE
        ) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]bench[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        transient=True,
    ) as prog:
        task = prog.add_task("starting", total=None)

        def update(done: int, total: int, label: str) -> None:
            prog.update(task, completed=done, total=total, description=label)

        yield update


def _write(dest: str, text: str) -> None:
    if dest == "-":
        click.echo(text, nl=not text.endswith("\n"))
    else:
        try:
            Path(dest).write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write {dest}: {exc.strerror}") from None


def _rich_report(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from . import report
    from .env import summary_line

    console = Console()
    console.print(f"[bold]bpfscope bench syscalls[/bold]: {summary_line(result.env)}")
    calls = result.options.calls
    for res in result.syscalls:
        table = Table(title=report._syscall_heading(res, calls), title_justify="left")
        for h in report.HEADERS:
            table.add_column(h, overflow="fold")
        for row in report.table_rows(res, calls):
            table.add_row(*row)
        console.print(table)
        for n in res.notes:
            console.print(f"[yellow]note:[/yellow] {n}")
    for line in [*report.study_lines(result), "", *report.bar_lines(result)]:
        console.print(line, highlight=False)
    for n in result.notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    console.print(f"({result.seconds:.0f} s)")


@bench.command("syscalls")
@click.argument("names", nargs=-1)
@click.option("-n", "--calls", type=int, default=None, help="Calls per run (N).")
@click.option("-r", "--reps", type=int, default=None, help="Repetitions per configuration (R).")
@click.option("--warmup/--no-warmup", default=True, show_default=True, help="One warm-up round.")
@click.option(
    "--path",
    type=click.Choice(["raw", "libc"]),
    default="raw",
    show_default=True,
    help="raw syscall() or the libc wrapper (adds the uprobe mechanism).",
)
@click.option(
    "-m",
    "--mechanism",
    "mechanisms",
    multiple=True,
    type=click.Choice([str(m) for m in MECHANISMS]),
    help="Only these mechanisms (repeatable; default: all).",
)
@click.option("--work", default=None, help=f"Program bodies, comma-separated ({','.join(WORKS)}).")
@click.option("--probes", default=None, help="Program counts K for the sweep, e.g. 1,2,4,8.")
@click.option("--bpftrace/--no-bpftrace", default=True, show_default=True, help="bpftrace peer.")
@click.option("--bpf-stats", is_flag=True, help="Also measure with kernel BPF run-time stats on.")
@click.option(
    "--pin/--no-pin",
    default=True,
    show_default=True,
    help="Pin the driver to one CPU (the last allowed): steadier rounds on VMs.",
)
@click.option("--quick", "preset", flag_value="quick", help="CI protocol (< 30 s).")
@click.option("--paper", "preset", flag_value="paper", help="The study's protocol: 50M x 10.")
@click.option(
    "--json",
    "json_out",
    is_flag=False,
    flag_value="-",
    default=None,
    metavar="[FILE]",
    help="JSON to FILE, or to stdout without one.",
)
@click.option(
    "--csv",
    "csv_out",
    is_flag=False,
    flag_value="-",
    default=None,
    metavar="[FILE]",
    help="CSV to FILE, or to stdout without one.",
)
@click.option("--plot", "plot_out", default=None, metavar="FILE", help="Figure (.png or .svg).")
@click.pass_context
def syscalls_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    calls: int | None,
    reps: int | None,
    warmup: bool,
    path: str,
    mechanisms: tuple[str, ...],
    work: str | None,
    probes: str | None,
    bpftrace: bool,
    bpf_stats: bool,
    pin: bool,
    preset: str | None,
    json_out: str | None,
    csv_out: str | None,
    plot_out: str | None,
) -> None:
    """Overhead of tracing a syscall, per attach mechanism, vs no tracing.

    NAMES are syscalls (default: the study's getuid getpid getppid times
    gettimeofday). Each runs N times in a compiled driver, without tracing
    and with each configuration attached, R times interleaved.
    """
    from . import driver, peer, report, runner
    from .env import capture

    preset = preset or "default"
    p = runner.PRESETS[preset]
    opts = runner.Options(
        syscalls=tuple(_split(names)) or runner.STUDY_SYSCALLS,
        calls=calls if calls is not None else p["calls"],
        reps=reps if reps is not None else p["reps"],
        warmup=warmup,
        path=path,
        mechanisms=tuple(Mechanism(m) for m in mechanisms) or None,
        works=tuple(_split(work)) if work is not None else p["works"],
        probes=_ints(probes, "--probes") if probes is not None else p["probes"],
        bpftrace=bpftrace,
        bpf_stats=bpf_stats,
        preset=preset,
        btf_path=(ctx.obj or {}).get("btf"),
        cpu=bench_cpu() if pin else None,
    )
    runner.validate(opts)
    if json_out == "-" and csv_out == "-":
        raise UserError("--json and --csv cannot both go to stdout; give one a FILE", EXIT_USAGE)
    if plot_out is not None:
        from .plot import check_path

        check_path(plot_out)
    require_privileges()
    bt = peer.find_bpftrace() if opts.bpftrace else None
    compiler = driver.find_compiler()
    exe = driver.build(compiler=compiler)
    env = capture(bpftrace_version=bt.version if bt else None, compiler=compiler)
    with _progress(sys.stderr.isatty()) as progress:
        result = runner.run(opts, env=env, progress=progress, bt=bt, exe=exe)
    if json_out is not None:
        _write(json_out, json.dumps(report.to_json(result), indent=2) + "\n")
    if csv_out is not None:
        _write(csv_out, report.csv_text(result))
    if plot_out is not None:
        from .plot import plot

        written = plot(result, plot_out)
        click.echo(f"figure written to {written}", err=True)
    if "-" not in (json_out, csv_out):
        if sys.stdout.isatty():
            _rich_report(result)
        else:
            click.echo(report.text_report(result), nl=False)
    if not result.measured_tracing:
        reasons = "; ".join(
            f"{s.syscall} {what}: {why}" for s in result.syscalls for what, why in s.skipped
        )
        raise UserError(
            "nothing could be measured: every tracing configuration was skipped"
            + (f" ({reasons})" if reasons else ""),
            EXIT_UNSUPPORTED,
        )


@bench.command("tracer")
@click.option(
    "--calls",
    type=click.IntRange(min=10_000),
    default=None,
    help="getpid() calls per run  [default: 2000000]",
)
@click.option(
    "--rounds", type=click.IntRange(min=1), default=None, help="Runs per mode  [default: 15]"
)
@click.option("--bpftrace/--no-bpftrace", default=True, show_default=True, help="bpftrace peer.")
@click.option(
    "-a",
    "--attach",
    type=click.Choice(["tp_btf", "raw_tp", "tracepoint"]),
    default=None,
    help="Force the rung every mode loads on.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.pass_context
def bench_tracer(
    ctx: click.Context,
    calls: int | None,
    rounds: int | None,
    bpftrace: bool,
    attach: str | None,
    as_json: bool,
) -> None:
    """What `bpfscope syscalls` costs per call, against empty programs, the
    clock floor and bpftrace (same as `bpfscope syscalls --bench`)."""
    from .tracer import DEFAULT_CALLS, DEFAULT_ROUNDS, run_bench

    require_privileges()
    run_bench(
        calls=calls if calls is not None else DEFAULT_CALLS,
        rounds=rounds if rounds is not None else DEFAULT_ROUNDS,
        bpftrace=bpftrace,
        force=Mechanism(attach) if attach else None,
        btf_path=(ctx.obj or {}).get("btf"),
        as_json=as_json,
    )


@bench.command("flows")
@click.option(
    "--seconds",
    type=click.FloatRange(0.5),
    default=1.5,
    show_default=True,
    help="Per configuration and round (best of 3 sub-runs).",
)
@click.option("--rounds", type=click.IntRange(1), default=9, show_default=True)
@click.option(
    "--pin/--no-pin",
    default=True,
    show_default=True,
    help="Pin both ends of the workload to one CPU (stable numbers on VMs).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def bench_flows(seconds: float, rounds: int, pin: bool, as_json: bool) -> None:
    """Flow monitor overhead: loopback request/response and stream, without
    monitoring, with bpfscope and with bpftrace; batch vs per-key drain."""
    require_privileges()
    from .flows import main as flows_bench

    flows_bench(seconds=seconds, rounds=rounds, as_json=as_json, pin=pin)


def _rates(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "max":
            out.append(0)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a rate (a positive number or 'max')")
    return tuple(out)


@bench.command("flows-conns")
@click.option(
    "--connections",
    default="1000,10000,50000",
    show_default=True,
    help="Open TCP connections to hold, comma-separated (one measurement each;"
    " 0: none, the collector at start).",
)
@click.option("--seconds", type=click.FloatRange(1.0), default=10.0, show_default=True)
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def bench_flows_conns(connections: str, seconds: float, interval: float, as_json: bool) -> None:
    """Collector CPU per poll with many idle open TCP connections (the
    iterator walks every socket each poll); bar: < 2% of a core at 10,000."""
    counts = _ints(connections, "--connections")
    if not counts or min(counts) < 0:
        raise UserError("--connections: give one or more numbers >= 0", EXIT_USAGE)
    require_privileges()
    from .flows_conns import main as conns_main

    conns_main(counts, seconds=seconds, interval=interval, as_json=as_json)


@bench.command("agent")
@click.option("--flows", type=click.IntRange(1), default=100_000, show_default=True)
@click.option("--requests", type=click.IntRange(1), default=200, show_default=True)
@click.option("--clients", type=click.IntRange(1), default=50, show_default=True)
@click.option("--seconds", type=click.FloatRange(1.0), default=30.0, show_default=True)
@click.option(
    "--churn",
    is_flag=True,
    help="Connection churn instead: nginx and a fixed-rate TCP load generator, "
    "a fresh agent per rate (counts, drops, CPU, polls, RSS, history rows).",
)
@click.option(
    "--rates",
    default="1000,5000,10000,20000,max",
    show_default=True,
    help="--churn: connections per second, comma-separated ('max': unpaced).",
)
@click.option(
    "--rate-seconds",
    type=click.FloatRange(1.0),
    default=20.0,
    show_default=True,
    help="--churn: seconds per rate.",
)
@click.option(
    "--procs",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="--churn: generator processes (each paced at rate/procs; blocking connects).",
)
@click.option(
    "--no-drops",
    is_flag=True,
    help="--churn: the agent without its packet-drop collector (serve --no-drops).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.pass_context
def bench_agent(
    ctx: click.Context,
    flows: int,
    requests: int,
    clients: int,
    seconds: float,
    churn: bool,
    rates: str,
    rate_seconds: float,
    procs: int,
    no_drops: bool,
    as_json: bool,
) -> None:
    """Load benchmark of `bpfscope serve`: N real loopback UDP flows, API
    latency, /metrics scrape time, C concurrent clients for T seconds; or
    (--churn) connection churn at fixed rates. Exit status 1 when a bar is
    not met."""
    require_privileges()
    if churn:
        from . import churn as churn_bench

        wanted = _rates(rates)
        say = None if as_json else (lambda msg: click.echo(msg, err=True))
        serve_args = ("--no-drops",) if no_drops else ()
        results = churn_bench.run(
            wanted, seconds=rate_seconds, procs=procs, progress=say, serve_args=serve_args
        )
        if as_json:
            click.echo(json.dumps(churn_bench.as_json(results), indent=2))
        else:
            click.echo(churn_bench.table(results))
        ok = all(all(churn_bench.bars(r).values()) for r in results)
        click.echo(f"bars: {'met' if ok else 'NOT met'}", err=True)
        if not ok:
            ctx.exit(1)
        return
    from .agent import bars_met, run

    result = run(flows=flows, requests=requests, clients=clients, seconds=seconds)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            click.echo(f"{k:32} {v}")
    ok = bars_met(result)
    click.echo(f"bars: {'met' if ok else 'NOT met'}", err=True)
    if not ok:
        ctx.exit(1)
