"""Stats deltas, /proc holders, clocks and CLI rendering with fake layers."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from bpfscope import libbpf as bpf
from bpfscope.introspect import cli as pcli
from bpfscope.introspect import holders, inventory, stats
from bpfscope.introspect.dump import DumpResult, Entry
from bpfscope.introspect.names import KernelNames

NAMES = KernelNames.from_enums(
    {"prog": [("BPF_PROG_TYPE_TRACEPOINT", 5), ("BPF_PROG_TYPE_KPROBE", 2)]}
)


def _info(pid: int, run_cnt: int, run_ns: int, load_ns: int = 0, type_: int = 5) -> bpf.ProgInfo:
    return bpf.ProgInfo(
        id=pid,
        type=type_,
        name=f"p{pid}",
        tag="00" * 8,
        run_time_ns=run_ns,
        run_cnt=run_cnt,
        recursion_misses=0,
        verified_insns=1,
        jited_prog_len=1,
        xlated_prog_len=8,
        load_time_ns=load_ns,
        created_by_uid=0,
        btf_id=0,
        map_ids=(),
    )


class FakeKernel:
    def __init__(self) -> None:
        self.progs: dict[int, bpf.ProgInfo] = {}
        self.handles = 0
        self.closed = 0

    def enable(self) -> bpf.StatsHandle:
        self.handles += 1
        kernel = self

        class Handle(bpf.StatsHandle):
            def close(self) -> None:
                if self._fd is not None:
                    kernel.closed += 1
                    self._fd = None

        return Handle(-1)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel()
    monkeypatch.setattr(stats, "require_introspection_privileges", lambda: None)
    monkeypatch.setattr(stats.bpf, "prog_ids", lambda: iter(sorted(k.progs)))
    monkeypatch.setattr(stats.bpf, "prog_info_by_id", lambda i: k.progs.get(i))
    monkeypatch.setattr(stats, "read_prog", lambda i, names: None)
    monkeypatch.setattr(stats.holders_mod, "scan", holders.Holders)
    return k


def test_stats_deltas_new_and_gone_programs(fake: FakeKernel) -> None:
    fake.progs = {1: _info(1, 100, 10_000), 2: _info(2, 5, 500)}
    with stats.StatsSession(names=NAMES, enable=fake.enable) as s:
        assert fake.handles == 1
        fake.progs[1] = _info(1, 130, 13_000)
        # program 3 is loaded after start: all of its runs are in the window
        fake.progs[3] = _info(3, 4, 4_000, load_ns=2**62)
        snap = s.sample(sort="runs")
        rows = {p.id: p for p in snap.progs}
        assert (rows[1].runs, rows[1].run_time_ns, rows[1].avg_ns) == (30, 3000, 100.0)
        assert (rows[2].runs, rows[2].avg_ns) == (0, 0.0)
        assert (rows[3].runs, rows[3].run_cnt_total) == (4, 4)
        assert [p.id for p in snap.progs] == [1, 3, 2]
        assert rows[1].type == "tracepoint"
        assert rows[1].name == "p1"
        assert rows[1].cpu_pct == pytest.approx(100 * 3000 / (snap.interval_s * 1e9))
        del fake.progs[2]  # unloaded between samples: skipped
        snap2 = s.sample()
        assert sorted(p.id for p in snap2.progs) == [1, 3]
        assert all(p.runs == 0 for p in snap2.progs)
        assert snap2.to_json()["total_runs"] == 0
    assert fake.closed == 1


def test_stats_closed_even_if_baseline_fails(
    fake: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> list[int]:
        raise bpf.BpfError("list BPF programs", 1)

    monkeypatch.setattr(stats.bpf, "prog_ids", boom)
    with pytest.raises(Exception, match="permission denied"):
        stats.StatsSession(names=NAMES, enable=fake.enable).start()
    assert (fake.handles, fake.closed) == (1, 1)


def test_sample_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        stats.StatsSession(names=NAMES).sample()


def test_sort_keys() -> None:
    rows = [
        stats.ProgStat(1, "b", "t", 10, 100, 10.0, 0, 0, 0, 0),
        stats.ProgStat(2, "a", "t", 5, 500, 100.0, 0, 0, 0, 0),
    ]
    assert [r.id for r in sorted(rows, key=stats.SORT_KEYS["cpu"])] == [2, 1]
    assert [r.id for r in sorted(rows, key=stats.SORT_KEYS["runs"])] == [1, 2]
    assert [r.id for r in sorted(rows, key=stats.SORT_KEYS["avg"])] == [2, 1]
    assert [r.id for r in sorted(rows, key=stats.SORT_KEYS["name"])] == [2, 1]


def test_cost_cache_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert stats.cached_cost() is None
    stats._save(stats.StatsCost(1000, 2, 100.0, 140.0, 2000))
    got = stats.cached_cost()
    assert got is not None
    assert got["added_ns_per_run"] == 40.0
    assert "40 ns" in pcli._stats_note()


# --------------------------------------------------------------------------
# holders


def _fake_proc(tmp_path: Path) -> Path:
    def proc(pid: int, comm: str, cmdline: list[str], fds: dict[int, tuple[str, str]]) -> None:
        d = tmp_path / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "fdinfo").mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
        for fd, (target, info) in fds.items():
            os.symlink(target, d / "fd" / str(fd))
            (d / "fdinfo" / str(fd)).write_text(info)

    proc(
        100,
        "agent",
        ["/usr/bin/agent"],
        {
            3: ("anon_inode:bpf-prog", "pos:\t0\nprog_type:\t5\nprog_id:\t42\n"),
            4: ("anon_inode:bpf-map", "map_type:\t1\nmap_id:\t7\nmemlock:\t4096\n"),
            5: ("anon_inode:bpf_link", "link_type:\tperf\nlink_id:\t9\nprog_id:\t43\n"),
            6: ("/dev/null", ""),
        },
    )
    proc(
        200,
        "python3",
        ["/usr/bin/python3", "/usr/local/bin/bpfscope", "serve"],
        {
            3: ("anon_inode:bpf-prog", "prog_id:\t42\n"),
            8: ("anon_inode:bpf-stats", ""),
        },
    )
    (tmp_path / "self").mkdir()
    (tmp_path / "sys").mkdir()
    return tmp_path


def test_holders_scan(tmp_path: Path) -> None:
    hs = holders.scan(_fake_proc(tmp_path))
    assert [(h.pid, h.comm, h.bpfscope) for h in hs.of("prog", 42)] == [
        (100, "agent", False),
        (200, "python3", True),
    ]
    assert [h.pid for h in hs.of("prog", 43)] == [100]  # held through its link
    assert [h.pid for h in hs.of("link", 9)] == [100]
    assert [h.pid for h in hs.of("map", 7)] == [100]
    assert hs.of("map", 8) == []
    assert [h.pid for h in hs.stats] == [200]
    assert str(hs.of("map", 7)[0]) == "agent(100)"


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["bpfscope", "progs"], True),
        (["/usr/bin/python3", "-m", "bpfscope.cli"], True),
        (["/opt/venv/bin/bpfscope"], True),
        (["/usr/bin/bpftool", "prog"], False),
        ([], False),
    ],
)
def test_is_bpfscope(cmdline: list[str], expected: bool) -> None:
    assert holders.is_bpfscope(1, cmdline, own_pid=2) is expected
    assert holders.is_bpfscope(2, cmdline, own_pid=2) is True


def test_parse_fdinfo() -> None:
    assert holders.parse_fdinfo("a:\t1\nprog_tag:\tab:cd\nnot a pair\n") == {
        "a": "1",
        "prog_tag": "ab:cd",
    }


# --------------------------------------------------------------------------
# clocks, privileges, rendering


def test_boot_to_wall() -> None:
    # loaded 5 s after boot, now is 100 s after boot at wall 1_000_000 s
    ns = inventory.boot_to_wall_ns(5 * 10**9, now_wall=1_000_000 * 10**9, now_boot=100 * 10**9)
    assert ns == (1_000_000 - 95) * 10**9
    assert inventory.iso(ns) == "1970-01-12T13:45:05+00:00"


def test_unprivileged_cli_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bpfscope import cli

    monkeypatch.setattr(inventory.system, "missing_caps", lambda names: list(names))
    for args in (["progs"], ["maps"], ["links"], ["maps", "dump", "3"], ["progs", "--stats"]):
        assert cli.main(args) == 3
        err = capsys.readouterr().err
        assert "CAP_SYS_ADMIN" in err
        assert "Traceback" not in err


def test_eperm_from_kernel_becomes_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied() -> list[int]:
        raise bpf.BpfError("list BPF programs", 1)

    with pytest.raises(inventory.UserError) as info:
        inventory.privileged("list BPF progs", denied)
    assert info.value.exit_code == 3


def test_plain_table_alignment() -> None:
    out = pcli.plain_table(("ID", "NAME", "X"), [["1", "long_name", "a b"], ["22", "n", "c"]])
    assert out.splitlines() == [
        "ID  NAME       X",
        "1   long_name  a b",
        "22  n          c",
    ]


def test_render_dump_pages_and_percpu() -> None:
    r = DumpResult(5, "m", "percpu_hash", "__u32", "__u64", True, True, 2, 1)
    r.entries = [Entry(7, [1, 2], "07 00 00 00", ["01", "02"])]
    r.more = True
    text = pcli._render_dump(r)
    assert text.splitlines() == [
        "map 5 m (percpu_hash): key __u32, value __u64, per CPU",
        "key 7:",
        "  cpu0: 1",
        "  cpu1: 2",
        "-- entries 2..2 shown; more follow: --skip 3 for the next page",
    ]
    empty = DumpResult(6, "e", "hash", "4 bytes (no BTF)", "8 bytes (no BTF)", False, False, 0, 100)
    assert pcli._render_dump(empty).endswith("-- map is empty")
    assert json.loads(json.dumps(r.to_json()))["entries"] == [{"key": 7, "value": [1, 2]}]


def test_human_bytes() -> None:
    assert pcli._human_bytes(None) == "-"
    assert pcli._human_bytes(512) == "512B"
    assert pcli._human_bytes(21680) == "21.2KiB"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("raw_tp sys_enter", True),
        ("raw_tp sys_exit", True),
        ("tracepoint sys_enter_getpid", True),
        ("trace_raw_tp btf_trace_sys_enter", True),
        ("trace_fentry __x64_sys_getpid", True),
        ("raw_tp task_rename", False),
        ("tracepoint sys_enter_getppid", False),
        ("", False),
    ],
)
def test_on_getpid_path(target: str, expected: bool) -> None:
    assert stats.on_getpid_path(target) is expected


def test_cost_per_run_divides_by_programs_on_path() -> None:
    cost = stats.StatsCost(1000, 3, 100.0, 160.0, 3000, programs_on_path=3)
    assert cost.added_ns_per_call == 60.0
    assert cost.added_ns == 20.0
    assert cost.to_json()["added_ns_per_run"] == 20.0


def test_a_link_still_being_attached_is_left_out_of_a_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel answers EAGAIN for a link id whose link is not settled yet
    (a tool attaching while the links are listed); other errors still raise."""

    def busy(link_id: int) -> None:
        raise bpf.BpfError(f"open link {link_id}", errno.EAGAIN)

    monkeypatch.setattr(inventory.bpf, "link_info_by_id", busy)
    assert inventory.read_link(303, KernelNames({})) is None

    def denied(link_id: int) -> None:
        raise bpf.BpfError(f"open link {link_id}", errno.EPERM)

    monkeypatch.setattr(inventory.bpf, "link_info_by_id", denied)
    with pytest.raises(bpf.BpfError):
        inventory.read_link(303, KernelNames({}))
