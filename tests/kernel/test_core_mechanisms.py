"""Each available attach mechanism loads, attaches and fires an exact
number of times on the real kernel; the doctor agrees with reality."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from bpfscope import features, system, targets
from bpfscope import libbpf as bpf
from bpfscope.features import Mechanism, Status
from bpfscope.objects import object_bytes
from kernel_require import require

pytestmark = pytest.mark.kernel

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def hits(obj: bpf.BpfObject, m: Mechanism) -> int:
    idx = features.PROGRAM_MECHANISMS.index(m) * 8
    return int.from_bytes(obj.bss["probe_hits"][idx : idx + 8], "little")


SYSCALL_HOOKS = [
    Mechanism.TRACEPOINT,
    Mechanism.RAW_TP,
    Mechanism.TP_BTF,
    Mechanism.FENTRY,
    Mechanism.FEXIT,
    Mechanism.KPROBE,
    Mechanism.KRETPROBE,
]


def open_probe(m: Mechanism, tgid: int) -> bpf.BpfObject:
    obj = bpf.BpfObject.open_bytes(object_bytes("probe"), name="t_probe")
    prog = features._PROGRAM_OF[m]
    for name, p in obj.programs.items():
        p.autoload = name == prog
    if m in (Mechanism.FENTRY, Mechanism.FEXIT):
        target = targets.syscall_entry_function("getpid")
        assert target, "fentry available but no getpid entry function in BTF"
        obj.program(prog).set_attach_target(target)
    obj.rodata["target_tgid"] = tgid
    obj.rodata["getpid_nr"] = features.getpid_nr()
    return obj


@pytest.mark.parametrize("mechanism", SYSCALL_HOOKS, ids=str)
def test_syscall_hook_counts_exactly(mechanism: Mechanism) -> None:
    require(str(mechanism))
    with open_probe(mechanism, os.getpid()) as obj:
        obj.load()
        prog = obj.program(features._PROGRAM_OF[mechanism])
        prog.attach_to(mechanism, features.probe_target(mechanism))
        before = hits(obj, mechanism)
        for _ in range(137):
            libc.syscall(features.getpid_nr())
        assert hits(obj, mechanism) - before == 137


@pytest.mark.parametrize("mechanism", [Mechanism.UPROBE, Mechanism.URETPROBE], ids=str)
def test_uprobe_on_libc_counts_exactly(mechanism: Mechanism) -> None:
    require(str(mechanism))
    libc_path = features.libc_path()
    assert libc_path
    with open_probe(mechanism, os.getpid()) as obj:
        obj.load()
        prog = obj.program(features._PROGRAM_OF[mechanism])
        link = prog.attach_uprobe(libc_path, "getpid", retprobe=mechanism is Mechanism.URETPROBE)
        for _ in range(42):
            libc.getpid()
        assert hits(obj, mechanism) == 42
        link.destroy()
        libc.getpid()
        assert hits(obj, mechanism) == 42  # detached: no more hits


def test_rodata_filter_excludes_other_processes() -> None:
    require("tracepoint")
    with open_probe(Mechanism.TRACEPOINT, os.getpid() + 1_000_000) as obj:
        obj.load()
        obj.program("probe_tracepoint").attach_tracepoint("syscalls", "sys_enter_getpid")
        for _ in range(10):
            libc.syscall(features.getpid_nr())
        assert hits(obj, Mechanism.TRACEPOINT) == 0


def test_cgroup_skb_counts_traffic_of_a_cgroup(tmp_path: Path) -> None:
    """Attach to a fresh cgroup, move a child into it, send UDP on loopback."""
    require("cgroup_skb")
    import socket
    import subprocess
    import sys

    root = system.cgroup2_mount()
    assert root
    cg = Path(root, f"bpfscope-test-{os.getpid()}")
    cg.mkdir()
    try:
        with bpf.BpfObject.open_bytes(object_bytes("probe"), name="t_cg") as obj:
            for name, p in obj.programs.items():
                p.autoload = name == "probe_cgroup_skb"
            obj.load()
            fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
            try:
                obj.program("probe_cgroup_skb").attach_cgroup(fd)
            finally:
                os.close(fd)
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("127.0.0.1", 0))
            port = rx.getsockname()[1]
            code = (
                "import os,socket,sys;"
                f"open('{cg}/cgroup.procs','w').write(str(os.getpid()));"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"[s.sendto(b'x',('127.0.0.1',{port})) for _ in range(5)]"
            )
            subprocess.run([sys.executable, "-c", code], check=True)
            rx.close()
            assert hits(obj, Mechanism.CGROUP_SKB) == 5
    finally:
        cg.rmdir()


def test_doctor_verdicts_agree_with_the_kernel() -> None:
    """Verdicts say what actually happens; on kernels like this VM's they
    say exactly what the issue requires."""
    verdicts = features.probe_all()
    for m in (Mechanism.TRACEPOINT, Mechanism.RAW_TP, Mechanism.TP_BTF):
        assert verdicts[m].status is Status.AVAILABLE, verdicts[m]
    no_kprobes = (
        not Path("/sys/bus/event_source/devices/kprobe").exists()
        and not Path(system.tracefs_path() or "/nonexistent", "kprobe_events").exists()
    )
    if no_kprobes:
        for m in (Mechanism.KPROBE, Mechanism.KRETPROBE):
            assert verdicts[m].status is Status.UNSUPPORTED
            assert "not built into this kernel" in verdicts[m].detail
    for m in (Mechanism.FENTRY, Mechanism.FEXIT):
        v = verdicts[m]
        if v.status is Status.UNSUPPORTED:
            assert v.errno_name in ("EPERM", "ENOTSUPP", "EOPNOTSUPP"), v
        # and if available, the exact-count test above ran on it


def test_ringbuf_batch_and_stats_probes() -> None:
    verdicts = features.probe_all(
        (
            Mechanism.RINGBUF,
            Mechanism.BATCH_OPS,
            Mechanism.LOOKUP_AND_DELETE,
            Mechanism.BPF_STATS,
        )
    )
    assert all(v.status is not Status.INCONCLUSIVE for v in verdicts.values()), verdicts
