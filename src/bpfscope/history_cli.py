"""``bpfscope history``: query the agent's embedded flow history."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .errors import EXIT_USAGE, UserError
from .flowquery import BadQuery, parse_cidr
from .flows.render import human_bytes
from .store import HistoryQuery, Store, StoreError, default_path
from .units import parse_duration

__all__ = ["history"]


def _when(text: str | None, now: float) -> float | None:
    """'1h' (ago), an ISO time, or Unix seconds."""
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(
            f"invalid time {text!r}: use a duration ago (15m, 2h), an ISO time or Unix seconds",
            EXIT_USAGE,
        ) from None


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
@click.option("--port", type=click.IntRange(1, 65535), default=None)
@click.option("--container", default=None)
@click.option("--comm", default=None)
@click.option("-p", "--pid", type=click.IntRange(min=1), default=None)
@click.option("--tcp", "proto", flag_value="tcp", default=None)
@click.option("--udp", "proto", flag_value="udp")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
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
    proto: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Flow history recorded by `bpfscope serve`, by time range and filters."""
    now = time.time()
    if cidr:
        try:
            parse_cidr(cidr)
        except BadQuery as exc:
            raise UserError(str(exc), EXIT_USAGE) from None
    path = Path(db_path) if db_path else default_path()
    if not path.exists():
        raise UserError(f"no history at {path}: start `bpfscope serve` or pass --db", EXIT_USAGE)
    q = HistoryQuery(
        since=_when(since, now),
        until=_when(until, now),
        cidr=cidr,
        port=port,
        container=container,
        comm=comm,
        pid=pid,
        proto=proto,
        limit=limit,
    )
    try:
        store = Store(path)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    with store:
        rows = store.query(q)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return
    # Piped output keeps whole columns rather than wrapping at 80.
    console = Console() if sys.stdout.isatty() else Console(width=240)
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
        "tx",
        "rx",
    ):
        table.add_column(col, justify="right" if col in ("pid", "tx", "rx") else "left")
    for r in rows:
        table.add_row(
            datetime.fromtimestamp(r["bucket_start"]).strftime("%Y-%m-%d %H:%M:%S"),
            str(r["pid"]),
            r["comm"],
            r["container"],
            r["proto"],
            f"{r['laddr']}:{r['lport']}",
            f"{r['raddr']}:{r['rport']}" if r["raddr"] else "?",
            r["remote_name"] or r["remote_class"],
            human_bytes(r["tx_bytes"]),
            human_bytes(r["rx_bytes"]),
        )
    console.print(table)
