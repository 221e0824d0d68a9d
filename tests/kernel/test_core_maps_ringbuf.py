"""Ring buffer delivery, drop counting and batch map operations on the
real kernel, through the self-test tool."""

from __future__ import annotations

import ctypes
import os
import random

import pytest

from bpfscope import features, selftest
from bpfscope import libbpf as bpf
from bpfscope.features import Mechanism
from bpfscope.ladder import LadderError
from bpfscope.selftest import SelftestEvent, SelftestKey, SelftestValue

pytestmark = pytest.mark.kernel


def test_ring_buffer_delivers_every_event_of_a_burst() -> None:
    r = selftest.run(2000)
    assert r.events_received == 2000
    assert r.calls_counted == 2000
    assert r.dropped == 0
    assert r.in_order


def test_ring_buffer_overflow_is_counted_not_lost() -> None:
    """20k events into a 256 KiB ring without consuming: whatever does not
    fit is counted as dropped, and received + dropped == sent."""
    sent = 20_000
    with selftest.load() as tool:
        seen: list[SelftestEvent] = []
        ring = bpf.RingBuffer(
            tool.obj.map("selftest_events"),
            lambda raw: seen.append(SelftestEvent.from_buffer_copy(raw)),
        )
        with ring:
            features._raw_getpid(sent)
            ring.consume()
        dropped = tool.obj.map("selftest_events_dropped").sum_percpu_u64(bytes(4))
    assert dropped > 0
    assert len(seen) + dropped == sent
    assert all(e.tgid == os.getpid() and e.flags == 1 for e in seen)
    assert seen[0].comm  # bpf_get_current_comm filled it


def test_ring_buffer_callback_exception_propagates() -> None:
    with selftest.load() as tool:

        def bad(_raw: bytes) -> None:
            raise ValueError("callback failed")

        with bpf.RingBuffer(tool.obj.map("selftest_events"), bad) as ring:
            features._raw_getpid(3)
            with pytest.raises(ValueError, match="callback failed"):
                ring.poll(100)


def test_poll_times_out_with_nothing_to_read() -> None:
    with (
        selftest.load() as tool,
        bpf.RingBuffer(tool.obj.map("selftest_events"), lambda raw: None) as ring,
    ):
        assert ring.poll(10) == 0


def _fill(m: bpf.Map, n: int) -> dict[bytes, bytes]:
    rng = random.Random(7)
    expected = {}
    for i in range(n):
        key = bytes(SelftestKey(tgid=i, port=rng.randrange(65536), family=2))
        value = bytes(SelftestValue(packets=i, bytes=rng.randrange(1 << 40)))
        m.update(key, value)
        expected[key] = value
    return expected


def test_batch_lookup_returns_exactly_what_per_key_lookup_returns() -> None:
    with selftest.load() as tool:
        flows = tool.obj.map("selftest_flows")
        expected = _fill(flows, 10_000)
        batch = flows.lookup_batch(chunk=512)
        assert flows.batch_supported is True
        assert dict(batch) == dict(flows.items_per_key()) == expected
        assert len(batch) == 10_000  # no duplicates across chunks


def test_lookup_and_delete_batch_drains_the_map() -> None:
    with selftest.load() as tool:
        flows = tool.obj.map("selftest_flows")
        expected = _fill(flows, 3000)
        drained = flows.lookup_and_delete_batch(chunk=256)
        assert dict(drained) == expected
        assert list(flows.keys()) == []


def test_take_returns_the_value_it_deletes() -> None:
    """Map.take: one lookup-and-delete where the kernel has it (hash maps,
    5.14+), else read then delete; the value comes back, the key is gone."""
    with selftest.load() as tool:
        flows = tool.obj.map("selftest_flows")
        expected = _fill(flows, 50)
        ops = [flows.lookup_and_delete] if bpf.have_lookup_and_delete() else []
        for take in [flows.take, *ops]:
            key = next(iter(expected))
            assert take(key) == expected.pop(key)
            assert flows.lookup(key) is None
            assert take(key) is None
        assert dict(flows.lookup_batch()) == expected


def test_per_key_fallback_gives_the_same_answer() -> None:
    with selftest.load() as tool:
        flows = tool.obj.map("selftest_flows")
        expected = _fill(flows, 500)
        flows.batch_supported = False  # as on a kernel without batch ops
        assert dict(flows.lookup_batch()) == expected
        assert dict(flows.lookup_and_delete_batch()) == expected
        assert list(flows.keys()) == []


def test_percpu_values_sum_and_split() -> None:
    with selftest.load() as tool:
        calls = tool.obj.map("selftest_calls")
        features._raw_getpid(25)
        per_cpu = calls.lookup_percpu(bytes(4))
        assert per_cpu is not None
        assert len(per_cpu) == bpf.num_possible_cpus()
        assert sum(int.from_bytes(v, "little") for v in per_cpu) == 25
        assert calls.sum_percpu_u64(bytes(4)) == 25
        [(key, raw)] = calls.lookup_batch()
        assert key == bytes(4)
        assert sum(int.from_bytes(v, "little") for v in calls.split_percpu(raw)) == 25


def test_standalone_map_update_delete() -> None:
    with bpf.create_map(bpf.MapType.HASH, 4, 8, 16, "t_standalone") as m:
        k = ctypes.c_uint32(5)
        m.update(k, ctypes.c_uint64(9))
        assert m.lookup(k) == bytes(ctypes.c_uint64(9))
        assert m.delete(k) is True
        assert m.delete(k) is False
        assert m.lookup(k) is None
        with pytest.raises(ValueError, match="key is 2 bytes"):
            m.lookup(b"ab")


@pytest.mark.parametrize("kind", [bpf.MapType.HASH, bpf.MapType.LRU_HASH])
def test_delete_batch_deletes_the_keys_given_and_skips_missing_ones(kind: int) -> None:
    """The collector deletes short connections' flows in one batch; a key
    evicted meanwhile must not stop the batch."""
    with bpf.create_map(kind, 4, 8, 4096, "t_delbatch") as m:
        for i in range(1000):
            m.update(ctypes.c_uint32(i), ctypes.c_uint64(i))
        doomed = [bytes(ctypes.c_uint32(i)) for i in range(0, 1000, 2)]
        doomed.insert(100, bytes(ctypes.c_uint32(5000)))  # never there
        doomed.append(bytes(ctypes.c_uint32(6000)))
        assert m.delete_batch(doomed) == 500
        left = sorted(int.from_bytes(k, "little") for k, _ in m.items_per_key())
        assert left == list(range(1, 1000, 2))
        assert m.delete_batch([]) == 0


def test_ladder_picks_first_available_rung_and_force_works() -> None:
    order = [r.mechanism for r in selftest.hooks()[0].rungs]
    assert order[0] is Mechanism.FENTRY  # fentry is listed first
    expected = next(m for m in order if features.probe(m).available and m is not Mechanism.KPROBE)
    with selftest.load() as tool:
        rung = tool.rung("getpid")
        assert rung is not None
        assert rung.mechanism is expected
    for m in (Mechanism.RAW_TP, Mechanism.TRACEPOINT, Mechanism.TP_BTF):
        if features.probe(m).available:
            r = selftest.run(300, force=m)
            assert r.mechanism == str(m)
            assert r.ok, r


def test_forcing_an_unavailable_rung_says_why() -> None:
    unavailable = [
        m for m in (Mechanism.FENTRY, Mechanism.KPROBE) if not features.probe(m).available
    ]
    if not unavailable:
        pytest.skip("fentry and kprobe both work on this kernel: nothing to refuse")
    m = unavailable[0]
    with pytest.raises(LadderError, match=f"--attach {m}") as info:
        selftest.load(force=m)
    assert features.probe(m).detail in str(info.value)


def test_globals_are_frozen_after_load() -> None:
    with selftest.load() as tool, pytest.raises(RuntimeError, match="frozen"):
        tool.obj.rodata["target_tgid"] = 1
