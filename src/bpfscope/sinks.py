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
from typing import Any, Final

from .flows.events import ConnTally, EventBatch
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
    events: list[ConnEvent]  # lifecycle events that arrived, as objects
    syscalls: Snapshot | None  # the syscall interval (None: collector off or failed)
    self_metrics: dict[str, Any]  # bpfscope's own programs, drops and collectors
    # lifecycle events at any rate: raw (decoded when read), and counted per
    # group (None: the collector hands events as objects only)
    batches: list[EventBatch] = field(default_factory=list)
    tallies: list[ConnTally] | None = None


@dataclass(frozen=True)
class EventEntry:
    seq: int
    event: ConnEvent


# What one event object holds in memory (a ConnEvent with its strings),
# measured with tracemalloc: the byte bound of objects handed in decoded.
EVENT_OBJECT_BYTES: Final = 512


class _Chunk:
    """Events numbered from ``first``: a raw batch or decoded objects."""

    def __init__(self, first: int, events: EventBatch | list[ConnEvent]) -> None:
        self.first = first
        self.events = events
        self.skip = 0  # leading events trimmed away
        self.count = len(events)
        self.per_event = (
            events.nbytes // max(1, self.count)
            if isinstance(events, EventBatch)
            else EVENT_OBJECT_BYTES
        )

    def entries(self, start: int, stop: int) -> list[EventEntry]:
        """Entries with index in [start, stop) of this chunk."""
        start = max(start, self.skip)
        if start >= stop:
            return []
        if isinstance(self.events, EventBatch):
            decoded = self.events.decode(start, stop)
        else:
            decoded = self.events[start:stop]
        return [EventEntry(self.first + start + i, e) for i, e in enumerate(decoded)]


class EventBuffer:
    """The most recent lifecycle events, numbered for clients that follow
    them. Bounded in events and in bytes; raw batches are decoded only for
    the entries a reader asks for, so the buffer costs nothing per event
    while nobody reads it."""

    def __init__(self, max_events: int = 10_000, max_bytes: int = 8 << 20) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._chunks: deque[_Chunk] = deque()
        self._count = 0
        self._bytes = 0
        self._seq = 0
        self._lock = threading.Lock()

    def consume(self, changes: PollChanges) -> None:
        sources: list[EventBatch | list[ConnEvent]] = [changes.events, *changes.batches]
        with self._lock:
            for events in sources:
                if len(events):
                    self._add(events)

    def _add(self, events: EventBatch | list[ConnEvent]) -> None:
        chunk = _Chunk(self._seq + 1, events)
        self._seq += chunk.count
        self._chunks.append(chunk)
        self._count += chunk.count
        self._bytes += chunk.count * chunk.per_event
        # the oldest go first, by whole chunks or a leading part of one
        while self._chunks and (self._count > self.max_events or self._bytes > self.max_bytes):
            old = self._chunks[0]
            over = max(
                self._count - self.max_events,
                -(-(self._bytes - self.max_bytes) // max(1, old.per_event)),
            )
            n = min(old.count - old.skip, max(1, over))
            old.skip += n
            self._count -= n
            self._bytes -= n * old.per_event
            if old.skip >= old.count:
                self._chunks.popleft()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def since(self, seq: int = 0, limit: int | None = None) -> list[EventEntry]:
        with self._lock:
            chunks = list(self._chunks)
            last = self._seq
        first_wanted = seq + 1
        if limit:
            first_wanted = max(first_wanted, last - limit + 1)
        out: list[EventEntry] = []
        for c in chunks:
            if c.first + c.count <= first_wanted:
                continue
            out += c.entries(first_wanted - c.first, c.count)
        return out

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq


def flow_sample(rec: FlowRecord, profiler: IpProfiler | _PollProfiles | None) -> FlowSample:
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
        profiler = _PollProfiles(self.profiler) if self.profiler is not None else None
        self.store.add((flow_sample(r, profiler) for r in changes.flows), now=changes.time)


class _PollProfiles:
    """One poll's remote profiles: at churn rates many flows share a peer,
    and a profile costs an address parse and lookups."""

    def __init__(self, profiler: IpProfiler) -> None:
        self._profiler = profiler
        self._seen: dict[str | None, Any] = {}

    def profile(self, ip: str | None) -> Any:
        prof = self._seen.get(ip)
        if prof is None:
            prof = self._seen[ip] = self._profiler.profile(ip)
        return prof
