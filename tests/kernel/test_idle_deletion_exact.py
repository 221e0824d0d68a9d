"""Rows deleted while they are being updated: what is left of the race.

Threads update rows as fast as they can, in bursts that move from row to
row, while the collector polls back to back: rows are deleted all the time,
often just as a thread comes back to them.

Syscalls: the threads are C threads of one process (race_hammer.c, built
here): Python threads take turns under the GIL, so with them the collector
and the updaters rarely ran at the same instant, and the previous
collector's loss was too rare to show. Every poll switches the programs to
the other copy of the tables, waits for the programs still running on the
old one, then empties it: no window is left, the totals must be exact.
(The previous collector deleted a row idle for IDLE_POLLS polls with
lookup-and-delete; a program that had looked the row up just before the
delete added to a deleted element and its call was lost. Run against that
code, with IDLE_POLLS 1, the exact assertion below fails: see
docs/syscalls.md.)

Flows: an idle flow is still taken with lookup-and-delete. Read-then-delete
loses the updates landing between the two steps: measured here, 0.2-0.3 %
of all bytes. Lookup-and-delete leaves the window above: measured 0 to 11
bytes in ~7 MB. So the total may fall short by at most 1 in 10,000 (well
under the read-then-delete loss, well over what was seen), and never exceed
what was sent: nothing is counted twice. (Where the kernel lacks
lookup-and-delete the flow collector reads, then deletes: that test skips.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bpfscope import libbpf as bpf
from bpfscope.flows import FlowCollector, FlowRecord, KernelFilter
from bpfscope.syscalls import collector as syscalls_collector
from bpfscope.syscalls.collector import SyscallCollector
from bpfscope.syscalls.programs import SyscallFilter
from bpfscope.syscalls.records import Drops
from bpfscope.sysnames import syscall_nr
from kernel_require import require

pytestmark = pytest.mark.kernel

RUN_S = 3.0
MAX_LOSS = 1e-4  # of the total: see the module's docstring
THREADS = 3
BURST = 40  # calls on one row before the thread moves to the next
HAMMER_BURST = 2000  # the C workload's: ~0.3 ms of calls, then a 0-2 ms pause
# The C workload runs longer: against the previous collector a 3 s run lost
# calls in 1 of 3 runs; 8 s gives the race more chances.
HAMMER_RUN_S = 8.0


def _counted(m: bpf.Map, taken: list[int] | None = None) -> list[int]:
    """Count the rows the collector deletes from ``m`` (the real map), one
    by one or drained in batches."""
    taken = taken or [0]
    real, real_drain = m.take, m.lookup_and_delete_batch

    def take(key: object) -> bytes | None:
        taken[0] += 1
        return real(key)

    def drain(chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        rows = real_drain(chunk)
        taken[0] += len(rows)
        return rows

    m.take = take  # type: ignore[method-assign]
    m.lookup_and_delete_batch = drain  # type: ignore[method-assign]
    return taken


def _counted_copies(obj: object, *names: str) -> list[int]:
    """Rows deleted from every map of ``names`` the object has."""
    taken = [0]
    for name in names:
        if name in obj.maps:  # type: ignore[attr-defined]
            _counted(obj.maps[name], taken)  # type: ignore[attr-defined]
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


def _hammer(tmp_path: Path) -> Path:
    """race_hammer.c, compiled: threads of one process making syscalls as
    fast as C can (no GIL between them), in bursts with 0-2 ms pauses."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build the race's workload")
    exe = tmp_path / "race_hammer"
    src = Path(__file__).with_name("race_hammer.c")
    subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
    return exe


def test_syscall_rows_deleted_while_counted_are_counted_exactly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require("tp_btf")
    # the previous collector's smallest idle timeout (a row read unchanged
    # once was deleted), so that this test can be run against it too
    monkeypatch.setattr(syscalls_collector, "IDLE_POLLS", 1, raising=False)
    names = ("getppid", "getuid", "getgid", "geteuid", "getegid", "dup")
    nrs = [syscall_nr(n) for n in names]
    run_ms = int(HAMMER_RUN_S * 1000)
    child = subprocess.Popen(
        [str(_hammer(tmp_path)), str(run_ms), str(THREADS), str(HAMMER_BURST), *map(str, nrs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin
    assert child.stdout
    try:
        assert child.stdout.readline().strip() == "ready"
        flt = SyscallFilter(tgid=child.pid, syscalls=frozenset(nrs))
        with SyscallCollector(flt) as c:
            obj = c.tool.obj
            taken = _counted_copies(obj, "syscalls_counts", "syscalls_count2")
            polls = 0
            child.stdin.write("go\n")
            child.stdin.flush()
            while child.poll() is None:  # back to back while the threads run
                c.poll()
                polls += 1
            for _ in range(3):  # the rows left: read (and deleted)
                c.poll()
            made = dict(line.split() for line in child.stdout.read().split("\n") if line)
            expected = {n: int(made[str(nr)]) for n, nr in zip(names, nrs, strict=True)}
            assert c.totals.count == expected
            assert c.totals.errors == {("dup", "EBADF"): expected["dup"]}
            assert c.drops() == Drops()
    finally:
        child.kill()
        child.wait()
    # the race was run: rows were deleted many times while the threads ran
    assert polls > 100, polls
    assert taken[0] > 100, taken
    assert sum(expected.values()) > 1_000_000, expected


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
