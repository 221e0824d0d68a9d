"""The history's key leaves out the client's ephemeral port: churn of many
short connections from one client to one server is one row per side per
bucket, with exact connection, close, duration, byte and RTT totals."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfscope import historyquery
from bpfscope.flowquery import FlowFilter
from bpfscope.flows.events import ConnTally
from bpfscope.flows.records import FlowRecord
from bpfscope.sinks import HistorySink, PollChanges, service_direction
from bpfscope.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    FlowSample,
    HistoryQuery,
    HistoryReader,
    Store,
    query_history,
)
from history_helpers import memory_history

WRK = FlowFilter(comm="wrk")
T0 = int(time.time()) // 10 * 10 - 60  # a bucket start within the retention


def conn_pair(i: int, t: float, closed: bool, rtt: int | None = None) -> list[FlowRecord]:
    """Both ends of connection i of `wrk` (pid 7) to `nginx` (pid 8) on loopback."""
    common = dict(cgroup_id=1, netns=1, family="ipv4", proto="tcp", laddr="127.0.0.1",
                  raddr="127.0.0.1", opened=t, closed=t + 0.25 if closed else None,
                  tx_delta=100, rx_delta=1000, rtt_us=rtt)  # fmt: skip
    client = FlowRecord(pid=7, comm="wrk", lport=40000 + i, rport=8080, direction="active",
                        **common)  # type: ignore[arg-type]  # fmt: skip
    server = FlowRecord(pid=8, comm="nginx", lport=8080, rport=40000 + i, direction="passive",
                        **common)  # type: ignore[arg-type]  # fmt: skip
    server.tx_delta, server.rx_delta = 1000, 100
    return [client, server]


def poll(sink: HistorySink, t: float, flows: list[FlowRecord]) -> None:
    sink.consume(PollChanges(time=t, flows=flows, events=[], syscalls=None, self_metrics={}))


def test_churn_is_one_row_per_side_per_bucket(tmp_path: Path) -> None:
    n = 2000
    with Store(tmp_path / "h.db", bucket_seconds=10) as store:
        sink = HistorySink(store)
        for b in range(2):
            start = T0 + 10 * b
            # each connection opens in one poll and closes in the next, and the
            # collector reports the closed flow once more after its close
            for p in range(4):
                t = start + 2 * p + 0.5
                ids = range(b * n + p * n // 4, b * n + (p + 1) * n // 4)
                opened = [f for i in ids for f in conn_pair(i, t, closed=False, rtt=50 + i % 7)]
                poll(sink, t, opened)
                closed = [f for i in ids for f in conn_pair(i, t, closed=True)]
                poll(sink, t + 1, closed)
                poll(sink, t + 1.5, closed)  # reported again: no second close
        store.flush()
        rows = store.query(HistoryQuery(limit=100))
    assert len(rows) == 4  # 2 buckets x (client row, server row)
    for r in rows:
        client = r["comm"] == "wrk"
        # the ephemeral port is 0; the service port and direction remain
        assert (r["lport"], r["rport"]) == ((0, 8080) if client else (8080, 0))
        assert r["direction"] == ("active" if client else "passive")
        assert (r["connections"], r["opened"], r["closed"], r["durations"]) == (n, n, n, n)
        assert r["duration_ms_sum"] == 250 * n
        assert r["duration_ms_max"] == 250
        # 3 reports of 100 (client) / 1000 (server) bytes sent per connection
        assert r["tx_bytes"] == 3 * n * (100 if client else 1000)
        assert (r["rtt_min_us"], r["rtt_max_us"], r["rtt_samples"]) == (50, 56, n)
        assert 52 <= r["rtt_avg_us"] <= 54


def test_folded_short_connections_count_as_many_connections(tmp_path: Path) -> None:
    """The collector folds short connections into one record per group
    (FlowRecord.folded): the history counts each of them, in the same row
    as the connections it saw one by one."""
    with Store(tmp_path / "h.db", bucket_seconds=10) as store:
        sink = HistorySink(store)
        t = T0 + 1
        client = conn_pair(0, t, closed=True)[0]
        client.lport = 0
        client.folded, client.folded_durations = 500, 400
        client.folded_duration_ms_sum, client.folded_duration_ms_max = 4000, 30
        client.tx_delta = 500 * 100
        poll(sink, t, [client])
        poll(sink, t + 1, [client])  # the next poll's fold: 500 more, not a repeat
        poll(sink, t + 2, conn_pair(1, t, closed=False))  # one seen open
        poll(sink, t + 3, conn_pair(1, t, closed=True))
        store.flush()
        [row] = store.query(HistoryQuery(filter=WRK))
    assert (row["lport"], row["rport"], row["direction"]) == (0, 8080, "active")
    assert (row["connections"], row["opened"], row["closed"]) == (1001, 1001, 1001)
    assert (row["durations"], row["duration_ms_sum"], row["duration_ms_max"]) == (801, 8250, 250)
    assert row["tx_bytes"] == 2 * 500 * 100 + 2 * 100


def test_with_event_tallies_opens_and_closes_are_the_events_counts(tmp_path: Path) -> None:
    """The agent's mode: the lifecycle events count opens and closes exactly
    (a kernel flow entry can hold two connections that reused a client
    port between two polls); flows add bytes, folded ones their number."""
    with Store(tmp_path / "h.db", bucket_seconds=10) as store:
        sink = HistorySink(store)
        t = T0 + 1
        client = conn_pair(0, t, closed=True)[0]
        client.lport = 0
        client.folded, client.folded_durations = 9, 9  # 10 connections, 2 shared a port
        client.folded_duration_ms_sum, client.folded_duration_ms_max = 90, 40

        def tally(kind: str, **kw: float) -> ConnTally:
            return ConnTally(type=kind, pid=7, comm="wrk", cgroup_id=1, family="ipv4",
                             raddr="127.0.0.1", laddr="127.0.0.1", port=8080,
                             direction="active", count=10, **kw)  # type: ignore[arg-type]  # fmt: skip

        tallies = [
            tally("open"),
            tally("close", duration_sum=0.1, duration_count=10),
            tally("retransmit"),
        ]
        changes = PollChanges(
            time=t, flows=[client], events=[], syscalls=None, self_metrics={}, tallies=tallies
        )
        sink.consume(changes)
        store.flush()
        [row] = store.query(HistoryQuery(filter=WRK))
    assert (row["lport"], row["rport"], row["direction"]) == (0, 8080, "active")
    assert (row["opened"], row["closed"], row["durations"]) == (10, 10, 10)
    assert (row["duration_ms_sum"], row["duration_ms_max"]) == (100, 40)
    assert row["connections"] == 9  # the flows the kernel table told apart
    assert row["tx_bytes"] == 100


def test_groups_and_series_count_each_connection_once(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db", bucket_seconds=10) as store:
        sink = HistorySink(store)
        # 30 long connections, active in 3 buckets: counted where they begin
        for b in range(3):
            poll(sink, T0 + 10 * b + 1, [f for i in range(30) for f in conn_pair(i, T0, False)])
        store.flush()
        [group] = store.query(HistoryQuery(group_by="process", filter=WRK))
        assert group["connections"] == 30
        series = store.query(HistoryQuery(step=10, filter=WRK))
        assert [p["connections"] for p in series] == [30, 0, 0]
        rows = store.query(HistoryQuery(filter=WRK))
        assert [r["connections"] for r in rows] == [30, 30, 30]  # active in each bucket


def test_direction_of_flows_without_connect_or_accept() -> None:
    def udp(lport: int, rport: int | None) -> FlowRecord:
        return FlowRecord(pid=1, comm="dig", cgroup_id=1, netns=1, family="ipv4", proto="udp",
                          laddr="10.0.0.1", lport=lport, raddr="10.0.0.53" if rport else None,
                          rport=rport)  # fmt: skip

    eph = (32768, 60999)
    assert service_direction(udp(45000, 53), eph) == "active"  # a client asking :53
    assert service_direction(udp(53, 45000), eph) == "passive"  # the server answering
    assert service_direction(udp(5000, 6000), eph) == ""  # cannot tell: both ports kept
    assert service_direction(udp(45000, None), eph) == ""


def test_schema_3_migrates_to_4_and_rolls_up_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:3]:
        conn.executescript(step)
    for b in range(T0 - 3600 * 3, T0, 600):  # 3 hours, one row per 10 minutes
        conn.execute(
            "INSERT INTO flow_buckets (bucket_start, bucket_seconds, proto, family, laddr,"
            " lport, raddr, rport, pid, comm, container, tx_bytes, retrans_bytes) VALUES"
            " (?, 10, 'tcp', 4, '10.0.0.1', 40001, '10.0.0.2', 443, 9, 'old', '', 5, 1)",
            (b,),
        )
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    with Store(path, bucket_seconds=10) as store:
        assert store.migrated_from == 3
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    hours = check.execute("SELECT sum(tx_bytes), sum(opened) FROM flow_hours").fetchone()
    assert hours == (5 * 18, 18)  # each old row: one connection
    with HistoryReader(path) as reader:
        [g] = reader.query(HistoryQuery(since=T0 - 4 * 3600, group_by="remote"))
        assert (g["key"], g["tx_bytes"], g["connections"], g["retrans_bytes"]) == (
            "10.0.0.2", 90, 18, 18)  # fmt: skip
        assert g["rtt_avg_us"] is None  # old rows have no RTT


@st.composite
def spread(draw: st.DrawFn) -> list[tuple[int, FlowSample]]:
    """Rows of a few keys at random buckets over about three hours."""
    base = T0 - T0 % 3600 - 7200
    out = []
    for _ in range(draw(st.integers(1, 40))):
        b = base + 10 * draw(st.integers(0, 3 * 360 + 30))
        k = draw(st.integers(0, 5))
        out.append(
            (b, FlowSample(proto="tcp", family=4, laddr="10.0.0.1", lport=0,
                           raddr=f"10.9.0.{k}", rport=443, pid=k % 3 + 1, comm="c",
                           container="", tx_bytes=draw(st.integers(1, 10**6)), rx_bytes=k))
        )  # fmt: skip
    return out


@given(
    rows=spread(),
    since=st.none() | st.integers(-7800, 3600),
    until=st.none() | st.integers(-7800, 3700),
    form=st.sampled_from(["remote", "process", 10, 60, 300, 3600, 7200]),
)
@settings(max_examples=150, deadline=None)
def test_rollups_answer_exactly_what_the_buckets_say(
    rows: list[tuple[int, FlowSample]],
    since: int | None,
    until: int | None,
    form: str | int,
) -> None:
    conn = memory_history(rows)
    base = T0 - T0 % 3600
    q = HistoryQuery(
        since=None if since is None else base + since + 0.5,
        until=None if until is None else base + until,
        group_by=form if isinstance(form, str) else None,
        step=form if isinstance(form, int) else None,
        limit=10_000,
    )

    def answer() -> list[dict[str, object]]:
        # rates over since..now move with the clock: compare the sums
        return [
            {k: v for k, v in r.items() if k not in ("tx_rate", "rx_rate")}
            for r in query_history(conn, q, 10)
        ]

    with_rollups = answer()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(historyquery, "ROLLUPS", ())  # buckets only
        assert with_rollups == answer()
