#!/usr/bin/env python3
"""Write a synthetic flow history for benchmarks: --days of --bucket-second
buckets across --flows flows (a rotating subset active per bucket), about
--rows rows in all, with the agent's schema (Store's migrations).

    .venv/bin/python scripts/gen_history.py --db /tmp/h10m.db   # 10M rows, 7 days
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bpfscope.historyquery import ROLLUPS
from bpfscope.store import ROW_COLUMNS, Store, upsert_sql

# the columns that come from the flow, in ROW_COLUMNS order around the counters
_STATIC = ("proto", "family", "laddr", "lport", "raddr", "rport", "pid", "comm", "container",
           "remote_class", "remote_name", "direction")  # fmt: skip
_COLUMNS = (*_STATIC[:9], "tx_bytes", "rx_bytes", "tx_calls", "rx_calls", "retransmits",
            "resets", "tx_segs", "rx_segs", "retrans_bytes", *_STATIC[9:], "connections",
            "opened", "closed", "durations", "duration_ms_sum", "duration_ms_max",
            "rtt_min_us", "rtt_avg_us", "rtt_max_us", "rtt_samples")  # fmt: skip
_SUMMED = {"tx_bytes", "rx_bytes", "tx_calls", "rx_calls", "retransmits", "resets", "tx_segs",
           "rx_segs", "retrans_bytes", "connections", "opened", "closed", "durations",
           "duration_ms_sum", "rtt_samples"}  # fmt: skip
_ROLLUP = ", ".join(
    f"sum({c})"
    if c in _SUMMED
    else "min(rtt_min_us)"
    if c == "rtt_min_us"
    else "sum(rtt_avg_us * rtt_samples) / sum(rtt_samples)"
    if c == "rtt_avg_us"
    else f"max({c})"
    for c in ROW_COLUMNS
)


def flows(n: int, remotes: int) -> list[dict[str, Any]]:
    """History keys as the agent writes them: odd flows connect out (local
    port 0), even ones were accepted (remote port 0)."""
    out = []
    for i in range(n):
        r = i % remotes
        raddr = f"10.{(r >> 8) & 255}.{r & 255}.{i % 7 + 1}" if i % 5 else f"fd00::{r:x}"
        port = (443, 80, 5432, 6379, 8080)[i % 5]
        active = i % 2 == 1
        out.append(
            {
                "proto": "udp" if i % 9 == 0 else "tcp",
                "family": 6 if ":" in raddr else 4,
                "laddr": "10.0.0.1" if ":" not in raddr else "fd00::1",
                "lport": 0 if active else port,
                "raddr": raddr,
                "rport": port if active else 0,
                "pid": 1000 + i % 200,
                "comm": ("nginx", "curl", "postgres", "redis", "java")[i % 5],
                "container": f"ctr{i % 40:02d}" if i % 3 else "",
                "remote_class": "private",
                "remote_name": f"svc{r % 50}",
                "direction": "active" if active else "passive",
            }
        )
    return out


def rows(args: argparse.Namespace, start: int) -> Iterator[tuple[Any, ...]]:
    table = [tuple(f[c] for c in _STATIC) for f in flows(args.flows, args.remotes)]
    buckets = args.days * 86400 // args.bucket
    per_bucket = max(1, args.rows // buckets)
    for b in range(buckets):
        t = start + b * args.bucket
        first = (b * 37) % len(table)
        for j in range(per_bucket):
            f = table[(first + j) % len(table)]
            n = (b * 131 + j * 17) % 100_000 + 1
            c = n % 20 + 1
            # ROW_COLUMNS order (checked in main); tuples: 10M rows in minutes
            yield (
                t, args.bucket, *f[:9], n, n // 3, 1, 1, 0, 0, n // 1400 + 1, n // 4200 + 1,
                n % 97, *f[9:], c, c // 2, c // 2, c // 2, c // 2 * 150,
                300 if c > 1 else None, 40 + n % 50, 90 + n % 50, 200 + n % 90, c,
            )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--bucket", type=int, default=10)
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--remotes", type=int, default=800)
    args = ap.parse_args()
    assert _COLUMNS == ROW_COLUMNS, "gen_history's row layout is out of date"
    if args.db.exists():
        print(f"{args.db} exists; remove it first", file=sys.stderr)
        return 2
    # the agent's schema, then bulk inserts without the writer's per-bucket commits
    Store(args.db, retention_seconds=10 * 365 * 86400, max_bytes=1 << 40).close()
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB: the indexes stay in memory
    # secondary indexes are built once after the load (sorted: much faster)
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name = 'flow_buckets'"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    sql = upsert_sql("flow_buckets")
    start = int(time.time()) // args.bucket * args.bucket - args.days * 86400
    t0 = time.monotonic()
    conn.execute("BEGIN")
    conn.executemany(sql, rows(args, start))
    # the rollups the agent's writer keeps, each in one pass
    for table, size in ROLLUPS:
        conn.execute(
            f"INSERT INTO {table} (bucket_start, bucket_seconds, {', '.join(ROW_COLUMNS)}) "
            f"SELECT bucket_start - bucket_start % {size}, {size}, {_ROLLUP} FROM flow_buckets "
            f"GROUP BY bucket_start - bucket_start % {size}, proto, laddr, lport, raddr, rport, pid"
        )
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    n = conn.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
    hours = conn.execute("SELECT count(*) FROM flow_hours").fetchone()[0]
    fives = conn.execute("SELECT count(*) FROM flow_5min").fetchone()[0]
    conn.close()
    size = args.db.stat().st_size >> 20
    took = time.monotonic() - t0
    print(f"{n} rows ({hours} hourly, {fives} per 5 min) in {took:.0f} s: {args.db} ({size} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
