"""Flow records as the filter and grouping look at them, and an in-memory
history with the real schema and query (a Store per hypothesis example is
too slow)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from bpfscope.flowquery import register_sql
from bpfscope.historyquery import ROLLUPS
from bpfscope.store import MIGRATIONS, ROW_COLUMNS, FlowSample, upsert_sql


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
    """flow_buckets (and its rollups) with the given (bucket_start,
    sample) rows, 10 s buckets, written with the Store's own upsert; a flow
    counts as a new connection where it is first seen, as the sink says."""
    conn = sqlite3.connect(":memory:")
    for step in MIGRATIONS:
        conn.executescript(step)
    register_sql(conn)
    seen: set[tuple[object, ...]] = set()
    values = []
    for b, s in rows:
        row = {c: getattr(s, c, None) for c in ROW_COLUMNS}
        row.update(connections=1, opened=int(s.key() not in seen), closed=0, durations=0,
                   duration_ms_sum=0, rtt_samples=0)  # fmt: skip
        seen.add(s.key())
        values.append((b, *(row[c] for c in ROW_COLUMNS)))
    conn.executemany(upsert_sql("flow_buckets"), [(b, 10, *v) for b, *v in values])
    for table, size in ROLLUPS:
        conn.executemany(upsert_sql(table), [(b - b % size, size, *v) for b, *v in values])
    return conn
