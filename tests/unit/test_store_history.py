"""The embedded history: buckets, migrations, retention, damage, SIGKILL."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfscope.flowquery import FlowFilter
from bpfscope.store import MIGRATIONS, SCHEMA_VERSION, FlowSample, HistoryQuery, Store, StoreError


def sample(tx: int = 0, rx: int = 0, rport: int = 443, raddr: str = "10.1.2.3") -> FlowSample:
    return FlowSample(
        proto="tcp", family=4, laddr="10.0.0.1", lport=5555, raddr=raddr, rport=rport,
        pid=42, comm="curl", container="web", tx_bytes=tx, rx_bytes=rx,
    )  # fmt: skip


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@given(st.lists(st.tuples(st.integers(0, 59), st.integers(0, 10**9)), min_size=1, max_size=40))
@settings(max_examples=25, deadline=None)
def test_buckets_sum_exactly(
    tmp_path_factory: pytest.TempPathFactory, adds: list[tuple[int, int]]
) -> None:
    path = tmp_path_factory.mktemp("h") / "h.db"
    clock = Clock(10_000.0)
    with Store(path, bucket_seconds=10, clock=clock) as s:
        for offset, n in sorted(adds):
            s.add([sample(tx=n)], now=10_000 + offset)
        s.flush()
        rows = s.query(HistoryQuery(limit=100))
    expected: dict[int, int] = {}
    for offset, n in adds:
        if n:
            b = 10_000 + offset - (10_000 + offset) % 10
            expected[b] = expected.get(b, 0) + n
    assert {r["bucket_start"]: r["tx_bytes"] for r in rows} == expected


def test_query_filters(tmp_path: Path) -> None:
    clock = Clock(50_000.0)
    with Store(tmp_path / "h.db", bucket_seconds=10, clock=clock) as s:
        s.add([sample(tx=1, rport=443), sample(tx=2, rport=80, raddr="fd00::5")], now=50_000)
        s.flush()
        assert [r["tx_bytes"] for r in s.query(HistoryQuery(filter=FlowFilter(port=80)))] == [2]
        by_cidr = s.query(HistoryQuery(filter=FlowFilter(cidr="fd00::/8")))
        assert [r["raddr"] for r in by_cidr] == ["fd00::5"]
        assert len(s.query(HistoryQuery(filter=FlowFilter(container="web")))) == 2
        assert s.query(HistoryQuery(since=50_010)) == []


def test_retention_by_age(tmp_path: Path) -> None:
    clock = Clock(100_000.0)
    with Store(tmp_path / "h.db", bucket_seconds=10, retention_seconds=60, clock=clock) as s:
        s.add([sample(tx=1)], now=100_000)
        s.flush()
        clock.t = 100_100
        s.add([sample(tx=2)], now=100_100)
        s.flush()
        assert [r["tx_bytes"] for r in s.query(HistoryQuery())] == [2]


def test_retention_by_size_keeps_the_file_bounded(tmp_path: Path) -> None:
    clock = Clock(200_000.0)
    limit = 256 * 1024
    with Store(tmp_path / "h.db", bucket_seconds=1, max_bytes=limit, clock=clock) as s:
        for b in range(60):
            clock.t = 200_000 + b
            s.add([sample(tx=1, rport=p) for p in range(1, 200)], now=clock.t)
            s.flush()
        assert s.size_bytes() <= limit
        rows = s.query(HistoryQuery(limit=10**6))
        assert rows
        assert min(r["bucket_start"] for r in rows) > 200_000
        assert max(r["bucket_start"] for r in rows) == 200_059  # newest kept


def test_older_schema_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute(
        "INSERT INTO flow_buckets (bucket_start, bucket_seconds, proto, family, laddr, lport,"
        " raddr, rport, pid, comm, container, tx_bytes) VALUES (10, 10, 'tcp', 4, '1.1.1.1',"
        " 1, '2.2.2.2', 2, 3, 'old', '', 99)"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with Store(path, clock=Clock(20.0)) as s:
        assert s.migrated_from == 1
        [row] = s.query(HistoryQuery())
        assert row["tx_bytes"] == 99
        assert row["remote_class"] == ""  # the column version 2 added
        assert (row["tx_segs"], row["rx_segs"], row["retrans_bytes"]) == (0, 0, 0)  # version 3
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this bpfscope"):
        Store(path)


def test_corrupt_file_gives_a_clear_error_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    junk = b"this is not sqlite" * 1000
    path.write_bytes(junk)
    with pytest.raises(StoreError, match=r"corrupt.*move it aside"):
        Store(path)
    assert path.read_bytes() == junk  # loses nothing


def test_unwritable_location_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot create|not writable"):
        Store("/proc/bpfscope-nope/h.db")


WRITER = """
import sys, time
from bpfscope.store import Store, FlowSample
s = Store(sys.argv[1], bucket_seconds=1)
i = 0
while True:
    s.add([FlowSample('tcp', 4, '10.0.0.1', 1, '10.0.0.2', 2, 7, 'w', '', tx_bytes=1)])
    i += 1
    if s.buckets_written >= 3:
        print('ready', flush=True)
    time.sleep(0.01)
"""


def test_sigkill_loses_at_most_the_open_bucket(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    newest = conn.execute("SELECT max(bucket_start) FROM flow_buckets").fetchone()[0]
    conn.close()
    # every bucket that closed more than a bucket before the kill is there
    assert newest >= int(killed_at) - 2
    with Store(path) as s:  # restart continues the same database
        before = s.stats()["rows"]
        s.add([sample(tx=5)])
        s.flush()
        assert s.stats()["rows"] == before + 1


def test_tcp_segments_and_retransmitted_bytes_sum_per_bucket(tmp_path: Path) -> None:
    """TCP from the kernel's counters: segments and retransmitted bytes are
    history columns of their own, summed like bytes."""
    with Store(tmp_path / "h.db", bucket_seconds=10, clock=Clock(30_000.0)) as s:
        one = dataclasses.replace(sample(tx=1000), tx_segs=2, rx_segs=1, retrans_bytes=100)
        two = dataclasses.replace(sample(tx=500), tx_segs=1, rx_segs=3, retrans_bytes=0)
        s.add([one], now=30_000)
        s.add([two], now=30_005)
        s.flush()
        [row] = s.query(HistoryQuery())
    assert (row["tx_bytes"], row["tx_segs"], row["rx_segs"], row["retrans_bytes"]) == (
        1500,
        3,
        4,
        100,
    )


def test_row_count_is_kept_exact_without_counting_the_table(tmp_path: Path) -> None:
    clock = Clock(300_000.0)
    with Store(tmp_path / "h.db", bucket_seconds=10, retention_seconds=60, clock=clock) as s:
        s.add([sample(tx=1), sample(tx=2, rport=80)], now=300_000)
        s.flush()
        # the same bucket again (after a flush): one key summed, one new
        s.add([sample(tx=1), sample(tx=3, rport=22)], now=300_001)
        s.flush()
        assert s.stats()["rows"] == 3
        clock.t = 300_100.0  # the first bucket leaves by age on the next write
        s.add([sample(tx=4)], now=300_100)
        s.flush()
        real = s._reader.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
        assert s.stats()["rows"] == real == 1


def test_retention_trims_rollups_by_whole_units(tmp_path: Path) -> None:
    clock = Clock(36_000.0)
    with Store(tmp_path / "h.db", bucket_seconds=10, retention_seconds=3000, clock=clock) as s:
        for t in range(28_800, 36_000, 600):  # two hours, every 10 minutes
            s.add([sample(tx=1)], now=t)
        s.flush()  # the last write applied retention: cutoff 33_000
        units = {
            table: [r[0] for r in s._reader.execute(f"SELECT bucket_start FROM {table}")]
            for table in ("flow_hours", "flow_5min")
        }
    assert units["flow_hours"] == [32_400]  # the hour the cutoff falls in stays whole
    assert min(units["flow_5min"]) == 33_000
