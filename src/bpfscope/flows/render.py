"""Views of flow records: a rich table for terminals, fixed-width plain text
for pipes, and one-line lifecycle events. Knows nothing about libbpf."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from rich.table import Table

from ..flowgroup import FlowGroup
from .health import LIMITS
from .records import CollectorStats, ConnEvent, FlowRecord

__all__ = [
    "COLUMNS",
    "HEALTH_COLUMNS",
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
# the health view (top -H, or the h key): why a flow is slow
HEALTH_COLUMNS: Final = (
    "PID",
    "COMM",
    "LOCAL",
    "REMOTE",
    "PROTO",
    "TX/s",
    "RTT",
    "MIN RTT",
    "RETR %",
    "LOST",
    "RATE",
    "LIMITED",
    "STATE",
)
_RIGHT: Final = {
    "PID", "TX/s", "RX/s", "TX", "RX", "RETRANS", "RESETS", "AGE",
    "RTT", "MIN RTT", "RETR %", "LOST", "RATE",
}  # fmt: skip


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


def human_us(us: int | None) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us}us"
    return f"{us / 1000:.1f}ms" if us < 1_000_000 else f"{us / 1e6:.2f}s"


def retrans_percent(r: FlowRecord) -> str:
    """Retransmitted share of the payload bytes sent (first transmissions
    plus retransmissions), over the flow's life as counted."""
    if r.retrans_bytes is None:
        return "-"
    sent = r.tx_bytes + r.retrans_bytes
    return f"{100 * r.retrans_bytes / sent:.1f}" if sent else "0.0"


def limited_text(r: FlowRecord) -> str:
    """The verdict and the share of time behind it (``network 97%``)."""
    if r.limited_by is None:
        return "-"
    share = getattr(r, LIMITS[r.limited_by])
    return f"{r.limited_by} {share * 100:.0f}%" if share is not None else r.limited_by


def health_row(r: FlowRecord, now: float, peer: PeerNamer | None = None) -> tuple[str, ...]:
    rate = f"{human_bytes(r.delivery_rate)}/s" if r.delivery_rate is not None else "-"
    return (
        str(r.pid),
        r.comm,
        r.local,
        r.remote,
        r.proto.upper() + ("6" if r.family == "ipv6" else ""),
        human_bytes(r.tx_rate),
        human_us(r.rtt_us),
        human_us(r.min_rtt_us),
        retrans_percent(r),
        "-" if r.lost is None else str(r.lost),
        rate,
        limited_text(r),
        r.state or ("-" if r.proto == "udp" else "?"),
    )


def flow_table(
    records: Sequence[FlowRecord],
    *,
    now: float | None = None,
    title: str | None = None,
    peer: PeerNamer | None = None,
    health: bool = False,
) -> Table:
    now = time.time() if now is None else now
    columns, row_of = (HEALTH_COLUMNS, health_row) if health else (COLUMNS, flow_row)
    table = Table(title=title, expand=False, header_style="bold", box=None, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in _RIGHT else "left", no_wrap=True)
    for r in records:
        table.add_row(*row_of(r, now, peer))
    return table


def plain_table(
    records: Sequence[FlowRecord],
    *,
    now: float | None = None,
    peer: PeerNamer | None = None,
    health: bool = False,
) -> str:
    """Fixed-width text with the same columns (for pipes and logs)."""
    now = time.time() if now is None else now
    columns, row_of = (HEALTH_COLUMNS, health_row) if health else (COLUMNS, flow_row)
    rows = [columns] + [row_of(r, now, peer) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if col in _RIGHT else cell.ljust(w)
            for cell, w, col in zip(row, widths, columns, strict=True)
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
    line = (
        f"{ts:<12} {kind:<14} {e.pid:>7} {e.comm:<16} {e.direction or '-':<7} "
        f"{e.local:<24} {e.remote:<24} {human_duration(e.duration):>9} {tx:>9} {rx:>9}"
    )
    if e.rtt_us is not None or e.limited_by is not None:  # close, counters path
        line += f"  rtt {human_us(e.rtt_us)} limited by {e.limited_by or '-'}"
    return line


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
