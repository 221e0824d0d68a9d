"""FlowCollector's bookkeeping without a kernel: a fake loader hands it
in-memory maps. Deltas and rates, unchanged flows, closed and idle flows
deleted from the table, flows that move before their deletion kept, and
LRU evictions counted."""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from bpfscope.flows.collector import FLOW_MAP, FlowCollector, flows_of
from bpfscope.flows.records import STAT_INSERTS, FlowKeyC, FlowRecord

VALUE = struct.Struct("<9Q3IBB2x16s")  # struct flow_value
TCP_ESTABLISHED = 1


def key(lport: int, pid: int = 100) -> bytes:
    k = FlowKeyC(cgroup_id=1, netns=2, tgid=pid, lport=lport, rport=443)
    k.family = socket.AF_INET
    k.proto = socket.IPPROTO_TCP
    k.laddr[:4] = [127, 0, 0, 1]
    k.raddr[:4] = [127, 0, 0, 2]
    return bytes(k)


def value(tx: int, rx: int, *, closed_ns: int = 0, comm: bytes = b"curl") -> bytes:
    return VALUE.pack(
        tx, rx, 1, 1, 1_000, 2_000, 1_000, closed_ns, 0, 0, 0, 0, TCP_ESTABLISHED, 1, comm
    )


class FakeMap:
    def __init__(self, entries: dict[bytes, bytes] | None = None) -> None:
        self.entries = dict(entries or {})
        self.deleted: list[bytes] = []
        self.batch_supported: bool | None = True
        self.percpu: dict[bytes, int] = {}
        self.on_lookup: Callable[[bytes], None] | None = None

    def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        return list(self.entries.items())

    def items_per_key(self) -> list[tuple[bytes, bytes]]:
        return list(self.entries.items())

    def lookup(self, k: Any) -> bytes | None:
        if self.on_lookup is not None:
            self.on_lookup(bytes(k))
        return self.entries.get(bytes(k))

    def delete(self, k: Any) -> bool:
        self.deleted.append(bytes(k))
        return self.entries.pop(bytes(k), None) is not None

    def delete_batch(self, keys: list[bytes]) -> int:
        return sum(self.delete(k) for k in keys)

    def take(self, k: Any) -> bytes | None:
        """Lookup-and-delete: the value deleted is the value returned."""
        if self.on_lookup is not None:
            self.on_lookup(bytes(k))
        self.deleted.append(bytes(k))
        return self.entries.pop(bytes(k), None)

    def sum_percpu_u64(self, k: Any) -> int:
        return self.percpu.get(bytes(k), 0)


class FakeObj:
    def __init__(self) -> None:
        self.maps = {
            FLOW_MAP: FakeMap(),
            "flows_stats": FakeMap(),
            "flow_events": FakeMap(),
            "flow_events_dropped": FakeMap(),
        }

    def map(self, name: str) -> FakeMap:
        return self.maps[name]


class FakeExtras:
    programs: frozenset[str] = frozenset()


class FakeTool:
    def __init__(self) -> None:
        self.obj = FakeObj()
        self.extras = FakeExtras()
        self.choices: list[Any] = []
        self.closed = False

    def rungs(self) -> dict[str, str | None]:
        return {"send": "fake"}

    def skipped_runs(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FakeRing:
    def __init__(self, _map: Any, callback: Callable[[bytes], None]) -> None:
        self.callback = callback
        self.closed = False

    def poll(self, timeout_ms: int = 100) -> int:
        return 0

    def consume(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def collector(tool: FakeTool, **kw: Any) -> FlowCollector:
    return FlowCollector(
        loader=lambda: tool,
        ring=FakeRing,
        resolve=False,
        **kw,  # type: ignore[arg-type,return-value]
    ).start()


def changed(c: FlowCollector) -> dict[int, FlowRecord]:
    return {r.lport: r for r in flows_of(c.poll())}


def inserted(tool: FakeTool, n: int) -> None:
    tool.obj.maps["flows_stats"].percpu[struct.pack("=I", STAT_INSERTS)] = n


def test_deltas_count_what_changed_since_the_previous_poll() -> None:
    tool = FakeTool()
    table = tool.obj.maps[FLOW_MAP].entries
    table[key(1)] = value(100, 10)
    c = collector(tool)
    first = changed(c)[1]
    assert (first.tx_bytes, first.rx_bytes, first.tx_delta, first.rx_delta) == (100, 10, 100, 10)
    assert (first.comm, first.state, first.direction) == ("curl", "ESTABLISHED", "active")
    table[key(1)] = value(150, 10)
    table[key(2)] = value(7, 0)
    second = changed(c)
    assert sorted(second) == [1, 2]
    assert (second[1].tx_delta, second[1].rx_delta, second[1].tx_bytes) == (50, 0, 150)
    assert second[1].tx_rate > 0
    assert second[2].tx_delta == 7
    # nothing moved: no changed flows, and the tracked records read zero deltas
    assert changed(c) == {}
    assert {(r.lport, r.tx_delta, r.tx_rate) for r in c.snapshot()} == {(1, 0, 0.0), (2, 0, 0.0)}
    # a flow recreated with smaller counters (the kernel lost it) counts from zero
    table[key(1)] = value(30, 5)
    assert (changed(c)[1].tx_delta, c.stats().flows_tracked) == (30, 2)
    c.close()
    assert tool.closed


def test_closed_flows_are_deleted_once_reported() -> None:
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    flows.entries[key(1)] = value(100, 10)
    flows.entries[key(2)] = value(5, 5)
    c = collector(tool)
    changed(c)
    flows.entries[key(1)] = value(120, 10, closed_ns=3_000)
    closing = changed(c)[1]
    assert closing.closed is not None
    assert closing.tx_delta == 20
    assert flows.deleted == []  # reported in this poll: deleted at the next
    time.sleep(0.001)
    changed(c)
    assert flows.deleted == [key(1)]
    assert set(flows.entries) == {key(2)}
    assert [r.lport for r in c.snapshot()] == [2]
    assert c.stats().flows_removed == 1


def test_idle_flows_are_deleted_and_a_last_move_is_reported() -> None:
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    flows.entries[key(1)] = value(100, 10)
    flows.entries[key(2)] = value(5, 5)
    c = collector(tool, idle_timeout=0.05)
    changed(c)
    time.sleep(0.06)

    def moves(k: bytes) -> None:  # key 2 gets traffic between the read and the delete
        if k == key(2):
            flows.entries[k] = value(6, 5)

    flows.on_lookup = moves
    got = changed(c)
    assert set(got) == {2}
    assert got[2].tx_delta == 1  # taken with the delete: reported now, not lost
    assert sorted(flows.deleted) == sorted([key(1), key(2)])
    assert flows.entries == {}


def test_evictions_are_counted_not_hidden() -> None:
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    for port in range(1, 6):
        flows.entries[key(port)] = value(port, 0)
    inserted(tool, 5)
    c = collector(tool, max_entries=8)
    changed(c)
    stats = c.stats()
    assert (stats.flows_in_map, stats.flows_evicted, stats.map_fill) == (5, 0, 5 / 8)
    # The kernel's LRU dropped two flows to make room for three new ones.
    del flows.entries[key(1)], flows.entries[key(2)]
    for port in range(6, 9):
        flows.entries[key(port)] = value(port, 0)
    inserted(tool, 8)
    assert sorted(changed(c)) == [6, 7, 8]
    stats = c.stats()
    assert (stats.flows_in_map, stats.flows_tracked, stats.flows_evicted) == (6, 6, 2)
    assert {r.lport for r in c.snapshot()} == set(range(3, 9))


def test_the_table_is_read_per_key_when_asked() -> None:
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    flows.entries[key(1)] = value(1, 1)
    calls: list[str] = []
    flows.items_per_key = lambda: calls.append("per-key") or list(flows.entries.items())  # type: ignore[method-assign]
    c = collector(tool, drain="per-key")
    assert list(changed(c)) == [1]
    assert calls == ["per-key"]


def test_key_layout_matches_the_kernel_struct() -> None:
    assert ctypes.sizeof(FlowKeyC) == len(key(1)) == 56


def test_connections_closed_before_a_poll_saw_them_fold_into_one_record() -> None:
    """Churn: 50 short connections from ephemeral ports to one service, and
    one seen open first: the short ones leave the table and become one
    record (client port 0) with their sums; the other stays a flow."""
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    inserted(tool, 51)
    flows.entries[key(40000)] = value(1, 1)  # open at the first poll
    c = collector(tool, fold_closed=True)
    changed(c)
    for port in range(50000, 50050):
        flows.entries[key(port)] = value(100, 10, closed_ns=4_001_000)  # 4 ms each
    out = flows_of(c.poll())
    [agg] = [r for r in out if r.folded]
    assert (agg.lport, agg.rport, agg.direction, agg.state) == (0, 443, "active", "CLOSE")
    assert (agg.folded, agg.tx_delta, agg.rx_delta, agg.tx_bytes) == (50, 5000, 500, 5000)
    assert (agg.folded_durations, agg.folded_duration_ms_sum, agg.folded_duration_ms_max) == (
        50,
        200,
        4,
    )
    assert set(flows.entries) == {key(40000)}  # every short one left the kernel table
    assert [r.lport for r in c.snapshot()] == [40000]  # and none is tracked
    s = c.stats()
    assert (s.flows_folded, s.flows_removed, s.flows_evicted) == (50, 50, 0)
    # the next poll: nothing new, nothing reported again
    assert [r for r in flows_of(c.poll()) if r.folded] == []


def test_without_folding_every_connection_is_a_flow() -> None:
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    for port in range(50000, 50005):
        flows.entries[key(port)] = value(100, 10, closed_ns=4_001_000)
    c = collector(tool)
    assert sorted(changed(c)) == list(range(50000, 50005))


def test_a_few_short_connections_per_poll_stay_flows_of_their_own() -> None:
    """Below ``fold_at`` a poll keeps short connections one by one (with
    their client port); at it, it folds them."""
    tool = FakeTool()
    flows = tool.obj.maps[FLOW_MAP]
    c = collector(tool, fold_closed=True, fold_at=10)
    for port in range(50000, 50009):
        flows.entries[key(port)] = value(100, 10, closed_ns=4_001_000)
    assert sorted(changed(c)) == list(range(50000, 50009))
    assert c.stats().flows_folded == 0
    time.sleep(0.001)
    changed(c)  # reported: deleted now
    for port in range(51000, 51010):
        flows.entries[key(port)] = value(100, 10, closed_ns=4_001_000)
    [agg] = flows_of(c.poll())
    assert (agg.lport, agg.folded) == (0, 10)
    assert flows.entries == {}
