"""`bpfscope progs|maps|links` against real programs, maps and links.

The progstest object is loaded and attached (uprobe on libc getppid for this
pid only, raw_tp task_rename, tracepoint sys_enter_getpid), a hash map gets
a known struct value and a map without BTF is created; then the inventory,
the dump, the stats window and the CLI must find exactly those.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import ipaddress
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from bpfscope import features, objects, system
from bpfscope import libbpf as bpf
from bpfscope.cli import cli
from bpfscope.errors import UserError
from bpfscope.features import Mechanism, probe
from bpfscope.introspect import holders, inventory, stats
from bpfscope.introspect.dump import dump_map
from kernel_require import require

pytestmark = pytest.mark.kernel

BPFSCOPE = (sys.executable, "-m", "bpfscope.cli")
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.getppid.restype = ctypes.c_int


def getppid_calls(n: int) -> None:
    for _ in range(n):
        _libc.getppid()


KEY = struct.pack("<IHBB", 7, 8080, 6, 0)


def known_value() -> bytes:
    val = bytearray(88)
    struct.pack_into("<Qi", val, 0, 123456789, -5)
    val[12:16] = ipaddress.IPv4Address("10.1.2.3").packed
    val[16:32] = ipaddress.IPv6Address("2001:db8::1").packed
    val[32:48] = b"curl".ljust(16, b"\0")
    struct.pack_into("<H", val, 48, 443)
    struct.pack_into(">H", val, 50, 8080)  # __be16
    struct.pack_into("<I", val, 52, 1)  # PROGSTEST_BUSY
    struct.pack_into("<4I", val, 56, 1, 2, 3, 4)
    struct.pack_into("<II", val, 72, 5, 6)
    val[80] = (21 << 3) | 3  # flag_b:5 = 21, flag_a:3 = 3
    return bytes(val)


EXPECTED_VALUE = {
    "count": 123456789,
    "delta": -5,
    "saddr": "10.1.2.3",
    "daddr": "2001:db8::1",
    "comm": "curl",
    "sport": 443,
    "dport": 8080,
    "state": "PROGSTEST_BUSY",
    "hist": [1, 2, 3, 4],
    "inner": {"lo": 5, "hi": 6},
    "flag_a": 3,
    "flag_b": 21,
    "pad": [0] * 7,
}
EXPECTED_KEY = {"id": 7, "port": 8080, "proto": 6, "pad": 0}


@dataclass
class Loaded:
    obj: bpf.BpfObject
    nobtf: bpf.Map
    prog_ids: dict[str, int]
    map_ids: dict[str, int]
    libc: str
    cgroup: Path | None


def _map_id(m: bpf.Map) -> int:
    return bpf.map_details_from_fd(m.fd).id


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    require("uprobe")
    require("raw_tp")
    require("tracepoint")
    libc = features.libc_path()
    assert libc, "libc not found"
    optional = {
        "progstest_rename_btf": Mechanism.TP_BTF,
        "progstest_egress": Mechanism.CGROUP_SKB,
    }
    obj = bpf.BpfObject.open_bytes(objects.object_bytes("progstest"), name="progstest")
    nobtf = bpf.create_map(bpf.MapType.HASH, 4, 8, 16, name="progstest_nobtf")
    cgroup: Path | None = None
    cgroup_fd = -1
    try:
        for name, mechanism in optional.items():
            obj.program(name).autoload = probe(mechanism).available
        obj.load()
        obj.program("progstest_uprobe").attach_uprobe(libc, "getppid", pid=os.getpid())
        obj.program("progstest_rename").attach_raw_tracepoint("task_rename")
        obj.program("progstest_getpid").attach()
        if obj.program("progstest_rename_btf").autoload:
            obj.program("progstest_rename_btf").attach_trace()
        root = system.cgroup2_mount()
        if obj.program("progstest_egress").autoload and root:
            cgroup = Path(root, f"bpfscope-progstest-{os.getpid()}")
            cgroup.mkdir(exist_ok=True)
            cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            obj.program("progstest_egress").attach_cgroup(cgroup_fd)
        obj.map("progstest_hash").update(KEY, known_value())
        nobtf.update(struct.pack("<I", 1), struct.pack("<Q", 0xDEADBEEF))
        yield Loaded(
            obj,
            nobtf,
            {name: p.info().id for name, p in obj.programs.items() if p.autoload},
            {
                "progstest_hash": _map_id(obj.map("progstest_hash")),
                "progstest_counts": _map_id(obj.map("progstest_counts")),
                "progstest_nobtf": _map_id(nobtf),
            },
            libc,
            cgroup,
        )
    finally:
        nobtf.close()
        obj.close()
        if cgroup_fd >= 0:
            os.close(cgroup_fd)
        if cgroup is not None:
            cgroup.rmdir()


def _counts_total(loaded: Loaded, slot: int) -> int:
    return loaded.obj.map("progstest_counts").sum_percpu_u64(struct.pack("<I", slot))


# --------------------------------------------------------------------------
# inventory

# Linux 6.6 added perf_event link info (uprobe, kprobe and tracepoint links
# made through perf events); before it the kernel reports the link type only.
PERF_LINK_INFO = system.kernel_info().release_tuple >= (6, 6)


def test_programs_found_with_types_names_sizes(loaded: Loaded) -> None:
    recs = {r.id: r for r in inventory.collect_progs()}
    expect = {
        "progstest_uprobe": ("kprobe", "uprobe " + loaded.libc + "+0x"),
        "progstest_rename": ("raw_tracepoint", "raw_tp task_rename"),
        "progstest_getpid": ("tracepoint", "tracepoint sys_enter_getpid"),
    }
    now = dt.datetime.now(dt.UTC)
    for name, (ptype, target) in expect.items():
        pid = loaded.prog_ids[name]
        rec = recs[pid]
        info = loaded.obj.program(name).info()
        assert rec.name == name  # full name from BTF, not cut at 15
        assert rec.type == ptype
        assert rec.tag == info.tag
        assert rec.xlated_len == info.xlated_prog_len > 0
        assert rec.jited_len == info.jited_prog_len > 0
        assert rec.verified_insns == info.verified_insns > 0
        assert rec.btf_id == info.btf_id > 0
        assert rec.uid == os.getuid()
        if target.startswith(("uprobe", "tracepoint")) and not PERF_LINK_INFO:
            assert rec.target == "", rec.target  # the kernel says no more before 6.6
        else:
            assert rec.target.startswith(target), rec.target
        assert len(rec.attachments) == 1
        assert rec.bpfscope  # held by this process
        assert os.getpid() in [h.pid for h in rec.holders]
        loaded_at = dt.datetime.fromisoformat(rec.loaded_at)
        assert abs((now - loaded_at).total_seconds()) < 120
    counts = loaded.map_ids["progstest_counts"]
    assert recs[loaded.prog_ids["progstest_uprobe"]].map_ids == [counts]
    assert recs[loaded.prog_ids["progstest_rename"]].map_ids == [counts]
    assert recs[loaded.prog_ids["progstest_getpid"]].map_ids == []


def test_maps_found_with_and_without_btf(loaded: Loaded) -> None:
    recs = {r.id: r for r in inventory.collect_maps()}
    h = recs[loaded.map_ids["progstest_hash"]]
    assert (h.type, h.name, h.key_size, h.value_size, h.max_entries) == (
        "hash",
        "progstest_hash",
        8,
        88,
        128,
    )
    assert (h.key_type, h.value_type) == ("struct progstest_key", "struct progstest_value")
    assert h.btf_id > 0
    c = recs[loaded.map_ids["progstest_counts"]]
    # map names are cut at 15 characters by the kernel
    assert (c.type, c.name, c.key_size, c.value_size, c.max_entries) == (
        "percpu_array",
        "progstest_count",
        4,
        8,
        4,
    )
    users = ("progstest_uprobe", "progstest_rename", "progstest_rename_btf", "progstest_egress")
    assert sorted(c.prog_ids) == sorted(
        loaded.prog_ids[name] for name in users if name in loaded.prog_ids
    )
    n = recs[loaded.map_ids["progstest_nobtf"]]
    assert (n.type, n.name, n.key_size, n.value_size, n.max_entries) == (
        "hash",
        "progstest_nobtf",
        4,
        8,
        16,
    )
    assert (n.btf_id, n.key_type, n.value_type) == (0, "", "")
    for rec in (h, c, n):
        assert rec.memlock is not None
        assert rec.memlock > 0
        assert rec.bpfscope


def test_links_found_with_targets(loaded: Loaded) -> None:
    by_prog = {r.prog_id: r for r in inventory.collect_links()}
    up = by_prog[loaded.prog_ids["progstest_uprobe"]]
    assert up.type == "perf_event"
    assert up.prog_name == "progstest_uprobe"
    # Linux 6.6 added perf_event link info; before it the kernel says only
    # the link type, and bpfscope must show that, not fail or invent more.
    if PERF_LINK_INFO:
        assert up.fields["type"] == "uprobe"
        assert up.fields["uprobe"]["file_name"] == loaded.libc
        assert up.fields["uprobe"]["offset"] > 0
    else:
        assert "type" not in up.fields
    raw = by_prog[loaded.prog_ids["progstest_rename"]]
    assert (raw.type, raw.target, raw.fields["tp_name"]) == (
        "raw_tracepoint",
        "raw_tp task_rename",
        "task_rename",
    )
    tp = by_prog[loaded.prog_ids["progstest_getpid"]]
    if PERF_LINK_INFO:
        assert tp.target == "tracepoint sys_enter_getpid"
    assert os.getpid() in [h.pid for h in tp.holders]


def test_tp_btf_program_is_tracing_with_btf_target(loaded: Loaded) -> None:
    require("tp_btf")
    pid = loaded.prog_ids["progstest_rename_btf"]
    (rec,) = inventory.collect_progs(ids=[pid])
    assert (rec.name, rec.type) == ("progstest_rename_btf", "tracing")
    assert rec.attach_btf == "btf_trace_task_rename"
    assert rec.target == "raw_tp task_rename"  # from its link
    (link,) = [r for r in inventory.collect_links() if r.prog_id == pid]
    assert (link.type, link.fields["tp_name"]) == ("raw_tracepoint", "task_rename")


def test_cgroup_link_names_attach_type_and_path(loaded: Loaded) -> None:
    require("cgroup_skb")
    assert loaded.cgroup is not None
    pid = loaded.prog_ids["progstest_egress"]
    (link,) = [r for r in inventory.collect_links() if r.prog_id == pid]
    assert link.type == "cgroup"
    assert link.attach_type == "cgroup_inet_egress"
    assert link.fields["cgroup_id"] == os.stat(loaded.cgroup).st_ino
    assert link.target == f"cgroup_inet_egress /{loaded.cgroup.name}"
    (rec,) = inventory.collect_progs(ids=[pid])
    assert (rec.type, rec.target) == ("cgroup_skb", link.target)


def test_object_gone_between_listing_and_reading_is_skipped(loaded: Loaded) -> None:
    with bpf.BpfObject.open_bytes(objects.object_bytes("progstest"), name="progstest") as obj:
        for name, p in obj.programs.items():
            p.autoload = name == "progstest_getpid"
        obj.load()
        gone_prog = obj.program("progstest_getpid").info().id
        gone_map = _map_id(obj.map("progstest_hash"))
    time.sleep(0.05)  # programs are freed after an RCU grace period
    for _ in range(100):
        if bpf.prog_info_by_id(gone_prog) is None:
            break
        time.sleep(0.02)
    names = inventory.kernel_names()
    assert inventory.read_prog(gone_prog, names) is None
    assert inventory.read_map(gone_map, names) is None
    keep = loaded.prog_ids["progstest_getpid"]
    recs = inventory.collect_progs(ids=[gone_prog, keep])
    assert [r.id for r in recs] == [keep]
    with pytest.raises(UserError, match="no BPF map"):
        dump_map(gone_map)


# --------------------------------------------------------------------------
# dump


def test_dump_decodes_known_struct_exactly(loaded: Loaded) -> None:
    result = dump_map(loaded.map_ids["progstest_hash"])
    assert result.btf
    assert [(e.key, e.value) for e in result.entries] == [(EXPECTED_KEY, EXPECTED_VALUE)]
    assert not result.more


def test_dump_without_btf_is_hex(loaded: Loaded) -> None:
    result = dump_map(loaded.map_ids["progstest_nobtf"])
    assert not result.btf
    assert [(e.key, e.value) for e in result.entries] == [
        ("01 00 00 00", "ef be ad de 00 00 00 00")
    ]


def test_dump_percpu_values_sum_to_events(loaded: Loaded) -> None:
    before = _counts_total(loaded, 0)
    getppid_calls(250)
    result = dump_map(loaded.map_ids["progstest_counts"])
    assert result.percpu
    assert len(result.entries) == 4
    per_cpu = result.entries[0].value
    assert isinstance(per_cpu, list)
    assert len(per_cpu) == bpf.num_possible_cpus()
    assert sum(per_cpu) == before + 250


def test_dump_pages_through_a_map(loaded: Loaded) -> None:
    m = bpf.create_map(bpf.MapType.HASH, 4, 4, 64, name="progstest_pages")
    with m:
        for i in range(10):
            m.update(struct.pack("<I", i), struct.pack("<I", i * i))
        mid = _map_id(m)
        seen: list[str] = []
        skip = 0
        pages = 0
        while True:
            page = dump_map(mid, skip=skip, limit=3)
            seen += [e.key for e in page.entries]
            pages += 1
            skip += len(page.entries)
            if not page.more:
                break
        assert pages == 4
        assert sorted(seen) == sorted(struct.pack("<I", i).hex(" ") for i in range(10))


# --------------------------------------------------------------------------
# statistics


def _own_stats_fds(pid: int | str = "self") -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    out = []
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == "anon_inode:bpf-stats":
                out.append(fd.name)
        except OSError:
            continue
    return out


def _stats_effective(loaded: Loaded) -> bool:
    """Are run-time statistics on right now? The sysctl only reflects writes
    to itself, not BPF_ENABLE_STATS fds, so ask a program: does its run
    count move when it runs?"""
    prog = loaded.obj.program("progstest_uprobe")
    before = prog.info().run_cnt
    getppid_calls(20)
    return prog.info().run_cnt != before


def _assert_stats_off_unless_others(loaded: Loaded, exclude_pid: int | None = None) -> None:
    """Statistics are off again, unless another process holds a stats fd or
    someone set the sysctl (other tools on this machine may)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not _stats_effective(loaded):
            return
        time.sleep(0.05)
    others = holders.scan().stats
    assert others or stats.stats_enabled(), "statistics still on and nobody holds them"
    assert exclude_pid not in {h.pid for h in others}


def test_stats_session_counts_exactly_and_turns_off(loaded: Loaded) -> None:
    uprobe = loaded.prog_ids["progstest_uprobe"]
    with stats.StatsSession(ids=[uprobe]) as session:
        assert len(_own_stats_fds()) == 1
        getppid_calls(500)
        snap = session.sample()
        getppid_calls(123)
        snap2 = session.sample(sort="runs")
        assert _stats_effective(loaded)
    assert [(p.id, p.runs) for p in snap.progs] == [(uprobe, 500)]
    assert [(p.id, p.runs) for p in snap2.progs] == [(uprobe, 123)]
    assert snap.progs[0].run_time_ns > 0
    assert snap.progs[0].avg_ns > 0
    assert snap.progs[0].name == "progstest_uprobe"
    assert snap.progs[0].bpfscope
    assert _own_stats_fds() == []
    _assert_stats_off_unless_others(loaded)


def _stats_subprocess() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BPFSCOPE, "progs", "--stats", "--interval", "0.2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_snapshot(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        pytest.fail(f"bpfscope progs --stats ended: {proc.wait()} {proc.stderr.read()}")
    snap: dict[str, object] = json.loads(line)
    return snap


def _runs_of(snap: dict[str, object], prog_id: int) -> int:
    progs = snap["progs"]
    assert isinstance(progs, list)
    return sum(int(p["runs"]) for p in progs if p["id"] == prog_id)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_cli_stats_counts_events_exactly_then_off_after_signal(
    loaded: Loaded, sig: signal.Signals
) -> None:
    uprobe = loaded.prog_ids["progstest_uprobe"]
    proc = _stats_subprocess()
    try:
        _read_snapshot(proc)  # stats are on and the baseline is taken
        assert _own_stats_fds(proc.pid) != []
        getppid_calls(777)
        done = time.time()
        total = 0
        while True:
            snap = _read_snapshot(proc)
            total += _runs_of(snap, uprobe)
            assert isinstance(snap["time"], float)
            if snap["time"] > done + 0.01:
                break
        assert total == 777
    finally:
        proc.send_signal(sig)
        code = proc.wait(timeout=10)
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM
    else:
        assert code == -signal.SIGKILL
    _assert_stats_off_unless_others(loaded, exclude_pid=proc.pid)


def test_cli_stats_plain_snapshots_when_piped(loaded: Loaded) -> None:
    out = subprocess.run(
        [*BPFSCOPE, "progs", "--stats", "--interval", "0.1", "--count", "2", "--sort", "id"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.startswith("# statistics add")
    assert out.count("BPF programs, last") == 2
    assert "progstest_uprobe" in out
    assert "\x1b[" not in out
    _assert_stats_off_unless_others(loaded)


def test_stats_cost_measured(loaded: Loaded) -> None:
    cost = stats.measure_cost(calls=20_000, rounds=2, save=False)
    assert cost.program_runs_counted >= 2 * 20_000
    assert cost.off_ns_per_call > 0
    assert cost.on_ns_per_call > 0
    _assert_stats_off_unless_others(loaded)


# --------------------------------------------------------------------------
# CLI


def _invoke(*args: str) -> object:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_json_lists_ours(loaded: Loaded) -> None:
    progs = _invoke("progs", "--json")
    assert isinstance(progs, list)
    mine = {p["name"]: p for p in progs if p["id"] in loaded.prog_ids.values()}
    assert set(mine) == set(loaded.prog_ids)
    assert mine["progstest_rename"]["target"] == "raw_tp task_rename"
    assert mine["progstest_rename"]["bpfscope"] is True
    maps = _invoke("maps", "--json")
    assert isinstance(maps, list)
    assert {m["id"] for m in maps} >= set(loaded.map_ids.values())
    links = _invoke("links", "--json")
    assert isinstance(links, list)
    assert {link["prog_id"] for link in links} >= set(loaded.prog_ids.values())
    dumped = _invoke("maps", "dump", str(loaded.map_ids["progstest_hash"]), "--json")
    assert isinstance(dumped, dict)
    assert dumped["entries"] == [{"key": EXPECTED_KEY, "value": EXPECTED_VALUE}]


def test_cli_plain_dump_and_tables(loaded: Loaded) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["maps", "dump", str(loaded.map_ids["progstest_hash"])]).output
    assert "saddr=10.1.2.3" in out
    assert "daddr=2001:db8::1" in out
    assert "comm=curl" in out
    out = runner.invoke(cli, ["progs"]).output
    assert "progstest_getpid *" in out
    if PERF_LINK_INFO:
        assert "tracepoint sys_enter_getpid" in out


def test_cli_unprivileged_is_a_clear_error(loaded: Loaded) -> None:
    for args in (["progs"], ["maps"], ["links"], ["progs", "--stats", "--count", "1"]):
        proc = subprocess.run(
            [*NOBODY, *BPFSCOPE, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "HOME": "/nonexistent"},
        )
        assert proc.returncode == 3, proc.stderr
        assert "CAP_SYS_ADMIN" in proc.stderr
        assert "Traceback" not in proc.stderr
