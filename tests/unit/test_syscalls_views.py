"""Syscall tracer, user side without privileges: bucketing, decoding,
aggregation, rendering, argument parsing, and the collector on fake maps."""

from __future__ import annotations

import ctypes
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bpfscope.cli import cli
from bpfscope.clikit import parse_cgroup, validate_pid
from bpfscope.errors import UserError
from bpfscope.syscalls.aggregate import aggregate, aggregate_errnos, grouped_json, top
from bpfscope.syscalls.cli import parse_syscalls
from bpfscope.syscalls.collector import (
    IDLE_POLLS,
    ProcessNames,
    SyscallCollector,
    decode_stats,
    kernel_name,
    name_of,
    sum_percpu,
)
from bpfscope.syscalls.programs import (
    DEFAULT_MAX_ENTRIES,
    HIST_SLOTS,
    CountsValue,
    StatsValue,
    SyscallFilter,
    default_max_entries,
    idle_bytes,
    map_sizes,
    syscall_mask,
)
from bpfscope.syscalls.records import (
    Drops,
    ErrnoStat,
    Snapshot,
    SyscallStat,
    bucket_bounds_ns,
    bucket_of,
)
from bpfscope.syscalls.render import (
    ViewOptions,
    format_ns,
    histogram_lines,
    json_snapshot,
    plain_snapshot,
    rich_snapshot,
)
from bpfscope.sysnames import UnknownSyscall, syscall_nr
from bpfscope.sysnames.errnos import errno_name, errno_number

# -- histogram bucketing ------------------------------------------------------


def _log2_like_kernel(v: int) -> int:
    """Transcription of log2_u64() in syscalls.bpf.c (shift cascade)."""
    r = int(v > 0xFFFFFFFF) << 5
    v >>= r
    for limit, bit in ((0xFFFF, 4), (0xFF, 3), (0xF, 2), (0x3, 1)):
        shift = int(v > limit) << bit
        v >>= shift
        r |= shift
    return r | (v >> 1)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_bucket_of_matches_the_kernel_cascade(ns: int) -> None:
    assert bucket_of(ns) == min(_log2_like_kernel(ns), HIST_SLOTS - 1)


@pytest.mark.parametrize(
    ("ns", "slot"),
    [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (1023, 9), (1024, 10), (20_000_000, 24)],
)
def test_bucket_of_edges(ns: int, slot: int) -> None:
    assert bucket_of(ns) == slot
    low, high = bucket_bounds_ns(slot)
    assert low <= ns
    assert high is None or ns < high


def test_last_bucket_is_open() -> None:
    assert bucket_of(10**15) == HIST_SLOTS - 1
    assert bucket_bounds_ns(HIST_SLOTS - 1) == (1 << (HIST_SLOTS - 1), None)


# -- decoding -----------------------------------------------------------------


def _value(count: int, errors: int, total: int, slot: int, comm: bytes = b"") -> bytes:
    """A latency-mode (syscalls_stats) value: one CPU's row."""
    v = StatsValue(count=count, errors=errors, total_ns=total)
    v.hist[slot] = count
    v.comm = comm
    return bytes(v)


def _counts(count: int, errors: int = 0, comm: bytes = b"") -> bytes:
    """A counts-mode (syscalls_counts) value: one CPU's row."""
    return bytes(CountsValue(count=count, errors=errors, comm=comm))


def test_decode_sums_cpus_per_mode() -> None:
    raw = _value(3, 1, 300, 5) + _value(4, 0, 400, 5, b"worker")
    counters = decode_stats(raw)
    assert counters[:3] == (7, 1, 700)
    assert counters[3 + 5] == 7
    raw = _counts(3, 1, b"bash") + _counts(0) + _counts(4, 2, b"ls")
    assert decode_stats(raw, latency=False) == (7, 3) + (0,) * (1 + HIST_SLOTS)


def test_kernel_name_is_the_program_exec_made_else_the_command_of_most_calls() -> None:
    nr = syscall_nr
    # posix_spawn from Python: 120 rt_sigaction as "python3", then execve
    # (its exit already in the new program, the kernel takes the comm again)
    spawned = [
        (nr("rt_sigaction"), _counts(120, 0, b"python3")),
        (nr("execve"), _counts(1, 0, b"true")),
        (nr("mmap"), _counts(8, 0, b"true")),
    ]
    assert kernel_name(spawned, latency=False) == "true"
    # the same in latency mode's layout
    assert kernel_name([(n, _value(c, 0, 0, 0, b"x")) for n, c in ((1, 5),)]) == "x"
    # a failed execve (ENOENT on a PATH entry) renames nothing
    tried = [(nr("execve"), _counts(1, 1, b"sh")), (nr("read"), _counts(3, 0, b"sh"))]
    assert kernel_name(tried, latency=False) == "sh"
    # no exec: the command that made most calls (a thread's name loses);
    # one row per CPU
    threads = [(nr("read"), _counts(5, 0, b"nginx")), (nr("read"), _counts(2, 0, b"worker"))]
    assert kernel_name(threads, latency=False) == "nginx"
    # exec'd on two CPUs (sh, then exec java): the one that made most calls
    chain = [
        (nr("execve"), _counts(1, 0, b"sh")),
        (nr("execve"), _counts(1, 0, b"java")),
        (nr("futex"), _counts(2, 0, b"sh")),
        (nr("futex"), _counts(500, 0, b"java")),
    ]
    assert kernel_name(chain, latency=False) == "java"
    assert (
        kernel_name([(nr("read"), _counts(2, 0, b"a")), (nr("read"), _counts(2, 0, b"b"))], False)
        == "b"
    )
    assert kernel_name([]) == ""


def test_sum_percpu_rejects_partial_copies() -> None:
    with pytest.raises(ValueError, match="whole copies"):
        sum_percpu(b"\0" * 24, 2)
    assert sum_percpu(struct.pack("=4Q", 1, 2, 3, 4), 2) == (4, 6)


def test_name_of() -> None:
    assert name_of(syscall_nr("openat")) == "openat"
    assert name_of(0xFFFFFFFF) == "invalid(-1)"
    assert name_of(100_000) == "syscall_100000"


def test_errno_names() -> None:
    assert errno_name(9) == "EBADF"
    assert errno_name(11) == "EAGAIN"
    assert errno_name(95) == "EOPNOTSUPP"
    assert errno_name(512) == "ERESTARTSYS"
    assert errno_name(4000) == "E4000"
    assert errno_number("ebadf") == 9


def test_syscall_mask_bits() -> None:
    mask = syscall_mask({0, 63, 64, 511})
    words = struct.unpack("<8Q", mask)
    assert words[0] == 1 | 1 << 63
    assert words[1] == 1
    assert words[7] == 1 << 63
    with pytest.raises(ValueError, match="outside"):
        syscall_mask({512})


# -- aggregation and views ------------------------------------------------------


def _stat(
    tgid: int, comm: str, name: str, count: int, errors: int = 0, slot: int = 8
) -> SyscallStat:
    hist = [0] * HIST_SLOTS
    hist[slot] = count
    return SyscallStat(
        tgid, comm, syscall_nr(name), name, count, errors, count * (1 << slot), tuple(hist)
    )


STATS = (
    _stat(10, "nginx", "read", 500),
    _stat(10, "nginx", "close", 40, errors=40, slot=6),
    _stat(20, "redis", "read", 300, slot=12),
    _stat(20, "redis", "epoll_wait", 5, slot=24),
)
ERRS = (ErrnoStat(10, "nginx", syscall_nr("close"), "close", 9, "EBADF", 40),)


def _snap(latency: bool = True) -> Snapshot:
    mech = "sys_enter=tp_btf, sys_exit=tp_btf" if latency else "sys_exit=tp_btf"
    return Snapshot(1_700_000_000.0, 2.0, STATS, ERRS, Drops(), mech, latency=latency)


def test_aggregate_and_top() -> None:
    by_sys = {s.syscall: s.count for s in aggregate(STATS, "syscall")}
    assert by_sys == {"read": 800, "close": 40, "epoll_wait": 5}
    by_proc = {s.tgid: (s.comm, s.count, s.errors) for s in aggregate(STATS, "process")}
    assert by_proc == {10: ("nginx", 540, 40), 20: ("redis", 305, 0)}
    assert [s.syscall for s in top(aggregate(STATS, "syscall"), 2, "count")] == ["read", "close"]
    assert top(aggregate(STATS, "syscall"), 1, "time")[0].syscall == "epoll_wait"
    assert top(STATS, 1, "errors")[0].syscall == "close"
    assert len(top(STATS, None, "count")) == 4


def test_plain_snapshot_by_syscall() -> None:
    text = plain_snapshot(_snap(latency=False), ViewOptions(by="syscall", top=2))
    lines = text.splitlines()
    assert "845 calls in 2.00s (422/s)" in lines[0]
    assert lines[1].split() == ["SYSCALL", "COUNT", "RATE/s", "ERRORS"]  # nothing timed
    assert lines[2].split() == ["read", "800", "400", "0"]
    assert lines[3].split() == ["close", "40", "20", "40"]
    assert len(lines) == 4


def test_plain_snapshot_with_latency_has_time_columns() -> None:
    text = plain_snapshot(_snap(), ViewOptions(by="syscall", top=2, latency=True))
    lines = text.splitlines()
    assert lines[1].split() == ["SYSCALL", "COUNT", "RATE/s", "ERRORS", "TIME", "MEAN"]
    # 500 x 256 ns + 300 x 4096 ns = 1.36 ms over 800 calls
    assert lines[2].split() == ["read", "800", "400", "0", "1.4ms", "1.7us"]
    assert "latency of read (ns, log2):" in text


def test_plain_snapshot_errnos_and_latency() -> None:
    text = plain_snapshot(_snap(), ViewOptions(by="both", top=None, errnos=True, latency=True))
    assert "PID  COMM   SYSCALL  ERRNO  COUNT" in text
    assert "10   nginx  close    EBADF     40" in text
    assert "latency of redis (20) epoll_wait (ns, log2):" in text
    assert "[16M, 32M)" in text


def test_plain_snapshot_empty() -> None:
    snap = Snapshot(0.0, 1.0, (), (), Drops(stats_full=3, skipped=2), "x")
    text = plain_snapshot(snap, ViewOptions(errnos=True))
    assert "(no calls)" in text
    assert "LOST" in text
    assert "stats map full 3" in text
    assert "skipped by the kernel 2" in text
    assert snap.drops.total == 5
    assert snap.drops.to_json()["skipped"] == 2


def test_histogram_lines() -> None:
    hist = [0] * HIST_SLOTS
    hist[10], hist[12] = 8, 2
    lines = histogram_lines(hist, width=8)
    assert lines == [
        "     [1K, 2K)          8 |@@@@@@@@|",
        "     [2K, 4K)          0 |        |",
        "     [4K, 8K)          2 |@@      |",
    ]
    assert histogram_lines([0] * HIST_SLOTS) == []
    top_slot = [0] * HIST_SLOTS
    top_slot[-1] = 1
    assert "[512G, ...)" in histogram_lines(top_slot)[0]


@pytest.mark.parametrize(
    ("ns", "text"), [(830, "830ns"), (1_200, "1.2us"), (20_100_000, "20.1ms"), (3e9, "3.00s")]
)
def test_format_ns(ns: float, text: str) -> None:
    assert format_ns(ns) == text


def test_json_snapshot_shape_default_mode() -> None:
    out = json_snapshot(_snap(latency=False), ViewOptions(by="process", top=1))
    json.dumps(out)
    assert out["by"] == "process"
    assert out["latency"] is False
    assert "latency_buckets" not in out
    assert out["total_calls"] == 845
    assert out["rows"] == [{"pid": 10, "comm": "nginx", "count": 540, "errors": 40}]
    assert out["errnos"][0]["errno"] == "EBADF"
    assert "syscall" not in out["errnos"][0]


def test_json_snapshot_shape_with_latency() -> None:
    out = json_snapshot(_snap(), ViewOptions(by="process", top=1, latency=True))
    json.dumps(out)
    assert out["latency"] is True
    assert out["latency_buckets"].startswith("slot i counts [2^i, 2^(i+1)) ns")
    assert out["rows"] == [
        {
            "pid": 10,
            "comm": "nginx",
            "count": 540,
            "errors": 40,
            "total_ns": 500 * 256 + 40 * 64,
            "mean_ns": round((500 * 256 + 40 * 64) / 540, 1),
            "latency_log2_ns": out["rows"][0]["latency_log2_ns"],
        }
    ]


def test_json_snapshot_errnos_follow_top_like_the_rows() -> None:
    errs = tuple(
        ErrnoStat(10 + i, "ls", syscall_nr("openat"), "openat", 2, "ENOENT", 5 - i)
        for i in range(4)
    )
    snap = Snapshot(0.0, 1.0, STATS, errs, Drops(), "sys_exit=tp_btf")
    out = json_snapshot(snap, ViewOptions(by="both", top=2))
    assert [(e["pid"], e["count"]) for e in out["errnos"]] == [(10, 5), (11, 4)]
    assert len(json_snapshot(snap, ViewOptions(by="both", top=None))["errnos"]) == 4


@pytest.mark.parametrize("latency", [False, True])
def test_snapshot_to_json_latency_fields_only_when_timed(latency: bool) -> None:
    out = _snap(latency).to_json()
    json.dumps(out)
    assert out["latency"] is latency
    assert ("hist_buckets" in out) is latency
    assert ("latency_log2_ns" in out["stats"][0]) is latency
    assert ("total_ns" in out["stats"][0]) is latency


def test_aggregate_errnos_by_syscall() -> None:
    errs = [*ERRS, ErrnoStat(30, "x", syscall_nr("close"), "close", 9, "EBADF", 2)]
    (one,) = aggregate_errnos(errs, "syscall")
    assert (one.syscall, one.errno, one.count) == ("close", "EBADF", 42)
    assert (one.tgid, one.comm) == (0, "")
    assert grouped_json(one.to_json(), "syscall").keys() == {
        "syscall",
        "nr",
        "errno",
        "err",
        "count",
    }


def test_aggregate_errnos_by_process_keeps_processes_apart() -> None:
    errs = [
        ErrnoStat(10, "nginx", syscall_nr("close"), "close", 9, "EBADF", 40),
        ErrnoStat(10, "nginx", syscall_nr("read"), "read", 9, "EBADF", 3),
        ErrnoStat(30, "x", syscall_nr("close"), "close", 9, "EBADF", 7),
        ErrnoStat(30, "x", syscall_nr("openat"), "openat", 2, "ENOENT", 5),
    ]
    rows = aggregate_errnos(errs, "process")
    assert [(r.tgid, r.errno, r.count) for r in rows] == [
        (10, "EBADF", 43),
        (30, "EBADF", 7),
        (30, "ENOENT", 5),
    ]
    assert all(r.syscall == "" and r.nr == -1 for r in rows)
    assert "syscall" not in grouped_json(rows[0].to_json(), "process")


def test_rich_snapshot_renders() -> None:
    from rich.console import Console

    console = Console(width=120, record=True, force_terminal=False)
    console.print(rich_snapshot(_snap(), ViewOptions(by="both", errnos=True, latency=True)))
    out = console.export_text()
    assert "epoll_wait" in out
    assert "EBADF" in out
    assert "[16M, 32M)" in out


# -- argument parsing -----------------------------------------------------------


def test_parse_syscalls() -> None:
    assert parse_syscalls(["read,write", " openat "]) == {
        syscall_nr("read"),
        syscall_nr("write"),
        syscall_nr("openat"),
    }
    assert parse_syscalls([]) == frozenset()
    with pytest.raises(UnknownSyscall, match="did you mean openat"):
        parse_syscalls(["opnat"])


def test_validate_pid(tmp_path: Path) -> None:
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "status").write_text("Name:\tx\nTgid:\t5\nPid:\t5\n")
    (tmp_path / "6").mkdir()
    (tmp_path / "6" / "status").write_text("Name:\tx\nTgid:\t5\nPid:\t6\n")
    assert validate_pid(5, proc=str(tmp_path)) == 5
    with pytest.raises(UserError, match="thread of process 5") as e:
        validate_pid(6, proc=str(tmp_path))
    assert e.value.exit_code == 2
    with pytest.raises(UserError, match="no process with pid 7"):
        validate_pid(7, proc=str(tmp_path))


def test_parse_cgroup(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    assert parse_cgroup("1234") == 1234
    assert parse_cgroup("app", mount=str(tmp_path)) == (tmp_path / "app").stat().st_ino
    assert parse_cgroup(str(tmp_path / "app")) == (tmp_path / "app").stat().st_ino
    with pytest.raises(UserError, match="no such cgroup"):
        parse_cgroup("nope", mount=str(tmp_path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "opnat"], "did you mean openat"),
        (["-p", "0"], "0 is not in the range x>=1"),
        (["-p", "-3"], "not in the range"),
        (["-p", "999999999"], "no process with pid 999999999"),
        (["-i", "0"], "0.0 is not in the range x>=0.1"),
        (["-i", "-1"], "not in the range x>=0.1"),
        (["-n", "0"], "not in the range x>=1"),
        (["--by", "thread"], "'thread' is not one of"),
        (["--sort", "time"], "--sort time needs -L/--latency (timing every call costs about"),
        (["-C"], "No such option '-C'"),  # -C/--counts-only is the default now
    ],
)
def test_bad_input_exits_2_without_traceback(args: list[str], message: str) -> None:
    from bpfscope.cli import main

    result = CliRunner().invoke(_main_as_click(main), ["syscalls", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def _main_as_click(main: Any) -> Any:
    import click

    @click.command(context_settings={"ignore_unknown_options": True})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def wrapper(argv: tuple[str, ...]) -> None:
        raise SystemExit(main(list(argv)))

    return wrapper


def test_help_lists_options() -> None:
    result = CliRunner().invoke(cli, ["syscalls", "--help"])
    assert result.exit_code == 0
    for opt in (
        "--pid",
        "--comm",
        "--cgroup",
        "--syscall",
        "--failed",
        "--errno",
        "--latency",
        "--json",
        "--bench",
    ):
        assert opt in result.output


# -- collector on fake maps -------------------------------------------------------


class FakeMap:
    def __init__(self, entries: dict[bytes, bytes]) -> None:
        self.entries = entries
        self.deleted: list[bytes] = []

    def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        return list(self.entries.items())

    def lookup(self, key: Any) -> bytes | None:
        return self.entries.get(bytes(key))

    def delete(self, key: Any) -> bool:
        self.deleted.append(bytes(key))
        return self.entries.pop(bytes(key), None) is not None

    def take(self, key: Any) -> bytes | None:
        self.deleted.append(bytes(key))
        return self.entries.pop(bytes(key), None)

    def sum_percpu_u64(self, key: Any) -> int:
        return 0


class FakeTool:
    def __init__(self, maps: dict[str, FakeMap]) -> None:
        self.maps = maps
        self.obj = self
        self.choices: list[Any] = []
        self.closed = False

    def map(self, name: str) -> FakeMap:
        return self.maps[name]

    def rungs_summary(self) -> str:
        return "sys_enter=fake, sys_exit=fake"

    def skipped_runs(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FakeNames(ProcessNames):
    def __init__(self, alive: set[int]) -> None:
        super().__init__(proc="/nonexistent")
        self.live = alive

    def alive(self, tgid: int) -> bool:
        return tgid in self.live


def _key(tgid: int, nr: int, cpu: int = 0) -> bytes:
    """A syscalls_key: the row of (tgid, nr) on ``cpu``."""
    return struct.pack("=III", tgid, nr, cpu)


def _ekey(tgid: int, nr: int, err: int, cpu: int = 0) -> bytes:
    """A syscalls_errno_key."""
    return struct.pack("=IIII", tgid, nr, err, cpu)


def _rows(tgid: int, nr: int, *values: bytes) -> dict[bytes, bytes]:
    """The rows of (tgid, nr) on CPUs 0, 1, ... (empty values: no row)."""
    return {_key(tgid, nr, cpu): v for cpu, v in enumerate(values) if v}


def test_collector_deltas_and_dead_process_cleanup() -> None:
    close = syscall_nr("close")
    stats = FakeMap(_rows(1, close, _counts(10, 2, b"one"), _counts(10, 2, b"one")))
    errnos = FakeMap(
        {_ekey(1, close, 9, 0): struct.pack("=Q", 3), _ekey(1, close, 9, 1): struct.pack("=Q", 1)}
    )
    tool = FakeTool(
        {"syscalls_counts": stats, "syscalls_errnos": errnos, "syscalls_drops": FakeMap({})}
    )
    names = FakeNames(alive={1})
    with SyscallCollector(loader=lambda: tool, names=names) as c:
        first = c.poll()
        assert [(s.tgid, s.comm, s.syscall, s.count, s.errors) for s in first.stats] == [
            (1, "one", "close", 20, 4)
        ]
        assert [(e.errno, e.count) for e in first.errnos] == [("EBADF", 4)]
        # Nothing new: no rows.
        assert c.poll().stats == ()
        stats.entries.update(_rows(1, close, _counts(15, 2, b"one"), _counts(15, 2, b"one")))
        third = c.poll()
        assert [(s.count, s.errors, s.total_ns) for s in third.stats] == [(10, 0, 0)]
        assert sum(third.stats[0].hist) == 0
        # The process dies; its last counts are read, then its entries go.
        stats.entries.update(_rows(1, close, _counts(16, 2, b"one"), _counts(16, 2, b"one")))
        names.live.clear()
        fourth = c.poll()
        assert [s.count for s in fourth.stats] == [2]
        assert stats.entries == {}
        assert errnos.entries == {}
        assert c.totals.count == {"close": 32}
        assert c.totals.errors == {("close", "EBADF"): 4}
        assert c.totals.hist == {}  # counts mode (the default): nothing timed
        assert c.totals.total_ns == {}
    assert tool.closed


def test_collector_reads_both_maps_before_its_own_proc_lookups() -> None:
    """Looking up a gone process in /proc is a failing openat of ours: it
    happens after both maps are read (or the errno map would count calls
    the stats map has not), and once per process, not per row."""
    log: list[str] = []

    class LoggingMap(FakeMap):
        def __init__(self, name: str, entries: dict[bytes, bytes]) -> None:
            super().__init__(entries)
            self.name = name

        def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
            log.append(f"read {self.name}")
            return super().lookup_batch(chunk)

    class LoggingNames(FakeNames):
        def lookup(self, tgid: int) -> str | None:
            log.append(f"proc {tgid}")
            return None  # gone

    close, read = syscall_nr("close"), syscall_nr("read")
    stats = {_key(7, close): _counts(2, 2, b"ls"), _key(7, read): _counts(3, 0, b"ls")}
    errnos = {_ekey(7, close, 2): struct.pack("=Q", 2)}
    tool = FakeTool(
        {
            "syscalls_counts": LoggingMap("stats", stats),
            "syscalls_errnos": LoggingMap("errnos", errnos),
            "syscalls_drops": FakeMap({}),
        }
    )
    with SyscallCollector(loader=lambda: tool, names=LoggingNames(alive={7})) as c:
        snap = c.poll()
    assert log == ["read stats", "read errnos", "proc 7"]
    assert {s.comm for s in snap.stats} == {"ls"}  # the kernel's name for a gone process
    assert [(e.comm, e.errno) for e in snap.errnos] == [("ls", "ENOENT")]


def test_collector_latency_mode_keeps_latency_totals() -> None:
    nr = syscall_nr("read")
    stats = FakeMap({_key(5, nr): _value(4, 0, 4000, 9)})
    tool = FakeTool(
        {"syscalls_stats": stats, "syscalls_errnos": FakeMap({}), "syscalls_drops": FakeMap({})}
    )
    with SyscallCollector(latency=True, loader=lambda: tool, names=FakeNames({5})) as c:
        snap = c.poll()
        assert snap.latency
        assert c.totals.total_ns == {"read": 4000}
        assert c.totals.hist["read"][9] == 4


def test_collector_key_recreated_counts_from_zero() -> None:
    nr = syscall_nr("read")
    stats = FakeMap({_key(5, nr): _counts(100)})
    tool = FakeTool(
        {"syscalls_counts": stats, "syscalls_errnos": FakeMap({}), "syscalls_drops": FakeMap({})}
    )
    with SyscallCollector(loader=lambda: tool, names=FakeNames({5})) as c:
        c.poll()
        stats.entries[_key(5, nr)] = _counts(7)  # pid reused: counters restarted
        assert [s.count for s in c.poll().stats] == [7]


def test_errors_added_after_a_read_are_counted_at_the_next_poll() -> None:
    """The kernel adds to a row's count, then to its errors: a read between
    the two sees the call and not yet its error. The next poll's delta is
    (0, 1): an error with no new call, counted, not skipped."""
    read = syscall_nr("read")
    tool = _maps(_rows(5, read, _counts(3, 2, b"a")), {})  # 3rd call's error not added yet
    with SyscallCollector(loader=lambda: tool, names=FakeNames({5})) as c:
        first = c.poll()
        tool.maps["syscalls_counts"].entries.update(_rows(5, read, _counts(3, 3, b"a")))
        second = c.poll()
        assert [(s.count, s.errors) for s in first.stats] == [(3, 2)]
        assert [(s.count, s.errors) for s in second.stats] == [(0, 1)]
        assert sum(s.errors for s in first.stats + second.stats) == 3


def test_idle_rows_of_a_live_process_are_deleted_after_idle_polls() -> None:
    """A row read unchanged at IDLE_POLLS polls in a row is deleted (stats
    and errno rows alike), not before; a row that changed is kept; a row
    that moves between the read and the delete is deleted with what it
    holds then, counted at that poll; a row recreated after its deletion
    counts from zero."""
    read, close, openat = syscall_nr("read"), syscall_nr("close"), syscall_nr("openat")
    stats = {
        **_rows(5, read, _counts(10, 0, b"a"), _counts(3, 0, b"a")),
        **_rows(5, close, _counts(4, 1, b"a")),
        **_rows(5, openat, _counts(6, 2, b"a")),
    }
    errnos = {_ekey(5, close, 9): struct.pack("=Q", 1), _ekey(5, openat, 2): struct.pack("=Q", 2)}
    errno_keys = sorted(errnos)
    tool = _maps(stats, errnos)
    counts, errs = tool.maps["syscalls_counts"], tool.maps["syscalls_errnos"]
    moved = _key(5, openat)

    class MovesBeforeTake(FakeMap):
        """openat's row moves after the batch read, before it is taken."""

        def take(self, key: Any) -> bytes | None:
            if bytes(key) == moved:
                self.entries[moved] = _counts(7, 2, b"a")
            return super().take(key)

    with SyscallCollector(loader=lambda: tool, names=FakeNames({5})) as c:
        c.poll()  # first read
        for i in range(1, IDLE_POLLS):
            # read on CPU 0 keeps running; the rest is idle
            counts.entries[_key(5, read, 0)] = _counts(10 + i, 0, b"a")
            assert [(s.syscall, s.count) for s in c.poll().stats] == [("read", 1)]
            assert counts.deleted == []
            assert errs.deleted == []
        tool.maps["syscalls_counts"] = counts = MovesBeforeTake(counts.entries)
        counts.entries[_key(5, read, 0)] = _counts(10 + IDLE_POLLS, 0, b"a")
        # the IDLE_POLLS-th unchanged read of the idle rows: openat's call
        # that landed meanwhile is in the value taken, and counted now
        snap = c.poll()
        assert sorted((s.syscall, s.count) for s in snap.stats) == [("openat", 1), ("read", 1)]
        assert sorted(counts.deleted) == sorted([_key(5, read, 1), _key(5, close), moved])
        assert sorted(errs.deleted) == errno_keys
        assert set(counts.entries) == {_key(5, read, 0)}  # busy: kept
        assert c.poll().stats == ()
        # The process calls close again on CPU 0 and read on CPU 1: new rows,
        # counted from zero (not against the deleted rows' 4 and 3).
        counts.entries.update(_rows(5, close, _counts(5, 0, b"a")))
        counts.entries[_key(5, read, 1)] = _counts(4, 0, b"a")
        errs.entries[_ekey(5, close, 9)] = struct.pack("=Q", 2)
        snap = c.poll()
        assert sorted((s.syscall, s.count, s.errors) for s in snap.stats) == [
            ("close", 5, 0),
            ("read", 4, 0),
        ]
        assert [(e.syscall, e.count) for e in snap.errnos] == [("close", 2)]
        assert c.totals.count == {"read": 10 + 3 + IDLE_POLLS + 4, "close": 9, "openat": 7}


def test_a_call_landing_as_an_idle_row_is_taken_is_counted_in_that_poll() -> None:
    """The only call a process made in an interval landed on an idle row
    (stats and errno alike) after the poll's read, as the row was taken:
    it is in the value taken, counted and named in that poll, and the
    totals stay exact."""
    close = syscall_nr("close")
    tool = _maps(
        _rows(7, close, _counts(5, 5, b"idle")), {_ekey(7, close, 9): struct.pack("=Q", 5)}
    )

    class CallLandsBeforeTake(FakeMap):
        def take(self, key: Any) -> bytes | None:
            k = bytes(key)
            self.entries[k] = _counts(6, 6, b"idle") if len(k) == 12 else struct.pack("=Q", 6)
            return super().take(key)

    with SyscallCollector(loader=lambda: tool, names=FakeNames({7})) as c:
        for _ in range(IDLE_POLLS):
            c.poll()
        tool.maps["syscalls_counts"] = CallLandsBeforeTake(tool.maps["syscalls_counts"].entries)
        tool.maps["syscalls_errnos"] = CallLandsBeforeTake(tool.maps["syscalls_errnos"].entries)
        snap = c.poll()
        assert [(s.tgid, s.comm, s.count, s.errors) for s in snap.stats] == [(7, "idle", 1, 1)]
        assert [(e.comm, e.errno, e.count) for e in snap.errnos] == [("idle", "EBADF", 1)]
        assert not tool.maps["syscalls_counts"].entries
        assert not tool.maps["syscalls_errnos"].entries
        assert c.totals.count == {"close": 6}
        assert c.totals.errors == {("close", "EBADF"): 6}


def _maps(stats: dict[bytes, bytes], errnos: dict[bytes, bytes]) -> FakeTool:
    return FakeTool(
        {
            "syscalls_counts": FakeMap(stats),
            "syscalls_errnos": FakeMap(errnos),
            "syscalls_drops": FakeMap({}),
        }
    )


def test_gone_fork_exec_process_is_named_by_its_own_command_on_every_row() -> None:
    """A short `ls` forked by bash: the kernel saw its first calls as "bash"
    (before execve; here most of them) and the rest as "ls". Each row, stats
    and errno alike, says "ls", whichever row is read first. It exited while
    a poll read the maps, which saw part of its rows (not its execve): that
    poll reads them again, reports all of it and deletes its rows."""
    nr = syscall_nr
    complete = {
        # before exec on CPU 0 (set_robust_list once after too), then ls's
        # own calls, mostly on CPU 1
        **_rows(42, nr("rt_sigaction"), _counts(60, 0, b"bash")),
        **_rows(42, nr("set_robust_list"), _counts(1, 0, b"bash"), _counts(1, 0, b"ls")),
        **_rows(42, nr("execve"), b"", _counts(1, 0, b"ls")),
        **_rows(42, nr("openat"), _counts(20, 7, b"ls"), _counts(19, 0, b"ls")),
        **_rows(42, nr("mmap"), b"", _counts(30, 0, b"ls")),
    }
    missed = (_key(42, nr("execve"), 1), _key(42, nr("mmap"), 1))
    stats = {k: v for k, v in complete.items() if k not in missed}
    errnos = {_ekey(42, nr("openat"), 2, 0): struct.pack("=Q", 7)}
    tool = _maps(stats, errnos)
    counts = tool.maps["syscalls_counts"]

    class ExitsDuringRead(FakeMap):
        """The first read misses the rows ls makes before it exits."""

        def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
            out = counts.lookup_batch(chunk)
            counts.entries.update(complete)
            return out

    tool.maps["syscalls_counts"] = ExitsDuringRead(counts.entries)
    with SyscallCollector(loader=lambda: tool, names=FakeNames(set())) as c:
        snap = c.poll()
        assert tool.maps["syscalls_counts"].entries == {}
        assert tool.maps["syscalls_errnos"].entries == {}
        assert c.poll().stats == ()
    assert {s.syscall: s.comm for s in snap.stats} == {
        "rt_sigaction": "ls",
        "set_robust_list": "ls",
        "execve": "ls",
        "openat": "ls",
        "mmap": "ls",
    }
    assert [(e.comm, e.syscall, e.errno, e.count) for e in snap.errnos] == [
        ("ls", "openat", "ENOENT", 7)
    ]
    assert [(s.comm, s.count) for s in aggregate(snap.stats, "process")] == [("ls", 132)]


def test_process_gone_during_a_read_is_counted_once_from_where_it_was() -> None:
    """A process that exits during a poll's read (its last calls land after
    its rows were read) is read again in that poll: counted from the values
    of the poll before, up to its last call, exactly once."""
    read = syscall_nr("read")
    names = FakeNames({5})
    counts = _rows(5, read, _counts(10, 0, b"a"))
    tool = _maps(counts, {})

    class ExitDuringRead(FakeMap):
        def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
            counts.update(_rows(5, read, _counts(13, 0, b"a"), _counts(4, 0, b"a")))
            names.live.clear()
            return super().lookup_batch(chunk)

    with SyscallCollector(loader=lambda: tool, names=names) as c:
        assert [s.count for s in c.poll().stats] == [10]
        counts.update(_rows(5, read, _counts(12, 0, b"a"), _counts(3, 0, b"a")))
        tool.maps["syscalls_errnos"] = ExitDuringRead({})
        assert [(s.comm, s.count) for s in c.poll().stats] == [("a", 7)]
        assert counts == {}
        assert c.poll().stats == ()
        assert c.totals.count == {"read": 17}


def test_live_process_that_execs_is_renamed(tmp_path: Path) -> None:
    """/proc names a running process; a successful execve since the last
    poll makes the collector read it again instead of its cached name."""
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "comm").write_text("sh\n")
    execve, read = syscall_nr("execve"), syscall_nr("read")
    stats = {_key(8, read): _counts(3, 0, b"sh")}
    tool = _maps(stats, {})
    names = ProcessNames(proc=str(tmp_path))
    with SyscallCollector(loader=lambda: tool, names=names) as c:
        assert {s.comm for s in c.poll().stats} == {"sh"}
        (tmp_path / "8" / "comm").write_text("java\n")
        stats[_key(8, read)] = _counts(5, 0, b"sh")
        assert {s.comm for s in c.poll().stats} == {"sh"}  # cached: no exec seen
        stats[_key(8, execve)] = _counts(2, 1, b"java")  # one failed, one exec'd
        stats[_key(8, read)] = _counts(9, 0, b"sh")
        assert {s.comm for s in c.poll().stats} == {"java"}
        # a failed execve alone renames nothing: no /proc read
        (tmp_path / "8" / "comm").write_text("other\n")
        stats[_key(8, execve)] = _counts(3, 2, b"java")
        assert {s.comm for s in c.poll().stats} == {"java"}


def test_collector_merges_cpu_rows_into_one_record_per_process_and_syscall() -> None:
    """Each CPU's row is a counter of its own; a poll reports their deltas
    summed, one record per (process, syscall) and per (process, syscall,
    errno), a row that appears later (another CPU) counted from zero."""
    read, openat = syscall_nr("read"), syscall_nr("openat")
    stats = FakeMap(_rows(3, read, _counts(10, 1, b"a")))
    errnos = FakeMap({_ekey(3, read, 11, 0): struct.pack("=Q", 1)})
    tool = FakeTool(
        {"syscalls_counts": stats, "syscalls_errnos": errnos, "syscalls_drops": FakeMap({})}
    )
    with SyscallCollector(loader=lambda: tool, names=FakeNames({3})) as c:
        assert [(s.syscall, s.count, s.errors) for s in c.poll().stats] == [("read", 10, 1)]
        stats.entries.update(_rows(3, read, _counts(12, 1, b"a"), _counts(5, 2, b"a")))
        stats.entries.update(_rows(3, openat, b"", _counts(4, 0, b"a")))
        errnos.entries[_ekey(3, read, 11, 1)] = struct.pack("=Q", 2)
        snap = c.poll()
        assert sorted((s.syscall, s.count, s.errors) for s in snap.stats) == [
            ("openat", 4, 0),
            ("read", 7, 2),
        ]
        assert [(e.syscall, e.errno, e.count) for e in snap.errnos] == [("read", "EAGAIN", 2)]
        errnos.entries[_ekey(3, read, 11, 0)] = struct.pack("=Q", 4)
        errnos.entries[_ekey(3, read, 11, 1)] = struct.pack("=Q", 5)
        assert [e.count for e in c.poll().errnos] == [6]


def test_map_sizes_per_mode() -> None:
    """The mode's map takes max_entries, the other mode's map one entry;
    the errno map a quarter (at least 1024)."""
    assert DEFAULT_MAX_ENTRIES == {"counts": 65536, "latency": 16384}
    assert map_sizes(latency=False, ncpu=2) == {
        "syscalls_counts": 65536,
        "syscalls_stats": 1,
        "syscalls_errnos": 16384,
    }
    assert map_sizes(latency=True, ncpu=2) == {
        "syscalls_stats": 16384,
        "syscalls_counts": 1,
        "syscalls_errnos": 4096,
    }
    help_text = " ".join(CliRunner().invoke(cli, ["syscalls", "--help"]).output.split())
    assert "(default 65536, or 2048 per possible CPU if more, at most 1048576;" in help_text
    assert "-L: 16384, or 512 per CPU, at most 262144)" in help_text
    assert "1.25 MiB at 65536 with the errno map, 20 MiB at most" in help_text
    assert "(-L: 320 KiB to 5 MiB)" in help_text
    assert map_sizes(latency=False, max_entries=64, ncpu=64) == {
        "syscalls_counts": 64,
        "syscalls_stats": 1,
        "syscalls_errnos": 1024,
    }


def test_default_sizes_grow_with_possible_cpus_within_a_cap() -> None:
    """2 CPUs: the fixed defaults; 64 CPUs: 2048 (-L: 512) rows a CPU; never
    above 1 << 20 (-L: 1 << 18). The bucket arrays, allocated at load, are
    what the help says."""
    assert default_max_entries(latency=False, ncpu=2) == 65536
    assert default_max_entries(latency=True, ncpu=2) == 16384
    assert default_max_entries(latency=False, ncpu=64) == 131072
    assert default_max_entries(latency=True, ncpu=64) == 32768
    assert default_max_entries(latency=False, ncpu=4096) == 1 << 20
    assert default_max_entries(latency=True, ncpu=4096) == 1 << 18
    assert map_sizes(latency=False, ncpu=64)["syscalls_errnos"] == 32768
    mib = 1 << 20
    assert idle_bytes(map_sizes(latency=False, ncpu=2)) // 1024 == 1280  # 1.25 MiB
    assert idle_bytes(map_sizes(latency=False, ncpu=4096)) // mib == 20
    assert idle_bytes(map_sizes(latency=True, ncpu=2)) // 1024 == 320
    assert idle_bytes(map_sizes(latency=True, ncpu=4096)) // mib == 5
    assert default_max_entries(latency=False) >= 65536  # this host's CPUs


def test_process_names_cache_and_fallback(tmp_path: Path) -> None:
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "comm").write_text("sshd\n")
    names = ProcessNames(proc=str(tmp_path))
    assert names.get(9) == "sshd"
    (tmp_path / "9" / "comm").unlink()
    assert names.get(9) == "sshd"  # cached: the process may be gone
    names.forget(9)
    assert names.get(9, "kernel-said") == "kernel-said"
    assert names.get(10) == "?"


def test_filter_describe() -> None:
    assert SyscallFilter().describe() == "everything"
    flt = SyscallFilter(tgid=3, comm="ng", syscalls=frozenset({1, 2}), failed_only=True)
    assert flt.describe() == "pid 3, command 'ng'*, 2 syscall(s), failed calls only"


def test_stats_value_layout_constants() -> None:
    assert ctypes.sizeof(StatsValue) == 8 * (3 + HIST_SLOTS) + 16 == 360
    assert ctypes.sizeof(CountsValue) == 32
