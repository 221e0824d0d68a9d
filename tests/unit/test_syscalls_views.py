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
    table_copies,
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
    def __init__(self, entries: dict[bytes, bytes], log: list[str] | None = None, name: str = ""):
        self.entries = entries
        self.log = log if log is not None else []
        self.name = name
        self.fd = 3

    def lookup_and_delete_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        self.log.append(f"take {self.name}")
        out = list(self.entries.items())
        self.entries.clear()
        return out

    def update(self, key: Any, value: Any, flags: int = 0) -> None:
        self.log.append(f"update {self.name}")

    def sum_percpu_u64(self, key: Any) -> int:
        return 0


class FakeBss(dict[str, int]):
    def __init__(self, log: list[str]) -> None:
        super().__init__(syscalls_gen=0)
        self.log = log

    def __setitem__(self, name: str, value: int) -> None:
        self.log.append(f"{name}={value}")
        super().__setitem__(name, value)


class FakeTool:
    """The tracer's maps: both copies of each table, the sync map-in-map,
    and ``syscalls_gen`` (which copy "programs" write: see :meth:`live`)."""

    def __init__(self, stats: dict[bytes, bytes], errnos: dict[bytes, bytes], latency=False):
        self.log: list[str] = []
        self.maps: dict[str, FakeMap] = {}
        for table, rows in (
            (("syscalls_stats" if latency else "syscalls_counts"), stats),
            ("syscalls_errnos", errnos),
        ):
            for gen, name in enumerate(table_copies(table)):
                self.maps[name] = FakeMap(rows if gen == 0 else {}, self.log, name)
        for name in ("syscalls_drops", "syscalls_sync", "syscalls_sync_in"):
            self.maps[name] = FakeMap({}, self.log, name)
        self.bss = FakeBss(self.log)
        self.obj = self
        self.choices: list[Any] = []
        self.closed = False

    def live(self, table: str) -> FakeMap:
        """The copy of ``table`` programs write now."""
        return self.maps[table_copies(table)[self.bss["syscalls_gen"]]]

    def map(self, name: str) -> FakeMap:
        return self.maps[name]

    def rungs_summary(self) -> str:
        return "sys_enter=fake, sys_exit=fake"

    def skipped_runs(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class FakeNames(ProcessNames):
    def __init__(self, alive: set[int], log: list[str] | None = None) -> None:
        super().__init__(proc="/nonexistent")
        self.live = alive
        self.log = log

    def alive(self, tgid: int) -> bool:
        return tgid in self.live

    def lookup(self, tgid: int) -> str | None:
        if self.log is not None:
            self.log.append(f"proc {tgid}")
        return super().lookup(tgid)


def _key(tgid: int, nr: int, cpu: int = 0) -> bytes:
    """A syscalls_key: the row of (tgid, nr) on ``cpu``."""
    return struct.pack("=III", tgid, nr, cpu)


def _ekey(tgid: int, nr: int, err: int, cpu: int = 0) -> bytes:
    """A syscalls_errno_key."""
    return struct.pack("=IIII", tgid, nr, err, cpu)


def _rows(tgid: int, nr: int, *values: bytes) -> dict[bytes, bytes]:
    """The rows of (tgid, nr) on CPUs 0, 1, ... (empty values: no row)."""
    return {_key(tgid, nr, cpu): v for cpu, v in enumerate(values) if v}


def test_collector_flips_waits_then_reads_the_copy_no_program_writes() -> None:
    """A poll points programs at the other copy, waits (the sync map's
    update), then takes both maps of the copy they left, before its own
    /proc lookups (a failing openat of ours), once per process."""
    close, read = syscall_nr("close"), syscall_nr("read")
    tool = FakeTool(
        {_key(7, close): _counts(2, 2, b"ls"), _key(7, read): _counts(3, 0, b"ls")},
        {_ekey(7, close, 2): struct.pack("=Q", 2)},
    )
    names = FakeNames(alive=set(), log=tool.log)
    with SyscallCollector(loader=lambda: tool, names=names) as c:
        snap = c.poll()
        assert tool.log == [
            "syscalls_gen=1",
            "update syscalls_sync",
            "take syscalls_counts",
            "take syscalls_errnos",
            "proc 7",
        ]
        assert {s.comm for s in snap.stats} == {"ls"}  # the kernel's name for a gone process
        assert [(e.comm, e.errno) for e in snap.errnos] == [("ls", "ENOENT")]
        tool.log.clear()
        c.poll()
        assert tool.log == [
            "syscalls_gen=0",
            "update syscalls_sync",
            "take syscalls_count2",
            "take syscalls_errno2",
        ]


def test_collector_reports_each_interval_once() -> None:
    """Each poll reports what the copy it takes holds (the interval's calls,
    on every CPU), then that copy is empty; the totals add up."""
    close = syscall_nr("close")
    tool = FakeTool(
        _rows(1, close, _counts(10, 2, b"one"), _counts(10, 2, b"one")),
        {_ekey(1, close, 9, 0): struct.pack("=Q", 3), _ekey(1, close, 9, 1): struct.pack("=Q", 1)},
    )
    names = FakeNames(alive={1})
    with SyscallCollector(loader=lambda: tool, names=names) as c:
        first = c.poll()
        assert [(s.tgid, s.comm, s.syscall, s.count, s.errors) for s in first.stats] == [
            (1, "one", "close", 20, 4)
        ]
        assert [(e.errno, e.count) for e in first.errnos] == [("EBADF", 4)]
        assert not tool.maps["syscalls_counts"].entries
        assert not tool.maps["syscalls_errnos"].entries
        assert c.poll().stats == ()  # nothing new
        tool.live("syscalls_counts").entries.update(_rows(1, close, _counts(5), _counts(5)))
        assert [(s.count, s.errors, s.total_ns) for s in c.poll().stats] == [(10, 0, 0)]
        # The process dies after its last calls: they are in the next poll.
        tool.live("syscalls_counts").entries.update(_rows(1, close, _counts(2, 0, b"one")))
        names.live.clear()
        assert [(s.comm, s.count) for s in c.poll().stats] == [("one", 2)]
        assert c.totals.count == {"close": 32}
        assert c.totals.errors == {("close", "EBADF"): 4}
        assert c.totals.hist == {}  # counts mode (the default): nothing timed
        assert c.totals.total_ns == {}
        assert not any(m.entries for m in tool.maps.values())
    assert tool.closed


def test_collector_latency_mode_keeps_latency_totals() -> None:
    nr = syscall_nr("read")
    tool = FakeTool({_key(5, nr): _value(4, 0, 4000, 9)}, {}, latency=True)
    with SyscallCollector(latency=True, loader=lambda: tool, names=FakeNames({5})) as c:
        snap = c.poll()
        assert snap.latency
        assert c.totals.total_ns == {"read": 4000}
        assert c.totals.hist["read"][9] == 4


def test_gone_fork_exec_process_is_named_by_its_own_command_on_every_row() -> None:
    """A short `ls` forked by bash: the kernel saw its first calls as "bash"
    (before execve; here most of them) and the rest as "ls". It exited in
    the interval: each row, stats and errno alike, says "ls"."""
    nr = syscall_nr
    stats = {
        # before exec on CPU 0 (set_robust_list once after too), then ls's
        # own calls, mostly on CPU 1
        **_rows(42, nr("rt_sigaction"), _counts(60, 0, b"bash")),
        **_rows(42, nr("set_robust_list"), _counts(1, 0, b"bash"), _counts(1, 0, b"ls")),
        **_rows(42, nr("execve"), b"", _counts(1, 0, b"ls")),
        **_rows(42, nr("openat"), _counts(20, 7, b"ls"), _counts(19, 0, b"ls")),
        **_rows(42, nr("mmap"), b"", _counts(30, 0, b"ls")),
    }
    tool = FakeTool(stats, {_ekey(42, nr("openat"), 2, 0): struct.pack("=Q", 7)})
    with SyscallCollector(loader=lambda: tool, names=FakeNames(set())) as c:
        snap = c.poll()
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


def test_live_process_that_execs_is_renamed(tmp_path: Path) -> None:
    """/proc names a running process; a successful execve since the last
    poll makes the collector read it again instead of its cached name; the
    name is forgotten once the process is gone."""
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "comm").write_text("sh\n")
    execve, read = syscall_nr("execve"), syscall_nr("read")
    tool = FakeTool({_key(8, read): _counts(3, 0, b"sh")}, {})
    names = ProcessNames(proc=str(tmp_path))
    live = tool.live

    with SyscallCollector(loader=lambda: tool, names=names) as c:
        assert {s.comm for s in c.poll().stats} == {"sh"}
        (tmp_path / "8" / "comm").write_text("java\n")
        live("syscalls_counts").entries[_key(8, read)] = _counts(2, 0, b"sh")
        assert {s.comm for s in c.poll().stats} == {"sh"}  # cached: no exec seen
        live("syscalls_counts").entries[_key(8, execve)] = _counts(2, 1, b"java")
        live("syscalls_counts").entries[_key(8, read)] = _counts(4, 0, b"sh")
        assert {s.comm for s in c.poll().stats} == {"java"}
        # a failed execve alone renames nothing: no /proc read
        (tmp_path / "8" / "comm").write_text("other\n")
        live("syscalls_counts").entries[_key(8, execve)] = _counts(1, 1, b"java")
        assert {s.comm for s in c.poll().stats} == {"java"}
        # gone, and silent for a poll: its cached name is dropped
        (tmp_path / "8" / "comm").unlink()
        (tmp_path / "8").rmdir()
        c.poll()
        assert names.lookup(8) is None


def test_collector_merges_cpu_rows_into_one_record_per_process_and_syscall() -> None:
    """Each CPU's row is a counter of its own; a poll reports them summed,
    one record per (process, syscall) and per (process, syscall, errno)."""
    read, openat = syscall_nr("read"), syscall_nr("openat")
    tool = FakeTool(
        {
            **_rows(3, read, _counts(2, 1, b"a"), _counts(5, 2, b"a")),
            **_rows(3, openat, b"", _counts(4, 0, b"a")),
        },
        {_ekey(3, read, 11, 0): struct.pack("=Q", 1), _ekey(3, read, 11, 1): struct.pack("=Q", 2)},
    )
    with SyscallCollector(loader=lambda: tool, names=FakeNames({3})) as c:
        snap = c.poll()
        assert sorted((s.syscall, s.count, s.errors) for s in snap.stats) == [
            ("openat", 4, 0),
            ("read", 7, 3),
        ]
        assert [(e.syscall, e.errno, e.count) for e in snap.errnos] == [("read", "EAGAIN", 3)]


def test_map_sizes_per_mode() -> None:
    """The mode's map takes max_entries, the other mode's map one entry;
    the errno map a quarter (at least 1024); both copies of each alike."""
    assert DEFAULT_MAX_ENTRIES == {"counts": 65536, "latency": 16384}
    assert map_sizes(latency=False, ncpu=2) == {
        "syscalls_counts": 65536,
        "syscalls_count2": 65536,
        "syscalls_stats": 1,
        "syscalls_stats2": 1,
        "syscalls_errnos": 16384,
        "syscalls_errno2": 16384,
    }
    assert map_sizes(latency=True, ncpu=2) == {
        "syscalls_stats": 16384,
        "syscalls_stats2": 16384,
        "syscalls_counts": 1,
        "syscalls_count2": 1,
        "syscalls_errnos": 4096,
        "syscalls_errno2": 4096,
    }
    help_text = " ".join(CliRunner().invoke(cli, ["syscalls", "--help"]).output.split())
    assert "(default 65536, or 2048 per possible CPU if more, at most 1048576;" in help_text
    assert "-L: 16384, or 512 per CPU, at most 262144)" in help_text
    assert "2.5 MiB at 65536 with the errno map and both copies, 40 MiB at most" in help_text
    assert "(-L: 640 KiB to 10 MiB)" in help_text
    assert map_sizes(latency=False, max_entries=64, ncpu=64) == {
        "syscalls_counts": 64,
        "syscalls_count2": 64,
        "syscalls_stats": 1,
        "syscalls_stats2": 1,
        "syscalls_errnos": 1024,
        "syscalls_errno2": 1024,
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
    # both copies of every table
    assert idle_bytes(map_sizes(latency=False, ncpu=2)) // 1024 == 2560  # 2.5 MiB
    assert idle_bytes(map_sizes(latency=False, ncpu=4096)) // mib == 40
    assert idle_bytes(map_sizes(latency=True, ncpu=2)) // 1024 == 640
    assert idle_bytes(map_sizes(latency=True, ncpu=4096)) // mib == 10
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
