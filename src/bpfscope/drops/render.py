"""Text and rich tables of drop records (the CLI's views)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from .records import DropRecord

__all__ = ["COLUMNS", "drop_row", "plain_table", "rich_table"]

COLUMNS: Final = (
    "DROPS", "NEW", "REASON", "PROTO", "SOURCE", "DESTINATION", "IFACE", "NETNS", "PID", "COMM",
    "WHERE",
)  # fmt: skip
_RIGHT: Final = frozenset({"DROPS", "NEW", "NETNS", "PID"})


def _end(addr: str | None, port: int | None) -> str:
    if addr is None:
        return "-"
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{port}" if port is not None else host


def drop_row(r: DropRecord) -> list[str]:
    return [
        str(r.count),
        str(r.delta),
        r.reason or "(no reason)",
        r.proto,
        _end(r.src, r.sport),
        _end(r.dst, r.dport),
        r.ifname or (str(r.ifindex) if r.ifindex else "-"),
        str(r.netns or "-"),
        str(r.pid) if r.pid else "-",
        r.comm or "-",
        r.location,
    ]


def plain_table(records: Sequence[DropRecord]) -> str:
    rows = [list(COLUMNS)] + [drop_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if col in _RIGHT else cell.ljust(w)
            for cell, w, col in zip(row, widths, COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def rich_table(records: Sequence[DropRecord]) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in _RIGHT else "left", no_wrap=True)
    for r in records:
        table.add_row(*drop_row(r), style="bold" if r.delta else None)
    return table
