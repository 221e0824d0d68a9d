"""``bpfscope history``: query the agent's embedded flow history."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .clikit import comm_option
from .errors import EXIT_USAGE, UserError
from .flowgroup import GROUP_KEYS, FlowGroup
from .flowquery import BadQuery, FlowFilter
from .flows.render import group_table, human_bytes
from .store import HistoryQuery, HistoryReader, StoreError, default_path
from .units import parse_duration

__all__ = ["MAX_UNIX_TIME", "history"]

# Year 5138: any later "time" is a mistake (and would overflow SQLite's integers).
MAX_UNIX_TIME = 1e11


def _when(text: str | None, now: float) -> float | None:
    """'1h' (ago), an ISO time, or Unix seconds; between 1970 and MAX_UNIX_TIME."""
    if text is None:
        return None
    value: float | None = None
    with contextlib.suppress(ValueError):
        value = now - parse_duration(text)
    if value is None:
        with contextlib.suppress(ValueError):
            value = float(text)
    if value is None:
        try:
            value = datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise UserError(
                f"invalid time {text!r}: use a duration ago (15m, 2h), an ISO time or Unix seconds",
                EXIT_USAGE,
            ) from None
    if not math.isfinite(value) or not 0 <= value <= MAX_UNIX_TIME:
        raise UserError(
            f"invalid time {text!r}: it must fall between 1970 and Unix time {MAX_UNIX_TIME:.0f}",
            EXIT_USAGE,
        )
    return value


@click.command()
@click.option("--db", "db_path", default=None, help="History file (default: the agent's).")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Start: duration ago, ISO time or Unix seconds.",
)
@click.option("--until", default=None, help="End (default now).")
@click.option("--cidr", default=None, help="Local or remote address in this network.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Local or remote port (the service port: clients' ephemeral ports are not stored).",
)
@click.option("--container", default=None, help="Container id (prefix).")
@comm_option()
@click.option("-p", "--pid", type=click.IntRange(min=1), default=None)
@click.option("-4", "family", flag_value="ipv4", default=None, help="IPv4 only.")
@click.option("-6", "family", flag_value="ipv6", help="IPv6 only.")
@click.option("--tcp", "proto", flag_value="tcp", default=None)
@click.option("--udp", "proto", flag_value="udp")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option(
    "-g",
    "--group-by",
    type=click.Choice(GROUP_KEYS),
    default=None,
    help="One row per group over the time range: connections, bytes and mean rates.",
)
@click.option(
    "--step",
    type=click.IntRange(1, 7 * 86400),
    default=None,
    help="A time series: totals per STEP seconds (whole buckets), oldest first.",
)
@click.option(
    "--cursor",
    default=None,
    help="Continue after a previous page (the cursor it printed); same query options.",
)
@click.option("--json", "as_json", is_flag=True, help="NDJSON, one bucket row per line.")
def history(
    db_path: str | None,
    since: str,
    until: str | None,
    cidr: str | None,
    port: int | None,
    container: str | None,
    comm: str | None,
    pid: int | None,
    family: str | None,
    proto: str | None,
    limit: int,
    group_by: str | None,
    step: int | None,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Flow history recorded by `bpfscope serve`, by time range and filters.
    Reads the file read-only, so it works while the agent writes. When more
    rows match than --limit, the last line names the --cursor of the next
    page (on stderr with --json)."""
    now = time.time()
    if group_by is not None and step is not None:
        raise UserError(
            "--group-by and --step exclude each other: filter to one group for a series",
            EXIT_USAGE,
        )
    try:
        flt = FlowFilter(
            pid=pid,
            comm=comm,
            port=port,
            cidr=cidr,
            container=container,
            family=family,
            proto=proto,
        )
    except BadQuery as exc:
        raise UserError(str(exc), EXIT_USAGE) from None
    path = Path(db_path) if db_path else default_path()
    if not path.exists():
        raise UserError(f"no history at {path}: start `bpfscope serve` or pass --db", EXIT_USAGE)
    q = HistoryQuery(
        since=_when(since, now),
        until=_when(until, now),
        filter=flt,
        limit=limit,
        group_by=group_by,
        step=step,
    )
    try:
        with HistoryReader(path) as reader:
            got = reader.page(q, cursor)
    except BadQuery as exc:
        raise UserError(str(exc), EXIT_USAGE) from None
    except StoreError as exc:
        raise UserError(str(exc)) from None
    rows = got.items
    more = f"more: --cursor {got.next_cursor}" if got.next_cursor else None
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        if more:
            click.echo(more, err=True)
        return
    # Piped output keeps whole columns rather than wrapping at 80.
    console = Console() if sys.stdout.isatty() else Console(width=240)
    if group_by is not None:
        groups = [
            FlowGroup(group_by, r["key"], r["connections"], r["tx_bytes"], r["rx_bytes"],
                      r["tx_rate"], r["rx_rate"])
            for r in rows
        ]  # fmt: skip
        console.print(f"flow history from {path}, grouped by {group_by} ({len(rows)} groups)")
        console.print(group_table(groups, group_by))
        if more:
            console.print(more)
        return
    if step is not None:
        _print_series(console, path, rows)
        if more:
            console.print(more)
        return
    table = Table(title=f"flow history from {path} ({len(rows)} rows)")
    for col in (
        "time",
        "pid",
        "comm",
        "container",
        "proto",
        "local",
        "remote",
        "class",
        "conns",
        "tx",
        "rx",
    ):
        table.add_column(col, justify="right" if col in ("pid", "conns", "tx", "rx") else "left")
    for r in rows:
        table.add_row(
            datetime.fromtimestamp(r["bucket_start"]).strftime("%Y-%m-%d %H:%M:%S"),
            str(r["pid"]),
            r["comm"],
            r["container"],
            r["proto"],
            # port 0: the client's ephemeral ports, summed in this row
            f"{r['laddr']}:{r['lport'] or '*'}",
            f"{r['raddr']}:{r['rport'] or '*'}" if r["raddr"] else "?",
            r.get("remote_name") or r.get("remote_class") or "",
            str(r.get("connections", 1)),
            human_bytes(r["tx_bytes"]),
            human_bytes(r["rx_bytes"]),
        )
    console.print(table)
    if more:
        console.print(more)


def _print_series(console: Console, path: Path, rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"flow history from {path}: series ({len(rows)} steps)")
    for col in ("time", "conns", "tx", "rx", "tx/s", "rx/s", "rtt avg"):
        table.add_column(col, justify="left" if col == "time" else "right")
    for r in rows:
        rtt = r.get("rtt_avg_us")
        table.add_row(
            datetime.fromtimestamp(r["time"]).strftime("%Y-%m-%d %H:%M:%S"),
            str(r["connections"]),
            human_bytes(r["tx_bytes"]),
            human_bytes(r["rx_bytes"]),
            human_bytes(round(r["tx_rate"])),
            human_bytes(round(r["rx_rate"])),
            f"{rtt} µs" if rtt is not None else "-",
        )
    console.print(table)
