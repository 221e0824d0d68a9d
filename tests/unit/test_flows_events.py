"""The bulk event path: the decoder against the C struct layout, exact
group counts, and the recent-events buffer bounded in bytes."""

from __future__ import annotations

import socket

import pytest

from bpfscope.flows.events import (
    DURATION_BUCKETS,
    EventBatch,
    GroupKey,
    tallies_of,
    tally,
)
from bpfscope.flows.records import EV, EVENT, ConnEvent, FlowEventC, struct_of
from bpfscope.objects import object_path
from bpfscope.sinks import EventBuffer, PollChanges


def event(
    type_: int = 1,
    *,
    tgid: int = 4242,
    comm: bytes = b"client",
    raddr: str = "10.1.2.3",
    laddr: str = "10.9.8.7",
    lport: int = 40000,
    rport: int = 443,
    direction: int = 1,
    duration_ns: int = 0,
    ts_ns: int = 5_000_000_000,
) -> bytes:
    e = FlowEventC()
    e.ts_ns = ts_ns
    e.cgroup_id = 77
    e.duration_ns = duration_ns
    e.tx_bytes, e.rx_bytes = 1000, 2000
    e.netns = 4026531840
    e.tgid = tgid
    e.laddr[:4] = list(socket.inet_aton(laddr))
    e.raddr[:4] = list(socket.inet_aton(raddr))
    e.lport, e.rport = lport, rport
    e.family, e.proto, e.type, e.direction = socket.AF_INET, 6, type_, direction
    e.oldstate, e.newstate, e.established = 2, 1, 1
    e.retrans = 3
    e.comm = comm
    e.retrans_bytes, e.tx_segs, e.rx_segs = 11, 12, 13
    return bytes(e)


def test_bulk_format_follows_every_field_of_the_c_struct() -> None:
    """Each field of struct flow_event (as the object's BTF lays it out)
    decodes at its own offset: every byte of a field set, the others zero."""
    from bpfscope.libbpf import Btf

    with Btf.from_file(object_path("flows")) as btf:
        total, layout = btf.struct_layout("flow_event")
    assert EVENT.size == total
    named = {n: f for n, f in layout.items() if n != "pad"}
    # every field, in the C order
    assert sorted(named, key=lambda n: named[n][0]) == sorted(
        EV.__dict__, key=EV.__dict__.__getitem__
    )
    for name, (offset, size) in named.items():
        raw = bytearray(EVENT.size)
        raw[offset : offset + size] = b"\xff" * size
        fields = EVENT.unpack(bytes(raw))
        for other, i in EV.__dict__.items():
            v = fields[i]
            full = v == 2 ** (8 * size) - 1 or v == b"\xff" * size
            empty = v == 0 or (isinstance(v, bytes) and not v.strip(b"\0"))
            assert full if other == name else empty, (name, other, v)


def test_struct_of_skips_padding() -> None:
    fmt, index = struct_of(FlowEventC)
    assert fmt.size == 208  # 136 + the final TCP health of close events
    assert "pad" not in index


def test_decode_matches_the_ctypes_mirror() -> None:
    raw = event(2, duration_ns=2_500_000)
    e = ConnEvent.decode(raw, wall_offset=100.0, counters=True)
    assert (e.type, e.pid, e.comm, e.cgroup_id) == ("close", 4242, "client", 77)
    assert (e.laddr, e.lport, e.raddr, e.rport) == ("10.9.8.7", 40000, "10.1.2.3", 443)
    assert e.time == pytest.approx(105.0)
    assert e.duration == pytest.approx(0.0025)
    assert (e.tx_bytes, e.rx_bytes, e.retransmits) == (1000, 2000, 3)
    assert (e.tx_segs, e.rx_segs, e.retrans_bytes) == (12, 13, 11)
    assert (e.direction, e.oldstate, e.newstate) == ("active", "SYN_SENT", "ESTABLISHED")


def test_tally_counts_every_event_per_group_without_client_ports() -> None:
    blob = b"".join(
        # 300 connections we made to one service, each from its own port
        [event(1, lport=30000 + i) for i in range(300)]
        + [event(2, lport=30000 + i, duration_ns=2_000_000) for i in range(300)]
        # 200 accepted on port 8080 from as many client ports
        + [event(1, lport=8080, rport=50000 + i, direction=2, comm=b"server") for i in range(200)]
    )
    groups: dict[GroupKey, list[object]] = {}
    assert tally(blob, groups) == 800
    tallies = {(t.type, t.comm, t.port, t.direction): t for t in tallies_of(groups)}
    assert set(tallies) == {
        ("open", "client", 443, "active"),
        ("close", "client", 443, "active"),
        ("open", "server", 8080, "passive"),
    }
    assert tallies["open", "client", 443, "active"].count == 300
    assert tallies["open", "server", 8080, "passive"].count == 200
    close = tallies["close", "client", 443, "active"]
    assert close.count == close.duration_count == 300
    assert close.duration_sum == pytest.approx(0.6)
    # 2 ms falls in the (1 ms, 5 ms] bucket
    assert close.buckets[DURATION_BUCKETS.index(0.005)] == 300
    assert sum(close.buckets) == 300


def test_event_batch_decodes_only_what_is_asked() -> None:
    blob = b"".join(event(1, lport=30000 + i) for i in range(10))
    seen: list[int] = []

    def enrich(e: ConnEvent) -> ConnEvent:
        seen.append(e.lport)
        return e

    batch = EventBatch(blob, 0.0, False, enrich)
    assert len(batch) == 10
    assert [e.lport for e in batch.decode(7)] == [30007, 30008, 30009]
    assert seen == [30007, 30008, 30009]


def changes(batch: EventBatch) -> PollChanges:
    return PollChanges(
        time=0.0, flows=[], events=[], syscalls=None, self_metrics={}, batches=[batch]
    )


def test_event_buffer_is_bounded_in_bytes_and_numbers_every_event() -> None:
    buf = EventBuffer(max_events=1_000_000, max_bytes=100 * EVENT.size)
    for round_ in range(5):
        blob = b"".join(event(1, lport=1000 * round_ + i) for i in range(60))
        buf.consume(changes(EventBatch(blob, 0.0, False)))
    assert buf.last_seq == 300
    assert buf.nbytes <= 100 * EVENT.size
    kept = buf.since(0)
    assert [e.seq for e in kept] == list(range(201, 301))
    assert kept[0].event.lport == 3000 + 20  # seq 201: the 21st of the 4th round
    assert [e.seq for e in buf.since(290)] == list(range(291, 301))
    assert [e.seq for e in buf.since(0, limit=3)] == [298, 299, 300]


def test_event_buffer_bounds_event_count_too() -> None:
    buf = EventBuffer(max_events=50)
    blob = b"".join(event(1, lport=i) for i in range(80))
    buf.consume(changes(EventBatch(blob, 0.0, False)))
    assert [e.seq for e in buf.since(0)] == list(range(31, 81))


def test_a_poll_batch_trimmed_to_its_tail_keeps_only_the_tail_in_memory() -> None:
    """At churn rates one poll's batch is far larger than the buffer keeps:
    the buffer must not hold the whole batch for the few events it serves."""
    buf = EventBuffer(max_events=50)
    blob = b"".join(event(1, lport=i) for i in range(2000))
    buf.consume(changes(EventBatch(blob, 0.0, False)))
    [chunk] = buf._chunks
    assert isinstance(chunk.events, EventBatch)
    assert chunk.events.nbytes == 50 * EVENT.size  # not 2000 events' worth
    kept = buf.since(0)
    assert [e.seq for e in kept] == list(range(1951, 2001))
    assert [e.event.lport for e in kept] == list(range(1950, 2000))
    assert [e.seq for e in buf.since(1990, limit=3)] == [1998, 1999, 2000]
    buf.consume(changes(EventBatch(blob[: 10 * EVENT.size], 0.0, False)))
    assert [e.seq for e in buf.since(0)][:3] == [1961, 1962, 1963]
    assert buf.last_seq == 2010
