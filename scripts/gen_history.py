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

from bpfscope.store import ROW_COLUMNS, Store, upsert_sql

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
    table = flows(args.flows, args.remotes)
    buckets = args.days * 86400 // args.bucket
    per_bucket = max(1, args.rows // buckets)
    for b in range(buckets):
        t = start + b * args.bucket
        first = (b * 37) % len(table)
        for j in range(per_bucket):
            f = table[(first + j) % len(table)]
            n = (b * 131 + j * 17) % 100_000 + 1
            c = n % 20 + 1
            row = {
                **f, "tx_bytes": n, "rx_bytes": n // 3, "tx_calls": 1, "rx_calls": 1,
                "retransmits": 0, "resets": 0, "tx_segs": n // 1400 + 1,
                "rx_segs": n // 4200 + 1, "retrans_bytes": n % 97, "connections": c,
                "opened": c // 2, "closed": c // 2, "durations": c // 2,
                "duration_ms_sum": c // 2 * 150, "duration_ms_max": 300 if c > 1 else None,
                "rtt_min_us": 40 + n % 50, "rtt_avg_us": 90 + n % 50, "rtt_max_us": 200 + n % 90,
                "rtt_samples": c,
            }  # fmt: skip
            yield (t, args.bucket, *(row[col] for col in ROW_COLUMNS))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--bucket", type=int, default=10)
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--remotes", type=int, default=800)
    args = ap.parse_args()
    if args.db.exists():
        print(f"{args.db} exists; remove it first", file=sys.stderr)
        return 2
    # the agent's schema, then bulk inserts without the writer's per-bucket commits
    Store(args.db, retention_seconds=10 * 365 * 86400, max_bytes=1 << 40).close()
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    sql = upsert_sql("flow_buckets")
    start = int(time.time()) // args.bucket * args.bucket - args.days * 86400
    t0 = time.monotonic()
    conn.execute("BEGIN")
    conn.executemany(sql, rows(args, start))
    # the hourly rollup the agent's writer keeps, in one pass
    conn.execute(
        f"INSERT INTO flow_hours (bucket_start, bucket_seconds, {', '.join(ROW_COLUMNS)}) "
        f"SELECT bucket_start - bucket_start % 3600, 3600, {_ROLLUP} FROM flow_buckets "
        "GROUP BY bucket_start - bucket_start % 3600, proto, laddr, lport, raddr, rport, pid"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    n = conn.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
    hours = conn.execute("SELECT count(*) FROM flow_hours").fetchone()[0]
    conn.close()
    size = args.db.stat().st_size >> 20
    print(f"{n} rows ({hours} hourly) in {time.monotonic() - t0:.0f} s: {args.db} ({size} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
