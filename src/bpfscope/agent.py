"""The agent's core: run the collectors on an interval, hand what changed
to the sinks, publish what the views read.

Data flows one way: collectors -> Agent.poll_once() -> sinks (recent
events, history, metrics, exporters: each handed what changed, once) and a
published state (current flows, the syscall interval, the agent's own
programs and stats) that HTTP handlers read. Nothing they receive reaches
the kernel or the database.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from . import libbpf as bpf
from .flows.collector import Record, events_of, flows_of
from .flows.events import ConnTally, EventBatch
from .flows.records import FlowRecord
from .ipprofile import IpProfiler
from .ladder import AttachedObject, Choice, chosen_parts
from .metrics import FlowMetrics
from .pipeline import Collector, Sink
from .sinks import EventBuffer, EventEntry, HistorySink, PollChanges, Published, flow_sample
from .store import Store
from .syscalls.records import Snapshot, SyscallTotals

__all__ = [
    "POLL_BUCKETS",
    "Agent",
    "CollectorState",
    "DropSource",
    "EventEntry",
    "FlowSource",
    "SyscallSource",
    "flow_sample",
]

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


# Poll durations (seconds): bpfscope_collector_poll_duration_seconds.
POLL_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Closed flows lingering in the current view are bounded in bytes (a
# FlowRecord with its strings and key, measured with tracemalloc: ~2.1 KB).
FLOW_RECORD_BYTES: Final = 2100


class DropSource(Collector[list[Any]], Protocol):
    """The packet-drop collector as the agent uses it (drops.collector):
    records of what grew at each poll, every record it keeps, cumulative
    totals by (reason, protocol label)."""

    totals: dict[tuple[str, str], int]
    reasons: Any  # drops.records.ReasonNames

    def snapshot(self) -> list[Any]: ...

    def use_flow_owners(self, flows: Iterable[Any]) -> None: ...

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
    # monotonic end of the last completed poll (start of the agent before one)
    last_done: float = field(default_factory=time.monotonic)
    longest_poll: float = 0.0
    longest_gap: float = 0.0  # most seconds between two completed polls
    poll_buckets: list[int] = field(default_factory=lambda: [0] * (len(POLL_BUCKETS) + 1))
    poll_seconds_total: float = 0.0

    def done(self, seconds: float, wall: float) -> None:
        """A poll completed that took ``seconds``."""
        now = time.monotonic()
        if self.polls:
            self.longest_gap = max(self.longest_gap, now - self.last_done)
        self.polls += 1
        self.last_poll = wall
        self.last_done = now
        self.poll_seconds = seconds
        self.longest_poll = max(self.longest_poll, seconds)
        self.poll_seconds_total += seconds
        self.poll_buckets[bisect.bisect_left(POLL_BUCKETS, seconds)] += 1

    def age(self) -> float:
        """Seconds since the last completed poll (since start before one)."""
        return time.monotonic() - self.last_done


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
    closed_linger_bytes: int = 16 << 20  # at most this much of them (oldest go first)
    local_containers: Any | None = None  # kube.LocalContainers
    kube: Any | None = None  # kube.KubeDirectory
    drops: DropSource | None = None  # packet drops (--no-drops: off)

    state: CollectorState = field(default_factory=lambda: CollectorState("flows"))
    sys_state: CollectorState = field(default_factory=lambda: CollectorState("syscalls"))
    drop_state: CollectorState = field(default_factory=lambda: CollectorState("drops"))
    _drop_view: tuple[list[Any], dict[tuple[str, str], int]] = field(
        default_factory=lambda: ([], {})
    )
    _drop_stats: dict[str, Any] = field(default_factory=dict)
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
            self.metrics.live_drops = self.live_drops
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
        self._start_drops()
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
        if self.drops is not None:
            self.drops.close()
            self.drop_state.alive = False
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
        batches = [r for r in records if isinstance(r, EventBatch)]
        now = time.time()
        view = list(self.flows.snapshot())
        for r in changed:
            if r.closed is not None:
                self._closed[_flow_key(r)] = (now + self.closed_linger, r)
        # bounded in bytes: at churn rates closed flows come faster than they age out
        excess = len(self._closed) - self.closed_linger_bytes // FLOW_RECORD_BYTES
        if excess > 0:
            for key in list(itertools.islice(self._closed, excess)):
                del self._closed[key]
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
        self.state.done(time.monotonic() - t0, now)
        snap = self._poll_syscalls() if self.syscalls is not None and self.sys_state.alive else None
        if self.drops is not None and self.drop_state.alive:
            self._poll_drops(view)
        published = self._read_own()
        changes = PollChanges(
            time=now,
            flows=changed,
            events=events,
            syscalls=snap,
            self_metrics=published.self_metrics(
                self.state.alive, self.sys_state.alive if self.syscalls is not None else None
            ),
            batches=batches,
            tallies=[r for r in records if isinstance(r, ConnTally)] if batches else None,
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
        self.sys_state.done(time.monotonic() - t0, snap.time)
        return snap

    def _start_drops(self) -> None:
        """Drops are an extra: a kernel that refuses their programs leaves
        the agent running without them (health says why)."""
        if self.drops is None:
            return
        try:
            self.drops.start()
        except Exception as exc:
            log.warning("packet drops are off: %s", exc)
            self.drop_state.error = f"{type(exc).__name__}: {exc}"
            return
        self.drop_state.alive = True

    def _poll_drops(self, flows: list[FlowRecord]) -> None:
        assert self.drops is not None
        t0 = time.monotonic()
        try:
            # drops of a flow whose owner the drop program did not know get
            # the flows collector's owner of the same flow (docs/drops.md)
            self.drops.use_flow_owners(flows)
            self.drops.poll()
        except Exception as exc:  # the drop collector is dead; flows go on
            log.exception("drop collector failed")
            self.drop_state.alive = False
            self.drop_state.error = f"{type(exc).__name__}: {exc}"
            return
        view = (self.drops.snapshot(), dict(self.drops.totals))
        stats = self.drops.stats().to_json()
        with self._lock:
            self._drop_view = view
            self._drop_stats = stats
        self.drop_state.done(time.monotonic() - t0, time.time())

    # -- what the views read ---------------------------------------------------

    def drop_view(self) -> tuple[list[Any], dict[tuple[str, str], int]]:
        """(drop records kept, cumulative drops by (reason, protocol label))."""
        with self._lock:
            return self._drop_view

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
        if self.drops is not None and self.drop_state.alive:
            tools.append(("drops", self.drops.tool))
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
                **self._poll_health(self.sys_state),
                "rungs": sys_stats.get("rungs", {}) if self.sys_state.alive else {},
                "events_dropped": sys_stats.get("events_dropped", 0),
            }
        if self.drops is not None:
            collectors["drops"] = self._drops_health()
        # drops that never started (the kernel refused them) are reported,
        # not a failure of the agent; drops that died are
        started = self.drop_state.alive or self.drop_state.polls > 0
        alive = all(c["alive"] for n, c in collectors.items() if n != "drops" or started)
        lagging = [n for n, c in collectors.items() if c.get("lagging")]
        return {
            # lagging polls are not ok either: the probes see a 503
            "ok": alive and not lagging,
            "status": "ok" if alive and not lagging else "degraded" if alive else "failed",
            "lagging": lagging,
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

    def _poll_health(self, state: CollectorState) -> dict[str, Any]:
        """How late the polls are, as of now (not as of the last poll)."""
        age = state.age()
        lag = max(0.0, age - self.interval)
        return {
            "last_poll_age_seconds": round(age, 3),
            "lag_seconds": round(lag, 3),
            "lagging": state.alive and lag > 3 * self.interval,
            "longest_poll_seconds": round(state.longest_poll, 6),
            "longest_gap_seconds": round(state.longest_gap, 3),
        }

    def poll_timing(self) -> dict[str, dict[str, Any]]:
        """Per collector: lag (now), and the poll-duration histogram."""
        states = [self.state] + ([self.sys_state] if self.syscalls is not None else [])
        return {
            s.name: {
                "lag_seconds": max(0.0, s.age() - self.interval),
                "buckets": list(s.poll_buckets),
                "sum": s.poll_seconds_total,
                "count": s.polls,
            }
            for s in states
        }

    def live_drops(self) -> dict[str, int]:
        """Cumulative events lost per source, as of now (the flow
        collector's event thread keeps its figures current)."""
        drops = dict(self.published.self_metrics(True, True)["events_dropped"])
        counts = getattr(self.flows, "event_counts", None)
        if counts is not None:
            c = counts()
            skipped = self.published.flow_stats.get("events_skipped", 0)
            drops["flows"] = c["events_dropped"] + skipped
        return drops

    def _drops_health(self) -> dict[str, Any]:
        assert self.drops is not None
        alive = self.drop_state.alive
        return {
            "alive": alive,
            "error": self.drop_state.error,
            "polls": self.drop_state.polls,
            "last_poll": self.drop_state.last_poll,
            "poll_seconds": round(self.drop_state.poll_seconds, 6),
            **(self._drop_stats if alive else {}),
        }

    def _flows_health(self, stats: dict[str, Any]) -> dict[str, Any]:
        counts = getattr(self.flows, "event_counts", None)
        live = counts() if counts is not None else {}
        return {
            "alive": self.state.alive,
            "error": self.state.error,
            "polls": self.state.polls,
            "last_poll": self.state.last_poll,
            "poll_seconds": round(self.state.poll_seconds, 6),
            **self._poll_health(self.state),
            "rungs": stats.get("rungs", {}),
            "tcp_accounting": stats.get("tcp_accounting"),
            "unattributed": stats.get("unattributed", 0),
            "udp": stats.get("udp", True),
            "udp_note": (
                "UDP accounting shares the TCP send/receive hooks on this kernel"
                if stats.get("udp_shares_tcp_hooks")
                else None
            ),
            "events_dropped": live.get("events_dropped", stats.get("events_dropped", 0)),
            "events_skipped": stats.get("events_skipped", 0),
            "events_received": live.get("events_received", stats.get("events_received", 0)),
            # read, counted in the metrics, but not kept for /api/v1/connections
            "events_unbuffered": live.get("events_unbuffered", 0),
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
