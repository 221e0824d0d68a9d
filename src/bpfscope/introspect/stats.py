"""Run-time statistics of every BPF program, for a window only.

``StatsSession`` turns ``kernel.bpf_stats_enabled`` on through a
``BPF_ENABLE_STATS`` file descriptor: the kernel turns statistics off again
when the last such fd closes, which happens on any exit of this process,
SIGKILL included. Each ``sample()`` returns per-program deltas since the
previous one: runs, ns per run and CPU share.

Statistics are not free: every program run then reads the clock twice and
updates per-CPU counters. ``measure_cost()`` measures that here.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from .. import libbpf as bpf
from .. import objects
from ..sysnames import syscall_nr
from . import holders as holders_mod
from .inventory import privileged, read_link, read_prog, require_introspection_privileges
from .names import KernelNames, kernel_names

__all__ = [
    "SORT_KEYS",
    "ProgStat",
    "StatsCost",
    "StatsSession",
    "StatsSnapshot",
    "cached_cost",
    "measure_cost",
    "stats_enabled",
]

STATS_SYSCTL: Final = Path("/proc/sys/kernel/bpf_stats_enabled")

SORT_KEYS: Final[dict[str, Callable[[ProgStat], Any]]] = {
    "cpu": lambda s: (-s.run_time_ns, -s.runs, s.id),
    "runs": lambda s: (-s.runs, -s.run_time_ns, s.id),
    "avg": lambda s: (-s.avg_ns, -s.runs, s.id),
    "id": lambda s: s.id,
    "name": lambda s: (s.name, s.id),
}


def stats_enabled() -> bool | None:
    """``kernel.bpf_stats_enabled`` (None if unreadable).

    This reflects only writes to the sysctl itself: statistics turned on
    through a BPF_ENABLE_STATS fd (what bpfscope does) leave it at 0. Who
    holds such fds: ``holders.scan().stats``."""
    try:
        return STATS_SYSCTL.read_text().strip() != "0"
    except OSError:
        return None


@dataclass
class ProgStat:
    id: int
    name: str
    type: str
    runs: int
    run_time_ns: int
    avg_ns: float
    cpu_pct: float
    run_cnt_total: int
    run_time_ns_total: int
    recursion_misses: int
    bpfscope: bool = False


@dataclass
class StatsSnapshot:
    time: float
    interval_s: float
    progs: list[ProgStat] = field(default_factory=list)

    @property
    def total_runs(self) -> int:
        return sum(p.runs for p in self.progs)

    @property
    def total_cpu_pct(self) -> float:
        return sum(p.cpu_pct for p in self.progs)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "interval_s": self.interval_s,
            "total_runs": self.total_runs,
            "total_cpu_pct": round(self.total_cpu_pct, 4),
            "progs": [asdict(p) for p in self.progs],
        }


@dataclass
class _Seen:
    name: str
    type: str
    bpfscope: bool
    run_cnt: int
    run_time_ns: int
    misses: int


class StatsSession:
    """Statistics on between ``start()`` and ``close()`` (a context manager)."""

    def __init__(
        self,
        *,
        ids: list[int] | None = None,
        names: KernelNames | None = None,
        enable: Callable[[], bpf.StatsHandle] = bpf.enable_run_time_stats,
    ) -> None:
        self._ids = ids
        self._names = names
        self._enable = enable
        self._handle: bpf.StatsHandle | None = None
        self._seen: dict[int, _Seen] = {}
        self._last_mono = 0.0
        self._last_boot = 0

    @property
    def active(self) -> bool:
        return self._handle is not None

    def start(self) -> StatsSession:
        require_introspection_privileges()
        self._names = self._names or kernel_names()
        self._handle = privileged("enable BPF run-time statistics", self._enable)
        self._last_mono = time.monotonic()
        self._last_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        # Baseline: counters now (stats may have been on already elsewhere).
        try:
            self._read(baseline=True)
        except BaseException:
            self.close()
            raise
        return self

    def _current_ids(self) -> list[int]:
        if self._ids is not None:
            return list(self._ids)
        return privileged("list BPF programs", lambda: list(bpf.prog_ids()))

    def _read(self, *, baseline: bool) -> list[ProgStat]:
        assert self._names is not None
        out: list[ProgStat] = []
        live: set[int] = set()
        hs: holders_mod.Holders | None = None
        for pid in self._current_ids():
            try:
                info = bpf.prog_info_by_id(pid)
            except bpf.BpfError:
                continue  # gone, or not readable: skip it
            if info is None:
                continue
            live.add(pid)
            prev = self._seen.get(pid)
            if prev is None:
                if hs is None:
                    hs = holders_mod.scan()
                rec = read_prog(pid, self._names)
                name = rec.name if rec else info.name
                own = any(h.bpfscope for h in hs.of("prog", pid))
                if baseline or info.load_time_ns < self._last_boot:
                    # Existed at the previous sample: its counters so far are
                    # not ours to report.
                    prev = _Seen(
                        name,
                        self._names.prog_type(info.type),
                        own,
                        info.run_cnt,
                        info.run_time_ns,
                        info.recursion_misses,
                    )
                else:  # loaded since: everything it counted is in the window
                    prev = _Seen(name, self._names.prog_type(info.type), own, 0, 0, 0)
                self._seen[pid] = prev
            runs = info.run_cnt - prev.run_cnt
            ns = info.run_time_ns - prev.run_time_ns
            misses = info.recursion_misses - prev.misses
            prev.run_cnt, prev.run_time_ns, prev.misses = (
                info.run_cnt,
                info.run_time_ns,
                info.recursion_misses,
            )
            out.append(
                ProgStat(
                    id=pid,
                    name=prev.name,
                    type=prev.type,
                    runs=runs,
                    run_time_ns=ns,
                    avg_ns=ns / runs if runs else 0.0,
                    cpu_pct=0.0,
                    run_cnt_total=info.run_cnt,
                    run_time_ns_total=info.run_time_ns,
                    recursion_misses=misses,
                    bpfscope=prev.bpfscope,
                )
            )
        for gone in set(self._seen) - live:
            del self._seen[gone]
        return out

    def sample(self, sort: str = "cpu") -> StatsSnapshot:
        """Deltas since the previous sample (or ``start()``)."""
        if self._handle is None:
            raise RuntimeError("statistics session not started")
        # Stamped before reading: everything that happened before this time
        # is in this snapshot or an earlier one.
        wall = time.time()
        now = time.monotonic()
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        rows = self._read(baseline=False)
        interval = max(now - self._last_mono, 1e-9)
        self._last_mono = now
        self._last_boot = boot
        for r in rows:
            r.cpu_pct = 100.0 * r.run_time_ns / (interval * 1e9)
        rows.sort(key=SORT_KEYS[sort])
        return StatsSnapshot(time=wall, interval_s=interval, progs=rows)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> StatsSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# what statistics cost per program run, measured here


@dataclass(frozen=True)
class StatsCost:
    """Raw getpid() timed in this thread's CPU time, statistics off vs on.

    ``programs_on_path`` is how many BPF programs run per getpid() here
    (ours plus any other tool's on sys_enter/sys_exit or getpid); the cost
    per program run is the added cost per call divided by it.
    """

    calls: int
    rounds: int
    off_ns_per_call: float
    on_ns_per_call: float
    program_runs_counted: int
    programs_on_path: int = 1

    @property
    def added_ns_per_call(self) -> float:
        return self.on_ns_per_call - self.off_ns_per_call

    @property
    def added_ns(self) -> float:
        """Added ns per program run."""
        return self.added_ns_per_call / max(self.programs_on_path, 1)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["added_ns_per_call"] = round(self.added_ns_per_call, 1)
        out["added_ns_per_run"] = round(self.added_ns, 1)
        return out


def on_getpid_path(target: str) -> bool:
    """Does a link with this target (``links.summarize``) run on getpid()?"""
    words = target.split()
    last = words[-1] if words else ""
    return (
        last in ("sys_enter", "sys_exit", "btf_trace_sys_enter", "btf_trace_sys_exit")
        or "getpid" in last
    )


def _programs_on_path() -> int:
    """Other tools' programs that also run on every getpid() right now."""

    names = kernel_names()
    count = 0
    for link_id in privileged("list BPF links", lambda: list(bpf.link_ids())):
        try:
            link = read_link(link_id, names)
        except bpf.BpfError:
            continue
        if link is not None and on_getpid_path(link.target):
            count += 1
    return count


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "bpfscope" / "stats-cost.json"


def cached_cost() -> dict[str, Any] | None:
    """The last measurement on this machine, if any."""
    try:
        data: dict[str, Any] = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("kernel") == os.uname().release else None


def _save(cost: StatsCost) -> None:
    data = cost.to_json()
    data["kernel"] = os.uname().release
    data["measured_at"] = time.time()
    with contextlib.suppress(OSError):
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")


def _getpid_loop() -> Callable[[int], None]:

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    nr = syscall_nr("getpid")

    def loop(n: int) -> None:
        for _ in range(n):
            fn(nr)

    return loop


def measure_cost(
    *, calls: int = 100_000, rounds: int = 15, btf_path: str | None = None, save: bool = True
) -> StatsCost:
    """Time raw getpid() with an empty tracepoint program attached, with
    statistics off and on in alternating rounds.

    Each round is timed in this thread's CPU time (time spent preempted by
    other work on a busy machine does not count) and the fastest round of
    each kind is kept: the difference per call, divided by the number of BPF
    programs on the getpid path, is what statistics add to one program run.
    """

    require_introspection_privileges()
    loop = _getpid_loop()
    off: list[float] = []
    on: list[float] = []
    counted = 0
    with bpf.BpfObject.open_bytes(
        objects.object_bytes("probe"), name="bpfscope_probe", btf_path=btf_path
    ) as obj:
        for name, prog in obj.programs.items():
            prog.autoload = name == "stats_cost_getpid"
        obj.load()
        prog = obj.program("stats_cost_getpid")
        prog.attach()
        on_path = _programs_on_path()  # ours included
        loop(calls // 10)  # warm up
        for _ in range(rounds):
            t0 = time.thread_time_ns()
            loop(calls)
            off.append((time.thread_time_ns() - t0) / calls)
            with privileged("enable BPF run-time statistics", bpf.enable_run_time_stats):
                before = prog.info().run_cnt
                t0 = time.thread_time_ns()
                loop(calls)
                on.append((time.thread_time_ns() - t0) / calls)
                counted += prog.info().run_cnt - before
        on_path = max(on_path, _programs_on_path())
    cost = StatsCost(
        calls=calls,
        rounds=rounds,
        off_ns_per_call=min(off),
        on_ns_per_call=min(on),
        program_runs_counted=counted,
        programs_on_path=max(on_path, 1),
    )
    if save:
        _save(cost)
    return cost
