"""TCP health: decoding struct tcp_health, time fractions, the verdict rule,
the health view's cells and the RTT histogram (no kernel needed)."""

from __future__ import annotations

import ctypes
import dataclasses
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import make_flow
from bpfscope.flows import health
from bpfscope.flows.health import Chrono, TcpHealthC, decode, fractions, verdict
from bpfscope.flows.records import ConnEvent, FlowEventC, FlowRecord
from bpfscope.flows.render import HEALTH_COLUMNS, health_row, plain_table
from bpfscope.metrics import FlowMetrics


def reading(**kw: int) -> TcpHealthC:
    h = TcpHealthC()
    h.flags = health.HEALTH_F_READ
    h.srtt_us, h.rttvar_us, h.min_rtt_us = 2500, 400, 1800
    h.cwnd, h.ssthresh, h.lost = 20, 0x7FFFFFFF, 3
    h.rcv_wnd, h.snd_wnd, h.mss, h.delivery_rate = 65535, 131072, 1448, 1_000_000
    for name, value in kw.items():
        setattr(h, name, value)
    return h


def test_fractions_add_up_and_idle_is_the_rest() -> None:
    f = fractions(Chrono(1100, 60, 20, 10), Chrono(1000, 0, 0, 0))
    assert f == {
        "rwnd_limited_frac": 0.2,
        "sndbuf_limited_frac": 0.1,
        "network_limited_frac": 0.6,
        "app_limited_frac": pytest.approx(0.1),
    }
    assert sum(f.values()) == pytest.approx(1.0)


def test_fractions_wrap_with_the_32_bit_jiffies() -> None:
    before = Chrono(0xFFFFFFF0, 0xFFFFFFFA, 0, 0)
    f = fractions(Chrono(0x10, 0x6, 0, 0), before)  # 32 jiffies, 12 of them busy
    assert f is not None
    assert f["network_limited_frac"] == 12 / 32


def test_fractions_need_time_and_clamp_rounding() -> None:
    assert fractions(Chrono(5, 1, 1, 1), Chrono(5, 0, 0, 0)) is None
    # two chronos rounded up by a tick each: scaled back into the interval
    f = fractions(Chrono(10, 6, 6, 0), Chrono(0, 0, 0, 0))
    assert f is not None
    assert f["network_limited_frac"] + f["rwnd_limited_frac"] == pytest.approx(1.0)
    assert f["app_limited_frac"] == 0


@pytest.mark.parametrize(
    ("busy", "rwnd", "sndbuf", "expected"),
    [
        (90, 0, 0, "network"),
        (10, 80, 0, "receiver"),
        (10, 0, 70, "sndbuf"),
        (10, 0, 0, "app"),  # 90% with nothing to send
        (0, 0, 0, "app"),
        (50, 50, 0, "receiver"),  # ties: the more specific cause
        (0, 50, 50, "receiver"),
        (0, 0, 50, "sndbuf"),  # 50% sndbuf, 50% idle
        (50, 0, 0, "network"),  # 50% busy, 50% idle
    ],
)
def test_verdict_is_the_largest_share(busy: int, rwnd: int, sndbuf: int, expected: str) -> None:
    f = fractions(Chrono(100, busy, rwnd, sndbuf), Chrono(0, 0, 0, 0))
    assert verdict(f) == expected


def test_verdict_without_time_is_unknown() -> None:
    assert verdict(None) is None


def test_decode_reads_like_tcp_info() -> None:
    fields, chrono = decode(reading())
    assert fields["rtt_us"] == 2500
    assert fields["rtt_var_us"] == 400
    assert fields["min_rtt_us"] == 1800
    assert fields["cwnd"] == 20
    assert fields["ssthresh"] is None  # infinite: still in slow start
    assert fields["lost"] == 3
    assert fields["delivery_rate"] == 1_000_000
    assert (fields["rcv_wnd"], fields["snd_wnd"]) == (65535, 131072)
    # no start and no earlier reading: no interval to share out
    assert fields["limited_by"] is None
    assert fields["app_limited_frac"] is None
    assert chrono is not None


def test_decode_unknowns() -> None:
    fields, _ = decode(reading(srtt_us=0, min_rtt_us=0xFFFFFFFF, ssthresh=7))
    assert fields["rtt_us"] is None
    assert fields["rtt_var_us"] is None
    assert fields["min_rtt_us"] is None
    assert fields["ssthresh"] == 7
    assert decode(TcpHealthC())[0] == health.empty()  # nothing read


def test_decode_first_reading_covers_the_lifetime_then_intervals() -> None:
    h = reading(start_jiffies=1000, jiffies=1200)
    h.flags |= health.HEALTH_F_START
    h.chrono[0], h.chrono[1] = 150, 50  # busy, rwnd since ESTABLISHED
    fields, before = decode(h)
    assert fields["network_limited_frac"] == 0.75
    assert fields["rwnd_limited_frac"] == 0.25
    assert fields["limited_by"] == "network"
    h.jiffies, h.chrono[1] = 1300, 150  # the next 100 jiffies: all receive window
    fields, _ = decode(h, before)
    assert fields["rwnd_limited_frac"] == 1.0
    assert fields["limited_by"] == "receiver"


def test_records_carry_every_health_field() -> None:
    for cls in (FlowRecord, ConnEvent):
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(health.HEALTH_FIELDS) <= names, cls
    assert "rtt_us" in {f.name for f in dataclasses.fields(FlowRecord)}


def close_event(h: TcpHealthC) -> bytes:
    e = FlowEventC()
    e.type, e.family, e.proto, e.duration_ns = 2, 2, 6, 10**9
    e.health = h
    return bytes(e)


def test_close_event_decodes_the_final_health() -> None:
    h = reading(start_jiffies=0, jiffies=250)
    h.flags |= health.HEALTH_F_START
    h.chrono[2] = 200
    e = ConnEvent.decode(close_event(h), 0.0, counters=True)
    assert e.rtt_us == 2500
    assert e.sndbuf_limited_frac == 0.8
    assert e.limited_by == "sndbuf"
    assert e.to_json()["limited_by"] == "sndbuf"
    # the table path (no iter/tcp) has no health
    old = ConnEvent.decode(close_event(h), 0.0, counters=False)
    assert all(getattr(old, name) is None for name in health.HEALTH_FIELDS)


def test_struct_sizes() -> None:
    assert ctypes.sizeof(TcpHealthC) == 72


def test_health_row_and_plain_table() -> None:
    rec = make_flow(1, proto="tcp", tx_bytes=9000, retrans_bytes=1000, rtt_us=25_300)
    rec.min_rtt_us, rec.lost, rec.delivery_rate = 800, 4, 1_048_576
    rec.limited_by, rec.network_limited_frac = "network", 0.97
    row = dict(zip(HEALTH_COLUMNS, health_row(rec, time.time()), strict=True))
    assert row["RTT"] == "25.3ms"
    assert row["MIN RTT"] == "800us"
    assert row["RETR %"] == "10.0"
    assert row["LOST"] == "4"
    assert row["RATE"] == "1.0MiB/s"
    assert row["LIMITED"] == "network 97%"
    udp = make_flow(3, proto="udp")
    cells = dict(zip(HEALTH_COLUMNS, health_row(udp, time.time()), strict=True))
    assert cells["RTT"] == cells["LIMITED"] == cells["RETR %"] == "-"
    text = plain_table([rec, udp], health=True)
    assert text.splitlines()[0].split()[:3] == ["PID", "COMM", "LOCAL"]
    assert "LIMITED" in text.splitlines()[0]


def test_rtt_histogram_by_remote_class_only() -> None:
    m = FlowMetrics(remote_class=lambda ip: "private" if ip and ip.startswith("10.") else "public")
    moving = [
        make_flow(1, proto="tcp", raddr="10.0.0.9", rtt_us=300, tx_delta=5),
        make_flow(2, proto="tcp", raddr="10.0.0.8", rtt_us=40_000, tx_delta=5),
        make_flow(4, proto="tcp", raddr="8.8.8.8", rtt_us=90_000, tx_delta=5),
    ]
    idle = make_flow(5, proto="tcp", raddr="8.8.4.4", rtt_us=1, tx_delta=0, rx_delta=0)
    no_rtt = make_flow(7, proto="tcp", raddr="8.8.4.4", tx_delta=5)
    m.ingest([*moving, idle, no_rtt], [])
    reg = CollectorRegistry()
    reg.register(m)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    samples = fams["bpfscope_tcp_rtt_seconds"].samples
    assert {frozenset(s.labels) for s in samples} <= {
        frozenset({"remote_class", "le"}),
        frozenset({"remote_class"}),
    }
    count = {s.labels["remote_class"]: s.value for s in samples if s.name.endswith("_count")}
    assert count == {"private": 2, "public": 1}
    total = {s.labels["remote_class"]: s.value for s in samples if s.name.endswith("_sum")}
    assert total["private"] == pytest.approx(0.0403)
    le = {
        s.labels["le"]: s.value
        for s in samples
        if s.name.endswith("_bucket") and s.labels["remote_class"] == "private"
    }
    assert le["0.0005"] == 1
    assert le["0.05"] == 2


def test_sort_by_rtt_puts_flows_without_it_last() -> None:
    from bpfscope.flowquery import sort_flows

    flows = [
        make_flow(1, proto="tcp", rtt_us=500),
        make_flow(2, proto="udp"),
        make_flow(4, proto="tcp", rtt_us=90_000),
    ]
    assert [f.rtt_us for f in sort_flows(flows, "rtt")] == [90_000, 500, None]


def test_only_time_passed_means_idle() -> None:
    a = reading(jiffies=100)
    a.chrono[0] = 40
    b = reading(jiffies=150)
    b.chrono[0] = 40
    assert health.only_time_passed(bytes(b), bytes(a))  # 50 jiffies, no chrono
    assert not health.only_time_passed(bytes(a), bytes(a))  # not read again
    b.chrono[0] = 41  # the busy chrono ran: a real interval
    assert not health.only_time_passed(bytes(b), bytes(a))
    fields = health.decode_raw(bytes(b), bytes(a))
    assert fields["network_limited_frac"] == 0.02
    assert fields["limited_by"] == "app"
    assert health.IDLE["limited_by"] == "app"
    assert health.decode_raw(bytes(b), None)["limited_by"] is None


def test_apply_readings_decodes_only_what_changed() -> None:
    rec = make_flow(1, proto="tcp")
    first = reading(jiffies=100)
    later = reading(jiffies=200)  # only the clock moved
    last: dict[bytes, bytes] = {}
    health.apply_readings(lambda key: None, last, [(b"k", bytes(first))])  # no record yet
    last = {b"k": bytes(first)}
    health.apply_readings(lambda key: rec, last, [(b"k", bytes(later))])
    assert rec.rtt_us == 2500
    assert rec.limited_by == "app"  # the interval since the kept reading: idle
    assert rec.app_limited_frac == 1.0
    busy = reading(jiffies=300)
    busy.chrono[1] = 100  # all of the next 100 jiffies: receive window
    health.apply_readings(lambda key: rec, {b"k": bytes(later)}, [(b"k", bytes(busy))])
    assert rec.limited_by == "receiver"
    rec.rtt_us = -1  # not read again (closed): nothing is rewritten
    health.apply_readings(lambda key: rec, {b"k": bytes(busy)}, [(b"k", bytes(busy))])
    assert rec.rtt_us == -1
