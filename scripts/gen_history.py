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

from bpfscope.store import FlowSample, Store


def flows(n: int, remotes: int) -> list[tuple[Any, ...]]:
    """(proto, family, laddr, lport, raddr, rport, pid, comm, container, class, name)"""
    out = []
    for i in range(n):
        r = i % remotes
        raddr = f"10.{(r >> 8) & 255}.{r & 255}.{i % 7 + 1}" if i % 5 else f"fd00::{r:x}"
        out.append(
            (
                "udp" if i % 9 == 0 else "tcp",
                6 if ":" in raddr else 4,
                "10.0.0.1" if ":" not in raddr else "fd00::1",
                30000 + i % 30000,
                raddr,
                (443, 80, 5432, 6379, 8080)[i % 5],
                1000 + i % 200,
                ("nginx", "curl", "postgres", "redis", "java")[i % 5],
                f"ctr{i % 40:02d}" if i % 3 else "",
                "private",
                f"svc{r % 50}",
            )
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
            # columns in FlowSample order, bucket_start and bucket_seconds first
            yield (t, args.bucket, *f[:9], n, n // 3, 1, 1, 0, 0, f[9], f[10])


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
    cols = ", ".join(f.name for f in FlowSample.__dataclass_fields__.values())
    sql = (
        f"INSERT INTO flow_buckets (bucket_start, bucket_seconds, {cols}) "
        f"VALUES ({', '.join('?' for _ in range(len(FlowSample.__dataclass_fields__) + 2))})"
    )
    start = int(time.time()) // args.bucket * args.bucket - args.days * 86400
    t0 = time.monotonic()
    conn.execute("BEGIN")
    conn.executemany(sql, rows(args, start))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    n = conn.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
    conn.close()
    print(
        f"{n} rows in {time.monotonic() - t0:.0f} s: {args.db} ({args.db.stat().st_size >> 20} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
