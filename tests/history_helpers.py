"""Flow records as the filter and grouping look at them, and an in-memory
history with the real schema and query (a Store per hypothesis example is
too slow)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from bpfscope.flowquery import register_sql
from bpfscope.store import MIGRATIONS, FlowSample


@dataclass(frozen=True)
class Rec:
    """The fields of a live FlowRecord that filters and groups look at."""

    pid: int
    comm: str
    family: str
    proto: str
    laddr: str
    lport: int
    raddr: str | None
    rport: int | None
    container: str | None
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_rate: float = 0.0
    rx_rate: float = 0.0


def to_sample(r: Rec, tx: int | None = None) -> FlowSample:
    """What the agent stores for a record (agent.py's sample of a FlowRecord)."""
    return FlowSample(
        proto=r.proto, family=4 if r.family == "ipv4" else 6, laddr=r.laddr, lport=r.lport,
        raddr=r.raddr or "", rport=r.rport or 0, pid=r.pid, comm=r.comm,
        container=r.container or "", tx_bytes=r.tx_bytes if tx is None else tx,
        rx_bytes=r.rx_bytes,
    )  # fmt: skip


def unique_flows(recs: Iterable[Rec]) -> list[Rec]:
    """One record per flow key: the history sums samples of one flow in a bucket."""
    return list({(r.proto, r.laddr, r.lport, r.raddr, r.rport, r.pid): r for r in recs}.values())


def memory_history(rows: Iterable[tuple[int, FlowSample]]) -> sqlite3.Connection:
    """flow_buckets with the given (bucket_start, sample) rows, 10 s buckets."""
    conn = sqlite3.connect(":memory:")
    for step in MIGRATIONS:
        conn.executescript(step)
    register_sql(conn)
    cols = list(FlowSample.__dataclass_fields__)
    conn.executemany(
        f"INSERT INTO flow_buckets (bucket_start, bucket_seconds, {', '.join(cols)}) "
        f"VALUES (?, 10, {', '.join('?' for _ in cols)})",
        [(b, *(getattr(s, c) for c in cols)) for b, s in rows],
    )
    return conn
