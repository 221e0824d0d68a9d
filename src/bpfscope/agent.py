"""The agent's core: run the collectors on an interval, hand what changed
to the sinks, publish what the views read.

Data flows one way: collectors -> Agent.poll_once() -> sinks (recent
events, history, metrics, exporters: each handed what changed, once) and a
published state (current flows, the syscall interval, the agent's own
programs and stats) that HTTP handlers read. Nothing they receive reaches
the kernel or the database.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import libbpf as bpf
from .flows.collector import Record, events_of, flows_of
from .flows.records import FlowRecord
from .ipprofile import IpProfiler
from .ladder import AttachedObject, Choice, chosen_parts
from .metrics import FlowMetrics
from .pipeline import Collector, Sink
from .sinks import EventBuffer, EventEntry, HistorySink, PollChanges, Published, flow_sample
from .store import Store
from .syscalls.records import Snapshot, SyscallTotals

__all__ = ["Agent", "CollectorState", "EventEntry", "FlowSource", "SyscallSource", "flow_sample"]

log = logging.getLogger("bpfscope.agent")


class FlowSource(Collector[list[Record]], Protocol):
    """The flow collector as the agent uses it: a collector that also keeps
    every flow it tracks."""

    def snapshot(self) -> list[FlowRecord]: ...


class _Attached(Protocol):
    obj: Any
    choices: list[Choice]


class SyscallSource(Collector[Snapshot], Protocol):
    """The syscall collector as the agent uses it: a collector of
    per-interval snapshots that also keeps cumulative totals."""

    latency: bool
    totals: SyscallTotals

    @property
    def tool(self) -> _Attached: ...


@dataclass
class CollectorState:
    name: str
    alive: bool = False
    error: str | None = None
    polls: int = 0
    last_poll: float | None = None
    poll_seconds: float = 0.0


def _flow_key(r: FlowRecord) -> tuple[Any, ...]:
    return (r.cgroup_id, r.netns, r.pid, r.proto, r.laddr, r.lport, r.raddr, r.rport)


@dataclass
class Agent:
    """Owns the collectors, the sinks, and the state it publishes."""

    flows: FlowSource
    interval: float = 1.0
    store: Store | None = None
    store_error: str | None = None
    profiler: IpProfiler | None = None
    metrics: FlowMetrics | None = None
    max_events: int = 10_000
    bpf_stats: bool = False
    sinks: Sequence[Sink[PollChanges]] = ()  # more sinks (exporters), after the agent's own
    syscalls: SyscallSource | None = None  # --syscalls, --syscall-latency
    # Closed flows stay in the current view this long, so a short
    # connection is visible to a client that polls less often than the
    # collector deletes closed flows (history and events keep them anyway).
    closed_linger: float = 10.0
    local_containers: Any | None = None  # kube.LocalContainers
    kube: Any | None = None  # kube.KubeDirectory

    state: CollectorState = field(default_factory=lambda: CollectorState("flows"))
    sys_state: CollectorState = field(default_factory=lambda: CollectorState("syscalls"))
    _closed: dict[tuple[Any, ...], tuple[float, FlowRecord]] = field(default_factory=dict)
    _sys_snapshot: Snapshot | None = None
    _sys_totals: SyscallTotals | None = None
    _published: Published = field(default_factory=Published)
    started: float = field(default_factory=time.time)
    _events: EventBuffer = field(init=False)
    _sinks: list[Sink[PollChanges]] = field(init=False)
    _view: list[FlowRecord] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stats_handle: bpf.StatsHandle | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        self._events = EventBuffer(self.max_events)
        self._sinks = [self._events]
        if self.store is not None:
            self._sinks.append(HistorySink(self.store, self.profiler))
        if self.metrics is not None:
            self._sinks.append(self.metrics)
        self._sinks += self.sinks

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
        self._published = self._read_own()  # health has its figures before the first poll
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
                self._hand_over_failure()
                return
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def poll_once(self) -> None:
        t0 = time.monotonic()
        records = self.flows.poll()
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
            self._view = view
        self.state.polls += 1
        self.state.last_poll = now
        self.state.poll_seconds = time.monotonic() - t0
        snap = self._poll_syscalls() if self.syscalls is not None and self.sys_state.alive else None
        published = self._read_own()
        changes = PollChanges(
            time=now,
            flows=changed,
            events=events,
            syscalls=snap,
            self_metrics=published.self_metrics(
                self.state.alive, self.sys_state.alive if self.syscalls is not None else None
            ),
        )
        for sink in self._sinks:
            sink.consume(changes)
        with self._lock:
            self._published = published

    def _read_own(self) -> Published:
        """The agent's own state, read once per poll: scrapes and health
        probes then cost no kernel call and no query."""
        return Published(
            programs=self._read_programs(),
            flow_stats=self.flows.stats().to_json(),
            syscall_stats=self.syscalls.stats().to_json() if self.syscalls is not None else None,
            store_stats=self.store.stats() if self.store is not None else None,
        )

    def _hand_over_failure(self) -> None:
        """Tell the sinks, once, that the collectors stopped (nothing changed
        but the agent's own health, which /metrics shows)."""
        changes = PollChanges(
            time=time.time(), flows=[], events=[], syscalls=None, self_metrics=self.self_metrics()
        )
        for sink in self._sinks:
            try:
                sink.consume(changes)
            except Exception:
                log.exception("a sink failed")

    def _poll_syscalls(self) -> Snapshot | None:
        assert self.syscalls is not None
        t0 = time.monotonic()
        try:
            snap = self.syscalls.poll()
        except Exception as exc:  # the syscall collector is dead; flows go on
            log.exception("syscall collector failed")
            self.sys_state.alive = False
            self.sys_state.error = f"{type(exc).__name__}: {exc}"
            return None
        totals = copy.deepcopy(self.syscalls.totals)
        with self._lock:
            self._sys_snapshot = snap
            self._sys_totals = totals
        self.sys_state.polls += 1
        self.sys_state.last_poll = snap.time
        self.sys_state.poll_seconds = time.monotonic() - t0
        return snap

    # -- what the views read ---------------------------------------------------

    def syscall_view(self) -> tuple[Snapshot | None, SyscallTotals | None]:
        """(last interval's Snapshot, cumulative SyscallTotals) or (None, None)."""
        with self._lock:
            return self._sys_snapshot, self._sys_totals

    def current_flows(self) -> list[FlowRecord]:
        with self._lock:
            return self._view

    @property
    def published(self) -> Published:
        """The agent's own state as of the last poll."""
        with self._lock:
            return self._published

    @property
    def generation(self) -> int:
        """Changes whenever current_flows() does (views cache on it)."""
        return self.state.polls

    def events_since(self, seq: int = 0, limit: int | None = None) -> list[EventEntry]:
        return self._events.since(seq, limit)

    @property
    def last_seq(self) -> int:
        return self._events.last_seq

    def collector_stats(self) -> dict[str, Any]:
        return self.published.flow_stats

    def programs(self) -> list[dict[str, Any]]:
        """bpfscope's own programs with hook, rung and (if on) run stats, as
        read at the last poll."""
        return self.published.programs

    def _attached_tools(self) -> list[tuple[str, _Attached]]:
        tools: list[tuple[str, _Attached]] = []
        attached: AttachedObject | None = getattr(self.flows, "attached", None)
        if attached is not None:
            tools.append(("flows", attached))
        if self.syscalls is not None and self.sys_state.alive:
            tools.append(("syscalls", self.syscalls.tool))
        return tools

    def _read_programs(self) -> list[dict[str, Any]]:
        out = []
        for collector, attached in self._attached_tools():
            out += self._programs_of(collector, attached)
        return out

    @staticmethod
    def _programs_of(collector: str, attached: _Attached) -> list[dict[str, Any]]:
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
        published = self.published
        stats = published.flow_stats
        store: dict[str, Any]
        if self.store is not None:
            store = {"ok": self.store.last_error is None, **(published.store_stats or {})}
        else:
            store = {"ok": False, "error": self.store_error or "history disabled"}
        collectors: dict[str, Any] = {"flows": self._flows_health(stats)}
        if self.syscalls is not None:
            sys_stats = published.syscall_stats or {}
            collectors["syscalls"] = {
                "alive": self.sys_state.alive,
                "error": self.sys_state.error,
                "latency": self.syscalls.latency,
                "polls": self.sys_state.polls,
                "last_poll": self.sys_state.last_poll,
                "poll_seconds": round(self.sys_state.poll_seconds, 6),
                "rungs": sys_stats.get("rungs", {}) if self.sys_state.alive else {},
                "events_dropped": sys_stats.get("events_dropped", 0),
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
            "flow_inserts_refused": stats.get("update_failures", 0),
            "map_fill": stats.get("map_fill", 0.0),
            "flows_tracked": stats.get("flows_tracked", 0),
        }

    def self_metrics(self) -> dict[str, Any]:
        """bpfscope's own cost and health, as of the last poll."""
        return self.published.self_metrics(
            self.state.alive, self.sys_state.alive if self.syscalls is not None else None
        )
