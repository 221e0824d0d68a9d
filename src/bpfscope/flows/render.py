"""Views of flow records: a rich table for terminals, fixed-width plain text
for pipes, and one-line lifecycle events. Knows nothing about libbpf."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from rich.table import Table

from ..flowgroup import FlowGroup
from .records import CollectorStats, ConnEvent, FlowRecord

__all__ = [
    "COLUMNS",
    "event_line",
    "flow_row",
    "flow_table",
    "human_bytes",
    "human_duration",
    "plain_table",
    "stats_line",
]

COLUMNS: Final = (
    "PID",
    "COMM",
    "CONTAINER",
    "LOCAL",
    "REMOTE",
    "PEER",
    "PROTO",
    "TX/s",
    "RX/s",
    "TX",
    "RX",
    "RETRANS",
    "RESETS",
    "STATE",
    "AGE",
)
_RIGHT: Final = {"PID", "TX/s", "RX/s", "TX", "RX", "RETRANS", "RESETS", "AGE"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


# remote address -> what to show in PEER (a name, else the address class)
PeerNamer = Callable[[str | None], str]


def flow_row(r: FlowRecord, now: float, peer: PeerNamer | None = None) -> tuple[str, ...]:
    state = r.state or ("-" if r.proto == "udp" else "?")
    return (
        str(r.pid),
        r.comm,
        r.container or "-",
        r.local,
        r.remote,
        peer(r.raddr) if peer is not None else "-",
        r.proto.upper() + ("6" if r.family == "ipv6" else ""),
        human_bytes(r.tx_rate),
        human_bytes(r.rx_rate),
        human_bytes(r.tx_bytes),
        human_bytes(r.rx_bytes),
        str(r.retransmits),
        str(r.resets),
        state,
        human_duration(r.age(now)),
    )


def flow_table(
    records: Sequence[FlowRecord],
    *,
    now: float | None = None,
    title: str | None = None,
    peer: PeerNamer | None = None,
) -> Table:
    now = time.time() if now is None else now
    table = Table(title=title, expand=False, header_style="bold", box=None, pad_edge=False)
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in _RIGHT else "left", no_wrap=True)
    for r in records:
        table.add_row(*flow_row(r, now, peer))
    return table


def plain_table(
    records: Sequence[FlowRecord], *, now: float | None = None, peer: PeerNamer | None = None
) -> str:
    """Fixed-width text with the same columns (for pipes and logs)."""
    now = time.time() if now is None else now
    rows = [COLUMNS] + [flow_row(r, now, peer) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if col in _RIGHT else cell.ljust(w)
            for cell, w, col in zip(row, widths, COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


EVENT_HEADER: Final = (
    f"{'TIME':<12} {'EVENT':<14} {'PID':>7} {'COMM':<16} {'DIR':<7} "
    f"{'LOCAL':<24} {'REMOTE':<24} {'DURATION':>9} {'TX':>9} {'RX':>9}"
)


def event_line(e: ConnEvent) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(e.time)) + f".{int(e.time % 1 * 1000):03d}"
    kind = e.type
    if kind == "close" and not e.established:
        kind = "close(failed)"
    tx = human_bytes(e.tx_bytes) if e.tx_bytes is not None else "-"
    rx = human_bytes(e.rx_bytes) if e.rx_bytes is not None else "-"
    return (
        f"{ts:<12} {kind:<14} {e.pid:>7} {e.comm:<16} {e.direction or '-':<7} "
        f"{e.local:<24} {e.remote:<24} {human_duration(e.duration):>9} {tx:>9} {rx:>9}"
    )


def stats_line(s: CollectorStats) -> str:
    return s.summary()


GROUP_COLUMNS: Final = ("CONNS", "TX/s", "RX/s", "TX", "RX")


def group_row(g: FlowGroup) -> tuple[str, ...]:
    return (
        g.key,
        str(g.connections),
        human_bytes(g.tx_rate),
        human_bytes(g.rx_rate),
        human_bytes(g.tx_bytes),
        human_bytes(g.rx_bytes),
    )


def group_table(groups: Sequence[FlowGroup], by: str) -> Table:
    table = Table(expand=False, header_style="bold", box=None, pad_edge=False)
    for col in (by.upper(), *GROUP_COLUMNS):
        table.add_column(col, justify="left" if col == by.upper() else "right", no_wrap=True)
    for g in groups:
        table.add_row(*group_row(g))
    return table


def plain_group_table(groups: Sequence[FlowGroup], by: str) -> str:
    rows = [(by.upper(), *GROUP_COLUMNS)] + [group_row(g) for g in groups]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )
