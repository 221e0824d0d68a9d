"""``bpfscope drops``: packet drops with the kernel's reason, live.

Without ``-d`` a live table refreshed every ``-i`` seconds (as ``top``);
with ``-d`` one snapshot of the drops seen during that time (as
``flows``). ``--json`` prints NDJSON. Filters are the flow views' own
(:class:`bpfscope.flowquery.FlowFilter`), plus ``--reason``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

import click

from ..clikit import sleep_until, stop_on_signals
from ..errors import EXIT_USAGE, UserError
from ..features import Mechanism
from ..flowquery import BadQuery, FlowFilter
from ..system import require_privileges
from .collector import DropCollector
from .records import DropRecord, ReasonNames
from .render import plain_table, rich_table

__all__ = ["drops", "select"]

ATTACH_CHOICES = tuple(str(m) for m in (Mechanism.TP_BTF, Mechanism.RAW_TP, Mechanism.TRACEPOINT))


def reason_filter(names: ReasonNames, given: Sequence[str]) -> frozenset[str]:
    """Reason names as the records spell them; an unknown one is an error
    (where this kernel names its reasons)."""
    out = set()
    for text in given:
        name = text.upper().removeprefix("SKB_DROP_REASON_")
        if names.names and names.value(name) is None:
            raise BadQuery(
                f"unknown drop reason {text!r}; this kernel's reasons include: "
                + ", ".join(sorted(names.names.values())[:12])
                + ", ..."
            )
        out.add(name)
    return frozenset(out)


def select(
    records: Sequence[DropRecord], flt: FlowFilter, reasons: frozenset[str] = frozenset()
) -> list[DropRecord]:
    """The records the filters keep, most drops first."""
    match = flt.predicate()
    kept = [r for r in records if (not reasons or r.reason in reasons) and match(r)]
    return sorted(kept, key=lambda r: (r.count, r.last_seen), reverse=True)


@click.command()
@click.option("-p", "--pid", type=int, help="Only drops of this process's sockets.")
@click.option("--comm", help="Only drops of sockets owned by this command.")
@click.option("--port", type=click.IntRange(1, 65535), help="Source or destination port.")
@click.option("--cidr", help="Source or destination address in this network.")
@click.option("--container", help="Container id (prefix) of the socket.")
@click.option("-4", "ipv4", is_flag=True, help="IPv4 only.")
@click.option("-6", "ipv6", is_flag=True, help="IPv6 only.")
@click.option("--tcp", is_flag=True, help="TCP only.")
@click.option("--udp-only", "udp_only", is_flag=True, help="UDP only.")
@click.option(
    "--reason", "reasons", multiple=True, help="Only this drop reason (e.g. NO_SOCKET); repeatable."
)
@click.option(
    "-i",
    "--interval",
    type=click.FloatRange(0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "-d",
    "--duration",
    type=click.FloatRange(0.1),
    default=None,
    help="Watch this many seconds, print one snapshot and exit.",
)
@click.option("-n", "--count", type=click.IntRange(0), default=0, help="Stop after N refreshes.")
@click.option("--limit", type=click.IntRange(0), default=None, help="Rows shown (terminal: 40).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row (NDJSON).")
@click.option(
    "--attach", type=click.Choice(ATTACH_CHOICES), default=None, help="Force one attach rung."
)
@click.option("--stats", "show_stats", is_flag=True, help="Print the collector's counters.")
@click.pass_context
def drops(
    ctx: click.Context,
    pid: int | None,
    comm: str | None,
    port: int | None,
    cidr: str | None,
    container: str | None,
    ipv4: bool,
    ipv6: bool,
    tcp: bool,
    udp_only: bool,
    reasons: tuple[str, ...],
    interval: float,
    duration: float | None,
    count: int,
    limit: int | None,
    as_json: bool,
    attach: str | None,
    show_stats: bool,
) -> None:
    """Packet drops: where, why (the kernel's drop reason) and whose."""
    if ipv4 and ipv6:
        raise UserError("-4 and -6 exclude each other", EXIT_USAGE)
    if tcp and udp_only:
        raise UserError("--tcp and --udp-only exclude each other", EXIT_USAGE)
    try:
        flt = FlowFilter(
            pid=pid,
            comm=comm,
            port=port,
            cidr=cidr,
            container=container,
            family="ipv4" if ipv4 else "ipv6" if ipv6 else None,
            proto="tcp" if tcp else "udp" if udp_only else None,
        )
        wanted = reason_filter(ReasonNames.load((ctx.obj or {}).get("btf")), reasons)
    except BadQuery as exc:
        raise UserError(str(exc), EXIT_USAGE) from None
    require_privileges()
    collector = DropCollector(
        force=Mechanism(attach) if attach else None, btf_path=(ctx.obj or {}).get("btf")
    )
    live = sys.stdout.isatty() and not as_json and duration is None
    if limit is None and live:
        limit = 40
    with collector, stop_on_signals() as stopped:
        collector.poll()
        if duration is not None:
            sleep_until(time.monotonic() + duration, stopped, step=0.2)
            collector.poll()
            _emit(select(collector.snapshot(), flt, wanted)[: limit or None], as_json)
            if show_stats:
                click.echo(json.dumps({"stats": collector.stats().to_json()}), err=True)
            return
        if live:
            _live(collector, flt, wanted, interval, count, limit, stopped)
            return
        refreshes = 0
        while not stopped[0]:
            sleep_until(time.monotonic() + interval, stopped, step=0.2)
            collector.poll()
            rows = select(collector.snapshot(), flt, wanted)[: limit or None]
            if not as_json:
                click.echo(time.strftime("%Y-%m-%d %H:%M:%S"))
            _emit(rows, as_json, stamp=time.time())
            if show_stats:
                click.echo(json.dumps({"stats": collector.stats().to_json()}), err=True)
            if not as_json:
                click.echo("")
            sys.stdout.flush()
            refreshes += 1
            if count and refreshes >= count:
                break


def _emit(rows: Sequence[DropRecord], as_json: bool, stamp: float | None = None) -> None:
    if as_json:
        for r in rows:
            data = r.to_json()
            click.echo(json.dumps({"time": round(stamp, 3), **data} if stamp else data))
    else:
        click.echo(plain_table(rows))


def _live(
    collector: DropCollector,
    flt: FlowFilter,
    wanted: frozenset[str],
    interval: float,
    count: int,
    limit: int | None,
    stopped: list[bool],
) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def frame() -> Group:
        rows = select(collector.snapshot(), flt, wanted)
        stats = collector.stats()
        head = Text(
            f"bpfscope drops · {len(rows)} kinds · {stats.seen} drops since start · "
            f"every {interval:g}s · Ctrl-C to quit",
            style="bold",
        )
        rungs = ", ".join(f"{h}={m or 'off'}" for h, m in stats.rungs.items())
        return Group(head, rich_table(rows[:limit]), Text(f"rungs: {rungs}", style="dim"))

    refreshes = 0
    with Live(frame(), auto_refresh=False, transient=False) as screen:
        while not stopped[0]:
            sleep_until(time.monotonic() + interval, stopped, step=0.2)
            collector.poll()
            screen.update(frame(), refresh=True)
            refreshes += 1
            if count and refreshes >= count:
                break
