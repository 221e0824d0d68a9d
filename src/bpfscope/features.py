"""Feature probes: what this kernel really allows, found by trying.

Each probe loads and attaches a minimal program (or creates the object),
triggers the hooked event where it can and checks that the program ran. The
verdict is *available*, *unsupported* (with the kernel's errno and what it
means) or *inconclusive* (could not tell, e.g. without privileges). Results
are cached for the life of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from . import libbpf as bpf
from . import system, targets
from .objects import object_bytes
from .sysnames import syscall_nr

__all__ = [
    "PROGRAM_MECHANISMS",
    "Mechanism",
    "Status",
    "Verdict",
    "clear_cache",
    "getpid_nr",
    "libc_path",
    "probe",
    "probe_all",
    "probe_target",
]


class Mechanism(StrEnum):
    TRACEPOINT = "tracepoint"
    RAW_TP = "raw_tp"
    TP_BTF = "tp_btf"
    FENTRY = "fentry"
    FEXIT = "fexit"
    KPROBE = "kprobe"
    KRETPROBE = "kretprobe"
    UPROBE = "uprobe"
    URETPROBE = "uretprobe"
    CGROUP_SKB = "cgroup_skb"
    RINGBUF = "ringbuf"
    BATCH_OPS = "batch_ops"
    LOOKUP_AND_DELETE = "lookup_and_delete"
    BPF_STATS = "bpf_stats"


# Mechanisms that attach programs to hooks (the rest are map/kernel features).
PROGRAM_MECHANISMS: Final = (
    Mechanism.TRACEPOINT,
    Mechanism.RAW_TP,
    Mechanism.TP_BTF,
    Mechanism.FENTRY,
    Mechanism.FEXIT,
    Mechanism.KPROBE,
    Mechanism.KRETPROBE,
    Mechanism.UPROBE,
    Mechanism.URETPROBE,
    Mechanism.CGROUP_SKB,
)


class Status(StrEnum):
    AVAILABLE = "available"
    UNSUPPORTED = "unsupported"
    INCONCLUSIVE = "inconclusive"


# What a kernel needs for each mechanism, said when it is missing.
NEEDS: Final[dict[Mechanism, str]] = {
    Mechanism.TRACEPOINT: "Linux 4.7+ with CONFIG_BPF_EVENTS and tracefs mounted",
    Mechanism.RAW_TP: "Linux 4.17+ with CONFIG_BPF_EVENTS",
    Mechanism.TP_BTF: "Linux 5.5+ with CONFIG_DEBUG_INFO_BTF",
    Mechanism.FENTRY: "Linux 5.5+ (x86_64) / 6.4+ (arm64) with BPF trampolines and BTF",
    Mechanism.FEXIT: "Linux 5.5+ (x86_64) / 6.4+ (arm64) with BPF trampolines and BTF",
    Mechanism.KPROBE: "CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y",
    Mechanism.KRETPROBE: "CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y",
    Mechanism.UPROBE: "CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
    Mechanism.URETPROBE: "CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y",
    Mechanism.CGROUP_SKB: "Linux 4.10+ with CONFIG_CGROUP_BPF and a cgroup v2 mount",
    Mechanism.RINGBUF: "Linux 5.8+",
    Mechanism.BATCH_OPS: "Linux 5.6+",
    Mechanism.LOOKUP_AND_DELETE: "Linux 5.14+ (BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps)",
    Mechanism.BPF_STATS: "Linux 5.8+ (BPF_ENABLE_STATS)",
}


@dataclass(frozen=True)
class Verdict:
    mechanism: Mechanism
    status: Status
    detail: str
    errno: int | None = None
    errno_name: str | None = None
    needs: str | None = None

    @property
    def available(self) -> bool:
        return self.status is Status.AVAILABLE

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mechanism"] = str(self.mechanism)
        data["status"] = str(self.status)
        return data


def _verdict(m: Mechanism, status: Status, detail: str, err: int | None = None) -> Verdict:
    name = None
    if err is not None:
        name = "ENOTSUPP" if err == bpf.ENOTSUPP else errno.errorcode.get(err, str(err))
    needs = NEEDS.get(m) if status is not Status.AVAILABLE else None
    return Verdict(m, status, detail, err, name, needs)


# --------------------------------------------------------------------------
# helpers for triggering probes


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.getpid.restype = ctypes.c_int
_libc.getpid.argtypes = []


def getpid_nr() -> int:
    return syscall_nr("getpid")


def _raw_getpid(times: int) -> None:
    nr = getpid_nr()
    for _ in range(times):
        _libc.syscall(nr)


def _libc_getpid(times: int) -> None:
    for _ in range(times):
        _libc.getpid()


def libc_path() -> str | None:
    """Path of the libc this process runs on, from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                if name.startswith("libc.so") or name.startswith("libc-"):
                    return path
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# the probes


_PROGRAM_OF: Final[dict[Mechanism, str]] = {
    Mechanism.TRACEPOINT: "probe_tracepoint",
    Mechanism.RAW_TP: "probe_raw_tp",
    Mechanism.TP_BTF: "probe_tp_btf",
    Mechanism.FENTRY: "probe_fentry",
    Mechanism.FEXIT: "probe_fexit",
    Mechanism.KPROBE: "probe_kprobe",
    Mechanism.KRETPROBE: "probe_kretprobe",
    Mechanism.UPROBE: "probe_uprobe",
    Mechanism.URETPROBE: "probe_uretprobe",
    Mechanism.CGROUP_SKB: "probe_cgroup_skb",
}

# Index of each mechanism in probe_hits[] (matches enum probe_mechanism).
_HIT_INDEX: Final[dict[Mechanism, int]] = {m: i for i, m in enumerate(PROGRAM_MECHANISMS)}


def _kprobe_unavailable_reason() -> str | None:
    """Why kprobes cannot attach, from what the kernel exposes, if it shows."""
    pmu = Path("/sys/bus/event_source/devices/kprobe")
    tracefs = system.tracefs_path()
    legacy = Path(tracefs, "kprobe_events") if tracefs else None
    try:
        no_legacy = legacy is None or not legacy.exists()
    except OSError:  # tracefs is root's: a non-root agent cannot tell
        return None
    if not pmu.exists() and no_legacy:
        return (
            "kprobes are not built into this kernel (CONFIG_KPROBES is off: "
            "no kprobe PMU and no kprobe_events in tracefs)"
        )
    return None


def _explain_load_failure(m: Mechanism, exc: bpf.BpfError) -> str:
    err = exc.errno or 0
    if m in (Mechanism.FENTRY, Mechanism.FEXIT) and err in (
        errno.EPERM,
        errno.ENOTSUP,
        bpf.ENOTSUPP,
    ):
        return (
            "the kernel refused to load a trampoline program "
            f"({errno.errorcode.get(err, err)} with full privileges): BPF "
            "trampolines are unavailable here (no CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, "
            "lockdown, or a hypervisor that forbids text patching)"
        )
    if err == errno.ESRCH or err == errno.ENOENT:
        return "the hook's BTF type or kernel function was not found"
    return f"load failed: {exc}"


def _explain_attach_failure(m: Mechanism, exc: bpf.BpfError) -> str:
    if m in (Mechanism.KPROBE, Mechanism.KRETPROBE):
        reason = _kprobe_unavailable_reason()
        if reason:
            return reason
    if m is Mechanism.TRACEPOINT and system.tracefs_path() is None:
        return "tracefs is not mounted, so tracepoint ids cannot be resolved"
    if m in (Mechanism.FENTRY, Mechanism.FEXIT) and exc.errno == bpf.ENOTSUPP:
        # Seen on Debian 12's arm64 6.1: the program loads, the attach refuses.
        why = "this kernel cannot attach BPF trampolines to kernel functions (ENOTSUPP)"
        if system.arch() == "aarch64":
            why += "; on arm64 that needs Linux 6.4+ (ftrace direct calls)"
        return why
    return f"attach failed: {exc}"


@contextmanager
def _temp_cgroup() -> Iterator[str]:
    root = system.cgroup2_mount()
    if root is None:
        raise FileNotFoundError("no cgroup v2 mount")
    path = Path(root, f"bpfscope-probe-{os.getpid()}")
    path.mkdir(exist_ok=True)
    try:
        yield str(path)
    finally:
        path.rmdir()


def probe_target(m: Mechanism) -> str:
    """Where the probe program of a syscall or libc hook attaches, spelled
    as ``Program.attach_to`` takes it (the cgroup probe makes its own)."""
    if m is Mechanism.TRACEPOINT:
        return "syscalls:sys_enter_getpid"
    if m is Mechanism.RAW_TP:
        return "sys_enter"
    if m in (Mechanism.TP_BTF, Mechanism.FENTRY, Mechanism.FEXIT):
        return ""  # fixed before load
    if m in (Mechanism.KPROBE, Mechanism.KRETPROBE):
        return system.syscall_function_prefix() + "getpid"
    if m in (Mechanism.UPROBE, Mechanism.URETPROBE):
        libc = libc_path()
        if libc is None:
            raise FileNotFoundError("cannot find this process's libc in /proc/self/maps")
        return f"{libc}:getpid"
    raise ValueError(f"{m} has no syscall or libc probe target")


def _probe_program(m: Mechanism) -> Verdict:
    prog_name = _PROGRAM_OF[m]
    with (
        bpf.quiet_libbpf(),
        bpf.BpfObject.open_bytes(object_bytes("probe"), name="bpfscope_probe") as obj,
    ):
        for name, prog in obj.programs.items():
            prog.autoload = name == prog_name
        if m in (Mechanism.FENTRY, Mechanism.FEXIT):
            target = targets.syscall_entry_function("getpid")
            if target is None:
                return _verdict(
                    m,
                    Status.INCONCLUSIVE,
                    "no getpid entry function in kernel BTF to probe with",
                )
            obj.program(prog_name).set_attach_target(target)
        obj.rodata["target_tgid"] = os.getpid()
        obj.rodata["getpid_nr"] = getpid_nr()
        try:
            obj.load()
        except bpf.BpfError as exc:
            return _verdict(m, Status.UNSUPPORTED, _explain_load_failure(m, exc), exc.errno)
        with ExitStack() as stack:
            try:
                if m is Mechanism.CGROUP_SKB:
                    target = stack.enter_context(_temp_cgroup())
                else:
                    target = probe_target(m)
                link = obj.program(prog_name).attach_to(m, target)
            except bpf.BpfError as exc:
                return _verdict(m, Status.UNSUPPORTED, _explain_attach_failure(m, exc), exc.errno)
            except OSError as exc:  # e.g. no right to make the scratch cgroup
                return _verdict(m, Status.INCONCLUSIVE, f"could not set up the probe: {exc}")
            if m is Mechanism.CGROUP_SKB:
                # Attaching is the test: no traffic is generated in the probe cgroup.
                link.destroy()
                return _verdict(m, Status.AVAILABLE, "loaded and attached to a cgroup")
            if m in (Mechanism.UPROBE, Mechanism.URETPROBE):
                _libc_getpid(3)
            else:
                _raw_getpid(3)
            hits_raw = obj.bss["probe_hits"]
            link.destroy()
        idx = _HIT_INDEX[m] * 8
        hits = int.from_bytes(hits_raw[idx : idx + 8], "little")
        if hits >= 3:
            return _verdict(m, Status.AVAILABLE, f"loaded, attached and fired ({hits} hits)")
        return _verdict(
            m, Status.INCONCLUSIVE, f"loaded and attached but fired {hits} times for 3 events"
        )


def _probe_ringbuf() -> Verdict:
    m = Mechanism.RINGBUF
    try:
        ok = bpf.probe_map_type(bpf.MapType.RINGBUF)
    except bpf.BpfError as exc:
        return _verdict(m, Status.INCONCLUSIVE, str(exc), exc.errno)
    if ok:
        return _verdict(m, Status.AVAILABLE, "BPF_MAP_TYPE_RINGBUF map created")
    return _verdict(m, Status.UNSUPPORTED, "BPF_MAP_TYPE_RINGBUF rejected; use a perf buffer")


def _probe_batch_ops() -> Verdict:
    m = Mechanism.BATCH_OPS
    try:
        with bpf.create_map(bpf.MapType.HASH, 4, 8, 8, "bpfscope_probe") as hmap:
            hmap.update((1).to_bytes(4, "little"), (2).to_bytes(8, "little"))
            entries = hmap.lookup_batch()
            if hmap.batch_supported and len(entries) == 1:
                return _verdict(m, Status.AVAILABLE, "BPF_MAP_LOOKUP_BATCH returned the entry")
            return _verdict(
                m, Status.UNSUPPORTED, "the kernel refused BPF_MAP_LOOKUP_BATCH on a hash map"
            )
    except bpf.BpfError as exc:
        return _verdict(m, Status.INCONCLUSIVE, str(exc), exc.errno)


def _probe_lookup_and_delete() -> Verdict:
    m = Mechanism.LOOKUP_AND_DELETE
    try:
        ok = bpf.have_lookup_and_delete()
    except bpf.BpfError as exc:
        return _verdict(m, Status.INCONCLUSIVE, str(exc), exc.errno)
    if ok:
        return _verdict(m, Status.AVAILABLE, "BPF_MAP_LOOKUP_AND_DELETE_ELEM took the entry")
    return _verdict(
        m,
        Status.UNSUPPORTED,
        "the kernel refused BPF_MAP_LOOKUP_AND_DELETE_ELEM on a hash map: idle rows are "
        "read, then deleted (an update between the two is lost)",
    )


def _probe_bpf_stats() -> Verdict:
    m = Mechanism.BPF_STATS
    try:
        with bpf.enable_run_time_stats():
            pass
    except bpf.BpfError as exc:
        status = Status.INCONCLUSIVE if exc.errno == errno.EPERM else Status.UNSUPPORTED
        return _verdict(m, status, str(exc), exc.errno)
    return _verdict(m, Status.AVAILABLE, "BPF_ENABLE_STATS returned a stats fd")


def _probe_uncached(m: Mechanism) -> Verdict:
    missing = system.missing_caps(names=("CAP_BPF", "CAP_PERFMON"))
    if missing:
        return _verdict(
            m, Status.INCONCLUSIVE, f"cannot probe without {', '.join(missing)} (run as root)"
        )
    if m in _PROGRAM_OF and not system.VMLINUX_BTF.is_file():
        return _verdict(
            m,
            Status.INCONCLUSIVE,
            f"cannot probe: kernel BTF ({system.VMLINUX_BTF}) is missing, and the probes "
            "are CO-RE programs (the kernel needs CONFIG_DEBUG_INFO_BTF=y)",
        )
    if m is Mechanism.TRACEPOINT:
        system.ensure_tracefs()
    try:
        if m in _PROGRAM_OF:
            return _probe_program(m)
        if m is Mechanism.RINGBUF:
            return _probe_ringbuf()
        if m is Mechanism.BATCH_OPS:
            return _probe_batch_ops()
        if m is Mechanism.LOOKUP_AND_DELETE:
            return _probe_lookup_and_delete()
        if m is Mechanism.BPF_STATS:
            return _probe_bpf_stats()
    except bpf.BpfError as exc:
        return _verdict(m, Status.INCONCLUSIVE, str(exc), exc.errno)
    raise ValueError(f"unknown mechanism {m}")


_cache: dict[Mechanism, Verdict] = {}
_cache_lock = threading.Lock()


def probe(m: Mechanism) -> Verdict:
    """Verdict for one mechanism, probed once per process."""
    with _cache_lock:
        if m not in _cache:
            _cache[m] = _probe_uncached(m)
        return _cache[m]


def probe_all(
    mechanisms: tuple[Mechanism, ...] | None = None,
    progress: Callable[[Mechanism], None] | None = None,
) -> dict[Mechanism, Verdict]:
    out = {}
    for m in mechanisms or tuple(Mechanism):
        if progress:
            progress(m)
        out[m] = probe(m)
    return out


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
