"""One filter definition: a FlowFilter selects the same flows from records
in memory and, through its generated SQL, from the history; the history is
readable read-only while the agent writes."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfscope.flowquery import BadQuery, FlowFilter
from bpfscope.store import (
    MIGRATIONS,
    HistoryQuery,
    HistoryReader,
    Store,
    StoreError,
    query_history,
)
from history_helpers import Rec, memory_history, to_sample, unique_flows

T0 = int(time.time()) // 10 * 10  # within the store's retention


ADDRS = ("10.0.0.1", "10.1.2.3", "192.168.1.9", "::ffff:10.1.2.3", "fd00::5", "::1", "127.0.0.1")
CIDRS = (
    "10.0.0.0/8",
    "10.1.2.3",
    "192.168.0.0/16",
    "fd00::/8",
    "::/0",
    "0.0.0.0/0",
    "::ffff:0:0/96",
)
COMMS = ("curl", "nginx", "sshd")
CONTAINERS = (None, "abc123", "abd", "ab")


@st.composite
def records(draw: st.DrawFn) -> Rec:
    laddr = draw(st.sampled_from(ADDRS))
    raddr = draw(st.sampled_from((None, *ADDRS)))
    family = "ipv6" if ":" in laddr or (raddr and ":" in raddr) else "ipv4"
    return Rec(
        pid=draw(st.integers(1, 4)),
        comm=draw(st.sampled_from(COMMS)),
        family=family,
        proto=draw(st.sampled_from(("tcp", "udp"))),
        laddr=laddr,
        lport=draw(st.sampled_from((22, 80, 443, 50000))),
        raddr=raddr,
        rport=None if raddr is None else draw(st.sampled_from((22, 80, 443, 50001))),
        container=draw(st.sampled_from(CONTAINERS)),
    )


filters = st.builds(
    FlowFilter,
    pid=st.none() | st.integers(1, 4),
    comm=st.none() | st.sampled_from(COMMS),
    port=st.none() | st.sampled_from((22, 80, 443, 50000, 50001)),
    cidr=st.none() | st.sampled_from(CIDRS),
    container=st.none() | st.sampled_from(("", "a", "ab", "abc", "abc123", "x")),
    family=st.none() | st.sampled_from(("ipv4", "ipv6")),
    proto=st.none() | st.sampled_from(("tcp", "udp")),
)


@given(recs=st.lists(records(), min_size=1, max_size=30), flt=filters)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_filter_selects_the_same_flows_in_memory_and_in_sqlite(
    recs: list[Rec], flt: FlowFilter
) -> None:
    unique = unique_flows(recs)
    conn = memory_history((T0, to_sample(r, i + 1)) for i, r in enumerate(unique))
    rows = query_history(conn, HistoryQuery(filter=flt, limit=1000), 10)
    expected = {i + 1 for i, r in enumerate(unique) if r in flt.apply(unique)}
    assert {row["tx_bytes"] for row in rows} == expected


def test_history_unmaps_ipv4_mapped_and_matches_container_prefixes(tmp_path: Path) -> None:
    mapped = Rec(
        1, "curl", "ipv6", "tcp", "::ffff:10.0.0.1", 5000, "::ffff:10.9.9.9", 443, "abc123"
    )
    with Store(tmp_path / "h.db", bucket_seconds=10) as s:
        s.add([to_sample(mapped, 7)], now=T0)
        s.flush()
        for flt in (FlowFilter(cidr="10.9.0.0/16"), FlowFilter(container="abc")):
            assert flt.apply([mapped]) == [mapped]
            assert [r["tx_bytes"] for r in s.query(HistoryQuery(filter=flt))] == [7], flt
        assert s.query(HistoryQuery(filter=FlowFilter(container="abd"))) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"pid": 0}, {"pid": 2**63}, {"port": 0}, {"port": 70000}, {"cidr": "10.0.0.0/33"},
     {"cidr": ""}, {"family": "ipv5"}, {"proto": "sctp"}],
)  # fmt: skip
def test_bad_filters_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadQuery):
        FlowFilter(**kwargs)  # type: ignore[arg-type]


def test_reader_reads_while_the_agent_writes_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    rec = Rec(1, "curl", "ipv4", "tcp", "10.0.0.1", 5000, "10.1.2.3", 443, None)
    with Store(path, bucket_seconds=10) as writer:
        writer.add([to_sample(rec, 5)], now=T0)
        writer.flush()
        with HistoryReader(path) as reader:
            assert [r["tx_bytes"] for r in reader.query(HistoryQuery())] == [5]
            # the writer keeps writing while the reader is open
            writer.add([to_sample(rec, 6)], now=T0 + 10)
            writer.flush()
            assert [r["tx_bytes"] for r in reader.query(HistoryQuery())] == [6, 5]
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader._conn.execute("DELETE FROM flow_buckets")


def test_reader_does_not_migrate_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version=1;")
    conn.execute(
        "INSERT INTO flow_buckets (bucket_start, bucket_seconds, proto, family, laddr, lport,"
        " raddr, rport, pid, comm, container, tx_bytes) VALUES (?,10,'tcp',4,'10.0.0.1',1,"
        "'10.0.0.2',2,3,'c','',9)",
        (T0,),
    )
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with HistoryReader(path) as reader:
        assert [r["tx_bytes"] for r in reader.query(HistoryQuery())] == [9]
        # groups need schema 4: a clear message, not "no such column"
        with pytest.raises(StoreError, match="run `bpfscope serve` on it once"):
            reader.query(HistoryQuery(group_by="remote"))
    assert path.read_bytes() == before
    assert int(sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]) == 1


def test_reader_refuses_what_is_not_a_history(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match=r"cannot read|not a database"):
        HistoryReader(junk)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="no bpfscope history"):
        HistoryReader(empty)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_reader_opens_a_file_it_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path, bucket_seconds=10) as s:
        s.add([to_sample(Rec(1, "c", "ipv4", "tcp", "10.0.0.1", 1, "10.0.0.2", 2, None), 3)], T0)
    path.chmod(0o444)
    with HistoryReader(path) as reader:
        assert len(reader.query(HistoryQuery())) == 1
