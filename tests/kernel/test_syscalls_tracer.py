"""The syscall tracer on the real kernel: exact counts for a known workload,
in the default counts mode (sys_exit alone) and with latency (-L)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bpfscope import libbpf as bpf
from bpfscope.bench.references import SYSCALLS as REFERENCES
from bpfscope.bench.references import load_reference
from bpfscope.features import Mechanism
from bpfscope.objects import object_bytes
from bpfscope.syscalls.collector import SyscallCollector
from bpfscope.syscalls.programs import (
    CountsValue,
    ErrnoKey,
    StatsKey,
    StatsValue,
    SyscallFilter,
    default_max_entries,
    load,
    stats_map,
    table_copies,
)
from bpfscope.syscalls.records import Snapshot, SyscallStat, bucket_of
from bpfscope.sysnames import syscall_nr
from kernel_require import require

pytestmark = pytest.mark.kernel

CLOSE_BAD = 1234  # close(-1) -> EBADF
GETPPID = 777
DUP_BAD = 55  # dup(-1) -> EBADF as well, on another syscall
SLEEP_NS = 20_000_000

# The child says "ready" once started (interpreter start-up makes calls of
# its own), waits on stdin until the tracer is attached, makes its calls
# through raw syscall(2), then waits again so that it is alive at the poll.
CHILD = textwrap.dedent(
    f"""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    ts = (ctypes.c_long * 2)(0, {SLEEP_NS})
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range({CLOSE_BAD}):
        libc.syscall({syscall_nr("close")}, -1)
    for _ in range({GETPPID}):
        libc.syscall({syscall_nr("getppid")})
    for _ in range({DUP_BAD}):
        libc.syscall({syscall_nr("dup")}, -1)
    libc.syscall({syscall_nr("nanosleep")}, ctypes.byref(ts), None)
    print("done", flush=True)
    sys.stdin.readline()
    """
)


def _run_child(
    collector: SyscallCollector,
    alongside: Callable[[], object] | None = None,
    script: str = CHILD,
) -> tuple[int, Snapshot]:
    """Run ``script``'s calls (CHILD's by default) between two polls;
    ``alongside`` runs while it makes them (and may poll)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin
        assert child.stdout
        assert child.stdout.readline().strip() == "ready"
        collector.poll()  # forget everything before the workload
        child.stdin.write("go\n")
        child.stdin.flush()
        if alongside:
            alongside()
        assert child.stdout.readline().strip() == "done"
        snap = collector.poll()
        child.stdin.write("bye\n")
        child.stdin.flush()
    finally:
        child.wait(timeout=10)
    return child.pid, snap


def _rows_in(collector: SyscallCollector, table: str) -> list[tuple[bytes, bytes]]:
    """The rows both copies of ``table`` hold now."""
    obj = collector.tool.obj
    return [row for name in table_copies(table) for row in obj.map(name).lookup_batch()]


def _record_taken(collector: SyscallCollector, table: str) -> list[tuple[bytes, bytes]]:
    """From now on, every row a poll takes from either copy of ``table``."""
    taken: list[tuple[bytes, bytes]] = []
    for name in table_copies(table):
        m = collector.tool.obj.map(name)

        def drain(
            chunk: int = 4096,
            real: Callable[..., list[tuple[bytes, bytes]]] = m.lookup_and_delete_batch,
        ) -> list[tuple[bytes, bytes]]:
            rows = real(chunk)
            taken.extend(rows)
            return rows

        m.lookup_and_delete_batch = drain  # type: ignore[method-assign]
    return taken


def _stat(snap: Snapshot, pid: int, name: str) -> SyscallStat:
    found = [s for s in snap.stats if s.tgid == pid and s.syscall == name]
    assert len(found) == 1, f"{name} of {pid}: {found}"
    return found[0]


def _errnos(snap: Snapshot, pid: int) -> dict[tuple[str, str], int]:
    return {(e.syscall, e.errno): e.count for e in snap.errnos if e.tgid == pid}


RUNGS = ["tp_btf", "raw_tp", "tracepoint"]


@pytest.mark.parametrize("mechanism", RUNGS)
def test_latency_mode_exact_counts_errors_and_latency(mechanism: str) -> None:
    """-L: both hooks; every call timed, the sleep in its log2 bucket."""
    require(mechanism)
    with SyscallCollector(latency=True, force=Mechanism(mechanism)) as collector:
        assert collector.mechanism == f"sys_enter={mechanism}, sys_exit={mechanism}"
        pid, snap = _run_child(collector)
    assert snap.latency

    close = _stat(snap, pid, "close")
    assert (close.count, close.errors) == (CLOSE_BAD, CLOSE_BAD)
    assert sum(close.hist) == CLOSE_BAD
    getppid = _stat(snap, pid, "getppid")
    assert (getppid.count, getppid.errors) == (GETPPID, 0)
    dup = _stat(snap, pid, "dup")
    assert (dup.count, dup.errors) == (DUP_BAD, DUP_BAD)
    errnos = _errnos(snap, pid)
    assert errnos[("close", "EBADF")] == CLOSE_BAD
    assert errnos[("dup", "EBADF")] == DUP_BAD
    assert ("getppid", "EBADF") not in errnos

    sleep = _stat(snap, pid, "nanosleep")
    assert sleep.count == 1
    # 20 ms: slot 24 covers [16.8 ms, 33.6 ms); the sleep cannot be shorter.
    assert sleep.hist[bucket_of(SLEEP_NS)] == 1 == sum(sleep.hist)
    assert bucket_of(SLEEP_NS) == 24
    assert SLEEP_NS <= sleep.total_ns < 2**25
    assert snap.drops.total == 0


@pytest.mark.parametrize("mechanism", RUNGS)
def test_default_counts_mode_counts_exactly_on_one_hook(mechanism: str) -> None:
    """The default: sys_exit alone, the number read from the registers
    (tp_btf: typed pointer; raw_tp: CO-RE read; tracepoint: its id field)."""
    require(mechanism)
    with SyscallCollector(force=Mechanism(mechanism)) as collector:
        assert collector.mechanism == f"sys_exit={mechanism}"
        pid, snap = _run_child(collector)
    assert not snap.latency
    close = _stat(snap, pid, "close")
    assert (close.count, close.errors) == (CLOSE_BAD, CLOSE_BAD)
    assert sum(close.hist) == 0  # not timed in this mode
    assert close.total_ns == 0
    assert "latency_log2_ns" not in snap.to_json()["stats"][0]
    getppid = _stat(snap, pid, "getppid")
    assert (getppid.count, getppid.errors) == (GETPPID, 0)
    dup = _stat(snap, pid, "dup")
    assert (dup.count, dup.errors) == (DUP_BAD, DUP_BAD)
    assert _errnos(snap, pid)[("close", "EBADF")] == CLOSE_BAD
    assert _stat(snap, pid, "nanosleep").count == 1
    assert snap.drops.total == 0
    assert collector.totals.hist == {}
    assert collector.totals.count["getppid"] >= GETPPID


# The filters are checked separately on each mode's entry point.
MODES = [pytest.param(False, id="counts"), pytest.param(True, id="latency")]


@pytest.mark.parametrize("latency", MODES)
def test_pid_filter_failed_only_and_syscall_set(latency: bool) -> None:
    """Only the child's failed close() calls: everything else filtered in the kernel."""
    require("tp_btf")
    # The filter needs the pid before load: start the child first.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        flt = SyscallFilter(
            tgid=child.pid,
            syscalls=frozenset({syscall_nr("close"), syscall_nr("getppid")}),
            failed_only=True,
        )
        assert child.stdin
        assert child.stdout
        assert child.stdout.readline().strip() == "ready"
        with SyscallCollector(flt, latency=latency) as collector:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "done"
            snap = collector.poll()
            child.stdin.write("bye\n")
            child.stdin.flush()
    finally:
        child.wait(timeout=10)
    assert {(s.tgid, s.syscall, s.count, s.errors) for s in snap.stats} == {
        (child.pid, "close", CLOSE_BAD, CLOSE_BAD)
    }
    assert _errnos(snap, child.pid) == {("close", "EBADF"): CLOSE_BAD}


@pytest.mark.parametrize("latency", MODES)
def test_comm_filter_counts_only_matching_commands(latency: bool) -> None:
    require("tp_btf")
    nr = syscall_nr("getppid")
    libc = ctypes.CDLL(None, use_errno=True)
    # Only commands starting with "no-such-comm": this process is not one.
    with SyscallCollector(SyscallFilter(comm="no-such-comm"), latency=latency) as collector:
        for _ in range(100):
            libc.syscall(nr)
        assert [s for s in collector.poll().stats if s.tgid == os.getpid()] == []
    me = Path("/proc/self/comm").read_text().strip()
    flt = SyscallFilter(comm=me[:4], syscalls=frozenset({nr}))
    with SyscallCollector(flt, latency=latency) as collector:
        collector.poll()
        for _ in range(100):
            libc.syscall(nr)
        mine = [s for s in collector.poll().stats if s.tgid == os.getpid()]
    assert [(s.syscall, s.count) for s in mine] == [("getppid", 100)]


@pytest.mark.parametrize("latency", MODES)
def test_cgroup_filter_excludes_other_cgroups(latency: bool) -> None:
    require("tp_btf")
    libc = ctypes.CDLL(None, use_errno=True)
    nr = syscall_nr("getppid")
    # An id no cgroup has: nothing may be counted.
    with SyscallCollector(SyscallFilter(cgroup_id=1 << 62), latency=latency) as collector:
        for _ in range(50):
            libc.syscall(nr)
        assert collector.poll().stats == ()


def test_exited_process_entries_are_deleted_after_their_last_read() -> None:
    require("tp_btf")
    with SyscallCollector() as collector:
        pid, snap = _run_child(collector)  # child exits after this
        assert _stat(snap, pid, "close").count == CLOSE_BAD
        collector.poll()  # its last calls (after "done"): read, and gone from the maps
        pids = {int.from_bytes(k[:4], "little") for k, _ in _rows_in(collector, "syscalls_counts")}
        assert pid not in pids
        # Deltas stay right for everyone else: no negative or repeated counts.
        assert all(s.count > 0 for s in collector.poll().stats)


PER_THREAD = 5000

# Two threads, pinned to CPUs 0 and 1, each make PER_THREAD close(-1).
THREADS_CHILD = textwrap.dedent(
    f"""
    import ctypes, os, sys, threading
    libc = ctypes.CDLL(None, use_errno=True)
    go = threading.Barrier(2)
    def calls(cpu):
        os.sched_setaffinity(0, {{cpu}})  # this thread only
        go.wait()
        for _ in range({PER_THREAD}):
            libc.syscall({syscall_nr("close")}, -1)
    print("ready", flush=True)
    sys.stdin.readline()
    threads = [threading.Thread(target=calls, args=(cpu,)) for cpu in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.parametrize("latency", MODES)
def test_threads_on_two_cpus_are_one_row(latency: bool) -> None:
    """The kernel keeps a row per CPU (each written by its CPU alone, no
    atomics); the collector reports one (process, syscall) record, and one
    (process, syscall, errno) record, with every call of both threads."""
    require("tp_btf")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")
    with SyscallCollector(latency=latency) as collector:
        taken = _record_taken(collector, stats_map(latency))
        taken_err = _record_taken(collector, "syscalls_errnos")

        def forget_startup() -> None:  # what the first poll took, before "go"
            taken.clear()
            taken_err.clear()

        pid, snap = _run_child(collector, forget_startup, script=THREADS_CHILD)
        # The rows the poll after the threads' calls took: one per CPU.
        close = syscall_nr("close")
        rows = {
            (k.tgid, k.nr, k.cpu): v.errors  # count also has start-up's closes
            for k, v in (
                (
                    StatsKey.from_buffer_copy(k),
                    (StatsValue if latency else CountsValue).from_buffer_copy(v),
                )
                for k, v in taken
            )
            if k.tgid == pid and k.nr == close and v.errors
        }
        errno_cpus = {
            ErrnoKey.from_buffer_copy(k).cpu
            for k, _ in taken_err
            if (ErrnoKey.from_buffer_copy(k).tgid, ErrnoKey.from_buffer_copy(k).nr) == (pid, close)
        }
    stat = _stat(snap, pid, "close")
    assert (stat.count, stat.errors) == (2 * PER_THREAD, 2 * PER_THREAD)
    if latency:
        assert sum(stat.hist) == 2 * PER_THREAD
    assert _errnos(snap, pid)[("close", "EBADF")] == 2 * PER_THREAD
    assert [e.errno for e in snap.errnos if e.tgid == pid and e.syscall == "close"] == ["EBADF"]
    assert set(rows) == {(pid, close, 0), (pid, close, 1)}
    assert sorted(rows.values()) == [PER_THREAD, PER_THREAD]
    assert errno_cpus == {0, 1}


def test_struct_layouts_match_btf() -> None:
    from bpfscope.syscalls.programs import Inflight

    with bpf.BpfObject.open_bytes(object_bytes("syscalls"), name="syscalls") as obj:
        btf = obj.btf()
        assert btf is not None
        for name, mirror in (
            ("syscalls_key", StatsKey),
            ("syscalls_counts", CountsValue),
            ("syscalls_stats", StatsValue),
            ("syscalls_errno_key", ErrnoKey),
            ("syscalls_inflight", Inflight),
        ):
            size, fields = btf.struct_layout(name)
            assert size == ctypes.sizeof(mirror), name
            assert fields == {
                f[0]: (getattr(mirror, f[0]).offset, getattr(mirror, f[0]).size)
                for f in mirror._fields_
            }, name


BPF_F_NO_PREALLOC = 1


@pytest.mark.parametrize("latency", MODES)
def test_maps_are_not_preallocated_and_only_the_modes_map_is_sized(latency: bool) -> None:
    """Memory follows live entries: no per-CPU hash is preallocated, and the
    other mode's (process, syscall) map has a single entry."""
    require("tp_btf")
    with load(latency=latency) as tool:
        tables = ("syscalls_counts", "syscalls_stats", "syscalls_errnos")
        info = {
            name: bpf.map_details_from_fd(tool.obj.map(copy).fd)
            for name in tables
            for copy in table_copies(name)[:1]
        }
        # the second copy of each table is the first's twin
        for name in tables:
            first, second = (
                bpf.map_details_from_fd(tool.obj.map(c).fd) for c in table_copies(name)
            )
            assert (second.max_entries, second.value_size, second.map_flags) == (
                first.max_entries,
                first.value_size,
                first.map_flags,
            )
    ours, other = ("syscalls_stats", "syscalls_counts")[:: 1 if latency else -1]
    assert info[ours].max_entries == default_max_entries(latency=latency)
    assert info[other].max_entries == 1
    assert info["syscalls_errnos"].max_entries == default_max_entries(latency=latency) // 4
    assert info["syscalls_counts"].value_size == 32
    assert info["syscalls_stats"].value_size == 360
    assert all(i.map_flags & BPF_F_NO_PREALLOC for i in info.values())


TRUE = "/bin/true"
CHURN = 1000  # short processes, each a few dozen syscalls (dynamic loading)


def _churn(n: int, pids: list[int]) -> None:
    for _ in range(n):
        pid = os.posix_spawn(TRUE, [TRUE], {})
        pids.append(pid)
        os.waitpid(pid, 0)


def test_process_churn_with_defaults_drops_nothing() -> None:
    """1,000 short processes, as fast as they can be spawned, polled every
    second like the agent: every one is counted, named by its own command,
    no call is dropped, and a marker process's counts are exact."""
    require("tp_btf")
    spawned: list[int] = []
    snaps: list[Snapshot] = []

    def churn_and_poll() -> None:
        churn = threading.Thread(target=_churn, args=(CHURN, spawned))
        churn.start()
        while churn.is_alive():
            churn.join(timeout=1.0)
            snaps.append(collector.poll())

    with SyscallCollector() as collector:
        marker, last = _run_child(collector, churn_and_poll)
        snaps.append(last)
        snaps.append(collector.poll())  # every spawned process gone: entries deleted
        left = {int.from_bytes(k[:4], "little") for k, _ in _rows_in(collector, "syscalls_counts")}
    assert len(spawned) == CHURN
    assert len(snaps) >= 3
    drops = snaps[-1].drops
    assert (drops.stats_full, drops.errnos_full) == (0, 0)

    def total(pid: int, name: str) -> tuple[int, int]:
        rows = [s for snap in snaps for s in snap.stats if s.tgid == pid and s.syscall == name]
        return sum(s.count for s in rows), sum(s.errors for s in rows)

    assert total(marker, "getppid") == (GETPPID, 0)
    assert total(marker, "close") == (CLOSE_BAD, CLOSE_BAD)
    assert total(marker, "dup") == (DUP_BAD, DUP_BAD)
    assert (
        sum(
            e.count
            for snap in snaps
            for e in snap.errnos
            if e.tgid == marker and (e.syscall, e.errno) == ("close", "EBADF")
        )
        == CLOSE_BAD
    )
    # Every short process was counted (its execve at least), under its own
    # name on every row, though its first calls were made as our command.
    rows = [s for snap in snaps for s in snap.stats if s.tgid in set(spawned)]
    assert {s.tgid for s in rows} == set(spawned)
    assert {s.tgid for s in rows if s.syscall == "execve" and s.count > s.errors} == set(spawned)
    assert {s.comm for s in rows} == {"true"}
    assert not left & set(spawned)


def test_an_over_small_map_counts_its_drops() -> None:
    """--max-entries 64: the map fills at once on a busy host; the calls it
    cannot hold are counted as drops, in the snapshot and its JSON."""
    require("tp_btf")
    with SyscallCollector(max_entries=64) as collector:
        assert (
            bpf.map_details_from_fd(collector.tool.obj.map("syscalls_counts").fd).max_entries == 64
        )
        _churn(20, [])  # 20 processes x a few dozen (process, syscall) pairs
        snap = collector.poll()
    assert len(snap.stats) <= 64
    assert snap.drops.stats_full > 0
    assert snap.to_json()["drops"]["stats_full"] == snap.drops.stats_full


@pytest.mark.parametrize(("latency", "programs"), [(False, 1), (True, 2)])
def test_nothing_stays_attached(latency: bool, programs: int) -> None:
    require("tp_btf")
    with load(latency=latency) as tool:
        loaded = {name for name, p in tool.obj.programs.items() if p.autoload}
        assert loaded == (
            {"sys_enter_btf", "sys_exit_btf"} if latency else {"count_exit_btf"}
        )  # never the benchmark's references
        ours = {tool.obj.program(name).info().id for name in loaded}
        assert len(ours) == programs
        links = {
            i for i in bpf.link_ids() if (info := bpf.link_info_by_id(i)) and info.prog_id in ours
        }
        assert len(links) == programs
    assert not links & set(bpf.link_ids())
    # Programs are freed after an RCU grace period: give them a moment.
    deadline = time.monotonic() + 5
    while ours & set(bpf.prog_ids()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours & set(bpf.prog_ids())


@pytest.mark.parametrize("mechanism", RUNGS)
@pytest.mark.parametrize(("reference", "hooks"), [("empty", 2), ("empty_exit", 1), ("clock", 2)])
def test_benchmark_references_load_on_every_rung(
    mechanism: str, reference: str, hooks: int
) -> None:
    """The bench's references (empty programs, clock reads only) are
    accepted and attached on each rung."""
    require(mechanism)
    assert set(REFERENCES) == {"empty", "empty_exit", "clock"}
    with load_reference(reference, force=Mechanism(mechanism)) as tool:
        chosen = [c.rung.mechanism for c in tool.choices if c.rung]
        assert chosen == [Mechanism(mechanism)] * hooks


# A live child: a burst of getppid, a pause while the collector polls, another burst.
IDLE_CHILD = textwrap.dedent(
    f"""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    print("ready", flush=True)
    for burst in (300, 7):
        sys.stdin.readline()
        for _ in range(burst):
            libc.syscall({syscall_nr("getppid")})
        print("done", flush=True)
    sys.stdin.readline()
    """
)


def test_rows_of_a_live_process_are_emptied_each_poll_and_count_from_zero() -> None:
    require("tp_btf")
    child = subprocess.Popen(
        [sys.executable, "-c", IDLE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin
    assert child.stdout
    nr = syscall_nr("getppid")

    def rows() -> int:
        return sum(
            1
            for k, _ in _rows_in(collector, "syscalls_counts")
            if int.from_bytes(k[:4], "little") == child.pid
            and int.from_bytes(k[4:8], "little") == nr
        )

    def burst() -> Snapshot:
        assert child.stdin
        assert child.stdout
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        return collector.poll()

    try:
        with SyscallCollector(SyscallFilter(tgid=child.pid)) as collector:
            assert child.stdout.readline().strip() == "ready"
            collector.poll()
            assert _stat(burst(), child.pid, "getppid").count == 300
            assert rows() == 0  # the poll took them; the child is alive and idle
            assert collector.poll().stats == ()
            # its next calls recreate the row, counted from zero
            assert _stat(burst(), child.pid, "getppid").count == 7
    finally:
        child.stdin.write("bye\n")
        child.stdin.flush()
        child.wait(timeout=10)
