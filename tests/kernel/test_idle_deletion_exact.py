"""Rows deleted while they are being updated: what is left of the race.

Threads update rows as fast as they can, in bursts that move from row to
row, while the collector polls back to back with the smallest idle timeout:
rows are deleted all the time, often just as a thread comes back to them.
Read-then-delete loses the updates landing between the two steps: measured
here, 0.2-0.3 % of all calls and bytes. Lookup-and-delete leaves one window,
a program that looked the row up just before the delete and adds just after
(programs update values in place): measured, 0 to 6 calls in ~500,000 and
0 to 11 bytes in ~7 MB. So the totals may fall short by at most 1 in
10,000 (well under the read-then-delete loss, well over what was seen), and
never exceed what was made: nothing is counted twice.

(Where the kernel lacks lookup-and-delete the collectors read, then delete:
these tests skip there.)
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from bpfscope import libbpf as bpf
from bpfscope.flows import FlowCollector, FlowRecord, KernelFilter
from bpfscope.syscalls import collector as syscalls_collector
from bpfscope.syscalls.collector import SyscallCollector
from bpfscope.syscalls.programs import SyscallFilter
from bpfscope.sysnames import syscall_nr
from kernel_require import require

pytestmark = pytest.mark.kernel

RUN_S = 3.0
MAX_LOSS = 1e-4  # of the total: see the module's docstring
THREADS = 3
BURST = 40  # calls on one row before the thread moves to the next

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _counted(m: bpf.Map) -> list[int]:
    """Count the rows the collector deletes from ``m`` (the real map)."""
    taken = [0]
    real = m.take

    def take(key: object) -> bytes | None:
        taken[0] += 1
        return real(key)

    m.take = take  # type: ignore[method-assign]
    return taken


def _race(work: Callable[[int, threading.Event], None], poll: Callable[[], None]) -> None:
    """Run ``work(i, stop)`` in THREADS threads for RUN_S seconds while
    polling back to back; then poll until everything left is read."""
    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(i, stop)) for i in range(THREADS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            poll()
    finally:
        stop.set()
        for t in threads:
            t.join()
    for _ in range(3):  # the rows left: read, then idle and deleted
        poll()


def test_syscall_rows_deleted_while_counted_lose_at_most_a_program_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require("tp_btf")
    if not bpf.have_lookup_and_delete():
        pytest.skip("no BPF_MAP_LOOKUP_AND_DELETE_ELEM for hash maps here (Linux 5.14+)")
    # the smallest idle timeout: a row read unchanged once is deleted
    monkeypatch.setattr(syscalls_collector, "IDLE_POLLS", 1)
    names = ("getppid", "getuid", "getgid", "geteuid", "getegid", "dup")
    nrs = [syscall_nr(n) for n in names]
    made = [[0] * len(nrs) for _ in range(THREADS)]

    def work(i: int, stop: threading.Event) -> None:
        mine = made[i]
        j = i
        while not stop.is_set():
            j = (j + 1) % len(nrs)
            nr = nrs[j]
            for _ in range(BURST):
                libc.syscall(nr, -1)  # dup(-1) fails with EBADF: an errno row
            mine[j] += BURST

    flt = SyscallFilter(tgid=os.getpid(), syscalls=frozenset(nrs))
    with SyscallCollector(flt) as c:
        taken = _counted(c.tool.obj.map("syscalls_counts"))
        taken_err = _counted(c.tool.obj.map("syscalls_errnos"))
        _race(work, lambda: c.poll())
        expected = {n: sum(t[j] for t in made) for j, n in enumerate(names)}
        got = c.totals.count
        assert set(got) == set(expected)
        assert all(got[n] <= expected[n] for n in names), (got, expected)
        lost = sum(expected.values()) - sum(got.values())
        assert lost <= MAX_LOSS * sum(expected.values()), (lost, got, expected)
        errors = c.totals.errors[("dup", "EBADF")]
        assert expected["dup"] - MAX_LOSS * expected["dup"] <= errors <= expected["dup"]
        assert c.poll().stats == ()  # nothing left
    # the race was run: rows of both maps were deleted many times
    assert taken[0] > 100, taken
    assert taken_err[0] > 10, taken_err


def test_flows_deleted_while_sending_lose_at_most_a_program_run() -> None:
    require("tp_btf")
    if not bpf.have_lookup_and_delete():
        pytest.skip("no BPF_MAP_LOOKUP_AND_DELETE_ELEM for hash maps here (Linux 5.14+)")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))  # never read: the datagrams are dropped, sends count
    port = rx.getsockname()[1]
    sockets_per_thread = 8
    sent = [0] * THREADS

    def work(i: int, stop: threading.Event) -> None:
        socks = []
        for _ in range(sockets_per_thread):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        try:
            j = 0
            while not stop.is_set():
                j = (j + 1) % len(socks)
                s = socks[j]
                for k in range(BURST // 4):
                    sent[i] += s.send(b"x" * (1 + (j * 7 + k) % 97))
        finally:
            for s in socks:
                s.close()

    reported = [0]
    flt = KernelFilter(pid=os.getpid(), port=port)
    with rx, FlowCollector(kernel_filter=flt, idle_timeout=0.0, resolve=False) as c:
        taken = _counted(c.attached.obj.map("flows"))

        def poll() -> None:
            # a record is the collector's live object: take its delta now
            reported[0] += sum(
                r.tx_delta
                for r in c.poll()
                if isinstance(r, FlowRecord) and r.proto == "udp" and r.rport == port
            )

        _race(work, poll)
        assert sum(sent) - MAX_LOSS * sum(sent) <= reported[0] <= sum(sent), (reported, sent)
        assert c.stats().flows_evicted == 0
    assert taken[0] > 100, taken
