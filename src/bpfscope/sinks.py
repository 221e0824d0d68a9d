"""What the agent hands its sinks at each poll, and its own sinks: the
recent-events buffer and the history writer.

The metrics (:class:`bpfscope.metrics.FlowMetrics`) and the OTLP exporter
(:class:`bpfscope.otlp.FlowExporter`) are sinks too; each implements
``consume(changes)`` (:class:`bpfscope.pipeline.Sink`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from .flows.events import ConnTally, EventBatch
from .flows.records import ConnEvent, FlowRecord
from .ipprofile import IpProfiler
from .store import FlowSample, Store
from .syscalls.records import Snapshot

__all__ = [
    "EventBuffer",
    "EventEntry",
    "HistorySink",
    "PollChanges",
    "Published",
    "flow_sample",
    "tally_sample",
]


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

    def compact(self) -> None:
        """Keep only the events not trimmed away, numbered as before."""
        assert isinstance(self.events, EventBatch)
        self.events = self.events.tail(self.skip)
        self.first += self.skip
        self.count -= self.skip
        self.skip = 0

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
            elif isinstance(old.events, EventBatch) and old.skip * 2 >= old.count:
                old.compact()  # a poll's batch trimmed to its tail: free the rest

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


def _ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The ports the kernel picks for clients (Linux's default if unreadable)."""
    try:
        with open(path) as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


EPHEMERAL: Final = _ephemeral_range()


def service_direction(rec: FlowRecord, ephemeral: tuple[int, int] = EPHEMERAL) -> str:
    """Which side offers the service: "active" (this process connected: the
    remote port is the service), "passive" (it accepted: the local port is),
    or "" (unknown). TCP knows from connect/accept; otherwise the side whose
    port is in the kernel's ephemeral range is the client, if only one is."""
    if rec.direction in ("active", "passive"):
        return rec.direction
    if not rec.raddr or not rec.rport:
        return ""
    lo, hi = ephemeral
    local_eph, remote_eph = lo <= rec.lport <= hi, lo <= rec.rport <= hi
    if local_eph and not remote_eph:
        return "active"
    if remote_eph and not local_eph:
        return "passive"
    return ""


def flow_sample(
    rec: FlowRecord,
    profiler: IpProfiler | _PollProfiles | None,
    *,
    new: bool = True,
    closed: bool = False,
    counts: bool = True,
) -> FlowSample:
    """The store's view of one interval of one flow, keyed without the
    client's ephemeral port: (process, local address, remote address,
    service port, direction). A record of folded short connections is an
    aggregate sample: each of them active, and (``counts``: no lifecycle
    events count them) opened and closed."""
    prof = profiler.profile(rec.raddr) if profiler else None
    direction = service_direction(rec)
    lport, rport = rec.lport, rec.rport or 0
    if direction == "active":
        lport = 0
    elif direction == "passive":
        rport = 0
    duration = None
    if rec.folded:
        duration = rec.folded_duration_ms_max if rec.folded_durations else None
    elif closed and rec.closed is not None and rec.opened is not None:
        duration = max(0, round((rec.closed - rec.opened) * 1000))
    return FlowSample(
        proto=rec.proto,
        family=4 if rec.family == "ipv4" else 6,
        laddr=rec.laddr,
        lport=lport,
        raddr=rec.raddr or "",
        rport=rport,
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
        direction=direction,
        conn=hash(_conn_id(rec)),
        new=new,
        closed=closed,
        duration_ms=duration,
        rtt_us=rec.rtt_us,
        aggregate=bool(rec.folded),
        folded=rec.folded,
        opened_n=rec.folded if counts else 0,
        closed_n=rec.folded if counts else 0,
        durations=rec.folded_durations if counts else 0,
        duration_ms_sum=rec.folded_duration_ms_sum if counts else 0,
    )


_COUNTED: Final = ("open", "close")


def tally_sample(t: ConnTally, profiler: IpProfiler | _PollProfiles | None) -> FlowSample:
    """The store's view of one group's TCP opens or closes in one poll,
    keyed like the flows' samples (the client's port 0)."""
    prof = profiler.profile(t.raddr) if profiler else None
    active = t.direction != "passive"
    closes = t.type == "close"
    return FlowSample(
        proto="tcp",
        family=4 if t.family == "ipv4" else 6,
        laddr=t.laddr,
        lport=0 if active else t.port,
        raddr=t.raddr,
        rport=t.port if active else 0,
        pid=t.pid,
        comm=t.comm,
        container=t.container or "",
        remote_class=str(prof.remote_class) if prof else "",
        remote_name=(prof.name or "") if prof else "",
        direction=t.direction or "",
        aggregate=True,
        opened_n=0 if closes else t.count,
        closed_n=t.count if closes else 0,
        durations=t.duration_count if closes else 0,
        duration_ms_sum=round(t.duration_sum * 1000) if closes else 0,
    )


def _conn_id(rec: FlowRecord) -> tuple[object, ...]:
    return (rec.proto, rec.netns, rec.laddr, rec.lport, rec.raddr, rec.rport, rec.pid)


# A connection not seen for this long counts as new when it shows again.
FORGET_SECONDS: Final = 3600.0


class HistorySink:
    """Writes each interval's changed flows to the history store, and tells
    it which connections are new and which closed (each counted once: the
    collector may report a closed flow in two polls)."""

    def __init__(self, store: Store, profiler: IpProfiler | None = None) -> None:
        self.store = store
        self.profiler = profiler
        self._seen: dict[tuple[object, ...], float] = {}  # open connections: last seen
        self._closed: set[tuple[object, ...]] = set()  # closed in the previous poll
        self._last_prune = 0.0

    def consume(self, changes: PollChanges) -> None:
        now = changes.time
        profiler = _PollProfiles(self.profiler) if self.profiler is not None else None
        samples = []
        closed_now: set[tuple[object, ...]] = set()
        # TCP opens and closes counted from the lifecycle events (exact at
        # any rate: the kernel's flow table merges connections that reuse a
        # client port between two polls); the flows then carry bytes only
        exact = changes.tallies is not None
        if changes.tallies:
            samples += [tally_sample(t, profiler) for t in changes.tallies if t.type in _COUNTED]
        for r in changes.flows:
            if r.folded:  # short connections, each opened and closed now
                samples.append(flow_sample(r, profiler, counts=not exact))
                continue
            if exact and r.proto == "tcp":
                sample = flow_sample(r, profiler, new=False)
                if r.closed is not None and r.opened is not None:
                    duration = max(0, round((r.closed - r.opened) * 1000))
                    sample = dataclasses.replace(sample, duration_ms=duration)
                samples.append(sample)
                continue
            cid = _conn_id(r)
            if cid in self._closed:  # its close was counted in the previous poll
                closed_now.add(cid)
                samples.append(flow_sample(r, profiler, new=False))
                continue
            new = cid not in self._seen
            if r.closed is not None:
                self._seen.pop(cid, None)
                closed_now.add(cid)
            else:
                self._seen[cid] = now
            samples.append(flow_sample(r, profiler, new=new, closed=r.closed is not None))
        self._closed = closed_now
        if now - self._last_prune >= 60:
            # connections that vanished without a close (UDP, evictions)
            self._seen = {c: t for c, t in self._seen.items() if now - t < FORGET_SECONDS}
            self._last_prune = now
        self.store.add(samples, now=now)


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
