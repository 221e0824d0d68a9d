"""Registry entry and loader of the syscall tracer's BPF object.

``hooks()`` is the attach ladder (tp_btf -> raw_tp -> raw_syscalls
tracepoints; fentry does not apply: there is no single kernel function
behind every syscall's entry and exit) of the latency mode, which uses both
hooks; the default counts mode uses ``count_hooks()``, sys_exit alone.
``load()`` turns a :class:`SyscallFilter` into the object's
``const volatile`` settings.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from ..features import Mechanism
from ..ladder import AttachedObject, Hook, Rung, load_object
from ..libbpf import num_possible_cpus
from ..sysnames import syscall_nr

__all__ = [
    "BUCKET_BYTES",
    "COMM_LEN",
    "DEFAULT_MAX_ENTRIES",
    "DESCRIPTION",
    "ENTRIES_PER_CPU",
    "HIST_SLOTS",
    "MASK_BITS",
    "MAX_DEFAULT_ENTRIES",
    "NAME",
    "OBJECT",
    "CountsValue",
    "ErrnoKey",
    "Inflight",
    "StatsKey",
    "StatsValue",
    "SyscallFilter",
    "count_hooks",
    "default_max_entries",
    "hooks",
    "idle_bytes",
    "load",
    "map_sizes",
    "stats_map",
    "syscall_mask",
    "table_copies",
]

OBJECT: Final = "syscalls"
NAME: Final = "syscalls"
DESCRIPTION: Final = "per-process syscall counts and errors (sys_exit); latency: -L (+sys_enter)"
CORE: Final = False

# Mirrors of syscalls.h; a test checks them against the object's BTF.
HIST_SLOTS: Final = 40
MASK_BITS: Final = 512
COMM_LEN: Final = 16
DROP_SLOTS: Final = {"inflight_nomem": 0, "stats_full": 1, "errnos_full": 2}


# Entries of the (process, syscall, CPU) map per mode: a process holds one
# entry per syscall and CPU it made that syscall on in the current interval
# (each poll empties the copy it reads; there are two copies). No map is
# preallocated: an entry costs ~100 B (counts mode: 32 B value; -L: 360 B
# value, ~430 B) only while it is held; what is allocated from the start is
# the hash's bucket array, 16 B per max entry (rounded up to a power of
# two). Short processes each add an entry per syscall they make (about 20
# for /bin/true) until the poll after they exit: 65536 held 1,000 spawns in
# 1.5 s (peak ~19,000). The defaults grow with the possible CPUs (a
# multi-threaded process spreads its rows over the CPUs it runs on) from
# DEFAULT_MAX_ENTRIES by ENTRIES_PER_CPU a CPU, up to MAX_DEFAULT_ENTRIES.
DEFAULT_MAX_ENTRIES: Final = {"counts": 65536, "latency": 16384}
ENTRIES_PER_CPU: Final = {"counts": 2048, "latency": 512}
MAX_DEFAULT_ENTRIES: Final = {"counts": 1 << 20, "latency": 1 << 18}
BUCKET_BYTES: Final = 16  # struct bucket of a kernel hash map


class StatsKey(ctypes.Structure):
    """Key of syscalls_counts and syscalls_stats: a CPU's row of a (process, syscall)."""

    _fields_ = [("tgid", ctypes.c_uint32), ("nr", ctypes.c_uint32), ("cpu", ctypes.c_uint32)]


class CountsValue(ctypes.Structure):
    """Value of syscalls_counts (counts mode)."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class StatsValue(ctypes.Structure):
    """Value of syscalls_stats (latency mode)."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
        ("total_ns", ctypes.c_uint64),
        ("hist", ctypes.c_uint64 * HIST_SLOTS),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class ErrnoKey(ctypes.Structure):
    """Key of syscalls_errnos: a CPU's row of a (process, syscall, errno)."""

    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("nr", ctypes.c_uint32),
        ("err", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
    ]


class Inflight(ctypes.Structure):
    _fields_ = [("start_ns", ctypes.c_uint64), ("nr", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def _hook(tp: str, progs: tuple[str, str, str]) -> Hook:
    """``tp`` ("sys_enter"/"sys_exit") through tp_btf, raw_tp, tracepoint."""
    btf, raw, trace = progs
    return Hook(
        tp,
        (
            Rung(Mechanism.TP_BTF, btf, tp),
            Rung(Mechanism.RAW_TP, raw, tp),
            Rung(Mechanism.TRACEPOINT, trace, f"raw_syscalls:{tp}"),
        ),
    )


def _programs(prefix: str, hook: str) -> tuple[str, str, str]:
    return (f"{prefix}_{hook}_btf", f"{prefix}_{hook}_raw", f"{prefix}_{hook}_tp")


def hooks() -> list[Hook]:
    """Latency mode (-L): sys_enter and sys_exit. Also what doctor checks:
    the counts mode's sys_exit hook is one of them."""
    return [
        _hook("sys_enter", ("sys_enter_btf", "sys_enter_raw", "sys_enter_tp")),
        _hook("sys_exit", ("sys_exit_btf", "sys_exit_raw", "sys_exit_tp")),
    ]


def count_hooks() -> list[Hook]:
    """Counts mode (the default): sys_exit alone (no latency, no exit/exit_group)."""
    return [_hook("sys_exit", _programs("count", "exit"))]


@dataclass(frozen=True)
class SyscallFilter:
    """What the kernel side counts. Empty/None fields filter nothing."""

    tgid: int | None = None
    comm: str | None = None  # command-name prefix (at most 15 bytes are compared)
    cgroup_id: int | None = None
    syscalls: frozenset[int] = field(default_factory=frozenset)
    failed_only: bool = False

    def describe(self) -> str:
        parts = []
        if self.tgid:
            parts.append(f"pid {self.tgid}")
        if self.comm:
            parts.append(f"command {self.comm!r}*")
        if self.cgroup_id:
            parts.append(f"cgroup id {self.cgroup_id}")
        if self.syscalls:
            parts.append(f"{len(self.syscalls)} syscall(s)")
        if self.failed_only:
            parts.append("failed calls only")
        return ", ".join(parts) or "everything"


def syscall_mask(nrs: Iterable[int]) -> bytes:
    """The rodata bitmap selecting ``nrs`` (little-endian u64 words)."""
    words = [0] * (MASK_BITS // 64)
    for nr in nrs:
        if not 0 <= nr < MASK_BITS:
            raise ValueError(f"syscall number {nr} is outside the filter's 0..{MASK_BITS - 1}")
        words[nr >> 6] |= 1 << (nr & 63)
    return b"".join(w.to_bytes(8, "little") for w in words)


def _rodata(flt: SyscallFilter, track_errnos: bool) -> dict[str, int | bytes]:
    rodata: dict[str, int | bytes] = {
        "exit_nr": syscall_nr("exit"),
        "exit_group_nr": syscall_nr("exit_group"),
        "execve_nr": syscall_nr("execve"),
        "execveat_nr": syscall_nr("execveat"),
        "failed_only": int(flt.failed_only),
        "track_errnos": int(track_errnos),
    }
    if flt.tgid:
        rodata["target_tgid"] = flt.tgid
    if flt.cgroup_id:
        rodata["target_cgroup"] = flt.cgroup_id
    if flt.comm:
        raw = os.fsencode(flt.comm)[: COMM_LEN - 1]
        rodata["target_comm"] = raw
        rodata["target_comm_len"] = len(raw)
    if flt.syscalls:
        rodata["filter_syscalls"] = 1
        rodata["syscall_mask"] = syscall_mask(flt.syscalls)
    return rodata


def stats_map(latency: bool) -> str:
    """The (process, syscall, CPU) map of a mode (its first copy)."""
    return "syscalls_stats" if latency else "syscalls_counts"


# Every table's second copy (the kernel keeps 15 characters of a map name).
_SECOND: Final = {
    "syscalls_counts": "syscalls_count2",
    "syscalls_stats": "syscalls_stats2",
    "syscalls_errnos": "syscalls_errno2",
}


def table_copies(name: str) -> tuple[str, str]:
    """The two copies of a table (``syscalls_gen`` 0 and 1) by its first's name."""
    return name, _SECOND[name]


def default_max_entries(*, latency: bool, ncpu: int | None = None) -> int:
    """The mode's default map size for ``ncpu`` possible CPUs (default: this
    host's): :data:`DEFAULT_MAX_ENTRIES`, or :data:`ENTRIES_PER_CPU` a CPU
    if more, at most :data:`MAX_DEFAULT_ENTRIES`."""
    mode = "latency" if latency else "counts"
    if ncpu is None:
        ncpu = num_possible_cpus()
    scaled = max(DEFAULT_MAX_ENTRIES[mode], ENTRIES_PER_CPU[mode] * ncpu)
    return min(scaled, MAX_DEFAULT_ENTRIES[mode])


def map_sizes(
    *, latency: bool, max_entries: int | None = None, ncpu: int | None = None
) -> dict[str, int]:
    """max_entries of each map at load: the mode's map ``max_entries``
    (default :func:`default_max_entries` for ``ncpu``), the errno map a
    quarter of it (at least 1024), the other mode's map a single entry (it
    is never written); each table's two copies alike."""
    n = max_entries or default_max_entries(latency=latency, ncpu=ncpu)
    first = {
        stats_map(latency): n,
        stats_map(not latency): 1,
        "syscalls_errnos": max(1024, n // 4),
    }
    return {copy: size for name, size in first.items() for copy in table_copies(name)}


def idle_bytes(sizes: dict[str, int]) -> int:
    """Kernel memory the maps of ``sizes`` hold from the start, however few
    rows they have: their bucket arrays (16 B per max entry, rounded up to a
    power of two)."""
    return sum(BUCKET_BYTES * (1 << (n - 1).bit_length()) for n in sizes.values())


def load(
    flt: SyscallFilter | None = None,
    *,
    latency: bool = False,
    track_errnos: bool = True,
    max_entries: int | None = None,
    force: Mechanism | None = None,
    btf_path: str | None = None,
) -> AttachedObject:
    """Load and attach the tracer; the caller closes it (context manager).

    By default counts and errors only, on sys_exit; ``latency=True`` also
    times every call (sys_enter and sys_exit, two clock reads per call).
    ``max_entries``: of the mode's (process, syscall) map (default
    :func:`default_max_entries`: grows with the possible CPUs); the errno
    map gets a quarter.
    """
    return load_object(
        OBJECT,
        hooks() if latency else count_hooks(),
        rodata=_rodata(flt or SyscallFilter(), track_errnos),
        max_entries=map_sizes(latency=latency, max_entries=max_entries),
        force=force,
        btf_path=btf_path,
    )
