"""``bpfscope top``, ``bpfscope flows`` and ``bpfscope conns``.

``top`` is a live table (rich) on a terminal and plain snapshots in a pipe;
``flows`` prints one snapshot (NDJSON with ``--json``); ``conns`` streams
TCP lifecycle events. Filters that cut overhead (pid, cgroup, port, family)
run in the kernel; the others (comm, CIDR, container, protocol) here.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import click

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
from ..flowgroup import GROUP_KEYS, GROUP_SORT_KEYS, FlowGroup, group_flows, sort_groups
from ..flowquery import SORT_KEYS, BadQuery, FlowFilter, sort_flows
from ..ipprofile import IpProfiler
from ..system import require_privileges
from .collector import DEFAULT_MAX_ENTRIES, FlowCollector, KernelFilter, events_of
from .programs import ATTACH_CHOICES
from .records import AF_INET, AF_INET6, CollectorStats, FlowRecord
from .render import (
    EVENT_HEADER,
    event_line,
    flow_table,
    group_table,
    plain_group_table,
    plain_table,
)

__all__ = ["conns", "flows", "top"]


@dataclass(frozen=True)
class Options:
    kernel: KernelFilter
    view: FlowFilter
    udp: bool = True  # UDP accounted (--udp/--no-udp)


def _family(ipv4: bool, ipv6: bool) -> str | None:
    if ipv4 and ipv6:
        raise UserError("-4 and -6 exclude each other", EXIT_USAGE)
    return "ipv4" if ipv4 else "ipv6" if ipv6 else None


def _proto(tcp: bool, udp: bool) -> str | None:
    if tcp and udp:
        raise UserError(
            "--tcp and --udp-only exclude each other (give neither for both)", EXIT_USAGE
        )
    return "tcp" if tcp else "udp" if udp else None


def build_options(
    *,
    pid: int | None,
    comm: str | None,
    port: int | None,
    cidr: str | None,
    container: str | None,
    cgroup: str | None,
    ipv4: bool,
    ipv6: bool,
    tcp: bool = False,
    udp: bool = False,
    udp_accounting: bool = True,
) -> Options:
    """Validate the filters; kernel-side ones go to rodata."""
    family = _family(ipv4, ipv6)
    if udp and not udp_accounting:
        raise UserError("--udp-only with --no-udp leaves nothing to show", EXIT_USAGE)
    try:
        view = FlowFilter(
            pid=pid,
            comm=comm,
            port=port,
            cidr=cidr,
            container=container,
            family=family,
            proto=_proto(tcp, udp),
        )
    except BadQuery as exc:
        raise UserError(str(exc), EXIT_USAGE) from None
    if pid is not None:
        validate_pid(pid)
    kernel = KernelFilter(
        pid=pid,
        cgroup_id=parse_cgroup(cgroup) if cgroup else None,
        port=port,
        family={"ipv4": AF_INET, "ipv6": AF_INET6}.get(family or ""),
    )
    return Options(kernel, view, udp=udp_accounting)


_FILTER_PARAMS: Final = ("pid", "comm", "port", "cidr", "container", "cgroup", "ipv4", "ipv6")


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    """The filter options shared by top, flows and conns, handed to the
    command validated, as ``opts`` (:class:`Options`)."""

    @functools.wraps(f)
    def with_options(*args: Any, **kwargs: Any) -> Any:
        filters = {name: kwargs.pop(name) for name in _FILTER_PARAMS}
        opts = build_options(
            **filters,
            tcp=kwargs.pop("tcp"),
            udp=kwargs.pop("udp_only"),
            udp_accounting=kwargs.pop("udp_accounting"),
        )
        return f(*args, opts=opts, **kwargs)

    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("-p", "--pid", type=int, help="Only this process (in the kernel)."),
        comm_option(),
        click.option(
            "--port", type=click.IntRange(1, 65535), help="Local or remote port (in the kernel)."
        ),
        click.option("--cidr", help="Local or remote address in this network (e.g. 10.0.0.0/8)."),
        click.option("--container", help="Container id (prefix)."),
        click.option("--cgroup", help="Only this cgroup v2 (path or id; in the kernel)."),
        click.option("-4", "ipv4", is_flag=True, help="IPv4 only (in the kernel)."),
        click.option("-6", "ipv6", is_flag=True, help="IPv6 only (in the kernel)."),
        click.option("--tcp", is_flag=True, help="TCP only."),
        click.option("--udp-only", "udp_only", is_flag=True, help="UDP only."),
        click.option(
            "--udp/--no-udp",
            "udp_accounting",
            default=True,
            show_default=True,
            help=(
                "Account UDP traffic. Where UDP's only hooks are the send/receive "
                "tracepoints every TCP message fires too, --no-udp leaves TCP with "
                "no bpfscope program per message (see --stats)."
            ),
        ),
        click.option(
            "--max-entries",
            type=click.IntRange(1, 1 << 24),
            default=DEFAULT_MAX_ENTRIES,
            show_default=True,
            help="Size of the kernel flow table (LRU).",
        ),
        click.option(
            "--attach",
            type=click.Choice(ATTACH_CHOICES),
            default=None,
            help="Force one rung of the attach ladder for the traffic hooks.",
        ),
        click.option("--stats", "show_stats", is_flag=True, help="Print drops, evictions, rungs."),
    ]
    for opt in reversed(options):
        with_options = opt(with_options)
    return with_options


def _collector(
    ctx: click.Context, opts: Options, max_entries: int, attach: str | None
) -> FlowCollector:
    require_privileges()
    return FlowCollector(
        kernel_filter=opts.kernel,
        max_entries=max_entries,
        force=Mechanism(attach) if attach else None,
        btf_path=(ctx.obj or {}).get("btf"),
        udp=opts.udp,
    )


def _view(
    records: list[FlowRecord], opts: Options, sort: str, limit: int | None
) -> list[FlowRecord]:
    chosen: list[FlowRecord] = sort_flows(opts.view.apply(records), sort)
    return chosen[:limit] if limit else chosen


def _stats_text(s: CollectorStats) -> str:
    return s.summary()


def _groups(
    records: list[FlowRecord],
    opts: Options,
    by: str,
    sort: str,
    limit: int | None,
    peer: Callable[[str | None], str],
) -> list[FlowGroup]:
    # a flow-only sort key (pid, age, ...) falls back to rate for groups
    key = sort if sort in GROUP_SORT_KEYS else "rate"
    chosen: list[FlowGroup] = sort_groups(group_flows(opts.view.apply(records), by, peer), key)
    return chosen[:limit] if limit else chosen


def top_grouping(group_by: str, flows: int, rows: int | None) -> tuple[str | None, str]:
    """The group key top's screen uses, and a note saying why. ``auto``
    groups by process only when the flows would not fit the rows shown
    (churn: one client on many ephemeral ports)."""
    if group_by in GROUP_KEYS:
        return group_by, ""
    if group_by == "auto" and rows and flows > rows:
        return "process", f" (auto: {flows} flows > {rows} rows; -g none lists them)"
    return None, ""


def _check_group_sort(group_by: str | None, sort: str) -> None:
    if group_by in GROUP_KEYS and sort not in GROUP_SORT_KEYS:
        raise UserError(
            f"--sort {sort} does not apply to groups; use one of: {', '.join(GROUP_SORT_KEYS)}",
            EXIT_USAGE,
        )


_NO_DNS = click.option(
    "-N", "--no-dns", is_flag=True, help="No reverse DNS for the PEER column (class only)."
)


def _peer_namer(no_dns: bool) -> tuple[IpProfiler, Callable[[str | None], str]]:
    """PEER: the remote's name (static, container, DNS) or its class."""
    profiler = IpProfiler(names_from=[], dns=not no_dns)

    def name(ip: str | None) -> str:
        prof = profiler.profile(ip)
        return prof.name or str(prof.remote_class)

    return profiler, name


@click.command()
@_filters
@click.option(
    "-s",
    "--sort",
    type=click.Choice(sorted(SORT_KEYS)),
    default="rate",
    show_default=True,
    help="Sort key (largest first).",
)
@interval_option("refreshes")
@duration_option()
@count_option("refreshes")
@click.option("--limit", type=click.IntRange(0), default=None, help="Rows shown (terminal: 40).")
@click.option("--json", "as_json", is_flag=True, help="NDJSON snapshot per refresh.")
@click.option(
    "-g",
    "--group-by",
    type=click.Choice(["auto", "none", *GROUP_KEYS]),
    default="auto",
    show_default=True,
    help="One row per group. auto: on a terminal, group by process when the flows "
    "do not fit the rows shown.",
)
@click.option(
    "-H",
    "--health",
    is_flag=True,
    help="TCP health columns (RTT, MIN RTT, RETR %, LOST, RATE, LIMITED); "
    "on a terminal the h key switches views.",
)
@_NO_DNS
@click.pass_context
def top(
    ctx: click.Context,
    opts: Options,
    max_entries: int,
    attach: str | None,
    show_stats: bool,
    sort: str,
    interval: float,
    duration: float | None,
    count: int | None,
    limit: int | None,
    as_json: bool,
    group_by: str,
    health: bool,
    no_dns: bool,
) -> None:
    """Live per-flow traffic: who talks to whom, how much, and how it goes."""
    live = sys.stdout.isatty() and not as_json
    if limit is None and live:
        limit = 40
    _check_group_sort(group_by, sort)
    collector = _collector(ctx, opts, max_entries, attach)
    profiler, peer = _peer_namer(no_dns)
    limits = RunLimits(duration, count)
    with collector, stop_on_signals() as stopped:
        collector.poll()
        if live:
            from rich.console import Group
            from rich.live import Live
            from rich.text import Text

            from .keys import keypresses

            view = {"health": health}

            def frame() -> Group:
                snapshot = collector.snapshot()
                footer = Text(_stats_text(collector.stats()), style="dim")
                by, note = top_grouping(group_by, len(opts.view.apply(snapshot)), limit)
                head = Text(
                    f"bpfscope top · {len(snapshot)} flows · every {interval:g}s "
                    f"· sort {sort}"
                    + (f" · grouped by {by}{note}" if by else "")
                    + (" · health" if view["health"] else "")
                    + " · h: health/traffic · Ctrl-C to quit",
                    style="bold",
                )
                if by:
                    table = group_table(_groups(snapshot, opts, by, sort, limit, peer), by)
                    return Group(head, table, footer)
                rows = _view(snapshot, opts, sort, limit)
                return Group(head, flow_table(rows, peer=peer, health=view["health"]), footer)

            with (
                keypresses() as key,
                Live(frame(), auto_refresh=False, transient=False) as screen,
            ):

                def wait(seconds: float) -> None:
                    collector.wait_events(seconds)
                    if key() in ("h", "H"):
                        view["health"] = not view["health"]
                        screen.update(frame(), refresh=True)

                while not stopped[0]:
                    wake = limits.deadline(time.monotonic() + interval)
                    sleep_until(wake, stopped, wait, step=0.2)
                    collector.poll()
                    screen.update(frame(), refresh=True)
                    limits.add()
                    if limits.reached():
                        break
            return
        while not stopped[0]:
            wake = limits.deadline(time.monotonic() + interval)
            sleep_until(wake, stopped, collector.wait_events, step=0.2)
            collector.poll()
            now = time.time()
            if group_by in GROUP_KEYS:
                groups = _groups(collector.snapshot(), opts, group_by, sort, limit, peer)
                if as_json:
                    for g in groups:
                        click.echo(json.dumps({"time": round(now, 3), **g.to_json()}))
                else:
                    click.echo(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
                    click.echo(plain_group_table(groups, group_by) + "\n")
                sys.stdout.flush()
                limits.add()
                if limits.reached():
                    break
                continue
            rows = _view(collector.snapshot(), opts, sort, limit)
            if as_json:
                for r in rows:
                    data = {"time": round(now, 3), **r.to_json()}
                    data["remote_profile"] = profiler.profile(r.raddr).to_json()
                    click.echo(json.dumps(data))
            else:
                click.echo(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
                click.echo(plain_table(rows, now=now, peer=peer, health=health))
                if show_stats:
                    click.echo(_stats_text(collector.stats()))
                click.echo("")
            sys.stdout.flush()
            limits.add()
            if limits.reached():
                break


@click.command()
@_filters
@duration_option(default=1.0, help="Seconds to watch before printing the one snapshot.")
@click.option(
    "-s",
    "--sort",
    type=click.Choice(sorted(SORT_KEYS)),
    default="bytes",
    show_default=True,
)
@click.option("--limit", type=click.IntRange(0), default=None, help="At most N flows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow (NDJSON).")
@click.option(
    "-g",
    "--group-by",
    type=click.Choice(GROUP_KEYS),
    default=None,
    help="One row per group: connections, bytes and rates each way.",
)
@_NO_DNS
@click.option(
    "--bench",
    is_flag=True,
    help="Run the flow monitor's overhead benchmark instead (= bpfscope bench flows).",
)
@click.option("--bench-seconds", type=click.FloatRange(0.5), default=1.5, show_default=True)
@click.pass_context
def flows(
    ctx: click.Context,
    opts: Options,
    max_entries: int,
    attach: str | None,
    show_stats: bool,
    duration: float,
    sort: str,
    limit: int | None,
    as_json: bool,
    group_by: str | None,
    no_dns: bool,
    bench: bool,
    bench_seconds: float,
) -> None:
    """One snapshot of the flows seen during --duration."""
    _check_group_sort(group_by, sort)
    if bench:
        from ..bench.flows import main as bench_main

        require_privileges()
        bench_main(seconds=bench_seconds, as_json=as_json)
        return
    collector = _collector(ctx, opts, max_entries, attach)
    profiler, peer = _peer_namer(no_dns)
    with collector, stop_on_signals() as stopped:
        collector.poll()  # a first reading: TCP health's time shares then cover --duration
        sleep_until(time.monotonic() + duration, stopped, collector.wait_events, step=0.2)
        collector.poll()
        snapshot = collector.snapshot()
        rows = _view(snapshot, opts, sort, None if group_by else limit)
        stats = collector.stats()
    for r in rows:  # start the name lookups, then give them a moment
        profiler.profile(r.raddr)
    profiler.dns_wait_idle(1.0)
    if group_by is not None:
        groups = _groups(snapshot, opts, group_by, sort, limit, peer)
        if as_json:
            for g in groups:
                click.echo(json.dumps(g.to_json()))
        else:
            click.echo(plain_group_table(groups, group_by))
        return
    if as_json:
        for r in rows:
            prof = profiler.profile(r.raddr).to_json()
            click.echo(json.dumps({**r.to_json(), "remote_profile": prof}))
        if show_stats:
            click.echo(json.dumps({"stats": stats.to_json()}), err=True)
        return
    click.echo(plain_table(rows, peer=peer))
    if show_stats or stats.events_dropped or stats.flows_evicted or stats.update_failures:
        click.echo(_stats_text(stats), err=True)


@click.command()
@_filters
@duration_option()
@count_option("events")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (NDJSON).")
@click.pass_context
def conns(
    ctx: click.Context,
    opts: Options,
    max_entries: int,
    attach: str | None,
    show_stats: bool,
    duration: float | None,
    count: int | None,
    as_json: bool,
) -> None:
    """TCP lifecycle stream: opens (connect/accept), closes with duration and
    bytes, retransmits and resets."""
    if opts.view.proto == "udp":
        raise UserError("conns follows TCP connections; --udp-only has nothing to show", EXIT_USAGE)
    match = opts.view.predicate()
    collector = _collector(ctx, opts, max_entries, attach)
    seen = 0
    end = time.monotonic() + duration if duration else None
    with collector, stop_on_signals() as stopped:
        if not as_json:
            click.echo(EVENT_HEADER)
        while not stopped[0]:
            wait = 0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))
            for e in events_of(collector.poll(wait)):
                if not match(e):
                    continue
                click.echo(json.dumps(e.to_json()) if as_json else event_line(e))
                seen += 1
                if count and seen >= count:
                    break
            sys.stdout.flush()
            if (count and seen >= count) or (end is not None and time.monotonic() >= end):
                break
        stats = collector.stats()
    if show_stats or stats.events_dropped or stats.events_unbuffered:
        click.echo(_stats_text(stats), err=True)
