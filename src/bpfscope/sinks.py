"""What the agent hands its sinks at each poll, and its own sinks: the
recent-events buffer and the history writer.

The metrics (:class:`bpfscope.metrics.FlowMetrics`) and the OTLP exporter
(:class:`bpfscope.otlp.FlowExporter`) are sinks too; each implements
``consume(changes)`` (:class:`bpfscope.pipeline.Sink`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .flows.records import ConnEvent, FlowRecord
from .ipprofile import IpProfiler
from .store import FlowSample, Store
from .syscalls.records import Snapshot

__all__ = ["EventBuffer", "EventEntry", "HistorySink", "PollChanges", "Published", "flow_sample"]


@dataclass(frozen=True)
class Published:
    """The agent's own state, read once per poll: what the views show
    without touching the kernel or the database."""

    programs: list[dict[str, Any]] = field(default_factory=list)  # with run stats
    flow_stats: dict[str, Any] = field(default_factory=dict)
    syscall_stats: dict[str, Any] | None = None  # None: no syscall collector
    store_stats: dict[str, Any] | None = None  # None: no history

    def self_metrics(self, flows_alive: bool, syscalls_alive: bool | None) -> dict[str, Any]:
        """bpfscope's own cost and health, as /metrics shows it."""
        stats = self.flow_stats
        dropped = {"flows": stats.get("events_dropped", 0) + stats.get("events_skipped", 0)}
        collectors = {"flows": flows_alive}
        if self.syscall_stats is not None and syscalls_alive is not None:
            dropped["syscalls"] = self.syscall_stats.get("events_dropped", 0)
            collectors["syscalls"] = syscalls_alive
        return {
            "programs": self.programs,
            "events_dropped": dropped,
            "map_entries": {"flows": stats.get("flows_in_map", 0)},
            "collectors": collectors,
        }


@dataclass(frozen=True)
class PollChanges:
    """What one poll found; each sink receives it once."""

    time: float  # wall clock of the poll
    flows: list[FlowRecord]  # flows that changed since the previous poll
    events: list[ConnEvent]  # lifecycle events that arrived
    syscalls: Snapshot | None  # the syscall interval (None: collector off or failed)
    self_metrics: dict[str, Any]  # bpfscope's own programs, drops and collectors


@dataclass(frozen=True)
class EventEntry:
    seq: int
    event: ConnEvent


class EventBuffer:
    """The most recent lifecycle events, numbered for clients that follow them."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[EventEntry] = deque(maxlen=max_events)
        self._seq = 0
        self._lock = threading.Lock()

    def consume(self, changes: PollChanges) -> None:
        with self._lock:
            for e in changes.events:
                self._seq += 1
                self._events.append(EventEntry(self._seq, e))

    def since(self, seq: int = 0, limit: int | None = None) -> list[EventEntry]:
        with self._lock:
            out = [e for e in self._events if e.seq > seq]
        return out[-limit:] if limit else out

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq


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
        remote_class=str(prof.remote_class) if prof else "",
        remote_name=(prof.name or "") if prof else "",
    )


class HistorySink:
    """Writes each interval's changed flows to the history store."""

    def __init__(self, store: Store, profiler: IpProfiler | None = None) -> None:
        self.store = store
        self.profiler = profiler

    def consume(self, changes: PollChanges) -> None:
        self.store.add((flow_sample(r, self.profiler) for r in changes.flows), now=changes.time)
