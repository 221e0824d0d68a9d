#!/usr/bin/env python3
"""Time the history queries of issue #15 on a file from gen_history.py:
24 h grouped by remote, and one history key's time series (24 h and 7
days), each whole and as the first page the API returns.

    .venv/bin/python scripts/bench_history.py /tmp/h10m.db
"""

from __future__ import annotations

import sys
import time

from bpfscope.flowquery import FlowFilter
from bpfscope.store import HistoryQuery, HistoryReader


def main() -> int:
    reader = HistoryReader(sys.argv[1])
    newest = reader._conn.execute("SELECT max(bucket_start) FROM flow_buckets").fetchone()[0]
    # one history key of gen_history.py: pid 1007 connecting to 10.0.7.1:5432
    flow = FlowFilter(pid=1007, port=5432, cidr="10.0.7.1/32")
    for name, q in (
        ("24 h grouped by remote", HistoryQuery(since=newest - 86400, group_by="remote")),
        ("one flow, 24 h, step 10 s", HistoryQuery(since=newest - 86400, filter=flow, step=10)),
        ("one flow, 7 d, step 60 s", HistoryQuery(filter=flow, step=60, limit=100_000)),
        ("one flow, 7 d, step 1 h", HistoryQuery(filter=flow, step=3600, limit=100_000)),
    ):
        t0 = time.perf_counter()
        rows = reader.query(q)
        took = time.perf_counter() - t0
        # as the API and the CLI ask: one page of 100, with its keyset cursor
        t0 = time.perf_counter()
        reader.page(HistoryQuery(**{**q.__dict__, "limit": 100}))
        paged = time.perf_counter() - t0
        print(
            f"{name}: {took * 1000:.0f} ms ({len(rows)} rows); "
            f"first page of 100: {paged * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
