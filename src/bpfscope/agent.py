"""The agent's core: run the collectors on an interval, keep what the views
read, feed the history and the metrics.

Data flows one way: collectors -> Agent.poll_once() -> (current flows,
recent events, metrics, store). HTTP handlers only read what the agent
published; nothing they receive reaches the kernel.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import libbpf as bpf
from .flows.collector import events_of, flows_of
from .flows.records import ConnEvent, FlowRecord
from .ipprofile import IpProfiler
from .ladder import chosen_parts
from .metrics import FlowMetrics
from .store import FlowSample, Store

__all__ = ["Agent", "CollectorState", "EventEntry", "flow_sample"]

log = logging.getLogger("bpfscope.agent")


class FlowSource(Protocol):
    def start(self) -> Any: ...
    def poll(self, timeout: float = 0.0) -> list[Any]: ...
    def snapshot(self) -> list[FlowRecord]: ...
    def close(self) -> None: ...


@dataclass
class CollectorState:
    name: str
    alive: bool = False
    error: str | None = None
    polls: int = 0
    last_poll: float | None = None
    poll_seconds: float = 0.0


@dataclass(frozen=True)
class EventEntry:
    seq: int
    event: ConnEvent


def _flow_key(r: FlowRecord) -> tuple[Any, ...]:
    return (r.cgroup_id, r.netns, r.pid, r.proto, r.laddr, r.lport, r.raddr, r.rport)


def flow_sample(rec: FlowRecord, profiler: IpProfiler | None) -> FlowSample:
    """The store's view of one interval of one flow."""
    prof = profiler.profile(rec.raddr) if profiler else None
    return FlowSample(
        proto=rec.proto,
        family=4 if rec.family == "ipv4" else 6,
        laddr=rec.laddr,
        lport=rec.lport,
        raddr=rec.raddr or "",
        rport=rec.rport or 0,
        pid=rec.pid,
        comm=rec.comm,
        container=rec.container or "",
        tx_bytes=rec.tx_delta,
        rx_bytes=rec.rx_delta,
        tx_segs=rec.tx_segs_delta,
        rx_segs=rec.rx_segs_delta,
        retrans_bytes=rec.retrans_bytes_delta,
        remote_class=str(prof.remote_class) if prof else "",
        remote_name=(prof.name or "") if prof else "",
    )


@dataclass
class Agent:
    """Owns the collectors and everything derived from them."""

    flows: FlowSource
    interval: float = 1.0
    store: Store | None = None
    store_error: str | None = None
    profiler: IpProfiler | None = None
    metrics: FlowMetrics | None = None
    max_events: int = 10_000
    bpf_stats: bool = False
    on_poll: Callable[[], None] | None = None
    syscalls: Any | None = None  # a SyscallCollector (--syscalls, --syscall-latency)
    # Closed flows stay in the current view this long, so a short
    # connection is visible to a client that polls less often than the
    # collector deletes closed flows (history and events keep them anyway).
    closed_linger: float = 10.0
    local_containers: Any | None = None  # kube.LocalContainers
    kube: Any | None = None  # kube.KubeDirectory

    state: CollectorState = field(default_factory=lambda: CollectorState("flows"))
    sys_state: CollectorState = field(default_factory=lambda: CollectorState("syscalls"))
    _closed: dict[tuple[Any, ...], tuple[float, FlowRecord]] = field(default_factory=dict)
    _sys_snapshot: Any = None
    _sys_totals: Any = None
    started: float = field(default_factory=time.time)
    _events: deque[EventEntry] = field(init=False)
    _seq: int = 0
    _view: list[FlowRecord] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stats_handle: bpf.StatsHandle | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        self._events = deque(maxlen=self.max_events)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Agent:
        if self.bpf_stats:
            self._stats_handle = bpf.enable_run_time_stats()
        self.flows.start()
        self.state.alive = True
        if self.syscalls is not None:
            try:
                self.syscalls.start()
            except BaseException:
                self.flows.close()
                raise
            self.sys_state.alive = True
        if self.kube is not None:
            self.kube.start()
        self._thread = threading.Thread(target=self._loop, name="bpfscope-agent", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 3 * self.interval))
        self.flows.close()
        self.state.alive = False
        if self.syscalls is not None:
            self.syscalls.close()
            self.sys_state.alive = False
        if self.store is not None:
            self.store.close()
        if self.profiler is not None:
            self.profiler.close()
        if self.kube is not None:
            self.kube.close()
        if self._stats_handle is not None:
            self._stats_handle.close()

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            next_tick += self.interval
            try:
                self.poll_once()
            except Exception as exc:  # the collector is dead; health says so
                log.exception("flow collector failed")
                self.state.alive = False
                self.state.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def poll_once(self) -> None:
        t0 = time.monotonic()
        records = self.flows.poll(0.0)
        changed = flows_of(records)
        events = events_of(records)
        now = time.time()
        view = list(self.flows.snapshot())
        for r in changed:
            if r.closed is not None:
                self._closed[_flow_key(r)] = (now + self.closed_linger, r)
        if self._closed:
            live = {_flow_key(r) for r in view}
            for key, (until, r) in list(self._closed.items()):
                if until < now:
                    del self._closed[key]
                elif key not in live:
                    view.append(r)
        if self.local_containers is not None:
            self.local_containers.update(view)
        with self._lock:
            for e in events:
                self._seq += 1
                self._events.append(EventEntry(self._seq, e))
            self._view = view
        if self.metrics is not None:
            self.metrics.ingest(changed, events)
        if self.store is not None:
            self.store.add((flow_sample(r, self.profiler) for r in changed), now=now)
        self.state.polls += 1
        self.state.last_poll = now
        self.state.poll_seconds = time.monotonic() - t0
        if self.syscalls is not None and self.sys_state.alive:
            self._poll_syscalls()
        if self.on_poll is not None:
            self.on_poll()

    def _poll_syscalls(self) -> None:
        t0 = time.monotonic()
        try:
            snap = self.syscalls.poll()  # type: ignore[union-attr]
        except Exception as exc:  # the syscall collector is dead; flows go on
            log.exception("syscall collector failed")
            self.sys_state.alive = False
            self.sys_state.error = f"{type(exc).__name__}: {exc}"
            return
        totals = copy.deepcopy(self.syscalls.totals)  # type: ignore[union-attr]
        with self._lock:
            self._sys_snapshot = snap
            self._sys_totals = totals
        self.sys_state.polls += 1
        self.sys_state.last_poll = snap.time
        self.sys_state.poll_seconds = time.monotonic() - t0

    # -- what the views read ---------------------------------------------------

    def syscall_view(self) -> tuple[Any, Any]:
        """(last interval's Snapshot, cumulative SyscallTotals) or (None, None)."""
        with self._lock:
            return self._sys_snapshot, self._sys_totals

    def current_flows(self) -> list[FlowRecord]:
        with self._lock:
            return self._view

    @property
    def generation(self) -> int:
        """Changes whenever current_flows() does (views cache on it)."""
        return self.state.polls

    def events_since(self, seq: int = 0, limit: int | None = None) -> list[EventEntry]:
        with self._lock:
            out = [e for e in self._events if e.seq > seq]
        return out[-limit:] if limit else out

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def collector_stats(self) -> dict[str, Any]:
        stats = getattr(self.flows, "stats", None)
        return stats().to_json() if callable(stats) else {}

    def _attached_tools(self) -> list[tuple[str, Any]]:
        tools = []
        attached = getattr(self.flows, "attached", None)
        if attached is not None:
            tools.append(("flows", attached))
        if self.syscalls is not None and self.sys_state.alive:
            tools.append(("syscalls", self.syscalls.tool))
        return tools

    def programs(self) -> list[dict[str, Any]]:
        """bpfscope's own programs with hook, rung and (if on) run stats."""
        out = []
        for collector, attached in self._attached_tools():
            out += self._programs_of(collector, attached)
        return out

    @staticmethod
    def _programs_of(collector: str, attached: Any) -> list[dict[str, Any]]:
        out = []
        for choice, part in chosen_parts(attached.choices):
            prog = attached.obj.program(part.program)
            try:
                info = prog.info()
            except bpf.BpfError:
                continue
            out.append(
                {
                    "collector": collector,
                    "hook": choice.hook.name,
                    "rung": str(part.mechanism),
                    "target": part.target,
                    "program": part.program,
                    "id": info.id,
                    "run_cnt": info.run_cnt,
                    "run_time_ns": info.run_time_ns,
                    "avg_ns": info.run_time_ns / info.run_cnt if info.run_cnt else None,
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        stats = self.collector_stats()
        store: dict[str, Any]
        if self.store is not None:
            store = {"ok": self.store.last_error is None, **self.store.stats()}
        else:
            store = {"ok": False, "error": self.store_error or "history disabled"}
        collectors: dict[str, Any] = {"flows": self._flows_health(stats)}
        if self.syscalls is not None:
            snap, _ = self.syscall_view()
            collectors["syscalls"] = {
                "alive": self.sys_state.alive,
                "error": self.sys_state.error,
                "latency": self.syscalls.latency,
                "polls": self.sys_state.polls,
                "last_poll": self.sys_state.last_poll,
                "poll_seconds": round(self.sys_state.poll_seconds, 6),
                "rungs": self.syscalls.tool.rungs() if self.sys_state.alive else {},
                "events_dropped": snap.drops.total if snap is not None else 0,
            }
        return {
            "ok": all(c["alive"] for c in collectors.values()),
            "uptime_seconds": round(time.time() - self.started, 3),
            "collectors": collectors,
            "store": store,
            "kubernetes": (
                {
                    "api": self.kube.api,
                    "refreshes": self.kube.refreshes,
                    "error": self.kube.last_error,
                }
                if self.kube is not None
                else None
            ),
            "bpf_stats": self.bpf_stats,
        }

    def _flows_health(self, stats: dict[str, Any]) -> dict[str, Any]:
        return {
            "alive": self.state.alive,
            "error": self.state.error,
            "polls": self.state.polls,
            "last_poll": self.state.last_poll,
            "poll_seconds": round(self.state.poll_seconds, 6),
            "rungs": stats.get("rungs", {}),
            "tcp_accounting": stats.get("tcp_accounting"),
            "unattributed": stats.get("unattributed", 0),
            "udp": stats.get("udp", True),
            "udp_note": (
                "UDP accounting shares the TCP send/receive hooks on this kernel"
                if stats.get("udp_shares_tcp_hooks")
                else None
            ),
            "events_dropped": stats.get("events_dropped", 0),
            "events_skipped": stats.get("events_skipped", 0),
            "flows_evicted": stats.get("flows_evicted", 0),
            "map_fill": stats.get("map_fill", 0.0),
            "flows_tracked": stats.get("flows_tracked", 0),
        }

    def self_metrics(self) -> dict[str, Any]:
        stats = self.collector_stats()
        dropped = {"flows": stats.get("events_dropped", 0) + stats.get("events_skipped", 0)}
        collectors = {"flows": self.state.alive}
        if self.syscalls is not None:
            snap, _ = self.syscall_view()
            dropped["syscalls"] = snap.drops.total if snap is not None else 0
            collectors["syscalls"] = self.sys_state.alive
        return {
            "programs": self.programs(),
            "events_dropped": dropped,
            "map_entries": {"flows": stats.get("flows_in_map", 0)},
            "collectors": collectors,
        }
